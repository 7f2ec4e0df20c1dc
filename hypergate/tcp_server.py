"""Accepting TCP connections at few task switches each (the gates' listeners).

`trio.serve_listeners` costs, per connection, a checkpoint inside `accept` and two more
when it closes the stream again after the handler (`aclose_forcefully`): scheduler
passes that add up when connections are short. This loop accepts
every connection waiting at each wakeup (a burst costs one wakeup, not one each), hands
each to its own task, and closes a stream its handler left open without yielding.
Errors are handled as `serve_listeners` does: routine ones (a client that reset before
we accepted) are skipped, running out of descriptors or memory pauses accepting for
ACCEPT_PAUSE_S with an error in the log (one line per ACCEPT_LOG_INTERVAL_S, counting
the failures), anything else ends the server.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

from . import limits

log = logging.getLogger(__name__)

StreamHandler = Callable[[trio.SocketStream], Awaitable[object]]

# Out of descriptors or memory: accepting again at once would spin.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# The connection went away (or a firewall refused it) between SYN and accept.
_SKIPPED_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
        "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET",
    )
    if hasattr(errno, name)
)
ACCEPT_PAUSE_S = 0.1
ACCEPT_LOG_INTERVAL_S = 10.0


async def serve_tcp(handler: StreamHandler, listeners: list[trio.SocketListener]) -> NoReturn:
    """Run `handler(stream)` in a task of its own for every connection on `listeners`
    (which this takes over and closes), until cancelled."""
    sockets = [_take_socket(listener) for listener in listeners]
    try:
        async with trio.open_nursery() as nursery:
            for sock in sockets:
                nursery.start_soon(_accept_forever, sock, handler, nursery)
    finally:
        for sock in sockets:
            sock.close()
    raise AssertionError("unreachable: the accept loops never return")


def _take_socket(listener: trio.SocketListener) -> socket.socket:
    tsock = listener.socket
    sock = socket.socket(tsock.family, tsock.type, tsock.proto, fileno=tsock.detach())
    sock.setblocking(False)
    return sock


async def _accept_forever(sock: socket.socket, handler: StreamHandler, nursery: trio.Nursery) -> NoReturn:
    failures = 0  # accepts that failed for want of resources since the last log line
    last_logged = -math.inf
    while True:
        # (Also after a full batch: the connections just accepted run before more come.)
        await trio.lowlevel.wait_readable(sock)
        for _ in range(limits.ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _SKIPPED_ERRNOS:
                    continue
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                failures += 1
                now = trio.current_time()
                if now - last_logged >= ACCEPT_LOG_INTERVAL_S:  # one line, not ten a second
                    log.error(
                        "event=accept_failed error=%s reason=%r pause_s=%g failures=%d",
                        errno.errorcode[exc.errno], os.strerror(exc.errno), ACCEPT_PAUSE_S, failures,
                    )
                    failures, last_logged = 0, now
                await trio.sleep(ACCEPT_PAUSE_S)
                break
            nursery.start_soon(_run_handler, handler, trio.SocketStream(trio.socket.from_stdlib_socket(conn)))


async def _run_handler(handler: StreamHandler, stream: trio.SocketStream) -> None:
    try:
        await handler(stream)
    finally:
        stream.socket.close()  # (a no-op when the handler closed it)
