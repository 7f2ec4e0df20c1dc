"""The DHT node: a thin trio driver around the sans-IO codecs, table, query and store.

One UDP socket carries requests and responses (Node uses two; replies go to the
source address either way). Requests are matched to responses by 16-bit tid, resent
after REQUEST_TIMEOUT_S up to REQUEST_RETRIES times, all timed by trio's clock.

    async with open_dht_node(NodeConfig(bootstrap=[...], ephemeral=False)) as node:
        peers = await node.lookup(topic)
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

from hypergate.dht import crypto, operations
from hypergate.dht.encoding import Address, CodecError
from hypergate.dht.messages import Command, InternalCommand, Request, Response, RpcError, decode_datagram
from hypergate.dht.operations import DHTError, LookupResult, RequestTimeout
from hypergate.dht.query import QueryReply
from hypergate.dht.ratelimit import SourceRateLimiter
from hypergate.dht.relay import Drop, Forward, Respond, relay_handshake, relay_holepunch
from hypergate.dht.routing_table import K, RoutingTable, TableNode
from hypergate.dht.storage import AnnounceStore
from hypergate.limits import (
    DHT_ANNOUNCE_COMMIT_NODES,
    DHT_DOWN_HINT_CHECKS,
    DHT_MAX_DATAGRAM,
    DHT_MAX_DELAYED_PINGS,
    DHT_MAX_INFLIGHT_REQUESTS,
    DHT_MAX_PING_DELAY_S,
    DHT_MAX_SERVING,
    DHT_REFRESH_TICKS,
    DHT_REPING_CONCURRENCY,
    DHT_REQUEST_RETRIES,
    DHT_REQUEST_TIMEOUT_S,
    DHT_TICK_S,
)

log = logging.getLogger(__name__)


@attrs.frozen
class NodeConfig:
    """How to run a node. `ephemeral=False` makes it persistent: it sends its id, joins
    other nodes' tables and stores announces; only do that where other nodes can reach
    `public_address` (or the bound address when that is a specific IP)."""

    bootstrap: tuple[Address, ...] = attrs.field(default=(), converter=tuple)
    host: str = "0.0.0.0"
    port: int = 0
    ephemeral: bool = True
    public_address: Address | None = None
    concurrency: int = 10


# A server on this node gets each PEER_HANDSHAKE / PEER_HOLEPUNCH for its key with the
# address it came from, and answers with `DHTNode.reply` (FROM_CLIENT: a direct REPLY) or
# `DHTNode.send_request_once` (FROM_RELAY: a FROM_SERVER request back through the relay).
PeerHandler = Callable[[Request, Address], Awaitable[None]]


@attrs.define
class _Pending:
    to: Address
    done: trio.Event = attrs.Factory(trio.Event)
    response: Response | None = None
    source: Address | None = None


class DHTNode:
    def __init__(self, config: NodeConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.SystemRandom()
        self.table = RoutingTable(os.urandom(32))
        self.store = AnnounceStore(self._rng)
        self.id: bytes | None = None  # set when persistent
        self.stats: Counter[str] = Counter()
        self.bootstrapped = trio.Event()
        self._socket: trio.socket.SocketType | None = None
        self._local: Address | None = None
        self._tid = self._rng.randrange(65536)
        self._pending: dict[int, _Pending] = {}
        self._tokens: crypto.TokenSecrets | None = None
        self._limiter = SourceRateLimiter()
        self._nat_samples: Counter[str] = Counter()
        self._tick = 0
        self._refresh_ticks = DHT_REFRESH_TICKS
        self._nursery: trio.Nursery | None = None
        self._repinging = 0
        self._checks = 0
        self._delayed_pings = 0
        self._serving = 0
        self._servers: dict[bytes, tuple[PeerHandler | None, PeerHandler | None]] = {}

    # --- lifecycle -------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """The bound local address."""
        if self._local is None:
            raise DHTError("node is not running")
        return self._local

    @property
    def persistent(self) -> bool:
        return self.id is not None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bind, start serving, bootstrap; `started()` once bootstrapped."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind((self.config.host, self.config.port))
            host, port = sock.getsockname()
            self._socket = sock
            self._local = Address(host, port)
            self._tokens = crypto.TokenSecrets(trio.current_time())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive_loop)
                await self._bootstrap()
                nursery.start_soon(self._maintenance_loop)
                task_status.started(self)
        self._socket = None

    async def _bootstrap(self) -> None:
        if not self.config.ephemeral:
            public = self.config.public_address
            if public is None and self.config.host not in ("0.0.0.0", ""):
                public = self._local
            if public is not None:
                self._become_persistent(public)
        target = self.id or self.table.id
        await operations.run_query(self, target, InternalCommand.FIND_NODE, internal=True, background=True)
        if not self.config.ephemeral and self.id is None and self._nat_samples:
            host, _ = self._nat_samples.most_common(1)[0]
            self._become_persistent(Address(host, self.address.port))
            await operations.run_query(self, self.id, InternalCommand.FIND_NODE, internal=True, background=True)
        self.bootstrapped.set()
        log.info("dht bootstrapped local=%s id=%s nodes=%d", self._local, self.id and self.id.hex()[:16], len(self.table))

    def _become_persistent(self, public: Address) -> None:
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

    def _next_tid(self) -> int:
        for _ in range(65536):
            self._tid = (self._tid + 1) & 0xFFFF
            if self._tid not in self._pending:
                return self._tid
        raise DHTError("no free transaction id")

    async def _send(self, data: bytes, to: Address) -> None:
        try:
            await self._socket.sendto(data, (to.host, to.port))
        except OSError as exc:
            # ICMP errors and unroutable peers surface as timeouts of the request.
            self.stats["send_errors"] += 1
            log.debug("dht send failed to=%s error=%s", to, exc)

    async def request(
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
    ) -> tuple[Response, Address]:
        """Send one request, resending on silence; returns (response, its source)."""
        if len(self._pending) >= DHT_MAX_INFLIGHT_REQUESTS:
            raise DHTError("too many requests in flight")
        tid = self._next_tid()
        data = Request(tid, to, command, internal, self.id, token, target, value).encode()
        pending = self._pending[tid] = _Pending(to)
        try:
            for attempt in range(retries + 1):
                if attempt == 1 and on_retry is not None:
                    on_retry()
                await self._send(data, to)
                with trio.move_on_after(timeout_s):
                    await pending.done.wait()
                if pending.response is not None:
                    return pending.response, pending.source
            self.stats["request_timeouts"] += 1
            raise RequestTimeout(f"no answer from {to} to command {command}")
        finally:
            del self._pending[tid]

    async def ping(self, to: Address) -> Response:
        response, _ = await self.request(to, InternalCommand.PING, internal=True)
        return response

    async def _receive_loop(self) -> None:
        while True:
            try:
                data, (host, port) = await self._socket.recvfrom(DHT_MAX_DATAGRAM + 1)
            except OSError as exc:
                # e.g. an ICMP error queued on the socket: about one peer, not about us.
                self.stats["receive_errors"] += 1
                log.debug("dht receive error=%s", exc)
                continue
            self.stats["datagrams_in"] += 1
            if len(data) > DHT_MAX_DATAGRAM:
                self.stats["dropped_oversized"] += 1
                continue
            if len(data) < 2 or port == 0:
                self.stats["dropped_malformed"] += 1
                continue
            source = Address(host, port)
            if not self._limiter.allow(host, trio.current_time()):
                self.stats["dropped_rate_limited"] += 1
                continue
            try:
                message = decode_datagram(data)
            except CodecError:
                self.stats["dropped_malformed"] += 1
                continue
            if isinstance(message, Response):
                self._on_response(message, source)
            else:
                self._on_request(message, source)

    def valid_id(self, claimed: bytes | None, source: Address) -> bytes | None:
        if claimed is None:
            return None
        return claimed if crypto.node_id(source) == claimed else None

    def _on_response(self, response: Response, source: Address) -> None:
        pending = self._pending.get(response.tid)
        if pending is None or pending.response is not None:
            self.stats["dropped_unmatched"] += 1
            return
        pending.response = response
        pending.source = source
        pending.done.set()
        self._add_node_from_network(source, self.valid_id(response.id, source), response.to)

    # --- routing table upkeep --------------------------------------------------------

    def _add_node_from_network(self, source: Address, node_id: bytes | None, seen_as: Address) -> None:
        if node_id is None:
            # Id-less responders (bootstrap nodes while young) still tell us our address.
            if len(self._nat_samples) < 16:
                self._nat_samples[seen_as.host] += 1
            return
        if node_id == self.table.id:
            return
        node = self.table.get(node_id)
        if node is not None:
            self.table.mark_seen(node, self._tick)
            return
        node = TableNode(node_id, source, added=self._tick, pinged=self._tick, seen=self._tick, to=seen_as)
        if self._nat_samples.total() < 64:
            self._nat_samples[seen_as.host] += 1
        if self.table.add(node):
            return
        candidate = self.table.full_row_candidate(node_id, self._tick)
        if candidate is not None and self.bootstrapped.is_set() and self._repinging < DHT_REPING_CONCURRENCY:
            self._repinging += 1
            self._nursery.start_soon(self._reping_and_swap, node, candidate)

    async def _still_there(self, node: TableNode) -> bool:
        """PING a table node: alive only if it answers with the id we know it by.

        (dht-rpc compares tick counters instead, which swaps out a node that answers
        within the tick it was last seen; the id check says the same without that race.)
        """
        node.pinged = self._tick
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

    async def _check(self, node: TableNode) -> None:
        """Drop a node that stays silent (dht-rpc _check)."""
        self._checks += 1
        try:
            if not await self._still_there(node):
                self.table.remove(node.id)
        finally:
            self._checks -= 1

    async def _maintenance_loop(self) -> None:
        while True:
            await trio.sleep(DHT_TICK_S)
            self._tick += 1
            now = trio.current_time()
            self.store.expire(now)
            self._tokens.advance(now)
            if self._tick % 8 == 0:
                count = 3 if len(self._pending) > 2 else 5
                for node in self.table.least_recently_seen(count):
                    if node.pinged != self._tick:
                        self._nursery.start_soon(self._check, node)
            self._refresh_ticks -= 1
            if self._refresh_ticks <= 0 or (self._tick % 64 == 0 and len(self.table) < K):
                self._nursery.start_soon(self.refresh)

    # --- serving requests ------------------------------------------------------------

    async def _respond(
        self,
        request: Request,
        to: Address,
        *,
        error: int = 0,
        value: bytes | None = None,
        token: bool = False,
        closer_nodes: bool = False,
        seen_as: Address | None = None,
    ) -> None:
        closer = ()
        if closer_nodes and request.target is not None:
            closer = tuple(n.address for n in self.table.closest(request.target))
        response = Response(
            tid=request.tid,
            to=seen_as or to,
            id=self.id,
            token=self._tokens.token(to.host) if token else None,
            closer_nodes=closer,
            error=error,
            value=value,
        )
        await self._send(response.encode(), to)

    def _on_request(self, request: Request, source: Address) -> None:
        if self._serving >= DHT_MAX_SERVING:
            self.stats["dropped_busy"] += 1
            return
        self._tokens.advance(trio.current_time())
        token_ok = request.token is None or self._tokens.is_valid(source.host, request.token)
        if token_ok:
            self._add_node_from_network(source, self.valid_id(request.id, source), request.to)
        self.stats[f"requests_in_{'internal' if request.internal else 'external'}"] += 1
        # Counted before the task starts, so a burst of datagrams cannot overshoot the bound.
        self._serving += 1
        self._nursery.start_soon(self._serve, request, source, token_ok)

    async def _serve(self, request: Request, source: Address, token_ok: bool) -> None:
        try:
            if not token_ok:
                # Any token is checked before dispatch, as in dht-rpc: never send one unasked.
                self.stats["invalid_tokens"] += 1
                await self._respond(request, source, error=RpcError.INVALID_TOKEN, token=True, closer_nodes=True)
            elif request.internal:
                await self._serve_internal(request, source)
            else:
                await self._serve_external(request, source)
        finally:
            self._serving -= 1

    async def _serve_internal(self, request: Request, source: Address) -> None:
        command = request.command
        if command == InternalCommand.PING:
            await self._respond(request, source)
        elif command == InternalCommand.PING_NAT:
            if request.value is None or len(request.value) < 2:
                return
            port = int.from_bytes(request.value[:2], "little")
            if port == 0:
                return
            await self._respond(request, Address(source.host, port))
        elif command == InternalCommand.FIND_NODE:
            if request.target is not None:
                await self._respond(request, source, closer_nodes=True)
        elif command == InternalCommand.DOWN_HINT:
            if request.value is None or len(request.value) < 6:
                return
            node = self.table.get(crypto.hash32(request.value[:6]))
            if node is not None and self._checks < DHT_DOWN_HINT_CHECKS and (
                node.pinged < self._tick or node.down_hints == 0
            ):
                node.down_hints += 1
                self._nursery.start_soon(self._check, node)
            await self._respond(request, source)
        elif command == InternalCommand.DELAYED_PING:
            if request.value is None or len(request.value) < 4:
                return
            delay_s = int.from_bytes(request.value[:4], "little") / 1000
            if delay_s > DHT_MAX_PING_DELAY_S or self._delayed_pings >= DHT_MAX_DELAYED_PINGS:
                return
            self._delayed_pings += 1
            try:
                await trio.sleep(delay_s)
            finally:
                self._delayed_pings -= 1
            await self._respond(request, source)
        else:
            await self._respond(request, source, error=RpcError.UNKNOWN_COMMAND, closer_nodes=True)

    async def _serve_external(self, request: Request, source: Address) -> None:
        command = request.command
        now = trio.current_time()
        if command in (Command.PEER_HANDSHAKE, Command.PEER_HOLEPUNCH):
            await self._serve_peer_message(request, source, now)
            return
        if not self.persistent or command not in (
            Command.FIND_PEER,
            Command.LOOKUP,
            Command.ANNOUNCE,
            Command.UNANNOUNCE,
        ):
            await self._respond(request, source, error=RpcError.UNKNOWN_COMMAND, closer_nodes=True)
            return
        if request.target is None:
            return
        if command == Command.FIND_PEER:
            await self._respond(
                request, source, value=self.store.find_peer(request.target, now), token=True, closer_nodes=True
            )
        elif command == Command.LOOKUP:
            reply = self.store.lookup(request.target, now)
            await self._respond(
                request, source, value=reply.encode() if reply else None, token=True, closer_nodes=True
            )
        elif request.token is None:
            return  # storing needs a token; Node stays silent too
        elif command == Command.ANNOUNCE:
            now_ms = int(trio.current_time() * 1000)
            if self.store.on_announce(request.target, request.token, self.id, request.value, source, now, now_ms):
                self.stats["announces_stored"] += 1
                await self._respond(request, source)
        elif command == Command.UNANNOUNCE:
            if self.store.on_unannounce(request.target, request.token, self.id, request.value or b""):
                self.stats["unannounces_done"] += 1
                await self._respond(request, source)

    async def _serve_peer_message(self, request: Request, source: Address, now: float) -> None:
        if request.target is None:
            return
        handlers = self._servers.get(request.target)
        if handlers is not None:
            handler = handlers[0] if request.command == Command.PEER_HANDSHAKE else handlers[1]
            if handler is not None:
                await handler(request, source)
            return
        entry = self.store.router_entry(request.target, now)
        relay = entry.relay if entry is not None else None
        decide = relay_handshake if request.command == Command.PEER_HANDSHAKE else relay_holepunch
        action = decide(request.value, source, relay)
        if isinstance(action, Drop):
            self.stats["relay_dropped"] += 1
            log.debug("dht relay drop from=%s reason=%s", source, action.reason)
        elif isinstance(action, Forward):
            self.stats[f"relayed_{Command(request.command).name.lower()}"] += 1
            relayed = Request(request.tid, action.to, request.command, False, self.id, None, request.target, action.value)
            await self._send(relayed.encode(), action.to)
        elif isinstance(action, Respond):
            if action.to is not None:
                self.stats[f"replied_for_{Command(request.command).name.lower()}"] += 1
            to = action.to or source
            await self._respond(request, to, value=action.value, closer_nodes=action.closer_nodes)

    # --- servers on this node (used by the connection layer) ---------------------------

    def add_server(
        self, key_pair: crypto.KeyPair, on_handshake: PeerHandler | None, on_holepunch: PeerHandler | None
    ) -> bytes:
        """Route PEER_HANDSHAKE/HOLEPUNCH for H32(public key) to these handlers; returns the target."""
        target = self.store.add_local_server(key_pair.public_key)
        self._servers[target] = (on_handshake, on_holepunch)
        return target

    def remove_server(self, key_pair: crypto.KeyPair) -> None:
        self.store.remove_local_server(key_pair.public_key)
        self._servers.pop(crypto.hash32(key_pair.public_key), None)

    async def reply(self, request: Request, to: Address, value: bytes | None) -> None:
        """Answer a request handed to a server handler (no token, no closer nodes)."""
        await self._respond(request, to, value=value)

    async def send_request_once(self, request: Request, to: Address) -> None:
        """Send a request datagram without waiting (relay-style, e.g. FROM_SERVER)."""
        await self._send(attrs.evolve(request, to=to, id=self.id, token=None).encode(), to)

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
        key)` those nodes keep a router entry and relay handshakes to this node's socket
        (re-announce within 20 minutes and keep the mapping alive; see announcer.py).
        """
        return await operations.commit_announce(
            self, topic, key_pair, list(relay_addresses), Command.ANNOUNCE, commit_nodes
        )

    async def unannounce(self, topic: bytes, key_pair: crypto.KeyPair, *, commit_nodes: int = K) -> list[QueryReply]:
        return await operations.commit_announce(self, topic, key_pair, [], Command.UNANNOUNCE, commit_nodes)

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


__all__ = ["DHTError", "DHTNode", "LookupResult", "NodeConfig", "RequestTimeout", "open_dht_node"]
