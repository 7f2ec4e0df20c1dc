"""The trio driver for UDX: one UDP socket, any number of streams (sans-IO
`UdxConnection`s), other datagrams handed to a callback.

One reader task drains the socket per wakeup (up to UDX_RECV_BATCH datagrams), feeds
each stream, then lets every touched stream transmit once: a batch of DATA is answered
by a cumulative ACK (with SACK blocks) every UDX_ACK_EVERY packets and at the batch's
end, all within the same wakeup. One timer task serves every stream's RTO / probe /
TIME_WAIT deadline. Sends go straight to a non-blocking duplicate of the socket (runs of
equal-sized packets in one sendmsg with UDP GSO on Linux); only when the kernel buffer
is full does a writer task wait for writability.

Datagrams that are not UDX, or UDX for an id no live stream has (as Node does), go to
`on_datagram`. A stream stays in the table after both ENDs for UDX_TIME_WAIT_S (to
re-ACK a lost last ACK), and after `aclose` for up to UDX_DETACHED_LINGER_S.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import socket as stdlib_socket
import struct
import sys
from collections import deque
from typing import Callable

import trio

from hypergate import limits
from hypergate.udx.connection import UdxConnection
from hypergate.udx.packet import HEADER_SIZE, MAGIC, VERSION, UdxPacketError

log = logging.getLogger(__name__)

Address = tuple[str, int]
_STREAM_ID = struct.Struct("<I")
_UDP_SEGMENT = 103  # Linux UDP_SEGMENT (UDP GSO), not exported by the socket module
_SEGMENT_SIZE = struct.Struct("=H")
_GSO_UNSUPPORTED = {errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EIO}


class _ConflictGuard:
    """trio's stream contract: two tasks sending (or receiving) at once is a bug."""

    def __init__(self, message: str) -> None:
        self._held = False
        self._message = message

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(self, *exc) -> None:
        self._held = False


class UdxSocket:
    """One bound UDP socket carrying any number of UDX streams, plus other datagrams
    (DHT RPC, 1-byte hole-punch probes) handed to a callback."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        on_datagram: Callable[[bytes, Address], None] | None = None,
    ) -> None:
        self._sock = sock
        # A non-blocking duplicate we can sendto/recvfrom synchronously, without a task
        # switch per datagram.
        self._raw = stdlib_socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        self._raw.setblocking(False)
        for option in (stdlib_socket.SO_RCVBUF, stdlib_socket.SO_SNDBUF):
            try:  # a bulk stream's burst must not overflow the default ~200 KiB buffers
                self._raw.setsockopt(stdlib_socket.SOL_SOCKET, option, limits.UDX_SOCKET_BUFFER)
            except OSError:
                pass
        self._on_datagram = on_datagram
        self._gso = sys.platform == "linux"  # cleared at the first refusal
        self._streams: dict[int, UdxStream] = {}
        self._timer_scope: trio.CancelScope | None = None
        self._backlog: deque[tuple[bytes, Address]] = deque()
        self._backlog_event = trio.Event()
        self._closed = False
        self.stats: dict[str, int] = {
            "datagrams_in": 0,
            "datagrams_out": 0,
            "udx_in": 0,
            "other_in": 0,
            "dropped_malformed": 0,
            "dropped_unknown_stream": 0,
            "send_errors": 0,
            "receive_errors": 0,
            "callback_errors": 0,
            "retransmits": 0,  # summed over this socket's streams
            "rto_expiries": 0,
        }

    # ------------------------------------------------------------------ public API
    @property
    def local_address(self) -> Address:
        return tuple(self._sock.getsockname()[:2])  # type: ignore[return-value]

    def new_stream_id(self) -> int:
        while True:
            candidate = secrets.randbits(32)
            if candidate not in self._streams:
                return candidate

    def open_stream(self, local_id: int, remote_id: int, remote_address: Address | None) -> UdxStream:
        if self._closed:
            raise trio.ClosedResourceError("the UDX socket is closed")
        if local_id in self._streams:
            raise ValueError(f"UDX stream id {local_id} is already in use on this socket")
        stream = UdxStream(self, local_id, remote_id, None)
        if remote_address is not None:
            stream._connect(remote_address)
        self._streams[local_id] = stream
        return stream

    def handle_datagram(self, data: bytes, source: Address) -> None:
        try:
            touched: set[UdxStream] = set()
            self._ingest(data, (source[0], source[1]), touched, trio.current_time())
            self._service(touched)
        except Exception:  # never raise into the hole puncher
            log.exception("udx handle_datagram failed source=%s", source)

    async def send_to(self, data: bytes, address: Address) -> None:
        await self._sock.sendto(data, address)
        self.stats["datagrams_out"] += 1

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Reader loop + timers for all streams; run it with nursery.start(udx.run).
        Cancelling it ends every stream and closes the socket."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._writer_loop)
                task_status.started()
                await self._reader_loop()
        finally:
            self._shutdown()

    # ------------------------------------------------------------------ tasks
    async def _reader_loop(self) -> None:
        raw = self._raw
        size = limits.UDX_RECV_BUFFER
        while True:
            await trio.lowlevel.wait_readable(raw)
            touched: set[UdxStream] = set()
            now = trio.current_time()
            for _ in range(limits.UDX_RECV_BATCH):
                try:
                    data, source = raw.recvfrom(size)
                except BlockingIOError:
                    break
                except OSError:  # e.g. ECONNREFUSED from an ICMP error on Linux
                    self.stats["receive_errors"] += 1
                    continue
                self._ingest(data, source, touched, now)
            if touched:
                self._service(touched)

    async def _timer_loop(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._earliest_deadline()) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            due = [s for s in self._streams.values() if s._deadline() <= now]
            for stream in due:
                stream.conn.handle_timeout(now)
            self._service(due)

    async def _writer_loop(self) -> None:
        while True:
            await self._backlog_event.wait()
            self._backlog_event = trio.Event()
            while self._backlog:
                await trio.lowlevel.wait_writable(self._raw)
                self._flush_backlog()

    # ------------------------------------------------------------------ internals
    def _ingest(self, data: bytes, source: Address, touched: set, now: float) -> None:
        self.stats["datagrams_in"] += 1
        stream = None
        if len(data) >= HEADER_SIZE and data[0] == MAGIC and data[1] == VERSION:  # is_udx, inlined
            stream = self._streams.get(_STREAM_ID.unpack_from(data, 4)[0])
            if stream is None:
                self.stats["dropped_unknown_stream"] += 1
        if stream is None:
            self.stats["other_in"] += 1
            if self._on_datagram is not None:
                try:
                    self._on_datagram(data, (source[0], source[1]))
                except Exception:
                    self.stats["callback_errors"] += 1
                    log.exception("udx on_datagram callback failed source=%s", source)
            return
        conn = stream.conn
        try:
            conn.receive_datagram(data, now)
        except UdxPacketError:
            self.stats["dropped_malformed"] += 1
            return
        self.stats["udx_in"] += 1
        if stream.remote_address is None:
            stream._connect(source)  # server side: the first valid packet connects (firewall hook)
        if conn.ack_due and stream.remote_address is not None and conn.error is None:
            self._transmit([conn.take_ack()], stream.remote_address)
        touched.add(stream)

    def _service(self, streams) -> None:
        """After input or a timer: let each stream transmit, wake its tasks, re-arm the
        timer, and forget streams that are over."""
        if not streams:
            return
        now = trio.current_time()
        for stream in streams:
            conn = stream.conn
            if stream.remote_address is not None and conn.error is None:
                out = conn.poll_transmit(now)
                if out:
                    self._transmit(out, stream.remote_address)
            for key in ("retransmits", "rto_expiries"):
                self.stats[key] += conn.stats[key] - stream._reported[key]
                stream._reported[key] = conn.stats[key]
            conn.mark_time(now)
            stream._wake()
            if stream._finished(now):
                if self._streams.get(stream.local_id) is stream:
                    del self._streams[stream.local_id]
                    if conn.error is None and conn.done_at is None:
                        # Closed by us long ago and the peer still has not ended: reset
                        # it rather than leave it retransmitting into silence.
                        stream._destroy()
            else:
                self._reschedule(stream._deadline())

    def _transmit(self, datagrams: list[bytes], address: Address) -> None:
        if self._closed:
            return
        if self._backlog:
            self._backlog.extend((d, address) for d in datagrams)
            return
        index = 0
        count = len(datagrams)
        while index < count:
            datagram = datagrams[index]
            run = 1
            if self._gso:
                # Equal-sized datagrams in a row go out in one syscall (Linux UDP GSO).
                size = len(datagram)
                limit = min(count - index, limits.UDX_GSO_SEGMENTS)
                while run < limit and len(datagrams[index + run]) == size:
                    run += 1
            try:
                if run > 1:
                    self._raw.sendmsg(
                        [b"".join(datagrams[index : index + run])],
                        [(stdlib_socket.SOL_UDP, _UDP_SEGMENT, _SEGMENT_SIZE.pack(len(datagram)))],
                        0,
                        address,
                    )
                else:
                    self._raw.sendto(datagram, address)
            except BlockingIOError:
                self._backlog.extend((d, address) for d in datagrams[index:])
                self._backlog_event.set()
                return
            except OSError as error:
                if run > 1 and error.errno in _GSO_UNSUPPORTED:
                    self._gso = False  # not on this kernel / device: one datagram per call
                    continue
                self.stats["send_errors"] += run  # unreachable, no buffer space: UDX recovers
            else:
                self.stats["datagrams_out"] += run
            index += run

    def _flush_backlog(self) -> None:
        backlog = self._backlog
        while backlog:
            datagram, address = backlog[0]
            try:
                self._raw.sendto(datagram, address)
            except BlockingIOError:
                return
            except OSError:
                self.stats["send_errors"] += 1
            else:
                self.stats["datagrams_out"] += 1
            backlog.popleft()

    def _earliest_deadline(self) -> float:
        return min((s._deadline() for s in self._streams.values()), default=math.inf)

    def _reschedule(self, deadline: float) -> None:
        scope = self._timer_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def _shutdown(self) -> None:
        self._closed = True
        for stream in list(self._streams.values()):
            stream.conn._fail("the UDX socket was closed")
            stream._wake()
        self._streams.clear()
        trio.lowlevel.notify_closing(self._raw)
        self._raw.close()
        self._sock.close()


class UdxStream(trio.abc.HalfCloseableStream):
    """A reliable ordered byte stream to one UDX peer (trio Stream semantics)."""

    def __init__(self, udx: UdxSocket, local_id: int, remote_id: int, remote_address: Address | None) -> None:
        self._udx = udx
        self.local_id = local_id
        self.remote_id = remote_id
        self.remote_address: Address | None = remote_address
        self.conn = UdxConnection(local_id, remote_id)
        self._recv_lot = trio.lowlevel.ParkingLot()
        self._send_lot = trio.lowlevel.ParkingLot()
        self._message_lot = trio.lowlevel.ParkingLot()
        self._send_guard = _ConflictGuard("another task is already sending on this UDX stream")
        self._recv_guard = _ConflictGuard("another task is already receiving on this UDX stream")
        self._closed = False
        self._detached_at: float | None = None
        self._reported = {"retransmits": 0, "rto_expiries": 0}  # already added to the socket's stats

    def __repr__(self) -> str:
        return f"<UdxStream {self.local_id:#x}->{self.remote_id:#x} {self.remote_address}>"

    # ------------------------------------------------------------------ trio Stream
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_sendable()
            view = memoryview(data).cast("B")
            offset = 0
            conn = self.conn
            while offset < len(view):
                taken = conn.write(view[offset:])
                offset += taken
                if taken:
                    self._udx._service((self,))
                if offset < len(view):
                    await self._send_lot.park()
                    self._check_sendable()
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_guard:
            while self.conn.send_space == 0 and not self._closed and self.conn.error is None:
                await self._send_lot.park()
            await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError("the UDX stream is closed")
            if self.conn.error is not None:
                raise trio.BrokenResourceError(self.conn.error)
            if not self.conn.end_sent:
                self.conn.end()
                self._udx._service((self,))
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = 256 * 1024
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._recv_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            conn = self.conn
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the UDX stream is closed")
                if conn.readable_bytes:
                    data = conn.read(max_bytes)
                    if conn.wants_transmit:
                        self._udx._service((self,))  # window update
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                if conn.eof_received:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                if conn.error is not None:
                    raise trio.BrokenResourceError(conn.error)
                await self._recv_lot.park()

    async def aclose(self) -> None:
        """Graceful: END, wait (UDX_CLOSE_TIMEOUT_S at most) for its ack, then forget;
        the socket keeps answering the peer for a while. Cancelled (as by
        trio.aclose_forcefully): DESTROY."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        conn = self.conn
        try:
            await trio.lowlevel.checkpoint()
            if conn.error is None and self.remote_address is not None:
                if not conn.end_sent:
                    conn.end()
                    self._udx._service((self,))
                with trio.move_on_after(limits.UDX_CLOSE_TIMEOUT_S):
                    while not conn.end_acked and conn.error is None:
                        await self._send_lot.park()
        except trio.Cancelled:
            self._destroy()
            raise
        finally:
            self._closed = True
            self._detached_at = trio.current_time()
            conn.detach()
            self._udx._service((self,))

    # ------------------------------------------------------------------ MESSAGE
    def send_message(self, data: bytes) -> None:
        """An unreliable datagram (UDX MESSAGE), at most UDX_MAX_PAYLOAD bytes."""
        self._check_sendable(allow_after_eof=True)
        if self.remote_address is None:
            raise trio.BrokenResourceError("the UDX stream has no remote address yet")
        self._udx._transmit([self.conn.message(data)], self.remote_address)

    async def receive_message(self) -> bytes:
        """The next MESSAGE; a bounded queue (UDX_MESSAGE_QUEUE), newer ones dropped when full."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.conn.messages:
            if self._closed:
                raise trio.ClosedResourceError("the UDX stream is closed")
            if self.conn.error is not None:
                raise trio.BrokenResourceError(self.conn.error)
            await self._message_lot.park()
        message = self.conn.messages.popleft()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return message

    # ------------------------------------------------------------------ internals
    def _check_sendable(self, allow_after_eof: bool = False) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the UDX stream is closed")
        if self.conn.error is not None:
            raise trio.BrokenResourceError(self.conn.error)
        if self.conn.end_sent and not allow_after_eof:
            raise trio.ClosedResourceError("send_eof was already called on this UDX stream")

    def _connect(self, address: Address) -> None:
        self.remote_address = (address[0], address[1])
        self.conn.peer_label = f"{address[0]}:{address[1]}"

    def _destroy(self) -> None:
        if self.conn.error is None:
            datagram = self.conn.destroy()
            if self.remote_address is not None:
                self._udx._transmit([datagram], self.remote_address)

    def _wake(self) -> None:
        self._recv_lot.unpark_all()
        self._send_lot.unpark_all()
        self._message_lot.unpark_all()

    def _deadline(self) -> float:
        deadlines = [self.conn.next_deadline or math.inf]
        if self.conn.done_at is not None:
            deadlines.append(self.conn.done_at + limits.UDX_TIME_WAIT_S)
        if self._detached_at is not None:
            deadlines.append(self._detached_at + limits.UDX_DETACHED_LINGER_S)
        return min(deadlines)

    def _finished(self, now: float) -> bool:
        if self.conn.error is not None:
            return True
        if self.conn.done_at is not None and now >= self.conn.done_at + limits.UDX_TIME_WAIT_S:
            return True
        return self._detached_at is not None and now >= self._detached_at + limits.UDX_DETACHED_LINGER_S
