"""WebSocket relay: two peers that cannot reach each other meet here and get a byte stream.

The relay is a plain WebSocket server (trio-websocket), so it can sit behind an HTTPS
reverse proxy that terminates TLS; clients dial `ws://` or `wss://host:port/path`.

Protocol (binary messages only):

1. A client's first message is its hello, JSON:
   `{"v": 1, "cap": hex(32 bytes), "pair": hex(16 bytes), "role": "wait" | "join"}`.
   `cap` is `relay_capability(topic)`; `pair` is a random id the two peers agreed on
   elsewhere (e.g. in their DHT handshake). The relay pairs one "wait" and one "join"
   presenting the same (cap, pair); peers of other routers never meet.
2. Whichever arrives first waits: a "wait" up to RELAY_WAIT_TIMEOUT_S, a "join" up to
   RELAY_JOIN_TIMEOUT_S; then it is closed with 4001. A second connection with the same
   role for a (cap, pair) already waiting is refused (1008): first come keeps the slot,
   so a late duplicate cannot push out a peer that is already there.
3. Once paired, the relay sends `{"v": 1, "paired": true}` to both, then forwards every
   binary message verbatim both ways. A client sends nothing before it has "paired".
4. Bytes travel as binary messages of at most RELAY_CHUNK bytes. An empty message is EOF
   (`send_eof`): WebSocket has no half-close of its own. A normal close (1000) reads as
   EOF on the other side; any other close code reads as a broken stream naming the code.

Close codes: 1000 peer closed; 1003 text message; 1008 bad hello, duplicate role, data
before "paired"; 1009 message too big; 1013 relay full or too many peers waiting on one
capability; 4001 no peer in time; 4002 pair idle; 4003 the other peer is gone or broke
the protocol.

What the relay sees: (cap, pair), message sizes and timing. The payload is the peers'
Noise traffic (the link handshake runs over this stream), so the relay can neither read
nor forge it. The capability keeps unrelated peers apart; it is not authentication (the
topic is public), and the relay never learns the topic itself.

Bounds: pairs (waiting or active) <= max_pairs; connections <= 2 * max_pairs plus a small
slack for hellos in progress; waiting connections per capability; message size; an idle
timeout per pair. Forwarding keeps trio-websocket's one-message queue and awaits every
send, so a slow reader slows its peer's sender instead of growing a queue: a pair holds
at most a few messages of RELAY_CHUNK bytes per direction.
"""
from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Callable
from typing import NoReturn
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from .. import limits
from .relay_client import (
    CAPABILITY_BYTES,
    CLOSE_IDLE,
    CLOSE_NO_PEER,
    CLOSE_NORMAL,
    CLOSE_PEER_GONE,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_LATER,
    CLOSE_UNSUPPORTED,
    MAX_CLOSE_REASON,
    PAIR_ID_BYTES,
    PAIRED,
    RECEIVE_SIZE,
    ROLES,
    RelayError,
    RelayStream,
    decode_hello,
    encode_hello,
    open_relay_stream,
    relay_capability,
)

__all__ = [
    "CAPABILITY_BYTES", "CLOSE_IDLE", "CLOSE_NO_PEER", "CLOSE_NORMAL", "CLOSE_PEER_GONE",
    "CLOSE_POLICY", "CLOSE_TOO_BIG", "CLOSE_TRY_LATER", "CLOSE_UNSUPPORTED", "PAIR_ID_BYTES",
    "ROLES", "RelayError", "RelayServer", "RelayStream", "decode_hello", "encode_hello",
    "open_relay_stream", "relay_capability", "run_relay_command", "serve_relay",
]

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class _Pair:
    ends: tuple[WebSocketConnection, WebSocketConnection]
    tag: str
    idle_timeout: float
    scopes: list[trio.CancelScope] = attrs.field(factory=list)
    ended: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)

    def other(self, ws: WebSocketConnection) -> WebSocketConnection:
        return self.ends[1] if ws is self.ends[0] else self.ends[0]

    def touch(self) -> None:
        """Traffic either way keeps both directions alive."""
        deadline = trio.current_time() + self.idle_timeout
        for scope in self.scopes:
            scope.deadline = deadline


@attrs.define(eq=False)
class _Waiter:
    role: str
    ws: WebSocketConnection
    scope: trio.CancelScope
    pair: _Pair | None = None


async def _close(ws: WebSocketConnection, code: int, reason: str | None) -> None:
    # aclose waits for the client's answering close frame; a client that never answers
    # costs at most this long before its socket is closed under it.
    with trio.move_on_after(limits.RELAY_CLOSE_TIMEOUT_S):
        await ws.aclose(code, reason[:MAX_CLOSE_REASON] if reason else None)


def _remote(ws_or_request: WebSocketConnection | WebSocketRequest) -> str:
    remote = ws_or_request.remote
    return f"{remote.address}:{remote.port}" if hasattr(remote, "port") else str(remote)


@attrs.define(eq=False)
class RelayServer:
    """Pairs relay clients and splices them. Settings default to `hypergate.limits`."""

    path: str | None = None  # serve only this URL path (None: any path)
    max_pairs: int = limits.MAX_RELAY_PAIRS
    max_waiting_per_capability: int = limits.MAX_RELAY_WAITING_PER_CAPABILITY
    max_message: int = limits.MAX_RELAY_MESSAGE
    join_timeout: float = limits.RELAY_JOIN_TIMEOUT_S
    wait_timeout: float = limits.RELAY_WAIT_TIMEOUT_S
    idle_timeout: float = limits.RELAY_IDLE_TIMEOUT_S
    hello_timeout: float = limits.RELAY_HELLO_TIMEOUT_S
    # Called with every forwarded message (tests use it to see what the relay saw).
    on_forward: Callable[[bytes], None] | None = None
    connections: int = attrs.field(default=0, init=False)
    active_pairs: int = attrs.field(default=0, init=False)
    forwarded_messages: int = attrs.field(default=0, init=False)
    forwarded_bytes: int = attrs.field(default=0, init=False)
    _waiting: dict[tuple[bytes, bytes], _Waiter] = attrs.field(factory=dict, init=False)
    _waiting_per_cap: dict[bytes, int] = attrs.field(factory=dict, init=False)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def max_connections(self) -> int:
        return 2 * self.max_pairs + limits.RELAY_HELLO_SLACK

    async def serve(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Listen until cancelled; reports the bound port through `task_status`."""
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(
                    serve_websocket,
                    self._handle,
                    host,
                    port,
                    ssl_context,
                    message_queue_size=1,  # with awaited sends: backpressure, no queue
                    max_message_size=self.max_message,
                    receive_buffer_size=RECEIVE_SIZE,
                    connect_timeout=limits.RELAY_CONNECT_TIMEOUT_S,
                    disconnect_timeout=limits.RELAY_CLOSE_TIMEOUT_S,
                )
            )
            bound = server.listeners[0].port
            log.info(
                "event=relay_listening host=%s port=%d tls=%s path=%s max_pairs=%d",
                host, bound, ssl_context is not None, self.path or "*", self.max_pairs,
            )
            task_status.started(bound)
            await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def _handle(self, request: WebSocketRequest) -> None:
        try:
            await self._handle_request(request)
        except Exception:  # a bug here must cost one connection, never the relay
            log.exception("event=relay_handler_failed remote=%s", _remote(request))

    async def _handle_request(self, request: WebSocketRequest) -> None:
        if self.path is not None and urlsplit(request.path).path != self.path:
            log.info("event=relay_refused remote=%s reason=wrong-path", _remote(request))
            await request.reject(404, body=b"no hypergate relay at this path\n")
            return
        if self.connections >= self.max_connections:
            log.warning("event=relay_refused remote=%s reason=full connections=%d", _remote(request), self.connections)
            await request.reject(503, body=b"relay full\n")
            return
        ws = await request.accept()
        self.connections += 1
        try:
            await self._serve(ws)
        finally:
            self.connections -= 1

    async def _serve(self, ws: WebSocketConnection) -> None:
        hello = await self._read_hello(ws)
        if hello is None:
            return
        capability, pair_id, role = hello
        key = (capability, pair_id)
        # Never the full capability or pair id in a log line: a prefix names them enough.
        tag = f"cap={capability.hex()[:8]} pair={pair_id.hex()[:8]}"
        waiter = self._waiting.get(key)
        if waiter is None:
            pair = await self._wait_for_peer(ws, key, role, tag)
        elif waiter.role == role:
            log.info("event=relay_refused %s role=%s reason=duplicate", tag, role)
            await _close(ws, CLOSE_POLICY, f"a '{role}' for this pair is already waiting")
            return
        else:
            pair = await self._match(waiter, ws, key, tag)
        if pair is not None:
            await self._forward(pair, ws)

    async def _read_hello(self, ws: WebSocketConnection) -> tuple[bytes, bytes, str] | None:
        raw: bytes | str | None = None
        with trio.move_on_after(self.hello_timeout):
            try:
                raw = await ws.get_message()
            except ConnectionClosed:
                return None
        if raw is None:
            await _close(ws, CLOSE_POLICY, f"no hello within {self.hello_timeout:g}s")
            return None
        if isinstance(raw, str):
            await _close(ws, CLOSE_UNSUPPORTED, "binary messages only")
            return None
        try:
            return decode_hello(raw)
        except ValueError as exc:
            log.info("event=relay_refused remote=%s reason=bad-hello detail=%r", _remote(ws), str(exc))
            await _close(ws, CLOSE_POLICY, f"bad hello: {exc}")
            return None

    def _unregister(self, key: tuple[bytes, bytes], waiter: _Waiter) -> None:
        if self._waiting.get(key) is waiter:
            del self._waiting[key]
            left = self._waiting_per_cap[key[0]] - 1
            if left:
                self._waiting_per_cap[key[0]] = left
            else:
                del self._waiting_per_cap[key[0]]

    async def _wait_for_peer(
        self, ws: WebSocketConnection, key: tuple[bytes, bytes], role: str, tag: str
    ) -> _Pair | None:
        capability = key[0]
        # A waiting connection holds a pair slot: it becomes a pair without a new check.
        if len(self._waiting) + self.active_pairs >= self.max_pairs:
            log.warning("event=relay_refused %s role=%s reason=full pairs=%d", tag, role, self.max_pairs)
            await _close(ws, CLOSE_TRY_LATER, f"relay full ({self.max_pairs} pairs)")
            return None
        if self._waiting_per_cap.get(capability, 0) >= self.max_waiting_per_capability:
            log.warning("event=relay_refused %s role=%s reason=too-many-waiting", tag, role)
            await _close(ws, CLOSE_TRY_LATER, "too many peers waiting on this capability")
            return None
        timeout = self.wait_timeout if role == "wait" else self.join_timeout
        waiter = _Waiter(role, ws, trio.CancelScope(deadline=trio.current_time() + timeout))
        self._waiting[key] = waiter
        self._waiting_per_cap[capability] = self._waiting_per_cap.get(capability, 0) + 1
        log.debug("event=relay_waiting %s role=%s timeout=%g", tag, role, timeout)
        early = gone = False
        try:
            # Reading while waiting notices a client that gives up; `_match` cancels the
            # scope on pairing (a cancelled receive loses no message: it stays queued).
            with waiter.scope:
                await ws.get_message()
                early = True
        except ConnectionClosed:
            gone = True
        finally:
            self._unregister(key, waiter)
        pair = waiter.pair
        if early:
            log.info("event=relay_refused %s role=%s reason=data-before-paired", tag, role)
            await _close(ws, CLOSE_POLICY, "data before paired")
            if pair is not None:
                await self._end(pair, {pair.other(ws): (CLOSE_PEER_GONE, "peer broke the relay protocol")}, "protocol")
            return None
        if pair is None:
            if not gone:
                log.info("event=relay_no_peer %s role=%s after_s=%g", tag, role, timeout)
                await _close(ws, CLOSE_NO_PEER, f"no peer arrived within {timeout:g}s")
            return None
        return pair  # if our client left meanwhile, forwarding notices at once

    async def _match(
        self, waiter: _Waiter, ws: WebSocketConnection, key: tuple[bytes, bytes], tag: str
    ) -> _Pair:
        self._unregister(key, waiter)
        pair = _Pair((waiter.ws, ws), tag, self.idle_timeout)
        waiter.pair = pair
        self.active_pairs += 1
        log.info("event=relay_paired %s pairs=%d", tag, self.active_pairs)
        # The waiter stops watching for early data now, before its "paired" goes out:
        # a fast client's first message must reach forwarding, not the violation check.
        waiter.scope.cancel()
        try:
            # Ours first: the waiter's data, forwarded by its own task, can only follow
            # its "paired", so it always lands after ours. Our own data waits for us.
            await ws.send_message(PAIRED)
            await waiter.ws.send_message(PAIRED)
        except ConnectionClosed:
            reason = (CLOSE_PEER_GONE, "peer left before pairing")
            await self._end(pair, {waiter.ws: reason, ws: reason}, "left-before-paired")
        return pair

    async def _forward(self, pair: _Pair, ws: WebSocketConnection) -> None:
        """Carry this connection's messages to its partner until the pair ends."""
        if pair.ended:
            await pair.done.wait()
            return
        other = pair.other(ws)
        scope = trio.CancelScope()
        pair.scopes.append(scope)
        pair.touch()
        gone: WebSocketConnection | None = None
        text = False
        with scope:
            while True:
                try:
                    message = await ws.get_message()
                except ConnectionClosed:
                    gone = ws
                    break
                if isinstance(message, str):
                    text = True
                    break
                pair.touch()
                self.forwarded_messages += 1
                self.forwarded_bytes += len(message)
                if self.on_forward is not None:
                    self.on_forward(message)
                try:
                    await other.send_message(message)
                except ConnectionClosed:
                    gone = other
                    break
        if pair.ended:  # the other half ended it (and closed us); its reasons stand
            await pair.done.wait()
        elif text:
            codes = {ws: (CLOSE_UNSUPPORTED, "binary messages only"), other: (CLOSE_PEER_GONE, "peer broke the relay protocol")}
            await self._end(pair, codes, "text-message")
        elif gone is None:
            reason = (CLOSE_IDLE, f"idle for {self.idle_timeout:g}s")
            await self._end(pair, {ws: reason, other: reason}, "idle")
        else:
            closed = gone.closed
            code = closed.code if closed is not None else 1006
            if code == CLOSE_NORMAL:
                codes = {pair.other(gone): (CLOSE_NORMAL, "peer closed")}
            else:
                said = f" {closed.reason}" if closed is not None and closed.reason else ""
                detail = f"peer gone ({code}{said})"
                codes = {pair.other(gone): (CLOSE_PEER_GONE, detail)}
            await self._end(pair, codes, f"closed-{code}")

    async def _end(
        self, pair: _Pair, codes: dict[WebSocketConnection, tuple[int, str]], why: str
    ) -> None:
        if pair.ended:
            await pair.done.wait()
            return
        pair.ended = True
        self.active_pairs -= 1
        log.info("event=relay_pair_ended %s why=%s pairs=%d", pair.tag, why, self.active_pairs)
        try:
            # Both closes at once: either client may be slow to answer its close frame.
            async with trio.open_nursery() as nursery:
                for ws, (code, reason) in codes.items():
                    nursery.start_soon(_close, ws, code, reason)
        finally:
            pair.done.set()


async def serve_relay(
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ssl_context: ssl.SSLContext | None = None,
    **settings: object,
) -> NoReturn:
    """Run a relay until cancelled; `settings` are `RelayServer` fields (path, limits, hook)."""
    relay = RelayServer(**settings)  # type: ignore[arg-type]
    await relay.serve(host, port, ssl_context=ssl_context, task_status=task_status)


async def run_relay_command(host: str, port: int, path: str | None = None) -> NoReturn:
    """`hypergate relay`: serve plain WebSocket until cancelled; TLS is the reverse proxy's."""
    await serve_relay(host, port, path=path or None)

