"""Reading a trio socket in as few syscalls and task switches as it takes (used by the
peer link's record reader and by the socket pumps; nothing here knows about either).

After a short read the socket is drained, so the next read waits for readability first
instead of trying a read that would fail; after a wait it reads without yielding again.
A read that did not wait yields once, so a busy socket cannot starve the other tasks.
Per small message this saves a failed recv and a run-loop pass.
"""

from __future__ import annotations

import os

import trio


class DrainAwareReader:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._drained = False  # the last read was short: wait before the next one

    async def read(self, size: int) -> bytes:
        data = await self._read(lambda fd: os.read(fd, size))
        self._drained = len(data) < size
        return data

    async def read_into(self, target: memoryview) -> int:
        got = await self._read(lambda fd: os.readv(fd, [target]))
        self._drained = got < len(target)
        return got

    async def _read(self, read):
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
                result = read(fd)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
        if not waited:
            await trio.lowlevel.checkpoint()
        return result
