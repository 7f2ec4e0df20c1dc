"""One channel of a mux session: a TCP connection or a UDP flow, both directions.

The session owns the channel table and the link; a channel is the handle its owner (a
forwarding task) reads from and writes to. States, per direction:

    open --FIN sent--> local half-closed;  open --FIN received--> remote half-closed
    both FINs, or a RESET either way --> closed (removed from the session)
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .. import limits
from ..errors import ChannelError
from ..wire.messages import OpenRequest, ResetCode, ResetReason
from .flow import ReceiveWindow, SendWindow

# Outgoing data a channel may have queued for the link writer before its sender waits.
CHANNEL_WRITE_QUEUE = 2 * limits.MAX_FRAME_PAYLOAD

if TYPE_CHECKING:
    from .session import MuxSession


class ChannelReset(ChannelError):
    """The channel was reset (by the peer, by us, or because the link went away)."""

    def __init__(self, reason: ResetReason) -> None:
        super().__init__(str(reason))
        self.reason = reason


class Channel:
    # Thousands of channels may sit idle on one session: slots and a lazily created inbox
    # keep an idle channel to about a kilobyte here.
    __slots__ = (
        "session", "id", "request", "send_window", "receive_window", "_inbox",
        "_inbox_changed", "_send_progress", "accepted", "local_fin", "remote_fin",
        "reset_reason", "bytes_in", "bytes_out", "sink", "waker", "__weakref__",
    )

    def __init__(
        self, session: MuxSession, channel_id: int, request: OpenRequest, outgoing: bool = False
    ) -> None:
        self.session = session
        self.id = channel_id
        self.request = request
        self.send_window = SendWindow(limits.INITIAL_CHANNEL_WINDOW)
        self.receive_window = ReceiveWindow(
            limits.INITIAL_CHANNEL_WINDOW, limits.MAX_CHANNEL_WINDOW
        )
        # A deque while data waits, else an empty tuple (an empty deque costs ~600 bytes).
        self._inbox: collections.deque[bytes | memoryview] | tuple[()] = ()
        # Both made when a task first waits (an idle channel whose data goes through the
        # sink has no receiver waiting: ~0.3 KB less each).
        self._inbox_changed: trio.lowlevel.ParkingLot | None = None
        self._send_progress: trio.lowlevel.ParkingLot | None = None  # made when a sender waits
        # Channels we open: set when the other side confirmed the open. Incoming channels
        # have nothing to wait for (and 10,000 idle ones would pay ~0.5 KB each for it).
        self.accepted: trio.Event | None = trio.Event() if outgoing else None
        self.local_fin = False
        self.remote_fin = False
        self.reset_reason: ResetReason | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        # Optional fast path, set by the channel's owner: called in the session's reader
        # with data as it arrives while nothing is waiting in the inbox; returns how many
        # bytes it passed on at once (a non-blocking socket write). What it does not take
        # goes to the inbox as usual. This saves a task switch per message, which is most
        # of the added latency of a hop.
        self.sink: Callable[[bytes | memoryview], int] | None = None
        # Optional, set by the owner: called (in the session's reader, never blocking)
        # whenever the inbox gets something the sink did not take, the peer's FIN, or a
        # reset, so the owner can start a receiver only then instead of keeping a task
        # parked in `receive` for the channel's whole life.
        self.waker: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"Channel(id={self.id}, gate={self.request.gatePort}/{self.request.protocol})"

    @property
    def closed(self) -> bool:
        return self.reset_reason is not None or (self.local_fin and self.remote_fin)

    # --- receiving ------------------------------------------------------------------

    async def receive(self) -> bytes | memoryview:
        """The next chunk of data; b"" once the peer half-closed. Raises ChannelReset.

        Bulk data comes as a read-only memoryview into the decrypted record (no copy)."""
        while not self._inbox:
            if self.reset_reason is not None:
                raise ChannelReset(self.reset_reason)
            if self.remote_fin:
                return b""
            if self._inbox_changed is None:
                self._inbox_changed = trio.lowlevel.ParkingLot()
            await self._inbox_changed.park()
        data = self._inbox.popleft()
        if not self._inbox:
            self._inbox = ()
        self.session._on_consumed(self, len(data))
        return data

    def _deliver(self, data: bytes | memoryview) -> None:
        self.bytes_in += len(data)
        if self.sink is not None and not self._inbox:
            taken = self.sink(data)
            if taken:
                self.session._on_consumed(self, taken)
                if taken == len(data):
                    return
                data = memoryview(data)[taken:]
        if not self._inbox:
            self._inbox = collections.deque()
        self._inbox.append(data)
        self._wake()

    def _deliver_fin(self) -> None:
        self.remote_fin = True
        self._wake()

    def flush_to_sink(self) -> None:
        """Offer data that arrived before the sink was set (it may come right behind the
        OPEN) to the sink, in order; what it does not take stays for `receive`."""
        sink = self.sink
        inbox = self._inbox
        while inbox and sink is not None:
            data = inbox[0]
            taken = sink(data)
            if not taken:
                return
            self.session._on_consumed(self, taken)
            if taken < len(data):
                inbox[0] = memoryview(data)[taken:]
                return
            inbox.popleft()
        if not inbox:
            self._inbox = ()

    @property
    def has_pending(self) -> bool:
        """receive() would return at once: data waits, or the peer's FIN, or a reset."""
        return bool(self._inbox) or self.remote_fin or self.reset_reason is not None

    @property
    def at_eof(self) -> bool:
        """receive() would return b"" at once: the peer's FIN came after all its data."""
        return self.remote_fin and not self._inbox and self.reset_reason is None

    def _wake(self) -> None:
        if self._inbox_changed is not None:
            self._inbox_changed.unpark_all()
        if self.waker is not None:
            self.waker()

    # --- sending --------------------------------------------------------------------

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Queue all of `data` for the peer, waiting for window credit as needed.

        Immutable data (bytes, read-only views) is queued without a copy: the writer
        copies it once, into the record. Mutable buffers are copied first, as the caller
        may reuse them as soon as this returns."""
        view = memoryview(data)
        if not view.readonly:
            view = memoryview(bytes(view))
        while view:
            self._check_sendable()
            n = self.session._reserve_send(self, len(view))
            if n == 0:
                await self._wait_for_credit()
                continue
            self.bytes_out += n
            self.session._queue_data(self, view[:n])  # a view: no copy
            view = view[n:]
            # Backpressure: at most a couple of frames wait for the writer per channel.
            while self.session.queued_for(self) > CHANNEL_WRITE_QUEUE and self.reset_reason is None:
                await self._wait_for_credit()

    def can_send_direct(self) -> bool:
        return self.session.can_send_direct(self)

    async def wait_to_send_direct(self) -> bool:
        """Wait while the link is busy (see `MuxSession.direct_send_should_wait`);
        True when it waited."""
        session = self.session
        waited = False
        while session.direct_send_should_wait(self):
            await session.wait_for_link()
            waited = True
        return waited

    def send_direct(self, fd: int, size: int) -> int:
        """Send what a socket has, read straight into the link's record (see
        `MuxSession.send_direct`); only when `can_send_direct()`."""
        return self.session.send_direct(self, fd, size)

    def try_send_whole(self, data: bytes) -> bool:
        """Queue all of `data` now, or nothing (False) when the windows or the write queue
        are full. For UDP flows, which drop a datagram rather than delay it behind a full
        window, and for a client's first bytes, sent in one record with the OPEN."""
        self._check_sendable()
        if not self.session._try_reserve_whole(self, len(data)):
            return False
        self.bytes_out += len(data)
        self.session._queue_data(self, data)
        return True

    async def send_eof(self) -> None:
        """Half-close: the peer's reader gets b"" after the data already sent."""
        if self.local_fin or self.reset_reason is not None:
            return
        self.local_fin = True
        self.session._queue_fin(self)

    def _check_sendable(self) -> None:
        if self.reset_reason is not None:
            raise ChannelReset(self.reset_reason)
        if self.local_fin:
            raise ChannelError(f"{self!r}: send after half-close")

    async def _wait_for_credit(self) -> None:
        if self._send_progress is None:
            self._send_progress = trio.lowlevel.ParkingLot()
        await self._send_progress.park()

    def _credit_changed(self) -> None:
        if self._send_progress is not None:
            self._send_progress.unpark_all()

    # --- ending ---------------------------------------------------------------------

    def reset(self, code: str = ResetCode.CLOSED, message: str = "") -> None:
        """Abort both directions now and tell the peer why. Idempotent."""
        if self.reset_reason is not None or self.closed:
            return
        reason = ResetReason(code, message)
        self._mark_reset(reason)
        self.session._queue_reset(self, reason)

    def _mark_reset(self, reason: ResetReason) -> None:
        self.reset_reason = reason
        if self.accepted is not None:
            self.accepted.set()
        self._wake()
        if self._send_progress is not None:
            self._send_progress.unpark_all()
        self.session._forget(self)

    def accept(self) -> None:
        """Confirm an incoming open: the service is connected, data may flow."""
        if self.reset_reason is None:
            self.session._queue_accept(self)
