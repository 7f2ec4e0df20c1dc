"""Zero-conf peering over the Hyperswarm DHT: announce, look up, handshake through relays.

Every process announces its link key under the router topic (the public key of the
router secret), with the DHT nodes that relay handshakes to it, and looks the topic up
to find the others. To connect, a client runs the link's Noise XX handshake through one
of the peer's relays (see `hypergate.wire.rendezvous`), checks that the static key the
peer proved is the key it announced, and then opens a direct TCP connection to an
address the peer disclosed only after authenticating it; on that connection both ends
resume with the keys of the relayed handshake. The relays see opaque bytes only.

Paths race: direct TCP to the peer's addresses, hole punches (TCP simultaneous open,
`tcp_punch`; UDP with the link over UDX, `udp_punch`), and after a head start the
peer's WebSocket relay. `holepunch` chooses which punches run (--holepunch).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Iterable
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
from . import tcp_punch
from .paths import HOLEPUNCH_KINDS, describe_remote, open_paths
from .relay import RelayError, open_relay_stream, relay_capability
from .udp_punch import UdpPuncher, start_udx

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
    def __init__(
        self, router: Router, node: DHTNode, relay_url: str | None = None, holepunch: Iterable[str] = HOLEPUNCH_KINDS
    ) -> None:
        self.router = router
        self.node = node
        # Which hole punches we try (and offer): "udp", "tcp".
        self.holepunch = frozenset(holepunch)
        # A WebSocket relay where we also wait for clients that reach us no other way: the
        # one we were given, else the one we offer, else the first another peer offers.
        self.relay_url = relay_url or router.hello.relay or None
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
        router.relay_listeners.append(self._adopt_relay)
        for url in router.offered_relays:
            self._adopt_relay(url)

    def _adopt_relay(self, url: str) -> None:
        if self.relay_url is None:
            self.relay_url = url
            log.info("event=relay_adopted relay=%s", url)

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
        # Whatever the path needs while the link lives (a UDX socket) runs in here.
        async with trio.open_nursery() as link_nursery:
            try:
                if self.router.public_key > noise_key_of(public_key):
                    # Our link would lose to the peer's (router._admit): let theirs land first.
                    await trio.sleep(limits.RENDEZVOUS_DIAL_YIELD_S)
                    if self.router.is_connected_to(noise_key_of(public_key)):
                        return
                outcome = await self._connect(record, link_nursery)
            finally:
                self._dialing.discard(public_key)
            if outcome is None:
                self._retry_at[public_key] = trio.current_time() + limits.RENDEZVOUS_DIAL_BACKOFF_S
                return
            stream, handshake, address = outcome
            link = SecureLink(stream, handshake.result, b"", initiator=True)
            peer = await self.router.serve_link(link, address)
            log.info("peer=%s event=dht_link_ended reason=%r", name, peer.close_reason)
            link_nursery.cancel_scope.cancel()

    async def _connect(self, record: PeerRecord, link_nursery: trio.Nursery):
        """Relayed handshake, then a direct TCP connection; None when the peer is out of reach."""
        public_key = record.public_key
        name = public_key.hex()[:8]
        relays = list(record.relay_addresses)
        if not relays:
            log.info("peer=%s event=dial_skipped reason='no relays announced'", name)
            return None
        for relay in relays:
            session_id = os.urandom(rv.SESSION_ID_SIZE)
            handshake = NoiseHandshake(
                initiator=True, identity=self.router.identity, router=self.router.keys, suite=self.router.cipher
            )
            punch_sock, my_punch = await self._tcp_punch_socket()
            udp = UdpPuncher(self.node) if "udp" in self.holepunch else None
            try:
                attempt = await self._handshake(public_key, relay, session_id, handshake, my_punch, udp, name)
            except BaseException:
                _close_punches(punch_sock, udp)
                raise
            if attempt is None or attempt is False:
                _close_punches(punch_sock, udp)
                if attempt is None:
                    return None
                continue
            log.info("peer=%s relay=%s event=handshake_relayed firewall=%s", name, relay, self.firewall())
            info = attempt
            addresses, their_punch = info.addresses, info.punch
            relay_join = functools.partial(self._join_relay, info.relay, session_id, name) if info.relay else None
            try:
                stream, kind = await open_paths(addresses, punch_sock, their_punch, relay_join, udp, info.udp, name)
                if kind == "punched-udp":
                    stream = await start_udx(stream, link_nursery, self.node, udp.stream_id, info.udp.stream_id,
                                             initiator=True)
            finally:
                if udp is not None:
                    udp.close()
            if stream is None:
                log.warning(
                    "peer=%s event=unreachable addresses=%s punch=%s",
                    name, ",".join(f"{h}:{p}" for h, p in addresses) or "-",
                    f"{their_punch[0]}:{their_punch[1]}" if their_punch else "-",
                )
                return None
            await stream.send_all(rv.RESUME_MAGIC + session_id)
            remote = describe_remote(stream)
            log.info("peer=%s event=link_path kind=%s remote=%s", name, kind, remote)
            return stream, handshake, remote
        return None

    async def _handshake(self, public_key, relay, session_id, handshake, my_punch, udp, name):
        """The relayed XX handshake; our UDP punch socket is classified meanwhile. The
        peer's READY info, None to give the peer up, False to try the next relay."""
        try:
            with trio.fail_after(2 * limits.RENDEZVOUS_RELAYED_STEP_TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    if udp is not None:
                        nursery.start_soon(udp.prepare, limits.UDP_PUNCH_CLASSIFY_TIMEOUT_S)
                    first = await self._exchange(public_key, relay, rv.Step.OPEN, session_id,
                                                 handshake.next_outgoing()[FRAME_OVERHEAD:], rv.Step.REPLY)
                    handshake.receive(first.body)
                    third = handshake.next_outgoing()[FRAME_OVERHEAD:]
                    if handshake.result.remote_static != noise_key_of(public_key):
                        log.warning("peer=%s event=dial_refused reason='proved a key other than it announced'", name)
                        nursery.cancel_scope.cancel()
                        return None
                my_udp = udp.info if udp is not None and udp.info and udp.info.firewall != "unknown" else None
                ready = await self._exchange(public_key, relay, rv.Step.FINISH, session_id,
                                             rv.encode_finish(third, my_punch, my_udp), rv.Step.READY)
                return rv.decode_ready(ready.body)
        except HandshakeError as exc:
            log.warning("peer=%s relay=%s event=handshake_rejected reason=%r", name, relay, str(exc))
            return None
        except (DHTError, ProtocolError, trio.TooSlowError) as exc:
            log.info("peer=%s relay=%s event=relay_failed error=%r", name, relay, str(exc) or type(exc).__name__)
            return False

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
        remote = describe_remote(stream)
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

    async def _tcp_punch_socket(self):
        """(socket, our punch address) when we TCP-punch, else (None, None)."""
        if "tcp" not in self.holepunch:
            return None, None
        return await tcp_punch.punch_socket(self.node, self.firewall())

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
                finish = rv.decode_finish(incoming.body)
                pending.handshake.receive(finish.message3)
            except (HandshakeError, rv.RendezvousError) as exc:
                log.warning("peer=%s event=handshake_rejected reason=%r", message.peer_address, str(exc))
                return None
            my_punch = my_udp = None
            if finish.punch is not None and self._nursery is not None and "tcp" in self.holepunch:
                punch_sock, my_punch = await self._tcp_punch_socket()
                if my_punch is None:
                    punch_sock.close()
                else:
                    self._nursery.start_soon(self._punch_from_server, punch_sock, finish.punch, sid)
            if finish.udp is not None and self._nursery is not None and "udp" in self.holepunch:
                my_udp = await self._prepare_udp_from_server(finish.udp, sid, pending.handshake)
            if self.relay_url is not None and self._nursery is not None:
                self._nursery.start_soon(self._wait_on_relay, sid)
            body = rv.ReadyInfo(self._my_addresses(message), my_punch, self.relay_url, my_udp).encode()
            reply = rv.RendezvousMessage(rv.Step.READY, sid, body).encode()
            self._ready[sid] = _Ready(pending.handshake, reply, trio.current_time())
            return PeerReply(reply)
        return None

    async def _punch_from_server(self, sock, their_punch, session_id: bytes) -> None:
        """Our half of the simultaneous open; the client then resumes on it as on a
        connection to our listener."""
        stream = await tcp_punch.simultaneous_open(sock, their_punch)
        if stream is not None:
            await self._resume_on(stream, session_id, "punched-tcp")

    async def _prepare_udp_from_server(self, theirs: rv.UdpPunchInfo, session_id: bytes, handshake):
        """Classify a UDP punch socket (quickly: the client is waiting for READY) and
        start punching from it; our info for READY, or None."""
        udp = UdpPuncher(self.node)
        try:
            info = await udp.prepare(limits.UDP_PUNCH_SERVER_CLASSIFY_TIMEOUT_S)
        except BaseException:
            udp.close()
            raise
        if info is None:
            udp.close()
            return None
        name = handshake.result.remote_static.hex()[:8] if handshake.result else "?"
        self._nursery.start_soon(self._punch_udp_from_server, udp, theirs, session_id, name)
        return info

    async def _punch_udp_from_server(self, udp: UdpPuncher, theirs: rv.UdpPunchInfo, session_id: bytes,
                                     name: str) -> None:
        """Our half of the UDP punch; the client resumes on the UDX stream it opens to the
        socket that met it. The UDX socket lives as long as the link."""
        try:
            punched = await udp.punch(theirs, initiator=False, name=name, spray_delay_s=limits.UDP_PUNCH_SPRAY_DELAY_S)
            if punched is None:
                return
            async with trio.open_nursery() as link_nursery:
                stream = await start_udx(punched, link_nursery, self.node, udp.stream_id, theirs.stream_id,
                                         initiator=False)
                await self._resume_on(stream, session_id, "punched-udp")
                link_nursery.cancel_scope.cancel()
        finally:
            udp.close()

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


def _close_punches(punch_sock, udp: UdpPuncher | None) -> None:
    if punch_sock is not None:
        punch_sock.close()
    if udp is not None:
        udp.close()


@functools.lru_cache(maxsize=64)
def _route_source(destination: str) -> str:
    """The local address the kernel would use to reach `destination` (no packet sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((destination, 9))
            return probe.getsockname()[0]
    except OSError:
        return ""
