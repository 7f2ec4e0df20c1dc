"""One UDX stream's protocol state, sans-IO (UDX-WIRE.md §3-§12).

Feed it datagrams with `receive_datagram(data, now)` (or decoded packets with
`receive`), application bytes with `write`, timer ticks with `handle_timeout(now)`;
take datagrams from `poll_transmit(now)` (and `take_ack()` when `ack_due`) and read
bytes with `read`. No I/O, no clock of its own, no trio.

Sequence numbers count packets, modulo 2^32. Reliability: the scoreboard (scoreboard.py)
holds what was sent, keyed by seq; cumulative acks and SACK blocks clear it; losses are
found by SACK count (RFC 6675), by time (RACK, RFC 8985) and by a tail loss probe, and
as a last resort by the RTO (RFC 6298, Karn's rule). Congestion control: CUBIC in
packets. Flow control: never more payload bytes in flight than the peer's rwnd; ours is
the receive buffer minus what is buffered, reopened by reading.

ACK policy: every DATA/END is acknowledged (duplicates too), but the ACKs of one receive
batch are merged: one after every UDX_ACK_EVERY packets and one when the batch ends,
all within the same wakeup, so the peer sees no delay. Pure ACKs from the peer are
merged likewise (the newest of a batch is processed).
"""

from __future__ import annotations

import struct
from collections import deque

from hypergate import limits
from hypergate.udx import packet as wire
from hypergate.udx.congestion import Cubic, RttEstimator
from hypergate.udx.packet import Packet, encode_header, seq_diff
from hypergate.udx.scoreboard import Scoreboard, SentPacket

_U32 = 0xFFFFFFFF
# type, data_offset, (id skipped), rwnd, seq, ack: the header from byte 2 on
_FIELDS = struct.Struct("<BB4xIII")
# A dead peer is declared after this much silence as well as UDX_MAX_RTO_EXPIRIES: what
# those expiries take from the initial RTO (Linux bounds tcp_retries2 by time likewise).
# By count alone a 200 ms-RTO stream gave up after 11 s, not 15, and a live peer behind
# 25% loss each way loses 8 round trips in a row about once in 750 stalls; the extra
# retransmissions in the same silence make that ~5x rarer. 1 ms absorbs float sums.
_GIVE_UP_AFTER_S = (
    sum(
        min(limits.UDX_INITIAL_RTO_S * 2**i, max(limits.UDX_INITIAL_RTO_S, limits.UDX_RTO_BACKOFF_CAP_S))
        for i in range(limits.UDX_MAX_RTO_EXPIRIES)
    )
    - 0.001
)


class UdxConnection:
    def __init__(
        self,
        local_id: int,
        remote_id: int,
        *,
        peer_label: str = "peer",
        max_payload: int = limits.UDX_MAX_PAYLOAD,
        receive_buffer: int = limits.UDX_RECEIVE_BUFFER,
        send_buffer: int = limits.UDX_SEND_BUFFER,
    ) -> None:
        self.local_id = local_id
        self.remote_id = remote_id
        self.peer_label = peer_label
        self.max_payload = max_payload
        self.receive_buffer = receive_buffer
        self.send_buffer = send_buffer
        self.stats = {
            "retransmits": 0,
            "fast_retransmits": 0,
            "tail_loss_probes": 0,
            "rto_expiries": 0,
            "dropped_out_of_window": 0,
        }
        # -- send side --
        self.snd_una = 0
        self.snd_nxt = 0
        self._unsent = bytearray()
        self.sent = Scoreboard()  # packets awaiting their cumulative ack
        self._dupacks = 0
        self.peer_rwnd = limits.UDX_RECEIVE_BUFFER  # Node's advertisement until told otherwise
        self._wl1 = 0
        self._wl2 = 0
        self._end_requested = False
        self._end_seq: int | None = None
        self.end_acked = False
        self.rtt = RttEstimator()
        self.cc = Cubic()
        self._rto_deadline: float | None = None
        self._probe_deadline: float | None = None  # zero-window probe (HEARTBEAT)
        self._tlp_deadline: float | None = None  # tail loss probe (RFC 8985 7)
        self._tlp_armed = True  # one probe per stall: re-armed by ack progress
        self._send_credit = 0  # packets we may send beyond cwnd (fast retransmit, TLP)
        self._tlp_pending = False
        self._rto_expiries = 0
        self._stalled_since: float | None = None  # oldest unacked transmission without progress
        # -- receive side --
        self.rcv_nxt = 0
        self._ooo: dict[int, tuple[bytes, bool]] = {}
        self._ooo_bytes = 0
        self._readable: deque[bytes] = deque()
        self._unread = 0
        self._remote_end_seq: int | None = None
        self.eof_received = False
        self._rwnd_sent = receive_buffer
        self._ack_pending = False
        self._data_since_ack = 0  # DATA/END packets taken since our last ACK went out
        self._stashed_ack: tuple | None = None  # (rwnd, seq, ack, sacks): newest ACK of this batch
        self.messages: deque[bytes] = deque()
        self.messages_dropped = 0
        # -- lifecycle --
        self.error: str | None = None  # set once the stream failed (timeout, DESTROY)
        self.detached = False  # the application closed it; incoming data is discarded
        self.done_at: float | None = None  # both ENDs done: TIME_WAIT starts
        self._control: list[bytes] = []  # heartbeats queued by timers

    # ------------------------------------------------------------------ application side
    @property
    def send_space(self) -> int:
        return max(0, self.send_buffer - len(self._unsent) - self.sent.bytes)

    @property
    def readable_bytes(self) -> int:
        return self._unread

    @property
    def rwnd(self) -> int:
        if self.detached:
            return self.receive_buffer
        return max(0, self.receive_buffer - self._unread - self._ooo_bytes)

    @property
    def end_sent(self) -> bool:
        return self._end_requested

    def write(self, data: bytes | memoryview) -> int:
        """Queue as much of data as the send buffer holds; returns the bytes taken."""
        if self._end_requested or self.error is not None:
            raise RuntimeError("write after END or failure")
        take = min(len(data), self.send_space)
        if take:
            self._unsent += data[:take]
        return take

    def end(self) -> None:
        """Half-close: an END follows the last queued byte."""
        self._end_requested = True

    def read(self, max_bytes: int) -> bytes:
        if not self._readable:
            return b""
        first = self._readable[0]
        if len(first) <= max_bytes and (len(self._readable) == 1 or len(first) >= max_bytes // 2):
            chunk = self._readable.popleft()
        else:
            parts = []
            need = max_bytes
            while self._readable and need > 0:
                piece = self._readable[0]
                if len(piece) <= need:
                    parts.append(self._readable.popleft())
                    need -= len(piece)
                else:
                    parts.append(piece[:need])
                    self._readable[0] = piece[need:]
                    need = 0
            chunk = b"".join(parts)
        self._unread -= len(chunk)
        self._maybe_window_update()
        return chunk

    def detach(self) -> None:
        """The application is gone: drop what it did not read, keep the protocol running."""
        self.detached = True
        self._readable.clear()
        self._unread = 0
        self._maybe_window_update()

    def destroy(self) -> bytes:
        """Abort: one DESTROY (never retransmitted) and the stream is over."""
        datagram = encode_header(wire.DESTROY, self.remote_id, self.rwnd, self.snd_nxt, self.rcv_nxt)
        self._fail("stream destroyed locally")
        return datagram

    def message(self, data: bytes | memoryview) -> bytes:
        """An unreliable MESSAGE datagram carrying data."""
        if len(data) > self.max_payload:
            raise ValueError(f"UDX message of {len(data)} bytes exceeds {self.max_payload}")
        return encode_header(wire.MESSAGE, self.remote_id, self.rwnd, self.snd_nxt, self.rcv_nxt) + bytes(data)

    # ------------------------------------------------------------------ network side
    def receive(self, packet: Packet, now: float) -> None:
        """Process one decoded packet addressed to this stream (UDX-WIRE §5 order)."""
        if self._stashed_ack is not None:
            self._apply_stashed_ack(now)
        self._receive_fields(packet.type, packet.rwnd, packet.seq, packet.ack, packet.payload, packet.sacks, now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Parse and process one datagram whose header (magic, version, id) the caller
        checked. The common case, the next in-order DATA packet, takes a short path;
        anything else goes through the full decoder (which raises UdxPacketError)."""
        kind, data_offset, rwnd, seq, ack = _FIELDS.unpack_from(data, 2)
        if (kind == 0 or kind == wire.SACK) and self.error is None:
            # A pure ACK that moves the cumulative ack forward, or one with SACK blocks
            # (they describe the peer's whole out-of-order state): keep the newest and
            # process it once per batch. Node sends one per DATA packet, and walking the
            # scoreboard for each would cost O(window) per packet during recovery.
            newest = self._stashed_ack[2] if self._stashed_ack is not None else self.snd_una
            ahead = seq_diff(ack, newest)
            if seq_diff(ack, self.snd_nxt) <= 0 and (ahead > 0 or (ahead == 0 and kind == wire.SACK)):
                sacks = wire.decode(data).sacks if kind == wire.SACK else ()
                if kind == wire.SACK or data_offset == 0:
                    self._stashed_ack = (rwnd, seq, ack, sacks)
                    return
        if self._stashed_ack is not None:
            self._apply_stashed_ack(now)
        if (
            kind == wire.DATA
            and data_offset == 0
            and seq == self.rcv_nxt
            and ack == self.snd_una
            and not self._ooo
            and self._remote_end_seq is None
            and self.error is None
            and not self.detached
            and self._unread + len(data) <= self.receive_buffer
        ):
            self.rcv_nxt = (seq + 1) & _U32
            payload = data[20:]
            if payload:
                self._readable.append(payload)
                self._unread += len(payload)
            self._ack_pending = True
            self._data_since_ack += 1
            if seq_diff(seq, self._wl1) > 0 or (seq == self._wl1 and seq_diff(ack, self._wl2) >= 0):
                self.peer_rwnd = rwnd
                self._wl1, self._wl2 = seq, ack
            return
        if kind & wire.SACK or data_offset:
            self.receive(wire.decode(data), now)
        else:
            payload = memoryview(data)[20:] if kind & (wire.DATA | wire.END | wire.MESSAGE) else b""
            self._receive_fields(kind, rwnd, seq, ack, payload, (), now)

    def _apply_stashed_ack(self, now: float) -> None:
        rwnd, seq, ack, sacks = self._stashed_ack
        self._stashed_ack = None
        self._receive_fields(wire.SACK if sacks else 0, rwnd, seq, ack, b"", sacks, now)

    def _receive_fields(self, kind: int, rwnd: int, seq: int, ack: int, payload, sacks, now: float) -> None:
        if self.error is not None:
            return
        if kind & wire.HEARTBEAT:
            self._ack_pending = True  # answered with an ACK; the rest of it is ignored
            return
        carries_data = kind & (wire.DATA | wire.END)
        if carries_data:
            self._receive_data(seq, payload, bool(kind & wire.END))
        elif kind & wire.DESTROY:
            if seq_diff(seq, self.rcv_nxt) >= 0:
                self._fail("peer reset the stream (DESTROY)")
            return
        if kind & wire.MESSAGE:
            if self.detached or len(self.messages) >= limits.UDX_MESSAGE_QUEUE:
                self.messages_dropped += 1
            else:
                self.messages.append(bytes(payload))
        if seq_diff(ack, self.snd_nxt) > 0:
            return  # Node's rule: an ack beyond what we sent voids the rest, our ACK too
        if carries_data:
            self._ack_pending = True  # every DATA/END is ACKed, duplicates included
            self._data_since_ack += 1
        advance = seq_diff(ack, self.snd_una)
        window_changed = rwnd != self.peer_rwnd
        if advance >= 0 and (seq_diff(seq, self._wl1) > 0 or (seq == self._wl1 and seq_diff(ack, self._wl2) >= 0)):
            self.peer_rwnd = rwnd
            self._wl1, self._wl2 = seq, ack
        min_rtt = self.rtt.min_rtt or 0.0
        newly_sacked = (
            self.sent.apply_sacks(sacks, ack if advance > 0 else self.snd_una, self.snd_nxt, now, min_rtt)
            if sacks
            else False
        )
        if advance > 0:
            self._cumulative_ack(ack, advance, now)
        elif advance == 0 and self.sent and not window_changed and not kind & (wire.DATA | wire.END | wire.MESSAGE):
            # RFC 5681: a duplicate ack carries no data and does not change the window.
            self._dupacks += 1
        if newly_sacked or advance > 0:
            self._tlp_deadline = None
            self._tlp_armed = True
        lost = False
        if newly_sacked or self._dupacks >= limits.UDX_DUP_THRESHOLD:
            lost = self.sent.detect_by_sack_count(oldest_too=self._dupacks >= limits.UDX_DUP_THRESHOLD)
            self._dupacks = 0 if self._dupacks >= limits.UDX_DUP_THRESHOLD else self._dupacks
        if (newly_sacked or advance > 0) and self.sent:
            lost = self.sent.detect_by_time(min_rtt) or lost
        if lost:
            self._on_losses()
        self._check_done(now)

    def _receive_data(self, seq: int, payload: memoryview | bytes, is_end: bool) -> None:
        offset = seq_diff(seq, self.rcv_nxt)
        if offset < 0 or self.eof_received:
            return  # duplicate: ACKed again, not delivered
        if offset >= limits.UDX_MAX_REORDER_SPAN:
            self.stats["dropped_out_of_window"] += 1
            return
        if self._remote_end_seq is not None and seq_diff(seq, self._remote_end_seq) > 0:
            return  # data after the peer's END is ignored
        size = len(payload)
        limit = self.receive_buffer + limits.UDX_RECV_BUFFER  # Node sends one packet into any window > 0
        if not self.detached and self._unread + self._ooo_bytes + size > limit:
            if offset > 0 or self._unread + size > limit:
                self.stats["dropped_out_of_window"] += 1
                return  # the peer ignored our window; it will retransmit
            # The packet that fills the hole must never be refused for room, or a buffer
            # full of out-of-order data would wait for it forever: make room by dropping
            # the highest out-of-order packets (no longer SACKed; the peer resends them).
            for seq_held in sorted(self._ooo, key=lambda held: seq_diff(held, seq), reverse=True):
                self._ooo_bytes -= len(self._ooo.pop(seq_held)[0])
                self.stats["dropped_out_of_window"] += 1
                if self._unread + self._ooo_bytes + size <= limit:
                    break
            if self._remote_end_seq not in self._ooo:
                self._remote_end_seq = None  # the END was among them: it will come again
        if is_end:
            self._remote_end_seq = seq
        if offset > 0:
            if seq not in self._ooo:
                self._ooo[seq] = (bytes(payload), is_end)
                self._ooo_bytes += size
            return
        self._deliver(bytes(payload), is_end)
        ooo = self._ooo
        while ooo and not self.eof_received:
            entry = ooo.pop(self.rcv_nxt, None)
            if entry is None:
                break
            self._ooo_bytes -= len(entry[0])
            self._deliver(*entry)

    def _deliver(self, payload: bytes, is_end: bool) -> None:
        self.rcv_nxt = (self.rcv_nxt + 1) & _U32
        if payload and not self.detached:
            self._readable.append(payload)
            self._unread += len(payload)
        if is_end:
            self.eof_received = True
            self._ooo.clear()
            self._ooo_bytes = 0

    def _cumulative_ack(self, ack: int, advance: int, now: float) -> None:
        acked, sample_from, end_acked = self.sent.pop_acked(self.snd_una, advance, now, self.rtt.min_rtt or 0.0)
        if end_acked:
            self.end_acked = True
        self.snd_una = ack
        if sample_from is not None:
            self.rtt.sample(now - sample_from.sent_at)
        recovering = self.cc.recovery_end is not None and seq_diff(ack, self.cc.recovery_end) < 0
        if not recovering:
            self.cc.recovery_end = None
        self.cc.on_acked(acked, recovering, now, self.rtt.srtt)
        self._dupacks = 0
        self._rto_expiries = 0
        self.rtt.reset_backoff()
        self._stalled_since = now if self.sent else None
        self._rto_deadline = now + self.rtt.rto if self.sent else None

    def _on_losses(self) -> None:
        self.stats["fast_retransmits"] += 1
        if self.cc.recovery_end is None:  # one window reduction per loss episode
            self.cc.on_loss()
            self.cc.recovery_end = self.snd_nxt
            self._send_credit = 1  # RFC 5681: the first loss is resent at once

    # ------------------------------------------------------------------ output and timers
    def poll_transmit(self, now: float) -> list[bytes]:
        """Datagrams to send now: a pending ACK first, then retransmissions, then new data
        within cwnd and the peer's rwnd."""
        if self._stashed_ack is not None:
            self._apply_stashed_ack(now)
        out: list[bytes] = []
        if self.error is not None:
            return out
        if self._control:
            out.extend(self._control)
            self._control.clear()
        ack_at = len(out) if self._ack_pending else None
        if ack_at is not None:
            out.append(self._encode_ack())
        scoreboard = self.sent
        room = int(self.cc.cwnd) - scoreboard.pipe
        if self._tlp_pending:
            # Tail loss probe: new data if there is some the window lets us send, else
            # the newest packet again; its ACK (with SACK) reveals what else is missing.
            self._tlp_pending = False
            if not self._has_new_data() or self.peer_rwnd <= scoreboard.bytes:
                scoreboard.mark_newest_for_probe()
            self._send_credit = max(self._send_credit, 1)
        if self._send_credit and room < 1:
            room = 1
        self._send_credit = 0
        while room > 0 and scoreboard.has_lost():
            sent = scoreboard.next_lost()
            if sent is None:
                break
            sent.retransmitted = True
            sent.sent_at = now
            out.append(self._encode_sent(sent))
            self.stats["retransmits"] += 1
            room -= 1
        blocked_by_rwnd = False
        while room > 0 and self._has_new_data():
            window = self.peer_rwnd - scoreboard.bytes
            size = min(self.max_payload, len(self._unsent))
            if size > window:
                if window <= 0 or window < min(size, self.max_payload // 4) and scoreboard:
                    blocked_by_rwnd = True  # wait for a window worth using (no silly window)
                    break
                size = window
            with memoryview(self._unsent) as unsent:  # one copy; released before the del
                payload = bytes(unsent[:size])
            del self._unsent[:size]
            is_end = self._end_requested and not self._unsent
            sent = SentPacket(self.snd_nxt, payload, is_end, now)
            scoreboard.add(sent)
            if is_end:
                self._end_seq = sent.seq
            self.snd_nxt = (self.snd_nxt + 1) & _U32
            out.append(self._encode_sent(sent))
            room -= 1
        if ack_at is not None and len(out) > ack_at + 1 and not self._ooo:
            del out[ack_at]  # the DATA we send carries the same cumulative ack (no SACK needed)
        if scoreboard:
            if self._rto_deadline is None:
                self._rto_deadline = now + self.rtt.rto
                self._stalled_since = now
            if self._tlp_deadline is None and self._tlp_armed and self.rtt.srtt is not None:
                self._tlp_deadline = now + max(2 * self.rtt.srtt, limits.UDX_MIN_TLP_S)
            self._probe_deadline = None
        elif blocked_by_rwnd:
            if self._probe_deadline is None:
                self._probe_deadline = now + self.rtt.rto
        else:
            self._probe_deadline = None
        return out

    def _has_new_data(self) -> bool:
        return bool(self._unsent) or (self._end_requested and self._end_seq is None)

    def _encode_sent(self, sent: SentPacket) -> bytes:
        kind = (wire.DATA if sent.payload else 0) | (wire.END if sent.end else 0)
        rwnd = self.rwnd
        self._rwnd_sent = rwnd
        return encode_header(kind, self.remote_id, rwnd, sent.seq, self.rcv_nxt) + sent.payload

    @property
    def ack_due(self) -> bool:
        """Enough DATA arrived since our last ACK that the driver should send one now,
        in the middle of a receive batch (so one lost ACK does not stall a whole flight)."""
        return self._data_since_ack >= limits.UDX_ACK_EVERY

    def take_ack(self) -> bytes:
        return self._encode_ack()

    def _encode_ack(self) -> bytes:
        self._ack_pending = False
        self._data_since_ack = 0
        rwnd = self.rwnd
        self._rwnd_sent = rwnd
        return wire.encode(0, self.remote_id, rwnd, self.snd_nxt, self.rcv_nxt, sacks=self._sack_blocks())

    def _sack_blocks(self) -> list[tuple[int, int]]:
        if not self._ooo:
            return []
        base = self.rcv_nxt
        offsets = sorted((seq - base) & _U32 for seq in self._ooo)  # all held seqs are ahead of base
        blocks: list[list[int]] = []
        for offset in offsets:
            if blocks and blocks[-1][1] == offset:
                blocks[-1][1] = offset + 1
            elif len(blocks) < limits.UDX_MAX_SACK_BLOCKS:
                blocks.append([offset, offset + 1])
            else:
                break
        return [((base + start) & _U32, (base + end) & _U32) for start, end in blocks]

    def _maybe_window_update(self) -> None:
        rwnd = self.rwnd
        opened = rwnd - self._rwnd_sent
        if opened >= limits.UDX_WINDOW_UPDATE_STEP or (self._rwnd_sent < self.max_payload <= rwnd):
            self._ack_pending = True

    @property
    def wants_transmit(self) -> bool:
        """Something is waiting that poll_transmit would send (if windows allow)."""
        return bool(self._ack_pending or self._control or self.sent.has_lost()) or self._has_new_data()

    @property
    def next_deadline(self) -> float | None:
        if self.error is not None:
            return None
        deadlines = [d for d in (self._rto_deadline, self._probe_deadline, self._tlp_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timeout(self, now: float) -> None:
        if self._stashed_ack is not None:
            self._apply_stashed_ack(now)
        if self.error is not None:
            return
        if self._probe_deadline is not None and now >= self._probe_deadline:
            # Zero window: ask for a fresh window with a HEARTBEAT (the peer ACKs it).
            self._control.append(encode_header(wire.HEARTBEAT, self.remote_id, self.rwnd, self.snd_nxt, self.rcv_nxt))
            self._probe_deadline = now + self.rtt.rto
        if self._tlp_deadline is not None and now >= self._tlp_deadline:
            self._tlp_deadline = None
            if self.sent and (self._rto_deadline is None or now < self._rto_deadline):
                self._tlp_armed = False
                self._tlp_pending = True
                self.stats["tail_loss_probes"] += 1
        if self._rto_deadline is None or now < self._rto_deadline:
            return
        if not self.sent:
            self._rto_deadline = None
            return
        self._rto_expiries += 1
        self.stats["rto_expiries"] += 1
        waited = now - (self._stalled_since if self._stalled_since is not None else now)
        if self._rto_expiries >= limits.UDX_MAX_RTO_EXPIRIES and waited >= _GIVE_UP_AFTER_S:
            self._fail(
                f"UDX peer {self.peer_label} stopped acknowledging: "
                f"{self._rto_expiries} retransmission timeouts over {waited:.1f} s"
            )
            return
        self.cc.on_timeout(ever_acked=self.rtt.srtt is not None)
        self.cc.recovery_end = None
        self.rtt.back_off()
        self.sent.mark_all_lost()  # resent oldest first, as cwnd allows
        self._dupacks = 0
        self._rto_deadline = now + self.rtt.rto

    # ------------------------------------------------------------------ lifecycle
    def _check_done(self, now: float) -> None:
        if self.done_at is None and self.end_acked and self.eof_received:
            self.done_at = now

    def mark_time(self, now: float) -> None:
        """Let the connection notice 'both ENDs done' after a local action."""
        self._check_done(now)

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        self.sent.clear()
        self._unsent.clear()
        self._rto_deadline = self._probe_deadline = self._tlp_deadline = None
        self._tlp_pending = False
        self._ack_pending = False
        self._control.clear()
