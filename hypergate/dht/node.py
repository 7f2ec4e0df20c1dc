"""The DHT node: a thin trio driver around the sans-IO codecs, table, query and store.

Two UDP sockets, as dht-rpc: while the node may be behind a firewall it sends from
the client socket and keeps the server socket silent, so a PING_NAT answer that reaches
the server socket proves unsolicited packets get in (operations.check_firewalled).
Replies leave from the socket the request came in on. Requests are matched to responses
by 16-bit tid, resent after DHT_REQUEST_TIMEOUT_S up to DHT_REQUEST_RETRIES times, all
timed by trio's clock.

    async with open_dht_node(NodeConfig(bootstrap=(Address("127.0.0.1", 49737),))) as node:
        results = await node.lookup(topic)
        await node.announce(topic, key_pair)
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from hypergate.dht import crypto, operations, serving
from hypergate.dht.serving import Incoming, PeerHandler, PeerMessage, PeerReply
from hypergate.dht.bootstrap import BootstrapNode, as_bootstrap_node, resolve_bootstrap
from hypergate.dht.encoding import Address, CodecError
from hypergate.dht.messages import Command, InternalCommand, Request, Response, decode_datagram
from hypergate.dht.nat import NatSampler
from hypergate.dht.operations import DHTError, LookupResult, RequestTimeout
from hypergate.dht.query import QueryReply
from hypergate.dht.ratelimit import CongestionWindow, SourceRateLimiter
from hypergate.dht.routing_table import K, OLD_NODE_TICKS, RoutingTable, TableNode
from hypergate.dht.storage import AnnounceStore
from hypergate.errors import ProtocolError
from hypergate.limits import (
    DHT_ANNOUNCE_COMMIT_NODES,
    DHT_CONGESTION_ROTATE_S,
    DHT_MAX_DATAGRAM,
    DHT_MAX_INFLIGHT_REQUESTS,
    DHT_MAX_SERVING,
    DHT_REFRESH_TICKS,
    DHT_REPING_CONCURRENCY,
    DHT_REQUEST_RETRIES,
    DHT_REQUEST_TIMEOUT_S,
    DHT_STABLE_TICKS,
    DHT_TICK_S,
)

log = logging.getLogger(__name__)


@attrs.frozen
class NodeConfig:
    """How to run a node.

    ephemeral: True (default) never stores records nor joins tables: right for peers
    that only announce and look up. None is hyperdht's adaptive mode: persistent once
    reachable and stable for ~20 min. False is persistent at once (a bootstrap node or
    a test network): other nodes must reach it at `public_address`, or at the bound
    address when that is a specific IP, or at the address the network reports.
    firewalled=False skips the reachability check (a host known to be public).
    bootstrap takes Address, BootstrapNode or "[suggestedIP@]host:port" strings
    (bootstrap.PUBLIC_BOOTSTRAP is the public network).
    """

    bootstrap: tuple[BootstrapNode, ...] = attrs.field(
        default=(), converter=lambda nodes: tuple(as_bootstrap_node(n) for n in nodes)
    )
    host: str = "0.0.0.0"
    port: int = 0
    ephemeral: bool | None = True
    firewalled: bool = True
    public_address: Address | None = None
    concurrency: int = 10


@attrs.define
class _Pending:
    to: Address
    done: trio.Event = attrs.Factory(trio.Event)
    response: Response | None = None
    source: Address | None = None
    socket: trio.socket.SocketType | None = None


class DHTNode:
    def __init__(self, config: NodeConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.SystemRandom()
        self.table = RoutingTable(os.urandom(32))
        self.store = AnnounceStore(self._rng)
        self.id: bytes | None = None  # set when persistent
        self.firewalled = config.firewalled
        self.bootstrap_addresses: list[Address] = []  # resolved when the node starts
        self.nat = NatSampler()
        self.stats: Counter[str] = Counter()
        self.bootstrapped = trio.Event()
        self.tokens: crypto.TokenSecrets | None = None
        self.tick = 0
        self.checks = 0
        self.delayed_pings = 0
        self.down_hints_sent = 0  # this tick; operations.py keeps it under its limit
        self.servers: dict[bytes, tuple[PeerHandler | None, PeerHandler | None]] = {}
        self._address: Address | None = None
        self._server_socket: trio.socket.SocketType | None = None
        self._client_socket: trio.socket.SocketType | None = None
        self._tid = self._rng.randrange(65536)
        self._pending: dict[int, _Pending] = {}
        self._limiter = SourceRateLimiter()
        self._congestion = CongestionWindow()
        self._window_rotated = trio.Event()
        self._id_less_samples: list[Address] = []
        self._stable_ticks = DHT_STABLE_TICKS
        self.refresh_ticks = DHT_REFRESH_TICKS
        self._nursery: trio.Nursery | None = None
        self._repinging = 0
        self._serving = 0

    # --- lifecycle -------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """The server socket's bound address (what other nodes should reach)."""
        if self._address is None:
            raise DHTError("node is not running")
        return self._address

    @property
    def persistent(self) -> bool:
        return self.id is not None

    def remote_address(self) -> Address | None:
        """Our public address if the network agrees on it and it reaches the server socket."""
        if self.firewalled or self.nat.host is None or self.nat.port != self.address.port:
            return None
        return Address(self.nat.host, self.nat.port)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bind, start serving, bootstrap; `started()` once bootstrapped."""
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server_socket, trio.socket.socket(
            socket.AF_INET, socket.SOCK_DGRAM
        ) as client_socket:
            await server_socket.bind((self.config.host, self.config.port))
            await client_socket.bind((self.config.host, 0))
            self._server_socket, self._client_socket = server_socket, client_socket
            self._address = Address(*server_socket.getsockname())
            self.tokens = crypto.TokenSecrets(trio.current_time())
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._receive_loop, server_socket)
                    nursery.start_soon(self._receive_loop, client_socket)
                    nursery.start_soon(self._rotate_congestion_window)
                    await self._bootstrap()
                    nursery.start_soon(self._maintenance_loop)
                    task_status.started(self)
            finally:
                self._server_socket = self._client_socket = None

    async def _bootstrap(self) -> None:
        self.bootstrap_addresses = await resolve_bootstrap(self.config.bootstrap, self.ping)
        if self.config.ephemeral is False:
            public = self.config.public_address
            if public is None and self.config.host not in ("0.0.0.0", ""):
                public = self.address
            if public is not None:
                self.firewalled = False
                self._become_persistent(public)
        await operations.run_query(self, self.id or self.table.id, InternalCommand.FIND_NODE, internal=True, background=True)
        if self.firewalled:
            await self._update_network_state(may_persist=False)
        if self.config.ephemeral is False and self.id is None:
            if self.nat.host is not None:
                self.firewalled = False
                self._become_persistent(Address(self.nat.host, self.address.port))
                await operations.run_query(self, self.id, InternalCommand.FIND_NODE, internal=True, background=True)
            else:
                log.warning("dht cannot become persistent: no address reported by the network")
        self.bootstrapped.set()
        log.info(
            "dht bootstrapped local=%s firewalled=%s public=%s id=%s nodes=%d",
            self.address,
            self.firewalled,
            self.remote_address(),
            self.id.hex()[:16] if self.id else None,
            len(self.table),
        )

    async def _update_network_state(self, may_persist: bool) -> None:
        """Firewall check; in adaptive mode, become persistent once reachable."""
        if self.firewalled:
            reachable = await operations.check_reachable(self)
            if reachable is not None:
                self.firewalled = False
                self.nat = reachable
        public = self.remote_address()
        if may_persist and self.id is None and public is not None:
            self._become_persistent(public)
            self.spawn(self.refresh)

    def _become_persistent(self, public: Address) -> None:
        if self.nat.host is None:
            self.nat.add(public.host, public.port)  # as dht-rpc's bootstrapper pre-seeds it
        self.id = crypto.node_id(public)
        old = list(self.table)
        self.table = RoutingTable(self.id)
        for node in old:
            self.table.add(node)
        log.info("dht persistent public=%s id=%s", public, self.id.hex()[:16])

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run a background task in the node's nursery (it ends with the node)."""
        self._nursery.start_soon(fn)

    # --- request/response io ---------------------------------------------------------

    @property
    def request_socket(self) -> trio.socket.SocketType:
        # While possibly firewalled the server socket stays silent (see module docstring).
        return self._client_socket if self.firewalled else self._server_socket

    def _next_tid(self) -> int:
        for _ in range(65536):
            self._tid = (self._tid + 1) & 0xFFFF
            if self._tid not in self._pending:
                return self._tid
        raise DHTError("no free transaction id")

    async def send(self, data: bytes, to: Address, sock: trio.socket.SocketType | None = None) -> None:
        sock = sock or self.request_socket
        if sock is None:  # shut down: a shielded unannounce may outlive our sockets
            raise DHTError("the DHT node is not running")
        try:
            await sock.sendto(data, (to.host, to.port))
        except OSError as exc:
            # ICMP errors and unroutable peers surface as timeouts of the request.
            self.stats["send_errors"] += 1
            log.debug("dht send failed to=%s error=%s", to, exc)

    async def request(self, to: Address, command: int, **options) -> tuple[Response, Address]:
        """Send one request, resending on silence; returns (response, its source).

        Options as `transact`: internal, target, value, token, retries, timeout_s,
        on_retry, and sock to send from another socket (e.g. a hole-punch socket, whose
        reader must pass DHT datagrams to `handle_datagram` so the answer is matched).
        """
        pending = await self.transact(to, command, **options)
        return pending.response, pending.source

    async def transact(
        self,
        to: Address,
        command: int,
        *,
        internal: bool = False,
        target: bytes | None = None,
        value: bytes | None = None,
        token: bytes | None = None,
        retries: int = DHT_REQUEST_RETRIES,
        timeout_s: float = DHT_REQUEST_TIMEOUT_S,
        on_retry: Callable[[], None] | None = None,
        sock: trio.socket.SocketType | None = None,
    ) -> _Pending:
        """`request`, returning the whole exchange, including the socket the answer reached."""
        if len(self._pending) >= DHT_MAX_INFLIGHT_REQUESTS:
            raise DHTError("too many requests in flight")
        sock = sock or self.request_socket
        node_id = self.id if sock is self._server_socket else None
        tid = self._next_tid()
        data = Request(tid, to, command, internal, node_id, token, target, value).encode()
        pending = self._pending[tid] = _Pending(to)
        sends = 0
        try:
            for attempt in range(retries + 1):
                if attempt == 1 and on_retry is not None:
                    on_retry()
                while self._congestion.is_full():
                    self.stats["congestion_waits"] += 1
                    await self._window_rotated.wait()
                self._congestion.sent()
                sends += 1
                await self.send(data, to, sock)
                with trio.move_on_after(timeout_s):
                    await pending.done.wait()
                if pending.response is not None:
                    return pending
            self.stats["request_timeouts"] += 1
            raise RequestTimeout(f"no answer from {to} to command {command}")
        finally:
            del self._pending[tid]
            if sends:
                self._congestion.settled()

    def is_server_socket(self, sock: trio.socket.SocketType | None) -> bool:
        return sock is not None and sock is self._server_socket

    async def ping(self, to: Address) -> Response:
        response, _ = await self.request(to, InternalCommand.PING, internal=True)
        return response

    async def _rotate_congestion_window(self) -> None:
        while True:
            await trio.sleep(DHT_CONGESTION_ROTATE_S)
            self._congestion.rotate()
            self._window_rotated.set()
            self._window_rotated = trio.Event()

    async def _receive_loop(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, (host, port) = await sock.recvfrom(DHT_MAX_DATAGRAM + 1)
            except OSError as exc:
                # e.g. an ICMP error queued on the socket: about one peer, not about us.
                self.stats["receive_errors"] += 1
                log.debug("dht receive error=%s", exc)
                continue
            self.handle_datagram(data, Address(host, port), sock)

    def handle_datagram(self, data: bytes, source: Address, sock: trio.socket.SocketType) -> None:
        """Process one datagram that arrived on `sock` (ours, or a hole-punch socket
        sharing DHT traffic as hyperdht's socket pool does). Never raises."""
        self.stats["datagrams_in"] += 1
        if len(data) > DHT_MAX_DATAGRAM:
            self.stats["dropped_oversized"] += 1
            return
        if len(data) < 2 or source.port == 0:
            self.stats["dropped_malformed"] += 1
            return
        if not self._limiter.allow(source.host, trio.current_time()):
            self.stats["dropped_rate_limited"] += 1
            return
        try:
            message = decode_datagram(data)
        except CodecError:
            self.stats["dropped_malformed"] += 1
            return
        if isinstance(message, Response):
            self._on_response(message, source, sock)
        else:
            self._on_request(Incoming(message, source, sock))

    def valid_id(self, claimed: bytes | None, source: Address) -> bytes | None:
        if claimed is None:
            return None
        return claimed if crypto.node_id(source) == claimed else None

    def _on_response(self, response: Response, source: Address, sock: trio.socket.SocketType) -> None:
        pending = self._pending.get(response.tid)
        if pending is None or pending.response is not None:
            self.stats["dropped_unmatched"] += 1
            return
        pending.response, pending.source, pending.socket = response, source, sock
        pending.done.set()
        # Only the socket we send from tells how we are seen (dht-rpc "external" rule).
        sample = sock is self.request_socket
        self._add_node_from_network(source, self.valid_id(response.id, source), response.to, sample)

    def _on_request(self, incoming: Incoming) -> None:
        if self._serving >= DHT_MAX_SERVING:
            self.stats["dropped_busy"] += 1
            return
        request, source = incoming.request, incoming.source
        self.tokens.advance(trio.current_time())
        token_ok = request.token is None or self.tokens.is_valid(source.host, request.token)
        if token_ok:
            sample = incoming.socket is self.request_socket
            self._add_node_from_network(source, self.valid_id(request.id, source), request.to, sample)
        self.stats[f"requests_in_{'internal' if request.internal else 'external'}"] += 1
        # Counted before the task starts, so a burst of datagrams cannot overshoot the bound.
        self._serving += 1
        self._nursery.start_soon(self._serve, incoming, token_ok)

    async def _serve(self, incoming: Incoming, token_ok: bool) -> None:
        try:
            await serving.serve(self, incoming, token_ok)
        except ProtocolError as exc:
            # A malformed value a server handler could not parse: that request is
            # dropped, the node goes on. (Other exceptions are bugs and propagate.)
            self.stats["dropped_by_handler"] += 1
            log.debug("dht request dropped from=%s error=%s", incoming.source, exc)
        finally:
            self._serving -= 1

    async def reply(
        self,
        incoming: Incoming,
        *,
        value: bytes | None = None,
        error: int = 0,
        token: bool = False,
        closer_nodes: bool = False,
        to: Address | None = None,
        sock: trio.socket.SocketType | None = None,
    ) -> None:
        """Answer a request from the socket it arrived on (or `sock`), to its source unless `to`."""
        to = to or incoming.source
        sock = sock or incoming.socket
        request = incoming.request
        closer = ()
        if closer_nodes and request.target is not None:
            closer = tuple(n.address for n in self.table.closest(request.target))
        response = Response(
            tid=request.tid,
            to=to,
            id=self.id if self.is_server_socket(sock) else None,
            token=self.tokens.token(to.host) if token else None,
            closer_nodes=closer,
            error=error,
            value=value,
        )
        await self.send(response.encode(), to, sock)

    async def relay(
        self, incoming: Incoming, to: Address, value: bytes, sock: trio.socket.SocketType | None = None
    ) -> None:
        """Pass a request on to `to` with a new value: same tid, command and target, no token."""
        request = incoming.request
        sock = sock or incoming.socket
        node_id = self.id if self.is_server_socket(sock) else None
        relayed = Request(request.tid, to, request.command, request.internal, node_id, None, request.target, value)
        await self.send(relayed.encode(), to, sock)

    # --- routing table upkeep --------------------------------------------------------

    def _add_node_from_network(self, source: Address, node_id: bytes | None, seen_as: Address, sample: bool) -> None:
        if node_id is None:
            # Id-less responders (young or bootstrap nodes) may still tell us our address,
            # but only as many as we have bootstrap nodes, so strangers cannot steer it.
            if sample and len(self._id_less_samples) < max(1, len(self.config.bootstrap)):
                if source not in self._id_less_samples:
                    self._id_less_samples.append(source)
                    self.nat.add(seen_as.host, seen_as.port)
            return
        if node_id == self.table.id:
            return
        node = self.table.get(node_id)
        if node is not None:
            if sample and (node.sampled == 0 or self.tick - node.sampled >= OLD_NODE_TICKS):
                node.to, node.sampled = seen_as, self.tick
                self.nat.add(seen_as.host, seen_as.port)
            self.table.mark_seen(node, self.tick)
            return
        node = TableNode(node_id, source, added=self.tick, pinged=self.tick, seen=self.tick, to=seen_as)
        if self.table.add(node):
            if sample:
                node.sampled = self.tick
                self.nat.add(seen_as.host, seen_as.port)
            return
        candidate = self.table.full_row_candidate(node_id, self.tick)
        if candidate is not None and self.bootstrapped.is_set() and self._repinging < DHT_REPING_CONCURRENCY:
            self._repinging += 1
            self._nursery.start_soon(self._reping_and_swap, node, candidate)

    async def _still_there(self, node: TableNode) -> bool:
        """PING a table node: alive only if it answers with the id we know it by.

        (dht-rpc compares tick counters instead, which swaps out a node that answers
        within the tick it was last seen; the id check says the same without that race.)
        """
        node.pinged = self.tick
        try:
            response, source = await self.request(node.address, InternalCommand.PING, internal=True)
        except DHTError:
            return False
        return self.valid_id(response.id, source) == node.id

    async def _reping_and_swap(self, newcomer: TableNode, old: TableNode) -> None:
        try:
            alive = await self._still_there(old)
        finally:
            self._repinging -= 1
        if not alive:
            self.table.remove(old.id)
            self.table.add(newcomer)

    async def check(self, node: TableNode) -> None:
        """Drop a node that stays silent (dht-rpc _check)."""
        self.checks += 1
        try:
            if not await self._still_there(node):
                self.table.remove(node.id)
        finally:
            self.checks -= 1

    async def _maintenance_loop(self) -> None:
        while True:
            await trio.sleep(DHT_TICK_S)
            self.tick += 1
            self.down_hints_sent = 0
            now = trio.current_time()
            self.store.expire(now)
            self.tokens.advance(now)
            if self.config.ephemeral is None and self.id is None:
                self._stable_ticks -= 1
                if self._stable_ticks <= 0:
                    # Checked again only after a longer wait if this one fails (dht-rpc).
                    self._stable_ticks = 3 * DHT_STABLE_TICKS
                    self.spawn(lambda: self._update_network_state(may_persist=True))
            if self.tick % 8 == 0:
                count = 3 if len(self._pending) > 2 else 5
                for node in self.table.least_recently_seen(count):
                    if node.pinged != self.tick:
                        self._nursery.start_soon(self.check, node)
            self.refresh_ticks -= 1
            if self.refresh_ticks <= 0 or (self.tick % 64 == 0 and len(self.table) < K):
                self._nursery.start_soon(self.refresh)

    # --- servers on this node (used by the connection layer) ---------------------------

    def add_server(
        self, key_pair: crypto.KeyPair, on_handshake: PeerHandler | None, on_holepunch: PeerHandler | None
    ) -> bytes:
        """Route PEER_HANDSHAKE/HOLEPUNCH for H32(public key) to these handlers; returns the target."""
        target = self.store.add_local_server(key_pair.public_key)
        self.servers[target] = (on_handshake, on_holepunch)
        return target

    def remove_server(self, key_pair: crypto.KeyPair) -> None:
        self.store.remove_local_server(key_pair.public_key)
        self.servers.pop(crypto.hash32(key_pair.public_key), None)

    # --- iterative queries (hypergate/dht/operations.py) ------------------------------

    async def find_node(self, target: bytes) -> list[QueryReply]:
        """The k closest nodes to `target` that answered with a valid id."""
        return await operations.run_query(self, target, InternalCommand.FIND_NODE, internal=True)

    async def lookup(self, topic: bytes) -> list[LookupResult]:
        """Every record the nodes closest to `topic` hold (LOOKUP), one entry per node."""
        return await operations.lookup(self, topic)

    async def find_peer(self, public_key: bytes) -> list[LookupResult]:
        """Where a server with this key announced itself (FIND_PEER on H32(key))."""
        return await operations.find_peer(self, public_key)

    async def announce(
        self,
        topic: bytes,
        key_pair: crypto.KeyPair,
        relay_addresses: Sequence[Address] = (),
        *,
        commit_nodes: int = DHT_ANNOUNCE_COMMIT_NODES,
    ) -> list[QueryReply]:
        """Store a signed record for `key_pair` under `topic` on the closest nodes.

        Returns the replies of the nodes that accepted it. With `topic == H32(public
        key)` those nodes keep a router entry and relay handshakes to the socket this
        node sends from; announcer.ServerAnnouncer keeps that alive.
        """
        return await operations.commit_announce(
            self, topic, key_pair, list(relay_addresses), Command.ANNOUNCE, commit_nodes
        )

    async def unannounce(self, topic: bytes, key_pair: crypto.KeyPair, *, commit_nodes: int = K) -> list[QueryReply]:
        return await operations.commit_announce(self, topic, key_pair, [], Command.UNANNOUNCE, commit_nodes)

    async def peer_handshake(
        self, public_key: bytes, noise: bytes, relay: Address, **options
    ) -> operations.HandshakeReply:
        """One handshake round trip to the server with `public_key` through `relay`
        (a node from `find_peer`). Options: peer_address, relay_address, sock."""
        return await operations.peer_handshake(self, crypto.hash32(public_key), noise, relay, **options)

    async def peer_holepunch(
        self, public_key: bytes, holepunch_id: int, payload: bytes, relay: Address, **options
    ) -> operations.HolepunchReply:
        """One hole-punch round trip through `relay`. Options: peer_address, sock."""
        return await operations.peer_holepunch(
            self, crypto.hash32(public_key), holepunch_id, payload, relay, **options
        )

    async def refresh(self) -> None:
        node = self.table.random_node(self._rng)
        try:
            await operations.run_query(
                self, node.id if node else self.table.id, InternalCommand.FIND_NODE, internal=True, background=True
            )
        except DHTError as exc:
            log.debug("dht refresh failed error=%s", exc)


@asynccontextmanager
async def open_dht_node(config: NodeConfig) -> AsyncIterator[DHTNode]:
    """Run a bootstrapped node for the duration of the block."""
    node = DHTNode(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()


__all__ = ["DHTError", "DHTNode", "Incoming", "LookupResult", "NodeConfig", "PeerHandler"]
__all__ += ["PeerMessage", "PeerReply", "RequestTimeout", "open_dht_node"]
