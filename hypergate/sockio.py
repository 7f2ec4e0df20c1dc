"""Reading a trio socket in as few syscalls and task switches as it takes (used by the
peer link's record reader and by the socket pumps; nothing here knows about either),
and how much a socket may hold unsent.

After a short read the socket is drained, so the next read waits for readability first
instead of trying a read that would fail; after a wait it reads without yielding again.
A read that did not wait yields once, so a busy socket cannot starve the other tasks.
Per small message this saves a failed recv and a run-loop pass.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import trio


class DrainAwareReader:
    __slots__ = ("_sock", "_drained")

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._drained = False  # the last read was short: wait before the next one

    # read() is read_with()'s loop written out again on purpose: it is what every idle
    # connection's pump parks in, and going through read_with would cost a closure and a
    # coroutine frame per parked reader, which thousands of idle connections pay for.

    async def read(self, size: int) -> bytes:
        sock = self._sock
        waited = False
        if self._drained:
            await trio.lowlevel.wait_readable(sock)
            waited = True
        while True:
            fd = sock.fileno()
            if fd < 0:  # closed: never read a descriptor number that may be reused
                raise trio.ClosedResourceError("the socket is closed")
            try:
                data = os.read(fd, size)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
        if not waited:
            await trio.lowlevel.checkpoint()
        self._drained = len(data) < size
        return data

    async def read_with(self, read: Callable[[int, int], int], size: int) -> int:
        """`read(fd, size)` does the read itself (e.g. straight into a record buffer) and
        returns the byte count, raising BlockingIOError when there is nothing; the same
        waits and yields as `read`."""
        sock = self._sock
        waited = False
        if self._drained:
            await trio.lowlevel.wait_readable(sock)
            waited = True
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket is closed")
            try:
                got = read(fd, size)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
        if not waited:
            await trio.lowlevel.checkpoint()
        self._drained = got < size
        return got

    async def read_into(self, target: memoryview) -> int:
        # One reader per peer link, not per connection: a closure per read is cheap here.
        return await self.read_with(lambda fd, size: os.readv(fd, [target]), len(target))


def set_notsent_lowat(sock: trio.socket.SocketType, size: int) -> None:
    """Let `sock` take writes until `size` bytes wait unsent (TCP_NOTSENT_LOWAT; trio
    sets 16 KiB on every SocketStream, which splits large writes into many)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, size)
    except (OSError, AttributeError):
        pass  # (not TCP, or a system without it: the kernel default then applies)
