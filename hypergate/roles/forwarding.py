"""Moving bytes between a local socket and a channel, both directions.

TCP: half-close travels both ways (EOF on the socket becomes FIN on the channel and back),
so a client that shuts down its write side still gets the whole reply. If the channel is
reset (peer gone, service failed, data lost), the local socket is aborted with a TCP RST,
never closed with a clean EOF that would pass for a complete transfer.

UDP: one datagram is one DATA frame; a flow ends after an idle period with no datagram
either way.

Cost per message is what limits latency and connection rate, and in trio it is counted
in task switches: so the socket is read with one scheduling point per read (not two,
`hypergate.sockio.DrainAwareReader`), and data from the peer is written to the socket straight from the session's
reader when the socket takes it at once (`Channel.sink`), waking this pump only for what
does not fit. Shaped directions take the same path: each chunk is charged to its token
bucket, and only an empty bucket makes it wait.

The other direction, for unshaped channels, reads the socket straight into the link's
record buffer and writes the record at once (`Channel.send_direct`); while the link is
busy the pump waits instead of reading, so a bulk sender's backlog stays in the kernel's
socket buffer. A fresh 256 KiB bytes object per read cost ~50 page faults each (glibc
returns such blocks to the kernel on free); the direct path has no object and no copy.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable

import trio

from .. import limits
from ..mux.channel import Channel, ChannelReset
from ..policy.token_bucket import BandwidthExceeded, ChannelShaper, Shaper
from ..sockio import DrainAwareReader, set_notsent_lowat
from ..wire.messages import ResetCode

log = logging.getLogger(__name__)

_LINGER_ABORT = struct.pack("ii", 1, 0)
_UNLIMITED = Shaper.unlimited()


def abort_socket(stream: trio.SocketStream) -> None:
    """Close with RST: the other end sees 'connection reset', not a clean end of data."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    except OSError:
        pass
    stream.socket.close()


async def splice_tcp(
    stream: trio.SocketStream,
    channel: Channel,
    shaper: ChannelShaper | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    """Forward until both directions ended (or one failed). Closes `stream`.

    `started` is called once data that came with the channel's OPEN is in the socket
    (a provider accepts the channel there: the service already works on the request
    while the ACCEPT travels).

    One task per connection while it is idle: this one, reading the socket. Data from
    the peer goes to the socket straight from the session's reader (`Channel.sink`); a
    second task (`drain`) is started only when the socket does not take it at once, or a
    reset arrives, and ends when the backlog is written; the peer's FIN with nothing
    before it is passed on (shutdown of our write side) from the session's reader.
    10,000 idle connections thus cost 10,000 parked tasks, not 20,000.

    The drain task runs beside this one, in the nursery this task runs in, and is
    joined (cancelled first, if this one fails) before this returns: it never outlives
    the connection. A nursery of our own would cost every connection a scheduler pass
    when it ends (trio's nursery exit yields even with no child left); most never
    start a drain.

    With a shaper (gateway side, when the ingress policy limits this client), each
    direction is charged to its token bucket chunk by chunk and waits only when the
    bucket is empty: the sender is slowed by backpressure, and a channel over its burst
    budget is reset (BandwidthExceeded)."""
    helpers = trio.lowlevel.current_task().parent_nursery
    assert helpers is not None  # (every task but trio's own init task has one)
    failed: list[str] = []
    inbound = shaper.client_to_service if shaper else _UNLIMITED
    outbound = shaper.service_to_client if shaper else _UNLIMITED
    read_size = min(limits.SOCKET_READ_SIZE, inbound.max_chunk)
    sock = stream.socket
    set_notsent_lowat(sock, limits.LOCAL_NOTSENT_LOWAT)
    # drain task state: `writing` while it writes older data (the sink must not jump
    # ahead), `draining` while it runs (or this task took over receiving at the end).
    writing = False
    draining = False
    reader_done = False  # our socket reached EOF: receive until the peer's FIN
    eof_written = False  # the peer's FIN was passed on (shutdown of our write side)
    closing = False
    body = trio.CancelScope()  # this task's work; a failure either way cancels it
    drain_scope: trio.CancelScope | None = None  # the drain task running (or last run)
    drain_done: trio.Event | None = None

    def stop() -> None:
        body.cancel()
        if drain_scope is not None:
            drain_scope.cancel()

    def fail(reason: str, code: str = ResetCode.CLOSED, message: str = "the other end's socket failed") -> None:
        failed.append(reason)
        channel.reset(code, message)
        stop()

    def sink(data: bytes | memoryview) -> int:
        # Runs in the session's reader: never blocks, never raises (a failed write is
        # left to the drain task's send_all, which reports it).
        if writing:
            return 0  # the drain task is sending older data: keep the order
        fd = sock.fileno()
        if fd < 0:
            return 0
        size = len(data)
        if outbound.limited:
            size = min(size, outbound.available())
            if size <= 0:
                return 0  # the bucket is empty: the drain task waits for tokens
        try:
            taken = os.write(fd, data if size == len(data) else memoryview(data)[:size])
        except OSError:
            return 0
        if outbound.limited and taken:
            outbound.charge(taken)
        return taken

    def wake() -> None:
        nonlocal draining, eof_written, drain_scope, drain_done
        if closing:
            return
        if channel.reset_reason is not None:
            # Both tasks may be parked on the socket (a client neither reading nor
            # sending): end them now, the client gets its RST.
            stop()
            return
        if draining:
            return
        if channel.at_eof and not eof_written:
            # Only the FIN: pass it on here rather than start a task to do it.
            try:
                sock.shutdown(socket.SHUT_WR)
                eof_written = True
                return
            except OSError:
                pass  # the drain task's own attempt reports it
        draining = True
        drain_scope, drain_done = trio.CancelScope(), trio.Event()
        helpers.start_soon(run_drain, drain_scope, drain_done)

    async def send_out(data: bytes | memoryview) -> None:
        nonlocal writing
        writing = True
        if outbound.limited:
            step = outbound.max_chunk
            for offset in range(0, len(data), step):
                piece = data[offset : offset + step]
                delay = outbound.charge(len(piece))
                if delay > 0:
                    await trio.sleep(delay)
                await stream.send_all(piece)
        else:
            await stream.send_all(data)
        writing = False

    async def drain() -> None:
        """Channel to socket, for what the sink did not take; ends with the backlog
        (or, after our EOF, with the peer's FIN)."""
        nonlocal draining, eof_written
        try:
            while True:
                if not channel.has_pending and not reader_done:
                    draining = False  # the sink takes over again
                    return
                data = await channel.receive()
                if not data:
                    if not eof_written:
                        sock.shutdown(socket.SHUT_WR)  # (stream.send_eof: one more checkpoint)
                        eof_written = True
                    return
                await send_out(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            fail(f"socket write failed: {exc}")
        except BandwidthExceeded as exc:
            fail(str(exc), ResetCode.BANDWIDTH_EXCEEDED, str(exc))

    async def run_drain(scope: trio.CancelScope, done: trio.Event) -> None:
        # Nothing may escape into the nursery we share with other connections.
        try:
            with scope:
                await drain()
        except ChannelReset:
            body.cancel()  # (the channel's reset_reason tells the rest)
        except Exception as exc:
            log.exception("channel=%d event=drain_failed", channel.id)
            fail(f"internal error: {exc!r}", message=f"internal error: {type(exc).__name__}")
        finally:
            done.set()

    read_aside: list[bytes] = []

    def read_direct(fd: int, size: int) -> int:
        # Straight into the link's record while the link is idle (the common case for a
        # bulk sender); if it got busy while we waited for data, an ordinary read.
        if channel.can_send_direct():
            return channel.send_direct(fd, size)
        data = os.read(fd, size)
        read_aside.append(data)
        return len(data)

    async def socket_to_channel() -> None:
        reader = DrainAwareReader(sock)
        direct = not inbound.limited
        try:
            while True:
                if direct and await channel.wait_to_send_direct():
                    continue  # the link is free again: look at the state afresh
                if direct and channel.can_send_direct():
                    if await reader.read_with(read_direct, read_size) and not read_aside:
                        continue  # went straight into a record
                    data = read_aside.pop() if read_aside else b""  # (b"": EOF)
                else:
                    data = await reader.read(read_size)
                if not data:
                    await channel.send_eof()
                    return
                if inbound.limited:
                    delay = inbound.charge(len(data))
                    if delay > 0:
                        await trio.sleep(delay)
                await channel.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            fail(f"socket read failed: {exc}")
        except BandwidthExceeded as exc:
            fail(str(exc), ResetCode.BANDWIDTH_EXCEEDED, str(exc))

    try:
        with body:
            channel.sink = sink
            channel.waker = wake
            channel.flush_to_sink()  # data that came right behind the OPEN
            if started is not None:
                started()
            if channel.has_pending:
                wake()
            await socket_to_channel()
            reader_done = True
            if not draining and not failed:
                # The other direction is still open: receive in this task until the
                # peer's FIN (a running drain task does the same by itself).
                draining = True
                await drain()
            elif drain_done is not None:
                await drain_done.wait()
    except ChannelReset:
        pass  # (reset_reason is set: the socket is aborted below)
    finally:
        closing = True
        channel.waker = None
        channel.sink = None
        if drain_done is not None and not drain_done.is_set():
            assert drain_scope is not None
            drain_scope.cancel()  # (we failed or were cancelled: it must not outlive us)
            with trio.CancelScope(shield=True):
                await drain_done.wait()
    if channel.reset_reason is not None and not failed:
        log.debug("channel=%d event=reset reason=%r", channel.id, str(channel.reset_reason))
    if failed or channel.reset_reason is not None:
        abort_socket(stream)
    else:
        sock.close()  # (stream.aclose would add a checkpoint: this task just had several)


class IdleTimer:
    """Tracks the last datagram either way; `expired()` once nothing moved for `timeout`."""

    def __init__(self, timeout: float = limits.UDP_IDLE_TIMEOUT_S) -> None:
        self.timeout = timeout
        self.last_active = trio.current_time()

    def touch(self) -> None:
        self.last_active = trio.current_time()

    @property
    def deadline(self) -> float:
        return self.last_active + self.timeout


async def channel_datagrams(channel: Channel, idle: IdleTimer, deliver) -> None:
    """Pass each datagram from the channel to `deliver` until the flow is idle or ends."""
    while True:
        with trio.move_on_at(idle.deadline):
            datagram = await channel.receive()
            if not datagram:
                return
            idle.touch()
            await deliver(datagram)
            continue
        if trio.current_time() >= idle.deadline:
            channel.reset(ResetCode.CLOSED, f"UDP flow idle for {idle.timeout:g}s")
            return
