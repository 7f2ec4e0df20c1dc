"""A tiny HTTP/1.1 server: h11 for the protocol, trio for the sockets.

One request per connection (`Connection: close`), request head and body bounded, the
whole exchange under one timeout, a bounded number of connections served at once.
Handlers are `async def handler(request: Request) -> Response`; an exception in a
handler becomes a 500 with a log line, never a crashed server.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import trio

from .. import limits

log = logging.getLogger(__name__)

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


@attrs.frozen
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    peer_host: str
    peer_port: int

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; the first value of a repeated name wins."""
        params: dict[str, str] = {}
        for name, value in parse_qsl(urlsplit(self.target).query, keep_blank_values=True):
            params.setdefault(name, value)
        return params


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, (("Content-Type", "application/json"), *headers))


def parse_basic_auth_setting(value: str | None) -> tuple[str, str] | None:
    """`user:pass` -> (user, pass); None or a value without ':' means no auth (as the
    original)."""
    if not value or ":" not in value:
        return None
    user, _, password = value.partition(":")
    return user, password


def basic_auth_ok(request: Request, expected: tuple[str, str] | None) -> bool:
    """True when no auth is configured or the request carries exactly these credentials.

    Both parts are compared in constant time, and both always, so timing says nothing
    about which part was wrong."""
    if expected is None:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, password = decoded.partition(":")
    user_ok = hmac.compare_digest(user.encode(), expected[0].encode())
    password_ok = hmac.compare_digest(password.encode(), expected[1].encode())
    return bool(sep) and user_ok and password_ok


class _TooLarge(Exception):
    pass


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    head_bytes = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(16384)
            if head is None:
                # h11 only bounds a head still incomplete in its buffer; one that
                # completes in the same read as it overflows would slip through.
                head_bytes += len(data)
                if head_bytes > limits.HTTP_MAX_HEADER_BYTES + limits.HTTP_MAX_BODY_BYTES:
                    raise _TooLarge(431)
            conn.receive_data(data)  # b"" marks EOF
            if not data and head is None and conn.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.Request):
            head = event
            if sum(len(n) + len(v) + 4 for n, v in event.headers) > limits.HTTP_MAX_HEADER_BYTES:
                raise _TooLarge(431)
            continue
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > limits.HTTP_MAX_BODY_BYTES:
                raise _TooLarge(413)
            continue
        if isinstance(event, h11.EndOfMessage):
            assert head is not None
            headers: dict[str, str] = {}
            for name, value in head.headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            peer = stream.socket.getpeername()
            return Request(
                method=head.method.decode("ascii", "replace"),
                target=head.target.decode("latin-1"),
                headers=headers,
                body=bytes(body),
                peer_host=str(peer[0]),
                peer_port=int(peer[1]),
            )
        if isinstance(event, h11.ConnectionClosed):
            return None


async def _send(stream: trio.SocketStream, conn: h11.Connection, response: Response) -> None:
    headers = [
        *response.headers,
        ("Content-Length", str(len(response.body))),
        ("Connection", "close"),
    ]
    data = conn.send(
        h11.Response(
            status_code=response.status,
            headers=headers,
            reason=_REASONS.get(response.status, b""),
        )
    )
    if response.body:
        data += conn.send(h11.Data(data=response.body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


async def _serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.HTTP_MAX_HEADER_BYTES)
    async with stream:
        with trio.move_on_after(limits.HTTP_CONNECTION_TIMEOUT_S):
            try:
                request = await _read_request(stream, conn)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send(stream, conn, json_response(status, {"error": "bad_request"}))
                return
            except _TooLarge as exc:
                status = exc.args[0]
                error = "headers_too_large" if status == 431 else "body_too_large"
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send(stream, conn, json_response(status, {"error": error}))
                return
            if request is None:
                return
            try:
                response = await handler(request)
            except Exception:
                log.exception("http_handler_failed path=%s", request.path)
                response = json_response(500, {"error": "internal_error"})
            await _send(stream, conn, response)


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` on host:port until cancelled; reports the bound port when started."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = listeners[0].socket.getsockname()[1]
    log.info("http_listening host=%s port=%d", host, bound_port)
    slots = trio.Semaphore(limits.HTTP_MAX_CONNECTIONS)

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                await slots.acquire()
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    # Out of file descriptors and the like: wait for some to free up
                    # rather than lose the endpoint.
                    slots.release()
                    log.warning("http_accept_failed error=%r", exc)
                    await trio.sleep(limits.HTTP_ACCEPT_RETRY_S)
                    continue
                except BaseException:
                    slots.release()
                    raise
                nursery.start_soon(run_one, stream)

    async def run_one(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, handler)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("http_connection_dropped error=%r", exc)
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery)
        task_status.started(bound_port)
