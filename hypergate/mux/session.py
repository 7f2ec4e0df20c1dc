"""The multiplexer session over one secure link: a reader, a writer and a keepalive task,
and one task per incoming channel, all in the session's nursery.

Writing: control frames (window updates, opens, accepts, resets, pings, messages) go
first; then data frames, one per channel in turn, so a bulk channel cannot delay a small
one by more than one frame. Frames are assembled straight into one plaintext buffer (the
only copy of the payload on our side) and sealed as one record of up to ~1 MiB.
Whoever queues a frame while the link is idle writes it at once, without a task switch
(`_kick`): a small message costs one record and no wakeup, which is what latency and
connection rate need. When the socket does not take a whole record, the writer task takes
over and coalesces everything queued meanwhile into large records, which is what bulk
throughput needs. A bulk sender on a socket link skips the queue altogether while the
link is idle: its socket is read straight into the record buffer (`send_direct`).

Reading: frames are dispatched inline; data lands in the channel's inbox, bounded by the
channel's receive window. A peer that breaks the framing or overruns a window loses the
session (the byte stream can no longer be trusted); a bad open request or control message
costs only that channel or that message.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from .. import limits
from ..errors import ChannelError, ProtocolError
from ..wire import messages as msgs
from ..wire.frames import (
    HEADER,
    VERSION,
    Flag,
    FrameDecoder,
    FrameType,
    GoAwayCode,
    encode_frame,
)
from ..wire.messages import Message, OpenRequest, ResetCode, ResetReason
from .assembly import assemble_record
from .channel import CHANNEL_WRITE_QUEUE, Channel, ChannelReset
from .flow import ReceiveWindow, SendWindow

log = logging.getLogger(__name__)

_FIN = int(Flag.FIN)


ChannelHandler = Callable[[Channel], Awaitable[None]]
MessageHandler = Callable[[Message], None]


class MuxSession:
    def __init__(
        self,
        link,  # SecureLink, or anything with send_record/receive_records/aclose/initiator
        *,
        on_channel: ChannelHandler,
        on_message: MessageHandler,
        name: str = "peer",
    ) -> None:
        self.link = link
        self.name = name
        self._on_channel = on_channel
        self._on_message = on_message
        self._next_id = 1 if link.initiator else 2
        self._last_remote_id = 0
        self._channels: dict[int, Channel] = {}
        self.send_window = SendWindow(limits.SESSION_WINDOW)
        self.receive_window = ReceiveWindow(limits.SESSION_WINDOW)
        self._blocked_on_session: set[Channel] = set()
        self._control: collections.deque[bytes] = collections.deque()
        # Per-channel outgoing DATA frames as (flags, payload), and the channels that have
        # some, in turn order. Headers are written when the record is assembled.
        self._outq: dict[Channel, collections.deque[tuple[int, bytes | memoryview]]] = {}
        self._queued: dict[Channel, int] = {}
        self._ready: collections.deque[Channel] = collections.deque()
        self._writer_wakeup = trio.Event()
        self._plain = bytearray(link.max_plaintext)  # record assembly buffer
        self._plain_view = memoryview(self._plain)
        self._flushing = False  # _kick is writing (guards re-entry)
        self._failing = False
        self._decoder = FrameDecoder()
        self.rtt: float | None = None
        self._ping_token = 0
        self._ping_sent_at: float | None = None
        self._last_received = trio.current_time()
        self._nursery: trio.Nursery | None = None
        self.closed = False
        self.close_reason = ""
        self.going_away = False  # we sent GO_AWAY: no new incoming channels
        self.remote_going_away = False  # the peer sent GO_AWAY: open no new channels
        self.established = trio.Event()
        # Woken when a channel goes away or the writer drains a batch (for close()).
        self._progress = trio.lowlevel.ParkingLot()
        self._writing = False  # a batch is being written to the link
        self._corked = 0  # >0: queue frames without writing them (see cork)

    def __repr__(self) -> str:
        return f"MuxSession({self.name}, channels={len(self._channels)})"

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def next_channel_id(self) -> int:
        """The id the next `open_channel` call will use (fingerprints carry it)."""
        return self._next_id

    @property
    def usable(self) -> bool:
        return not self.closed and not self.remote_going_away and not self.going_away

    # --- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run until the link ends; every channel is reset when it does."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)
                nursery.start_soon(self._keepalive)
                self.established.set()
                task_status.started()
        finally:
            self._terminate(ResetReason(ResetCode.LINK_CLOSED, self.close_reason or "link closed"))
            await trio.aclose_forcefully(self.link.stream)

    async def close(self, grace: float = limits.GO_AWAY_GRACE_S) -> None:
        """Graceful shutdown: GO_AWAY, let open channels finish (up to `grace`), then close."""
        if self.closed:
            return
        self.going_away = True
        self._queue_control(encode_frame(FrameType.GO_AWAY, 0, value=GoAwayCode.NORMAL))
        # A UDP flow has no end to wait for (it only expires when idle): end those now, and
        # give the grace period to connections that can finish.
        for channel in list(self._channels.values()):
            if channel.request.protocol == "udp":
                channel.reset(ResetCode.GOING_AWAY, "peer shut down")
        with trio.move_on_after(grace):
            while self._channels:
                await self._progress.park()
        with trio.move_on_after(1.0):
            while self._control or self._ready or self._writing or self.link.pending is not None:
                await self._progress.park()
        self.close_reason = self.close_reason or "closed by us"
        self._terminate(ResetReason(ResetCode.GOING_AWAY, "peer shut down"))

    def abort(self, reason: str) -> None:
        """Close now, from synchronous code: every channel is reset with `reason`."""
        self.close_reason = self.close_reason or reason
        self._terminate(ResetReason(ResetCode.LINK_CLOSED, reason))

    def _terminate(self, reason: ResetReason) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = self.close_reason or str(reason)
        for channel in list(self._channels.values()):
            channel._mark_reset(reason)
        self._channels.clear()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _fail(self, exc: BaseException) -> None:
        if self.closed or self._failing:
            return
        self._failing = True
        log.warning("peer=%s event=session_closed reason=%r", self.name, str(exc))
        self.close_reason = str(exc)
        code = GoAwayCode.PROTOCOL_ERROR if isinstance(exc, ProtocolError) else GoAwayCode.NORMAL
        self._control.appendleft(encode_frame(FrameType.GO_AWAY, 0, value=code))
        self._kick()  # tell the peer why, if the link still takes it
        self._terminate(ResetReason(ResetCode.LINK_CLOSED, str(exc)))

    # --- channels -------------------------------------------------------------------

    async def open_channel(
        self, request: OpenRequest, timeout: float = limits.OPEN_TIMEOUT_S
    ) -> Channel:
        """Open a channel and wait for the peer to accept it. Raises ChannelReset."""
        channel = self.start_open(request)
        await self.wait_accepted(channel, timeout)
        return channel

    def start_open(self, request: OpenRequest) -> Channel:
        """Send OPEN and return the channel at once, before the peer accepted it: data
        may follow right behind (within the initial window) while the peer connects;
        `wait_accepted` tells whether it did. Raises ChannelReset."""
        if not self.usable:
            raise ChannelReset(ResetReason(ResetCode.GOING_AWAY, f"session {self.name} is closing"))
        channel_id = self._next_id
        self._next_id += 2
        payload = msgs.encode_open(request)
        if request.fingerprint:
            # The fingerprint is for the peer; ours would only sit in memory.
            request = OpenRequest(gatePort=request.gatePort, protocol=request.protocol)
        channel = Channel(self, channel_id, request, outgoing=True)
        self._channels[channel_id] = channel
        self._queue_control(encode_frame(FrameType.OPEN, channel_id, payload=payload))
        return channel

    async def wait_accepted(self, channel: Channel, timeout: float = limits.OPEN_TIMEOUT_S) -> None:
        """Wait until the peer accepted `channel` (from `start_open`). Raises
        ChannelReset when it refused, or did not answer within `timeout` (then the
        channel is reset)."""
        accepted = channel.accepted
        if accepted is None:  # already confirmed
            return
        if not accepted.is_set():
            with trio.move_on_after(timeout):
                await accepted.wait()
        if channel.reset_reason is not None:
            raise ChannelReset(channel.reset_reason)
        if not accepted.is_set():
            channel.reset(ResetCode.SERVICE_UNREACHABLE, f"no answer within {timeout:g}s")
            raise ChannelReset(ResetReason(ResetCode.SERVICE_UNREACHABLE, "open timed out"))
        channel.accepted = None  # nobody waits any more (~0.5 KB per open channel)

    async def _run_incoming(self, channel: Channel) -> None:
        try:
            await self._on_channel(channel)
        except ChannelError:
            pass
        except Exception as exc:
            log.exception("peer=%s channel=%d event=handler_failed", self.name, channel.id)
            channel.reset(ResetCode.CLOSED, f"internal error: {type(exc).__name__}")
        finally:
            if not channel.closed:
                channel.reset(ResetCode.CLOSED, "handler ended")

    def _forget(self, channel: Channel) -> None:
        self._channels.pop(channel.id, None)
        self._progress.unpark_all()
        self._blocked_on_session.discard(channel)
        if channel.reset_reason is not None:
            # Nothing more will be sent on it; frames still queued are moot.
            self._outq.pop(channel, None)
            self._queued.pop(channel, None)

    def send_message(self, message: Message) -> None:
        if self.closed:
            return
        payload = msgs.encode_message(message)
        if len(payload) > limits.MAX_CONTROL_MESSAGE:
            raise ProtocolError(f"control message of {len(payload)} bytes is too large to send")
        self._queue_control(encode_frame(FrameType.MESSAGE, 0, payload=payload))

    # --- flow control (called by channels) ------------------------------------------

    def _reserve_send(self, channel: Channel, wanted: int) -> int:
        n = min(
            wanted,
            channel.send_window.available,
            self.send_window.available,
            limits.MAX_FRAME_PAYLOAD,
        )
        if n <= 0:
            if self.send_window.available <= 0:
                self._blocked_on_session.add(channel)
            return 0
        channel.send_window.spend(n)
        self.send_window.spend(n)
        return n

    def _try_reserve_whole(self, channel: Channel, size: int) -> bool:
        if (
            size > channel.send_window.available
            or size > self.send_window.available
            or self._queued.get(channel, 0) > CHANNEL_WRITE_QUEUE
        ):
            return False
        channel.send_window.spend(size)
        self.send_window.spend(size)
        return True

    def _on_consumed(self, channel: Channel, n: int) -> None:
        now = trio.current_time()
        if not channel.closed:
            credit = channel.receive_window.on_consumed(n, now, self.rtt)
            if credit:
                self._queue_control(encode_frame(FrameType.WINDOW_UPDATE, channel.id, value=credit))
        self._consume_session(n, now)

    def _consume_session(self, n: int, now: float) -> None:
        credit = self.receive_window.on_consumed(n, now, None)
        if credit:
            self._queue_control(encode_frame(FrameType.WINDOW_UPDATE, 0, value=credit))

    # --- writer ---------------------------------------------------------------------

    def cork(self) -> None:
        """Hold what is queued until `uncork`, so a batch (datagrams read in one wakeup)
        goes out as one record instead of one record each. Nests."""
        self._corked += 1

    def uncork(self) -> None:
        self._corked -= 1
        if not self._corked and (self._control or self._ready):
            self._kick()

    def _kick(self) -> None:
        """Something was queued: write it now if the link is idle, else wake the writer."""
        if self._corked:
            return
        link = self.link
        if self._writing or self._flushing or self.closed or not link.can_send_now:
            self._writer_wakeup.set()
            return
        self._flushing = True
        try:
            while self._control or self._ready:
                size = self._assemble()
                if size == 0:  # a control frame larger than a record: the writer splits it
                    self._writer_wakeup.set()
                    break
                link.send_now(self._plain_view[:size])
                if not link.can_send_now:  # the socket is full: the writer finishes
                    self._writer_wakeup.set()
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if not self._failing:  # (while failing, the GO_AWAY is best effort)
                self._fail(ConnectionError(f"link write failed: {exc}"))
            return
        finally:
            self._flushing = False
        self._progress.unpark_all()

    def _queue_control(self, frame: bytes) -> None:
        if self.closed:
            return
        self._control.append(frame)
        self._kick()

    def _queue_channel_frame(self, channel: Channel, flags: int, payload: bytes | memoryview) -> None:
        queue = self._outq.get(channel)
        if queue is None:
            queue = self._outq[channel] = collections.deque()
            self._queued[channel] = 0
            self._ready.append(channel)
        queue.append((flags, payload))
        self._queued[channel] += len(payload)
        self._kick()

    def _queue_data(self, channel: Channel, payload: bytes | memoryview) -> None:
        self._queue_channel_frame(channel, 0, payload)

    def _queue_fin(self, channel: Channel) -> None:
        # In the channel's own queue, so the FIN follows that channel's data.
        self._queue_channel_frame(channel, Flag.FIN, b"")
        if channel.closed:
            self._forget(channel)

    def _queue_accept(self, channel: Channel) -> None:
        self._queue_control(encode_frame(FrameType.ACCEPT, channel.id))

    def _queue_reset(self, channel: Channel, reason: ResetReason) -> None:
        self._queue_control(encode_frame(FrameType.RESET, channel.id, payload=msgs.encode_reset(reason)))

    def _link_busy(self) -> bool:
        """A record is being written, or frames wait to be."""
        return (
            self._writing or self._flushing or bool(self._control) or bool(self._ready)
            or not self.link.can_send_now
        )

    def _may_send(self, channel: Channel) -> bool:
        return not self.closed and channel.reset_reason is None and not channel.local_fin

    def direct_send_should_wait(self, channel: Channel) -> bool:
        """A direct sender (`send_direct`) should wait for the link rather than queue:
        the link writes to a socket and is busy, and this channel may still send. Its
        data then stays in the kernel's socket buffer (backpressure to its sender)
        instead of in a queue here."""
        return self.link.writes_directly and self._link_busy() and self._may_send(channel)

    async def wait_for_link(self) -> None:
        """Until the writer finished a batch, a channel went away, or the session closed."""
        await self._progress.park()

    def can_send_direct(self, channel: Channel) -> bool:
        """Whether `send_direct` may run now: the link is idle with nothing queued (so no
        other channel's frames are passed over) and the windows have room."""
        return (
            not self._link_busy()
            and not self._corked
            and self._may_send(channel)
            and channel.send_window.available >= limits.DIRECT_SEND_MIN
            and self.send_window.available >= limits.DIRECT_SEND_MIN
        )

    def send_direct(self, channel: Channel, fd: int, size: int) -> int:
        """Read up to `size` bytes from the socket `fd` straight into the record buffer
        behind a DATA header, then seal and write the record: no intermediate object, no
        copy, no queue. Only when `can_send_direct`. Returns the bytes sent (0: the socket
        reached EOF); BlockingIOError when it has nothing to read."""
        size = min(
            size, channel.send_window.available, self.send_window.available,
            limits.MAX_FRAME_PAYLOAD, len(self._plain) - HEADER.size,
        )
        got = os.readv(fd, [self._plain_view[HEADER.size : HEADER.size + size]])
        if not got:
            return 0
        channel.send_window.spend(got)
        self.send_window.spend(got)
        channel.bytes_out += got
        HEADER.pack_into(self._plain, 0, VERSION, FrameType.DATA, 0, channel.id, got)
        link = self.link
        self._flushing = True
        try:
            link.send_now(self._plain_view[: HEADER.size + got])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(ConnectionError(f"link write failed: {exc}"))
            return got  # the session is closed: the channel learns it from its reset
        finally:
            self._flushing = False
        if not link.can_send_now:  # the socket took part of it: the writer sends the rest
            self._writer_wakeup.set()
        return got

    def queued_for(self, channel: Channel) -> int:
        return self._queued.get(channel, 0)

    def _assemble(self) -> int:
        return assemble_record(self._plain, self._control, self._ready, self._outq, self._queued)

    async def _writer(self) -> None:
        link = self.link
        while True:
            if not self._control and not self._ready and link.pending is None:
                await self._writer_wakeup.wait()
                self._writer_wakeup = trio.Event()
                continue
            self._writing = True
            try:
                await link.flush()
                size = self._assemble()
                if size:
                    await link.send_record(self._plain_view[:size])
                elif self._control:
                    # A control message larger than a record (a big route table) spans
                    # several records; the decoder reassembles it.
                    frame = memoryview(self._control.popleft())
                    for offset in range(0, len(frame), link.max_plaintext):
                        await link.send_record(frame[offset : offset + link.max_plaintext])
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._fail(ConnectionError(f"link write failed: {exc}"))
                return
            finally:
                self._writing = False
            self._progress.unpark_all()

    # --- reader ---------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            while True:
                records = await self.link.receive_records()
                if not records:
                    self.close_reason = self.close_reason or "peer closed the link"
                    log.info("peer=%s event=link_eof", self.name)
                    self._terminate(ResetReason(ResetCode.LINK_CLOSED, "peer closed the link"))
                    return
                self._last_received = trio.current_time()
                for record in records:
                    for frame in self._decoder.feed(record):
                        self._dispatch(frame)
        except ProtocolError as exc:
            self._fail(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(ConnectionError(f"link read failed: {exc}"))

    def _dispatch(self, frame) -> None:
        ftype = frame.type
        if ftype is FrameType.DATA:
            self._on_data(frame)
        elif ftype is FrameType.WINDOW_UPDATE:
            self._on_window_update(frame.channel, frame.value)
        elif ftype is FrameType.OPEN:
            self._on_open(frame.channel, frame.payload)
        elif ftype is FrameType.ACCEPT:
            channel = self._channels.get(frame.channel)
            if channel is not None and channel.accepted is not None:
                channel.accepted.set()
                if channel.waker is not None:
                    channel.waker()
        elif ftype is FrameType.RESET:
            channel = self._channels.get(frame.channel)
            if channel is not None:
                channel._mark_reset(msgs.decode_reset(frame.payload))
        elif ftype is FrameType.PING:
            self._on_ping(frame)
        elif ftype is FrameType.GO_AWAY:
            self.remote_going_away = True
            log.info("peer=%s event=go_away code=%d", self.name, frame.value)
        elif ftype is FrameType.MESSAGE:
            self._on_control_message(frame.payload)

    def _on_data(self, frame) -> None:
        n = len(frame.payload)
        self.receive_window.on_received(n)
        channel = self._channels.get(frame.channel)
        if channel is None or channel.reset_reason is not None or channel.remote_fin:
            # Late data for a channel we already reset: give the session credit back.
            if n:
                self._consume_session(n, trio.current_time())
            return
        if n:
            channel.receive_window.on_received(n)
            channel._deliver(frame.payload)
        if int(frame.flags) & _FIN:  # (IntFlag's own & is slow on a per-frame path)
            channel._deliver_fin()
            if channel.closed:
                self._forget(channel)

    def _on_window_update(self, channel_id: int, credit: int) -> None:
        if channel_id == 0:
            self.send_window.grant(credit)
            blocked, self._blocked_on_session = self._blocked_on_session, set()
            for channel in blocked:
                channel._credit_changed()
            return
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel.send_window.grant(credit)
            channel._credit_changed()

    def _on_open(self, channel_id: int, payload: bytes) -> None:
        mine = 1 if self.link.initiator else 0
        if channel_id % 2 == mine or channel_id <= self._last_remote_id:
            raise ProtocolError(f"peer opened channel {channel_id}, which is not its to open")
        self._last_remote_id = channel_id
        reason: ResetReason | None = None
        request = None
        try:
            request = msgs.decode_open(payload)
        except msgs.MessageError as exc:
            reason = ResetReason(ResetCode.PROTOCOL_ERROR, str(exc))
        if self.going_away:
            reason = ResetReason(ResetCode.GOING_AWAY, "peer is shutting down")
        elif len(self._channels) >= limits.MAX_CHANNELS_PER_SESSION:
            reason = ResetReason(ResetCode.REFUSED, "too many channels on this link")
        if reason is not None or request is None or self._nursery is None:
            log.info("peer=%s channel=%d event=open_refused reason=%r", self.name, channel_id, str(reason))
            self._queue_control(
                encode_frame(FrameType.RESET, channel_id, payload=msgs.encode_reset(reason))
            )
            return
        channel = Channel(self, channel_id, request)
        self._channels[channel_id] = channel
        self._nursery.start_soon(self._run_incoming, channel)

    def _on_ping(self, frame) -> None:
        if frame.flags & Flag.ACK:
            if frame.value == self._ping_token and self._ping_sent_at is not None:
                sample = trio.current_time() - self._ping_sent_at
                self.rtt = sample if self.rtt is None else 0.8 * self.rtt + 0.2 * sample
                self._ping_sent_at = None
            return
        self._queue_control(encode_frame(FrameType.PING, 0, Flag.ACK, value=frame.value))

    def _on_control_message(self, payload: bytes) -> None:
        try:
            message = msgs.decode_message(payload)
        except msgs.MessageError as exc:
            log.warning("peer=%s event=bad_control_message error=%r", self.name, str(exc))
            return
        self._on_message(message)

    # --- keepalive ------------------------------------------------------------------

    def _send_ping(self) -> None:
        self._ping_token = (self._ping_token + 1) & 0xFFFFFFFF
        self._ping_sent_at = trio.current_time()
        self._queue_control(encode_frame(FrameType.PING, 0, value=self._ping_token))

    async def _keepalive(self) -> None:
        self._send_ping()  # first RTT sample, for window auto-tuning
        while True:
            await trio.sleep(limits.KEEPALIVE_INTERVAL_S)
            silent = trio.current_time() - self._last_received
            if silent >= limits.DEAD_PEER_TIMEOUT_S:
                self._fail(ConnectionError(f"peer silent for {silent:.0f}s (dead peer timeout)"))
                return
            self._send_ping()
