"""The router: root of a process's task tree.

    Router (this nursery)
    ├── roles (provider refresh loop, gateway gates)
    ├── peer listener (--peerPort) and one dialer per --peer address
    └── one task per peer connection -> its mux session -> its channels

Peers meet here by explicit address (direct mode); discovery through the DHT adds
dialers the same way. One link per pair of processes: when two links to the same peer
come up (both dialed at once), both sides keep the one dialed by the smaller key.
"""

from __future__ import annotations

import logging
import socket

import attrs
import trio

from . import limits
from .crypto.keys import LinkIdentity, RouterKeys
from .crypto.suites import CipherSuite
from .errors import ConfigError
from .crypto.secure_link import SecureLink
from .peer import DUPLICATE_LINK, REPLACED_LINK, PeerConnection, RoleHooks, run_link, run_peer
from .wire.messages import PROTOCOL_VERSION, Hello

log = logging.getLogger(__name__)

SELF_LINK = "connected to ourselves"


@attrs.frozen
class PeerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Router:
    def __init__(
        self,
        router_keys: RouterKeys,
        hooks: RoleHooks,
        *,
        provider: bool,
        gateway: bool,
        peer_host: str = "0.0.0.0",
        peer_port: int | None = None,
        peers: list[PeerAddress] = (),  # type: ignore[assignment]
        name: str = "",
        cipher: CipherSuite | None = None,
    ) -> None:
        self.keys = router_keys
        self.identity = LinkIdentity.generate()
        # The cipher suite we offer on links we dial (None: the fastest on this CPU).
        self.cipher = cipher
        self.hooks = hooks
        self.hello = Hello(
            type="hello", version=PROTOCOL_VERSION, provider=provider, gateway=gateway, name=name
        )
        self.peer_host = peer_host
        self.peer_port = peer_port
        self.peer_addresses = list(peers)
        self.peers: dict[bytes, PeerConnection] = {}  # admitted links by remote key
        self.listening_port: int | None = None
        self._nursery: trio.Nursery | None = None
        # Set by the DHT rendezvous: (stream, address) -> (stream or None, resumed link or None).
        self.resume_link = None
        # Called when an admitted link ends (discovery looks again sooner).
        self.lost_listeners: list = []
        # Relays other peers of this router offer (from their hellos), oldest first, and
        # who wants to hear of a new one: (url) -> None.
        self.offered_relays: list[str] = []
        self.relay_listeners: list = []

    @property
    def public_key(self) -> bytes:
        return self.identity.noise_public

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.peer_port is not None:
                await nursery.start(self._listen)
            for address in self.peer_addresses:
                nursery.start_soon(self._dial_forever, address)
            task_status.started()

    async def shutdown(self) -> None:
        """Graceful: GO_AWAY on every link, let channels finish briefly, then stop."""
        async with trio.open_nursery() as nursery:
            for peer in list(self.peers.values()):
                if peer.session is not None:
                    nursery.start_soon(peer.session.close)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # --- admission and deduplication ------------------------------------------------

    def _admit(self, peer: PeerConnection) -> str | None:
        if peer.remote_key == self.public_key:
            return SELF_LINK
        existing = self.peers.get(peer.remote_key)
        if existing is not None and existing is not peer:
            # Keep the link dialed by the smaller key; both sides decide the same way.
            keep_new = self._dialer_key(peer) < self._dialer_key(existing)
            if not keep_new:
                return DUPLICATE_LINK
            existing.close(REPLACED_LINK)
        self.peers[peer.remote_key] = peer
        return None

    def _dialer_key(self, peer: PeerConnection) -> bytes:
        return self.public_key if peer.initiator else peer.remote_key

    def _release(self, peer: PeerConnection) -> None:
        if self.peers.get(peer.remote_key) is peer:
            del self.peers[peer.remote_key]
        for listener in self.lost_listeners:
            listener()

    async def serve_stream(self, stream: trio.abc.Stream, address: str, *, initiator: bool) -> PeerConnection:
        """Handshake over a fresh byte stream, then run the peer link until it ends."""
        peer = PeerConnection(address, initiator)
        await run_peer(
            peer, stream, identity=self.identity, router_keys=self.keys, suite=self.cipher,
            **self._link_hooks()
        )
        return peer

    async def serve_link(self, link: SecureLink, address: str) -> PeerConnection:
        """Run a link whose handshake happened elsewhere (relayed through the DHT)."""
        peer = PeerConnection(address, link.initiator)
        await run_link(peer, link, **self._link_hooks())
        return peer

    def _link_hooks(self) -> dict:
        return {
            "my_hello": self.hello, "hooks": self.hooks, "admit": self._admit,
            "release": self._release, "on_hello": self._note_offered_relay,
        }

    def offer_relay(self, url: str) -> None:
        """Tell every peer we link with from now on that they may meet others at `url`."""
        self.hello = attrs.evolve(self.hello, relay=url)

    def _note_offered_relay(self, peer: PeerConnection) -> None:
        url = peer.hello.relay if peer.hello is not None else ""
        if not url or url in self.offered_relays or url == self.hello.relay:
            return
        if not url.startswith(("ws://", "wss://")) or len(url) > limits.MAX_RELAY_URL_LENGTH:
            log.warning("peer=%s event=offered_relay_ignored reason='not a ws:// or wss:// URL'", peer.name)
            return
        if len(self.offered_relays) >= limits.MAX_OFFERED_RELAYS:
            return
        self.offered_relays.append(url)
        log.info("peer=%s event=relay_offered relay=%s", peer.name, url)
        for listener in self.relay_listeners:
            listener(url)

    def is_connected_to(self, noise_public_key: bytes) -> bool:
        return noise_public_key in self.peers

    # --- direct mode: listen and dial -----------------------------------------------

    async def _listen(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        try:
            listeners = await trio.open_tcp_listeners(self.peer_port, host=self.peer_host)
        except OSError as exc:
            raise ConfigError(
                f"--peerPort {self.peer_port}: cannot listen on {self.peer_host}: {exc.strerror or exc}"
            ) from None
        self.listening_port = listeners[0].socket.getsockname()[1]
        log.info("event=peer_listening host=%s port=%d", self.peer_host, self.listening_port)
        task_status.started(self.listening_port)
        await trio.serve_listeners(self._accept, listeners)

    async def _accept(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            address = str(PeerAddress(host, port))
        except OSError:
            address = "?"
        if self.resume_link is not None:
            # A client that did its handshake through DHT relays announces the session
            # instead of starting a new handshake.
            stream, link = await self.resume_link(stream, address)
            if link is not None:
                await self.serve_link(link, address)
                return
            if stream is None:
                return
        await self.serve_stream(stream, address, initiator=False)

    async def _dial_forever(self, address: PeerAddress) -> None:
        """Keep a link to `address` up: reconnect with backoff whenever it drops."""
        delay = limits.DIAL_RETRY_MIN_S
        while True:
            stream = await self._dial(address)
            if stream is None:
                await trio.sleep(delay)
                delay = min(delay * 2, limits.DIAL_RETRY_MAX_S)
                continue
            started = trio.current_time()
            peer = await self.serve_stream(stream, str(address), initiator=True)
            if peer.close_reason == SELF_LINK:
                log.warning("peer=%s event=dial_stopped reason='address is this process'", address)
                return
            if peer.close_reason in (DUPLICATE_LINK, REPLACED_LINK):
                kept = self.peers.get(peer.remote_key)
                if kept is not None:
                    await kept.finished.wait()
                delay = limits.DIAL_RETRY_MIN_S
                continue
            if trio.current_time() - started > limits.DIAL_RETRY_MAX_S:
                delay = limits.DIAL_RETRY_MIN_S  # it was up for a while: retry promptly
            await trio.sleep(delay)
            delay = min(delay * 2, limits.DIAL_RETRY_MAX_S)

    async def _dial(self, address: PeerAddress) -> trio.SocketStream | None:
        try:
            with trio.fail_after(limits.DIAL_TIMEOUT_S):
                stream = await trio.open_tcp_stream(address.host, address.port)
        except (OSError, trio.TooSlowError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            log.info("peer=%s event=dial_failed error=%r", address, reason)
            return None
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return stream
