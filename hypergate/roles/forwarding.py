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
does not fit. Shaped directions keep the plain path: every byte waits for its tokens.
"""

from __future__ import annotations

import logging
import os
import socket
import struct

import trio

from .. import limits
from ..mux.channel import Channel, ChannelReset
from ..policy.token_bucket import BandwidthExceeded, ChannelShaper, Shaper
from ..sockio import DrainAwareReader
from ..wire.messages import ResetCode

log = logging.getLogger(__name__)

_LINGER_ABORT = struct.pack("ii", 1, 0)


def abort_socket(stream: trio.SocketStream) -> None:
    """Close with RST: the other end sees 'connection reset', not a clean end of data."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    except OSError:
        pass
    stream.socket.close()


async def splice_tcp(
    stream: trio.SocketStream, channel: Channel, shaper: ChannelShaper | None = None
) -> None:
    """Forward until both directions ended (or one failed). Closes `stream`.

    With a shaper (gateway side, when the ingress policy limits this client), each
    direction waits for its token bucket before passing data on: the sender is slowed by
    backpressure, and a channel over its burst budget is reset (BandwidthExceeded)."""
    failed: list[str] = []
    inbound = shaper.client_to_service if shaper else Shaper.unlimited()
    outbound = shaper.service_to_client if shaper else Shaper.unlimited()
    read_size = min(limits.SOCKET_READ_SIZE, inbound.max_chunk)

    def fail(reason: str, code: str = ResetCode.CLOSED, message: str = "the other end's socket failed") -> None:
        failed.append(reason)
        channel.reset(code, message)
        nursery.cancel_scope.cancel()

    async def socket_to_channel() -> None:
        reader = DrainAwareReader(stream.socket)
        try:
            while True:
                data = await reader.read(read_size)
                if not data:
                    await channel.send_eof()
                    return
                if inbound.limited:
                    await inbound.wait_for(len(data))
                await channel.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            fail(f"socket read failed: {exc}")
        except BandwidthExceeded as exc:
            fail(str(exc), ResetCode.BANDWIDTH_EXCEEDED, str(exc))

    def sink(data: bytes | memoryview) -> int:
        # Runs in the session's reader: never blocks, never raises (a failed write is
        # left to this pump's send_all, which reports it as before).
        if writing:
            return 0  # the pump is sending older data: keep the order
        fd = stream.socket.fileno()
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except OSError:
            return 0

    writing = False

    async def channel_to_socket() -> None:
        nonlocal writing
        try:
            if not outbound.limited:
                channel.sink = sink
            while True:
                data = await channel.receive()
                if not data:
                    await stream.send_eof()
                    return
                if not outbound.limited:
                    writing = True
                    await stream.send_all(data)
                    writing = False
                    continue
                step = outbound.max_chunk
                for offset in range(0, len(data), step):
                    piece = data[offset : offset + step]
                    await outbound.wait_for(len(piece))
                    await stream.send_all(piece)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            fail(f"socket write failed: {exc}")
        except BandwidthExceeded as exc:
            fail(str(exc), ResetCode.BANDWIDTH_EXCEEDED, str(exc))
        finally:
            channel.sink = None

    reset = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(socket_to_channel)
            await channel_to_socket()  # in this task: one task less per connection
    except* ChannelReset as group:
        reset = True
        log.debug("channel=%d event=reset reason=%r", channel.id, str(group.exceptions[0]))
    if reset or failed:
        abort_socket(stream)
    else:
        await stream.aclose()


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
