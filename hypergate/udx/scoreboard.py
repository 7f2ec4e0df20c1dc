"""The sender's scoreboard (sans-IO): every DATA/END packet sent and not yet cumulatively
acked, keyed by seq, with its SACKed / lost marks, and the two loss detectors:
RFC 6675 DupThresh (3 packets SACKed above a hole) and RACK (RFC 8985: a packet sent
a reorder window before one since delivered is lost), which also finds lost
retransmissions without waiting for the RTO.
"""

from __future__ import annotations

from collections import deque

from hypergate import limits
from hypergate.udx.packet import seq_diff

_U32 = 0xFFFFFFFF


class SentPacket:
    __slots__ = ("seq", "payload", "end", "sent_at", "retransmitted", "sacked", "lost")

    def __init__(self, seq: int, payload: bytes, end: bool, sent_at: float) -> None:
        self.seq = seq
        self.payload = payload
        self.end = end
        self.sent_at = sent_at
        self.retransmitted = False
        self.sacked = False
        self.lost = False  # presumed lost and not yet resent


class Scoreboard:
    def __init__(self) -> None:
        self.packets: dict[int, SentPacket] = {}  # insertion order is seq order
        self.bytes = 0  # payload bytes in `packets` (what the peer's rwnd bounds)
        self.sacked = 0
        self.lost = 0
        self._lost_queue: deque[int] = deque()  # seqs to resend, oldest first (stale ones skipped)
        self._rack_sent_at = float("-inf")  # send time of the newest packet known delivered

    def __bool__(self) -> bool:
        return bool(self.packets)

    def __len__(self) -> int:
        return len(self.packets)

    @property
    def pipe(self) -> int:
        """Packets presumed in the network (RFC 6675): neither SACKed nor presumed lost."""
        return len(self.packets) - self.sacked - self.lost

    def add(self, sent: SentPacket) -> None:
        self.packets[sent.seq] = sent
        self.bytes += len(sent.payload)

    def has_lost(self) -> bool:
        return bool(self._lost_queue)

    def next_lost(self) -> SentPacket | None:
        """The oldest packet to resend, its lost mark cleared; None when there is none."""
        while self._lost_queue:
            sent = self.packets.get(self._lost_queue.popleft())
            if sent is not None and sent.lost:
                sent.lost = False
                self.lost -= 1
                return sent
        return None

    def _mark_lost(self, sent: SentPacket, first: bool = False) -> None:
        sent.lost = True
        self.lost += 1
        if first:
            self._lost_queue.appendleft(sent.seq)
        else:
            self._lost_queue.append(sent.seq)

    def _delivered(self, sent: SentPacket, now: float, min_rtt: float) -> None:
        # A retransmitted packet counts only when this cannot be the original's delivery
        # (RFC 8985 6.2: at least min_rtt since the retransmission).
        if sent.retransmitted and now - sent.sent_at < min_rtt:
            return
        if sent.sent_at > self._rack_sent_at:
            self._rack_sent_at = sent.sent_at

    def apply_sacks(self, sacks, una: int, snd_nxt: int, now: float, min_rtt: float) -> bool:
        """Mark SACKed packets; True if any was new. Blocks outside [una, snd_nxt] are
        ignored, as Node does."""
        newly = False
        packets = self.packets
        for start, end in sacks:
            if not (seq_diff(start, una) >= 0 and seq_diff(end, start) > 0 and seq_diff(snd_nxt, end) >= 0):
                continue
            seq = start
            while seq != end:
                sent = packets.get(seq)
                if sent is not None and not sent.sacked:
                    sent.sacked = True
                    self.sacked += 1
                    newly = True
                    self._delivered(sent, now, min_rtt)
                    if sent.lost:
                        sent.lost = False
                        self.lost -= 1
                seq = (seq + 1) & _U32
        return newly

    def pop_acked(self, una: int, advance: int, now: float, min_rtt: float):
        """Forget the `advance` packets from una on. Returns (packets acked, the newest
        never-retransmitted packet to take an RTT sample from (Karn) or None, END acked)."""
        packets = self.packets
        sample_from: SentPacket | None = None
        repaired = False  # a retransmission is among them: the ack waited for a repair
        acked = 0
        end_acked = False
        seq = una
        for _ in range(advance):
            sent = packets.pop(seq, None)
            seq = (seq + 1) & _U32
            if sent is None:
                continue
            acked += 1
            self.bytes -= len(sent.payload)
            repaired = repaired or sent.retransmitted
            if sent.sacked:
                self.sacked -= 1
            else:
                self._delivered(sent, now, min_rtt)
                if not sent.retransmitted:
                    sample_from = sent
            if sent.lost:
                self.lost -= 1
            if sent.end:
                end_acked = True
        # An ack that filled a hole also covers packets the peer held for a while (their
        # SACKs may have been lost): timing them would inflate the RTO, so skip it.
        return acked, None if repaired else sample_from, end_acked

    def detect_by_sack_count(self, oldest_too: bool) -> bool:
        """DupThresh: an unSACKed packet with UDX_DUP_THRESHOLD packets SACKed above it is
        lost (and the oldest one when `oldest_too`, after as many duplicate acks). A
        retransmission is never marked again this way (RACK or the RTO does that)."""
        threshold = limits.UDX_DUP_THRESHOLD
        sacked_above = self.sacked
        newly_lost = False
        first = True
        for sent in self.packets.values():
            if sacked_above < threshold and not (first and oldest_too):
                break
            if sent.sacked:
                sacked_above -= 1
            elif not sent.lost and not sent.retransmitted:
                self._mark_lost(sent)
                newly_lost = True
            first = False
        return newly_lost

    def detect_by_time(self, min_rtt: float) -> bool:
        """RACK without its timer: lost if sent a reorder window before a delivered one."""
        reorder_window = max(min_rtt / 4, limits.UDX_MIN_REORDER_WINDOW_S)
        horizon = self._rack_sent_at - reorder_window
        newly_lost = False
        for sent in self.packets.values():
            if sent.sent_at >= horizon:
                if not sent.retransmitted:
                    break  # originals are in send order: none further can qualify
                continue
            if not sent.sacked and not sent.lost:
                self._mark_lost(sent)
                newly_lost = True
        return newly_lost

    def mark_newest_for_probe(self) -> None:
        """Tail loss probe without new data: resend the newest unSACKed packet first."""
        for sent in reversed(self.packets.values()):
            if not sent.sacked:
                if not sent.lost:
                    self._mark_lost(sent, first=True)
                return

    def mark_all_lost(self) -> None:
        """RTO: everything is presumed lost and resent oldest first, SACKed packets too
        (RFC 6675 5.1: a receiver may have dropped what it SACKed, as ours does when
        its buffer is full of out-of-order data and the missing packet arrives)."""
        self._lost_queue.clear()
        self.lost = len(self.packets)
        self.sacked = 0
        for sent in self.packets.values():
            sent.sacked = False
            sent.lost = True
            self._lost_queue.append(sent.seq)

    def clear(self) -> None:
        self.packets.clear()
        self._lost_queue.clear()
        self.bytes = self.sacked = self.lost = 0
