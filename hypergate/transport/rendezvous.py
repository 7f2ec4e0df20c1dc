"""Zero-conf peering over the Hyperswarm DHT: announce, look up, handshake through relays.

Every process announces its link key under the router topic (the public key of the
router secret), with the DHT nodes that relay handshakes to it, and looks the topic up
to find the others. To connect, a client runs the link's Noise XX handshake through one
of the peer's relays (see `hypergate.wire.rendezvous`), checks that the static key the
peer proved is the key it announced, and then opens a direct TCP connection to an
address the peer disclosed only after authenticating it; on that connection both ends
resume with the keys of the relayed handshake. The relays see opaque bytes only.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from typing import TYPE_CHECKING

import attrs
import nacl.bindings
import trio

from .. import limits
from ..crypto.handshake import FRAME_OVERHEAD, NoiseHandshake
from ..crypto.secure_link import SecureLink
from ..dht.announcer import ServerAnnouncer
from ..dht.crypto import KeyPair
from ..dht.messages import PeerRecord
from ..dht.node import DHTError, DHTNode, PeerMessage, PeerReply
from ..errors import HandshakeError, ProtocolError
from ..wire import rendezvous as rv
from .relay import RelayError, open_relay_stream, relay_capability

if TYPE_CHECKING:
    from ..router import Router

log = logging.getLogger(__name__)



def noise_key_of(ed25519_public_key: bytes) -> bytes:
    """The X25519 static key a peer proves in the handshake, from the key it announced."""
    return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public_key)


@attrs.define
class _Pending:
    handshake: NoiseHandshake
    reply: bytes
    created: float


@attrs.define
class _Ready:
    handshake: NoiseHandshake
    reply: bytes
    created: float


class DhtRendezvous:
    def __init__(self, router: Router, node: DHTNode, relay_url: str | None = None) -> None:
        self.router = router
        self.node = node
        # A WebSocket relay where we also wait for clients that reach us no other way.
        self.relay_url = relay_url
        signing_key = router.identity.signing_key
        self.key_pair = KeyPair(bytes(signing_key.verify_key), signing_key)
        self.topic = router.keys.topic
        self._pending: dict[bytes, _Pending] = {}
        self._ready: dict[bytes, _Ready] = {}
        self._dialing: set[bytes] = set()
        self._retry_at: dict[bytes, float] = {}
        self._lookup_now = trio.Event()
        self._nursery: trio.Nursery | None = None
        router.resume_link = self.resume
        router.lost_listeners.append(self.peer_lost)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        self.node.add_server(self.key_pair, self._on_handshake, None)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                announcer = ServerAnnouncer(self.node, self.key_pair)
                await nursery.start(announcer.run)
                nursery.start_soon(self._announce_topic, announcer)
                nursery.start_soon(self._look_up_peers, nursery)
                task_status.started()
        finally:
            self.node.remove_server(self.key_pair)

    def peer_lost(self) -> None:
        """A link dropped: look the topic up again soon rather than at the calm interval."""
        self._lookup_now.set()

    # --- announcing -----------------------------------------------------------------

    async def _announce_topic(self, announcer: ServerAnnouncer) -> None:
        try:
            while True:
                relays = announcer.relay_addresses
                try:
                    accepted = await self.node.announce(self.topic, self.key_pair, relays)
                    log.info(
                        "event=topic_announced topic=%s nodes=%d relays=%s",
                        self.topic.hex()[:16], len(accepted), ",".join(map(str, relays)) or "-",
                    )
                except DHTError as exc:
                    log.warning("event=topic_announce_failed error=%r", str(exc))
                with trio.move_on_after(limits.RENDEZVOUS_TOPIC_REANNOUNCE_S if relays else limits.RENDEZVOUS_LOOKUP_INTERVALS_S[2]):
                    await announcer.changed.wait()
        finally:
            with trio.move_on_after(limits.DIAL_TIMEOUT_S) as scope:
                scope.shield = True
                try:
                    await self.node.unannounce(self.topic, self.key_pair)
                except DHTError:
                    pass

    # --- finding and dialing peers --------------------------------------------------

    async def _look_up_peers(self, nursery: trio.Nursery) -> None:
        step = 0
        while True:
            try:
                results = await self.node.lookup(self.topic)
            except DHTError as exc:
                log.info("event=topic_lookup_failed error=%r", str(exc))
                results = []
            records = {peer.public_key: peer for result in results for peer in result.peers}
            for public_key, record in records.items():
                if self._should_dial(public_key):
                    self._dialing.add(public_key)
                    nursery.start_soon(self._dial, record)
            interval = limits.RENDEZVOUS_LOOKUP_INTERVALS_S[min(step, len(limits.RENDEZVOUS_LOOKUP_INTERVALS_S) - 1)]
            step += 1
            with trio.move_on_after(interval):
                await self._lookup_now.wait()
                self._lookup_now = trio.Event()
                step = 0

    def _should_dial(self, public_key: bytes) -> bool:
        if public_key == self.key_pair.public_key or public_key in self._dialing:
            return False
        if self.router.is_connected_to(noise_key_of(public_key)):
            return False
        return trio.current_time() >= self._retry_at.get(public_key, 0.0)

    async def _dial(self, record: PeerRecord) -> None:
        public_key = record.public_key
        name = public_key.hex()[:8]
        try:
            outcome = await self._connect(record)
        finally:
            self._dialing.discard(public_key)
        if outcome is None:
            self._retry_at[public_key] = trio.current_time() + limits.RENDEZVOUS_DIAL_BACKOFF_S
            return
        stream, handshake, address = outcome
        link = SecureLink(stream, handshake.result, b"", initiator=True)
        peer = await self.router.serve_link(link, address)
        log.info("peer=%s event=dht_link_ended reason=%r", name, peer.close_reason)

    async def _connect(self, record: PeerRecord):
        """Relayed handshake, then a direct TCP connection; None when the peer is out of reach."""
        public_key = record.public_key
        name = public_key.hex()[:8]
        relays = list(record.relay_addresses)
        if not relays:
            log.info("peer=%s event=dial_skipped reason='no relays announced'", name)
            return None
        for relay in relays:
            session_id = os.urandom(rv.SESSION_ID_SIZE)
            handshake = NoiseHandshake(initiator=True, identity=self.router.identity, router=self.router.keys)
            punch_sock, my_punch = await self._punch_socket()
            try:
                with trio.fail_after(2 * limits.RENDEZVOUS_RELAYED_STEP_TIMEOUT_S):
                    first = await self._exchange(public_key, relay, rv.Step.OPEN, session_id,
                                                 handshake.next_outgoing()[FRAME_OVERHEAD:], rv.Step.REPLY)
                    handshake.receive(first.body)
                    third = handshake.next_outgoing()[FRAME_OVERHEAD:]
                    if handshake.result.remote_static != noise_key_of(public_key):
                        log.warning("peer=%s event=dial_refused reason='proved a key other than it announced'", name)
                        punch_sock.close()
                        return None
                    ready = await self._exchange(public_key, relay, rv.Step.FINISH, session_id,
                                                 rv.encode_finish(third, my_punch), rv.Step.READY)
            except HandshakeError as exc:
                log.warning("peer=%s relay=%s event=handshake_rejected reason=%r", name, relay, str(exc))
                punch_sock.close()
                return None
            except (DHTError, ProtocolError, trio.TooSlowError) as exc:
                log.info("peer=%s relay=%s event=relay_failed error=%r", name, relay, str(exc) or type(exc).__name__)
                punch_sock.close()
                continue
            log.info("peer=%s relay=%s event=handshake_relayed firewall=%s", name, relay, self.firewall())
            info = rv.decode_ready(ready.body)
            addresses, their_punch = info.addresses, info.punch
            relay_join = functools.partial(self._join_relay, info.relay, session_id, name) if info.relay else None
            stream, kind = await self._open_paths(addresses, punch_sock, their_punch, relay_join)
            if stream is None:
                log.warning(
                    "peer=%s event=unreachable addresses=%s punch=%s",
                    name, ",".join(f"{h}:{p}" for h, p in addresses) or "-",
                    f"{their_punch[0]}:{their_punch[1]}" if their_punch else "-",
                )
                return None
            await stream.send_all(rv.RESUME_MAGIC + session_id)
            remote = _describe_remote(stream)
            log.info("peer=%s event=link_path kind=%s remote=%s", name, kind, remote)
            return stream, handshake, remote
        return None

    async def _exchange(self, public_key, relay, step, session_id, body, expect):
        message = rv.RendezvousMessage(step, session_id, body).encode()
        with trio.fail_after(limits.RENDEZVOUS_RELAYED_STEP_TIMEOUT_S):
            reply = await self.node.peer_handshake(public_key, message, relay)
        answer = rv.decode(reply.noise)
        if answer.step != expect or answer.session_id != session_id:
            raise rv.RendezvousError(f"unexpected relayed answer {answer.step.name}")
        return answer

    async def _join_relay(self, url: str, session_id: bytes, name: str):
        """The last resort: meet the peer at its relay; the link stays end-to-end encrypted."""
        try:
            return await open_relay_stream(url, relay_capability(self.topic), session_id, "join")
        except RelayError as exc:
            log.warning("peer=%s event=relay_join_failed relay=%s error=%r", name, url, str(exc))
            return None

    async def _wait_on_relay(self, session_id: bytes) -> None:
        """Our side of a relayed path: wait at our relay for the client, then resume."""
        assert self.relay_url is not None
        try:
            stream = await open_relay_stream(
                self.relay_url, relay_capability(self.topic), session_id, "wait", timeout=limits.RENDEZVOUS_PENDING_TTL_S + 10
            )
        except RelayError as exc:
            log.debug("event=relay_wait_ended reason=%r", str(exc))  # the client took another path
            return
        await self._resume_on(stream, session_id, "relayed")

    async def _resume_on(self, stream, session_id: bytes, kind: str) -> None:
        """A path the client opened to us other than our listener: read its resume header."""
        wanted = len(rv.RESUME_MAGIC) + rv.SESSION_ID_SIZE
        header = b""
        try:
            with trio.fail_after(limits.HANDSHAKE_TIMEOUT_S):
                while len(header) < wanted:
                    chunk = await stream.receive_some(wanted - len(header))
                    if not chunk:
                        break
                    header += chunk
        except (trio.BrokenResourceError, trio.TooSlowError):
            header = b""
        ready = self._ready.get(session_id)
        if header != rv.RESUME_MAGIC + session_id or ready is None:
            await trio.aclose_forcefully(stream)  # the client took another path
            return
        del self._ready[session_id]
        remote = _describe_remote(stream)
        log.info("peer=%s event=link_path kind=%s remote=%s", message_name(ready), kind, remote)
        link = SecureLink(stream, ready.handshake.result, b"", initiator=False)
        await self.router.serve_link(link, remote)

    def firewall(self) -> str:
        """Our firewall as DHT nodes report it, as hyperdht classifies: "open" (reachable),
        "consistent" (a NAT that keeps our port), "random" (a new port per destination),
        or "unknown" (not enough answers yet)."""
        if not self.node.firewalled:
            return "open"
        if self.node.nat.host is None:
            return "unknown"
        return "consistent" if self.node.nat.port else "random"

    async def _punch_socket(self):
        """A TCP socket bound to a port of its own, and the address the other side should
        aim at: our public IP as DHT nodes see it, with that port. None for the address
        behind a random NAT, where the port the other side would aim at does not exist."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind(("0.0.0.0", 0))
        public_host = self.node.nat.host
        if public_host is None or self.firewall() == "random":
            return sock, None
        return sock, (public_host, sock.getsockname()[1])

    async def _open_paths(self, addresses, punch_sock, their_punch, relay_join=None):
        """Race the peer's direct addresses (staggered: a NAT's public address may silently
        drop us while the LAN one works), a simultaneous-open punch and, after a short
        head start for those, the peer's relay; the first connection wins, the others are
        closed. Returns (stream, "direct"|"punched"|"relayed")."""
        winner: list = []

        async def finish(stream: trio.SocketStream, kind: str, nursery: trio.Nursery) -> None:
            if winner:
                await trio.aclose_forcefully(stream)
                return
            winner.append((stream, kind))
            nursery.cancel_scope.cancel()

        async def direct(host: str, port: int, delay: float, nursery: trio.Nursery) -> None:
            await trio.sleep(delay)
            try:
                with trio.fail_after(limits.RENDEZVOUS_CONNECT_TIMEOUT_S):
                    stream = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError):
                return
            await finish(stream, "direct", nursery)

        async def punch(nursery: trio.Nursery) -> None:
            stream = await _simultaneous_open(punch_sock, their_punch)
            if stream is not None:
                await finish(stream, "punched", nursery)

        async def relayed(nursery: trio.Nursery) -> None:
            # Nothing to wait for when no punch is possible and the peer gave no address.
            if their_punch is not None or addresses:
                await trio.sleep(limits.RENDEZVOUS_RELAY_HEAD_START_S)
            stream = await relay_join()
            if stream is not None:
                await finish(stream, "relayed", nursery)

        async with trio.open_nursery() as nursery:
            for index, (host, port) in enumerate(addresses):
                nursery.start_soon(direct, host, port, index * limits.RENDEZVOUS_CONNECT_STAGGER_S, nursery)
            if their_punch is not None:
                nursery.start_soon(punch, nursery)
            if relay_join is not None:
                nursery.start_soon(relayed, nursery)
        if not winner or winner[0][1] != "punched":
            punch_sock.close()
        return winner[0] if winner else (None, None)

    # --- serving relayed handshakes -------------------------------------------------

    async def _on_handshake(self, message: PeerMessage) -> PeerReply | None:
        try:
            incoming = rv.decode(message.payload)
        except rv.RendezvousError:
            return None
        self._expire()
        sid = incoming.session_id
        if incoming.step is rv.Step.OPEN:
            pending = self._pending.get(sid)
            if pending is not None:  # the same message 1 again (retry, or a second relay)
                return PeerReply(pending.reply)
            if len(self._pending) >= limits.RENDEZVOUS_MAX_PENDING:
                log.warning("event=relayed_handshake_dropped reason='too many pending'")
                return None
            handshake = NoiseHandshake(initiator=False, identity=self.router.identity, router=self.router.keys)
            try:
                handshake.receive(incoming.body)
                second = handshake.next_outgoing()[FRAME_OVERHEAD:]
            except HandshakeError as exc:
                log.warning("peer=%s event=handshake_rejected reason=%r", message.peer_address, str(exc))
                return None
            reply = rv.RendezvousMessage(rv.Step.REPLY, sid, second).encode()
            self._pending[sid] = _Pending(handshake, reply, trio.current_time())
            return PeerReply(reply)
        if incoming.step is rv.Step.FINISH:
            ready = self._ready.get(sid)
            if ready is not None:
                return PeerReply(ready.reply)
            pending = self._pending.pop(sid, None)
            if pending is None or len(self._ready) >= limits.RENDEZVOUS_MAX_PENDING:
                return None
            try:
                third, their_punch = rv.decode_finish(incoming.body)
                pending.handshake.receive(third)
            except (HandshakeError, rv.RendezvousError) as exc:
                log.warning("peer=%s event=handshake_rejected reason=%r", message.peer_address, str(exc))
                return None
            my_punch = None
            if their_punch is not None and self._nursery is not None:
                punch_sock, my_punch = await self._punch_socket()
                if my_punch is None:
                    punch_sock.close()
                else:
                    self._nursery.start_soon(self._punch_from_server, punch_sock, their_punch, sid)
            if self.relay_url is not None and self._nursery is not None:
                self._nursery.start_soon(self._wait_on_relay, sid)
            body = rv.ReadyInfo(self._my_addresses(message), my_punch, self.relay_url).encode()
            reply = rv.RendezvousMessage(rv.Step.READY, sid, body).encode()
            self._ready[sid] = _Ready(pending.handshake, reply, trio.current_time())
            return PeerReply(reply)
        return None

    async def _punch_from_server(self, sock, their_punch, session_id: bytes) -> None:
        """Our half of the simultaneous open; the client then resumes on it as on a
        connection to our listener."""
        stream = await _simultaneous_open(sock, their_punch)
        if stream is not None:
            await self._resume_on(stream, session_id, "punched")

    def _expire(self) -> None:
        cutoff = trio.current_time() - limits.RENDEZVOUS_PENDING_TTL_S
        for table in (self._pending, self._ready):
            for sid in [sid for sid, entry in table.items() if entry.created < cutoff]:
                del table[sid]

    def _my_addresses(self, message: PeerMessage) -> list[tuple[str, int]]:
        """Where clients may reach our link listener: our public address as the DHT sees
        it, and the interface the relay reached us on."""
        port = self.router.listening_port
        if port is None:
            return []
        hosts: list[str] = []
        if self.router.peer_host not in ("0.0.0.0", "::", ""):
            hosts.append(self.router.peer_host)
        else:
            public = self.node.remote_address()
            if public is not None:
                hosts.append(public.host)
            try:
                local = message.incoming.socket.getsockname()[0]
                if local not in ("0.0.0.0", "::"):
                    hosts.append(local)
            except OSError:
                pass
            if message.peer_address is not None:
                hosts.append(_route_source(message.peer_address.host))
        return [(host, port) for host in dict.fromkeys(h for h in hosts if h)]

    # --- resuming on the direct connection ------------------------------------------

    async def resume(self, stream: trio.SocketStream, address: str):
        """(stream, None) for an ordinary handshake, (None, link) for a resumed session,
        (None, None) when the connection was refused."""
        sock = getattr(stream, "socket", None)
        if sock is None:
            return stream, None
        try:
            with trio.fail_after(limits.HANDSHAKE_TIMEOUT_S):
                head = await sock.recv(len(rv.RESUME_MAGIC), socket.MSG_PEEK)
                if head != rv.RESUME_MAGIC:
                    return stream, None
                wanted = len(rv.RESUME_MAGIC) + rv.SESSION_ID_SIZE
                data = b""
                while len(data) < wanted:
                    chunk = await sock.recv(wanted - len(data))
                    if not chunk:
                        break
                    data += chunk
        except (OSError, trio.TooSlowError):
            await trio.aclose_forcefully(stream)
            return None, None
        ready = self._ready.pop(data[len(rv.RESUME_MAGIC) :], None)
        if ready is None:
            log.warning("peer=%s event=resume_refused reason='unknown or expired session'", address)
            await trio.aclose_forcefully(stream)
            return None, None
        return None, SecureLink(stream, ready.handshake.result, b"", initiator=False)


def message_name(ready: _Ready) -> str:
    result = ready.handshake.result
    return result.remote_static.hex()[:8] if result else "?"


async def _simultaneous_open(sock, their_punch) -> trio.SocketStream | None:
    """connect() from our bound punch socket to the other side's punch address. The
    kernel retransmits the SYN; the other side does the same towards us, so once both
    NATs have a mapping the SYNs cross and one TCP connection results."""
    try:
        with trio.fail_after(limits.RENDEZVOUS_PUNCH_TIMEOUT_S):
            await sock.connect(their_punch)
    except (OSError, trio.TooSlowError):
        sock.close()
        return None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return trio.SocketStream(sock)


def _describe_remote(stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            host, port = sock.getpeername()[:2]
            return f"{host}:{port}"
        except OSError:
            pass
    return getattr(stream, "url", "relay")


@functools.lru_cache(maxsize=64)
def _route_source(destination: str) -> str:
    """The local address the kernel would use to reach `destination` (no packet sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((destination, 9))
            return probe.getsockname()[0]
    except OSError:
        return ""
