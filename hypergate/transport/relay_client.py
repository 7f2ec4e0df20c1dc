"""Client side of the WebSocket relay, and the wire pieces both sides share.

The protocol is described in `hypergate.transport.relay` (the server, and the module
peers import from). Here: the capability, the hello codec, close codes, and
`RelayStream`, a paired relay connection as a `trio.abc.HalfCloseableStream`.
"""

from __future__ import annotations

import contextlib

import hashlib
import json
import logging
import ssl
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .. import limits
from ..errors import HypergateError

log = logging.getLogger(__name__)

ROLES = ("wait", "join")
CAPABILITY_BYTES = 32
PAIR_ID_BYTES = 16
PROTOCOL_VERSION = 1
PAIRED = b'{"v":1,"paired":true}'

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013
CLOSE_NO_PEER = 4001
CLOSE_IDLE = 4002
CLOSE_PEER_GONE = 4003

# Bytes read from a socket at once, by the relay and by clients.
RECEIVE_SIZE = 64 * 1024
# A close reason must fit a control frame (125 bytes with the 2-byte code).
MAX_CLOSE_REASON = 120


class RelayError(HypergateError):
    """No paired stream through a relay; the message names the relay, the step and why."""


def relay_capability(topic: bytes) -> bytes:
    """What a peer shows the relay instead of the topic: peers of one router share it."""
    if len(topic) != 32:
        raise ValueError(f"a router topic is 32 bytes, got {len(topic)}")
    return hashlib.blake2b(
        b"hypergate relay capability v1", key=topic, digest_size=CAPABILITY_BYTES, person=b"hg-relay-cap"
    ).digest()


def encode_hello(capability: bytes, pair_id: bytes, role: str) -> bytes:
    if len(capability) != CAPABILITY_BYTES:
        raise ValueError(f"a relay capability is {CAPABILITY_BYTES} bytes, got {len(capability)}")
    if len(pair_id) != PAIR_ID_BYTES:
        raise ValueError(f"a relay pair id is {PAIR_ID_BYTES} bytes, got {len(pair_id)}")
    if role not in ROLES:
        raise ValueError(f"relay role must be 'wait' or 'join', got {role!r}")
    hello = {"v": PROTOCOL_VERSION, "cap": capability.hex(), "pair": pair_id.hex(), "role": role}
    return json.dumps(hello, separators=(",", ":")).encode()


def decode_hello(raw: bytes) -> tuple[bytes, bytes, str]:
    """(capability, pair id, role) from a hello; ValueError with a short reason otherwise."""
    if len(raw) > limits.MAX_RELAY_HELLO:
        raise ValueError("hello too long")
    try:
        hello = json.loads(raw)
    except ValueError:
        raise ValueError("hello is not JSON") from None
    if not isinstance(hello, dict) or hello.get("v") != PROTOCOL_VERSION:
        raise ValueError(f"hello must be a JSON object with v={PROTOCOL_VERSION}")
    try:
        capability = bytes.fromhex(hello["cap"])
        pair_id = bytes.fromhex(hello["pair"])
        role = hello["role"]
    except (KeyError, TypeError, ValueError):
        raise ValueError("hello needs hex 'cap' and 'pair' and a 'role'") from None
    if len(capability) != CAPABILITY_BYTES or len(pair_id) != PAIR_ID_BYTES:
        raise ValueError(f"'cap' must be {CAPABILITY_BYTES} bytes and 'pair' {PAIR_ID_BYTES}")
    if role not in ROLES:
        raise ValueError("'role' must be 'wait' or 'join'")
    return capability, pair_id, role


class RelayStream(trio.abc.HalfCloseableStream):
    """A paired relay connection as a byte stream (the mapping: `hypergate.transport.relay`).

    WebSocket runs sans-IO (wsproto) right on the transport, so the stream owns no
    background task: bytes are read only when the caller asks (backpressure all the way
    to the relay), and pings are answered on the next read or write.
    """

    def __init__(self, transport: trio.abc.Stream, url: str) -> None:
        self.transport = transport
        self.url = url
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._send_lock = trio.StrictFIFOLock()
        self._control = bytearray()  # pong / close replies not yet written
        self._buffer = bytearray()  # received payload not yet returned
        self._message_len = 0  # payload so far of the message being received (EOF = empty)
        self._reply = bytearray()  # the relay's "paired" message while it arrives
        self._reject_body = bytearray()
        self._reject_pending = False  # the refusal's body is still arriving
        self._accepted = False
        self._paired = False
        self._eof = False
        self._error: str | None = None
        self._sent_eof = False
        self._closed = False
        self._receiving = False
        self._sending = False

    # Opening: upgrade, hello, wait for "paired".

    async def _open(self, host_header: str, target: str, hello: bytes) -> None:
        await self.transport.send_all(self._ws.send(Request(host=host_header, target=target)))
        while not self._accepted:
            await self._pump_before_paired()
        async with self._send_lock:
            await self._send_event(BytesMessage(data=hello))
        while not self._paired:
            await self._pump_before_paired()

    async def _pump_before_paired(self) -> None:
        await self._pump()
        while self._reject_pending:  # the body says why (e.g. "relay full")
            await self._pump()
        if self._error is not None:
            detail = self._error
            if self._reject_body:
                detail += ": " + self._reject_body.decode(errors="replace").strip()[:200]
            raise RelayError(f"relay {self.url}: {detail}")

    def _on_event(self, event: Event) -> None:
        if isinstance(event, BytesMessage):
            if not self._paired:
                self._reply += event.data
                if len(self._reply) > limits.MAX_RELAY_HELLO:
                    self._error = "relay sent an oversized control message"
                elif event.message_finished:
                    if bytes(self._reply) == PAIRED:
                        self._paired = True
                    else:
                        self._error = "unexpected message from the relay before pairing"
                return
            if self._eof:
                return  # nothing may follow EOF; a peer that sends more is ignored
            self._buffer += event.data
            self._message_len += len(event.data)
            if event.message_finished:
                self._eof = self._message_len == 0
                self._message_len = 0
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                self._control += self._ws.send(event.response())
            if event.code == CLOSE_NORMAL and self._paired:
                self._eof = True
            elif self._error is None:
                self._error = f"relay closed the connection: {event.code} {event.reason or ''}".strip()
        elif isinstance(event, Ping):
            self._control += self._ws.send(event.response())
        elif isinstance(event, TextMessage):
            self._error = self._error or "relay sent a text message"
        elif isinstance(event, AcceptConnection):
            self._accepted = True
        elif isinstance(event, RejectConnection):
            self._error = f"relay refused the WebSocket upgrade: HTTP {event.status_code}"
            self._reject_pending = event.has_body
        elif isinstance(event, RejectData):
            if len(self._reject_body) < 1024:
                self._reject_body += event.data
            self._reject_pending = not event.body_finished and len(self._reject_body) < 1024

    async def _pump(self) -> None:
        """Read once from the transport and digest what came; sets _eof or _error on the way."""
        try:
            data = await self.transport.receive_some(RECEIVE_SIZE)
        except trio.ClosedResourceError:
            if self._closed:
                raise trio.ClosedResourceError("the relay stream was closed") from None
            data = b""
        except trio.BrokenResourceError as exc:
            self._error = self._error or f"relay connection lost: {exc}"
            return
        if not data:
            self._reject_pending = False
            if not self._eof and self._error is None:
                self._error = "relay connection lost (no close frame)"
            return
        if self._ws.state is ConnectionState.CLOSED:
            return
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._on_event(event)
        except RemoteProtocolError as exc:
            self._error = self._error or f"relay broke the WebSocket protocol: {exc}"
        await self._flush_control()

    async def _flush_control(self) -> None:
        # Never wait for the lock here: a send stuck on a full socket must not stop reads.
        if not self._control:
            return
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            return  # the writer holding the lock sends it before its next frame
        try:
            data = bytes(self._control)
            self._control.clear()
            await self.transport.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the read side reports the broken connection
        finally:
            self._send_lock.release()

    async def _send_event(self, event: Event) -> None:
        """Write one event; the caller holds the send lock."""
        try:
            frame = self._ws.send(event)
        except LocalProtocolError:
            raise trio.BrokenResourceError(self._error or "the relay closed the connection") from None
        if self._control:
            frame = bytes(self._control) + frame
            self._control.clear()
        try:
            await self.transport.send_all(frame)
        except trio.ClosedResourceError:
            if self._closed:
                raise
            raise trio.BrokenResourceError("relay connection lost") from None

    # trio.abc.Stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this relay stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the relay stream was closed")
            while not self._buffer and not self._eof and self._error is None:
                await self._pump()
            if self._buffer:
                size = len(self._buffer) if max_bytes is None else min(max_bytes, len(self._buffer))
                out = bytes(self._buffer[:size])
                del self._buffer[:size]
                return out
            if self._eof:
                return b""
            raise trio.BrokenResourceError(self._error)
        finally:
            self._receiving = False

    @contextlib.contextmanager
    def _sender(self):
        """One caller of the send side at a time (trio's stream contract), on an open stream."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this relay stream")
        if self._closed:
            raise trio.ClosedResourceError("the relay stream was closed")
        self._sending = True
        try:
            yield
        finally:
            self._sending = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sender():
            if self._sent_eof:
                raise trio.ClosedResourceError("send_eof was called on this relay stream")
            view = memoryview(data).cast("B")
            if not view:  # an empty message would mean EOF
                await trio.lowlevel.checkpoint()
                return
            async with self._send_lock:
                for start in range(0, len(view), limits.RELAY_CHUNK):
                    await self._send_event(BytesMessage(data=bytes(view[start : start + limits.RELAY_CHUNK])))

    async def send_eof(self) -> None:
        with self._sender():
            if self._sent_eof:
                await trio.lowlevel.checkpoint()
                return
            self._sent_eof = True
            async with self._send_lock:
                await self._send_event(BytesMessage(data=b""))

    async def wait_send_all_might_not_block(self) -> None:
        with self._sender():
            await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            with trio.move_on_after(limits.RELAY_CLOSE_TIMEOUT_S):
                try:
                    await self._close_handshake()
                    await self.transport.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError, RemoteProtocolError):
                    pass  # the connection is going away anyway
        finally:
            await trio.aclose_forcefully(self.transport)

    async def _close_handshake(self) -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._control += self._ws.send(CloseConnection(code=CLOSE_NORMAL))
        if self._control:
            try:
                self._send_lock.acquire_nowait()
            except trio.WouldBlock:
                return  # a send is stuck; closing the transport releases it
            try:
                data = bytes(self._control)
                self._control.clear()
                await self.transport.send_all(data)
            finally:
                self._send_lock.release()
        if self._receiving:
            return  # that reader gets ClosedResourceError when the transport closes
        # Read up to the relay's answering close frame: closing a socket with unread data
        # sends a TCP reset, which could turn our clean close into "connection lost".
        while self._ws.state is not ConnectionState.CLOSED:
            data = await self.transport.receive_some(RECEIVE_SIZE)
            if not data:
                return
            self._ws.receive_data(data)
            for _event in self._ws.events():
                pass


def _parse_url(url: str) -> tuple[bool, str, int, str, str]:
    """(tls, host, port, request target, Host header) of a ws:// or wss:// URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RelayError(f"relay URL {url!r}: {exc}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise RelayError(f"relay URL {url!r}: must be ws://host[:port][/path] or wss://...")
    tls = parts.scheme == "wss"
    host = parts.hostname
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_text = f"[{host}]" if ":" in host else host
    host_header = host_text if port is None else f"{host_text}:{port}"
    return tls, host, port or (443 if tls else 80), target, host_header


async def open_relay_stream(
    url: str,
    capability: bytes,
    pair_id: bytes,
    role: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float | None = None,
) -> RelayStream:
    """Connect to the relay at `url`, present (capability, pair_id, role), return once paired.

    `timeout` bounds connecting, the upgrade and the wait for the peer; by default a bit
    more than the relay's own wait for that role, so the relay's reason comes first.
    Raises RelayError (with the relay's close reason when it gave one).
    """
    hello = encode_hello(capability, pair_id, role)
    tls, host, port, target, host_header = _parse_url(url)
    if timeout is None:
        wait = limits.RELAY_WAIT_TIMEOUT_S if role == "wait" else limits.RELAY_JOIN_TIMEOUT_S
        timeout = wait + limits.RELAY_CONNECT_TIMEOUT_S
    stream: RelayStream | None = None
    try:
        with trio.fail_after(timeout):
            transport: trio.abc.Stream = await trio.open_tcp_stream(host, port)
            try:
                if tls:
                    context = ssl_context or ssl.create_default_context()
                    transport = trio.SSLStream(transport, context, server_hostname=host, https_compatible=True)
                    await transport.do_handshake()
                stream = RelayStream(transport, url)
                await stream._open(host_header, target, hello)
            except RelayError:
                assert stream is not None
                await stream.aclose()  # answers the relay's close frame, then hangs up
                raise
            except BaseException:
                await trio.aclose_forcefully(transport)
                raise
    except trio.TooSlowError:
        raise RelayError(f"relay {url}: not paired within {timeout:g}s (role={role})") from None
    except (OSError, trio.BrokenResourceError) as exc:
        # An SSL failure arrives as BrokenResourceError caused by the ssl.SSLError that says why.
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
        raise RelayError(f"relay {url}: {type(cause).__name__}: {cause}") from None
    log.debug("event=relay_stream_paired url=%s role=%s cap=%s", url, role, capability.hex()[:8])
    return stream
