"""Two sans-IO UDX connections over a simulated network, under a virtual clock the test
advances itself: seeded drops, reordering (jitter), duplication."""

from __future__ import annotations

import hashlib
import heapq
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hypergate import limits
from hypergate.udx import packet as wire
from hypergate.udx.congestion import Cubic
from hypergate.udx.connection import UdxConnection
from hypergate.udx.packet import UdxPacketError, decode, encode_header

PAYLOAD = limits.UDX_MAX_PAYLOAD


class Endpoint:
    """A connection plus a tiny application: writes `outgoing`, reads into `received`."""

    def __init__(self, conn: UdxConnection, outgoing: bytes = b"", end: bool = True) -> None:
        self.conn = conn
        self.outgoing = memoryview(outgoing)
        self.end_after_write = end
        self.received = bytearray()
        self.reading = True

    def app_step(self) -> None:
        conn = self.conn
        if conn.error is not None:
            return
        if self.outgoing:
            taken = conn.write(self.outgoing)
            self.outgoing = self.outgoing[taken:]
        if not self.outgoing and self.end_after_write and not conn.end_sent:
            conn.end()
        while self.reading and conn.readable_bytes:
            self.received += conn.read(1 << 20)


class Network:
    def __init__(self, a: Endpoint, b: Endpoint, *, seed=0, drop=0.0, duplicate=0.0, delay=0.01, jitter=0.0):
        self.ends = {"a": a, "b": b}
        self.rng = random.Random(seed)
        self.drop, self.duplicate, self.delay, self.jitter = drop, duplicate, delay, jitter
        self.now = 0.0
        self.in_flight: list = []  # heap of (arrival, counter, destination, datagram)
        self.counter = 0
        self.sent = {"a": [], "b": []}  # every datagram each side emitted (decoded)
        self.filter = None  # optional callable(source, packet, index) -> bool (True drops)
        self.on_step = None

    def _emit(self, source: str) -> None:
        self._send(source, self.ends[source].conn.poll_transmit(self.now))

    def _send(self, source: str, datagrams: list[bytes]) -> None:
        destination = "b" if source == "a" else "a"
        for datagram in datagrams:
            packet = decode(datagram)
            self.sent[source].append(packet)
            if self.filter is not None and self.filter(source, packet, len(self.sent[source]) - 1):
                continue
            if self.rng.random() < self.drop:
                continue
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                arrival = self.now + self.delay + self.rng.random() * self.jitter
                self.counter += 1
                heapq.heappush(self.in_flight, (arrival, self.counter, destination, datagram))

    def run(self, until, limit_s: float = 120.0) -> None:
        try:
            self._run(until, limit_s)
        finally:
            for end in self.ends.values():  # what arrived in the last step is read too
                while end.reading and end.conn.readable_bytes:
                    end.received += end.conn.read(1 << 20)

    def _run(self, until, limit_s: float) -> None:
        while not until():
            for name, end in self.ends.items():
                end.app_step()
                self._emit(name)
            if self.on_step is not None:
                self.on_step(self)
            if until():
                return
            candidates = [d for d in (e.conn.next_deadline for e in self.ends.values()) if d is not None]
            if self.in_flight:
                candidates.append(self.in_flight[0][0])
            failed = {name: end.conn.error for name, end in self.ends.items() if end.conn.error}
            assert candidates, f"deadlock: nothing in flight and no timer armed; failed: {failed}"
            self.now = max(self.now, min(candidates))
            assert self.now <= limit_s, f"not done after {limit_s} virtual seconds"
            while self.in_flight and self.in_flight[0][0] <= self.now:
                _, _, destination, datagram = heapq.heappop(self.in_flight)
                conn = self.ends[destination].conn
                conn.receive_datagram(datagram, self.now)
                if conn.ack_due:  # as the socket driver does within a receive batch
                    self._send(destination, [conn.take_ack()])
            for end in self.ends.values():
                deadline = end.conn.next_deadline
                if deadline is not None and deadline <= self.now:
                    end.conn.handle_timeout(self.now)


def pair(a_out=b"", b_out=b"", *, a_end=True, b_end=True, **conn_options):
    a = Endpoint(UdxConnection(1, 2, **conn_options), a_out, a_end)
    b = Endpoint(UdxConnection(2, 1, **conn_options), b_out, b_end)
    return a, b


def sha(data) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_both_ways_intact_under_loss_reordering_and_duplication(seed):
    rng = random.Random(seed)
    a_data, b_data = rng.randbytes(600_000), rng.randbytes(300_000)
    a, b = pair(a_data, b_data)
    net = Network(a, b, seed=seed, drop=0.05, duplicate=0.02, delay=0.02, jitter=0.03)
    net.run(lambda: a.conn.eof_received and b.conn.eof_received and a.conn.end_acked and b.conn.end_acked)
    assert sha(b.received) == sha(a_data)
    assert sha(a.received) == sha(b_data)
    assert a.conn.stats["retransmits"] > 0  # the loss was real and repaired
    assert a.conn.done_at is not None and b.conn.done_at is not None


def test_sequence_numbers_wrap_around_2_to_the_32():
    data = random.Random(7).randbytes(50 * PAYLOAD)
    a, b = pair(data, b"")
    start = 0xFFFFFFFF - 20
    a.conn.snd_una = a.conn.snd_nxt = start
    b.conn.rcv_nxt = start
    net = Network(a, b, seed=7, drop=0.05, jitter=0.02)
    net.run(lambda: b.conn.eof_received and a.conn.end_acked)
    assert sha(b.received) == sha(data)
    assert a.conn.snd_nxt < 100  # wrapped


def test_half_close_keeps_the_other_direction_open():
    a, b = pair(b"request", b"", b_end=False)
    net = Network(a, b)
    net.run(lambda: b.conn.eof_received and a.conn.end_acked)
    assert bytes(b.received) == b"request"
    assert not a.conn.eof_received
    reply = random.Random(1).randbytes(20 * PAYLOAD)
    b.outgoing, b.end_after_write = memoryview(reply), True
    net.run(lambda: a.conn.eof_received and b.conn.end_acked)
    assert sha(a.received) == sha(reply)
    assert a.conn.done_at is not None and b.conn.done_at is not None


def test_ack_goes_out_before_eof_and_duplicate_end_is_acked_again():
    a, b = pair(b"x", b"")
    net = Network(a, b)
    net.run(lambda: b.conn.eof_received and a.conn.end_acked)
    # The peer's END is retransmitted later (our ACK was lost): it must be ACKed again.
    again = encode_header(wire.DATA | wire.END, 2, 4096, 0, 0) + b"x"
    b.conn.receive(decode(again), net.now)
    acks = [decode(d) for d in b.conn.poll_transmit(net.now)]
    assert [(p.type, p.ack) for p in acks] == [(0, 1)]
    assert bytes(b.received) == b"x"


def test_destroy_resets_the_peer():
    a, b = pair(b"hello", b"", a_end=False, b_end=False)
    net = Network(a, b)
    net.run(lambda: bytes(b.received) == b"hello")
    datagram = a.conn.destroy()
    assert decode(datagram).type == wire.DESTROY
    assert a.conn.error == "stream destroyed locally"
    b.conn.receive(decode(datagram), net.now)
    assert b.conn.error == "peer reset the stream (DESTROY)"
    assert b.conn.poll_transmit(net.now) == []


def test_stale_destroy_below_rcv_nxt_is_ignored():
    a, b = pair(b"hello", b"", a_end=False, b_end=False)
    net = Network(a, b)
    net.run(lambda: bytes(b.received) == b"hello")
    stale = encode_header(wire.DESTROY, 2, 0, 0, 0)  # seq 0 < rcv_nxt 1
    b.conn.receive(decode(stale), net.now)
    assert b.conn.error is None


def test_silent_peer_times_out_with_a_reason_within_bounded_time():
    a, b = pair(b"are you there?", b"", a_end=False, b_end=False)
    a.conn.peer_label = "10.0.0.2:4000"
    net = Network(a, b)
    net.filter = lambda source, packet, index: True  # everything is lost
    net.run(lambda: a.conn.error is not None, limit_s=60)
    assert a.conn.error.startswith("UDX peer 10.0.0.2:4000 stopped acknowledging: 8 retransmission timeouts over")
    assert 8 <= net.now <= 20  # 1+2+2+2+2+2+2+2 s of backoff, capped at 2 s
    assert a.conn.next_deadline is None


def test_short_rtt_stream_waits_out_as_much_silence_as_a_fresh_one():
    a, b = pair(b"hello", b"", a_end=False, b_end=False)
    net = Network(a, b)
    net.run(lambda: a.conn.snd_una == 1)
    assert a.conn.rtt.rto < 0.5  # sampled: backoff starts from the 200 ms floor, not 1 s
    net.filter = lambda source, packet, index: True
    a.outgoing = memoryview(b"anyone?")
    start = net.now
    net.run(lambda: a.conn.error is not None, limit_s=60)
    # More retransmissions than a 1 s RTO gets into the same silence, not 8 within 11 s.
    assert a.conn.stats["rto_expiries"] > limits.UDX_MAX_RTO_EXPIRIES
    assert 15 <= net.now - start <= 20


def test_window_is_respected_and_reading_reopens_it():
    data = random.Random(3).randbytes(400_000)
    window = 64 * 1024
    a, b = pair(data, b"", receive_buffer=window)
    b.reading = False
    net = Network(a, b, seed=3, jitter=0.005)
    worst = {"inflight": 0, "buffered": 0}

    def check(net):
        worst["inflight"] = max(worst["inflight"], a.conn.sent.bytes)
        worst["buffered"] = max(worst["buffered"], b.conn.readable_bytes + b.conn._ooo_bytes)

    net.on_step = check
    net.run(lambda: net.now > 5.0)
    assert window - PAYLOAD <= b.conn.readable_bytes <= window  # filled, not overrun
    assert worst["inflight"] <= window
    assert b.conn.stats["dropped_out_of_window"] == 0
    b.reading = True
    net.run(lambda: b.conn.eof_received)
    assert sha(b.received) == sha(data)
    assert worst["buffered"] <= window


def test_zero_window_recovers_even_if_the_window_update_is_lost():
    data = random.Random(4).randbytes(200_000)
    window = 32 * 1024
    a, b = pair(data, b"", receive_buffer=window)
    b.reading = False
    net = Network(a, b)
    net.run(lambda: net.now > 2.0)
    # Drop b's next packet (the window update once reading resumes): the HEARTBEAT probe
    # must fetch the window again.
    dropped = []
    net.filter = lambda source, packet, index: source == "b" and not dropped and not dropped.append(packet)
    b.reading = True
    net.run(lambda: b.conn.eof_received, limit_s=30)
    assert sha(b.received) == sha(data)
    assert any(p.type & wire.HEARTBEAT for p in net.sent["a"])


def test_single_drop_is_repaired_by_sack_without_an_rto():
    data = random.Random(5).randbytes(60 * PAYLOAD)
    a, b = pair(data, b"")
    net = Network(a, b, delay=0.01)
    dropped = []

    def drop_fifth_data_once(source, packet, index):
        if source == "a" and packet.type & wire.DATA and packet.seq == 4 and not dropped:
            dropped.append(packet.seq)
            return True
        return False

    net.filter = drop_fifth_data_once
    net.run(lambda: b.conn.eof_received and a.conn.end_acked)
    assert dropped == [4]
    assert sha(b.received) == sha(data)
    assert a.conn.stats["rto_expiries"] == 0
    assert a.conn.stats["fast_retransmits"] >= 1
    assert net.now < limits.UDX_INITIAL_RTO_S  # repaired in round trips, not a timeout
    assert any(p.sacks for p in net.sent["b"])  # b told a about the hole


def test_acks_carry_snd_nxt_and_never_ack_past_the_peer():
    a, b = pair(b"y" * 5000, b"z" * 10)
    net = Network(a, b)
    net.run(lambda: a.conn.eof_received and b.conn.eof_received and a.conn.end_acked and b.conn.end_acked)
    for source, peer in (("a", "b"), ("b", "a")):
        highest_peer_seq = -1
        for packet in net.sent[source]:
            if packet.type == 0:
                assert packet.seq <= net.ends[source].conn.snd_nxt
        for packet in net.sent[peer]:
            if packet.type & (wire.DATA | wire.END):
                highest_peer_seq = max(highest_peer_seq, packet.seq)
        assert max(p.ack for p in net.sent[source]) <= highest_peer_seq + 1


def test_heartbeat_is_answered_with_an_ack_and_message_is_delivered():
    a, b = pair(b"", b"", a_end=False, b_end=False)
    b.conn.receive(decode(encode_header(wire.HEARTBEAT, 2, 0, 99, 99)), 0.0)
    out = [decode(d) for d in b.conn.poll_transmit(0.0)]
    assert [(p.type, p.seq, p.ack) for p in out] == [(0, 0, 0)]
    b.conn.receive(decode(a.conn.message(b"datagram")), 0.0)
    assert list(b.conn.messages) == [b"datagram"]
    with pytest.raises(ValueError):
        a.conn.message(bytes(PAYLOAD + 1))


def test_ack_beyond_snd_nxt_voids_the_packet():
    a, b = pair(b"", b"", a_end=False, b_end=False)
    bogus = encode_header(wire.DATA, 2, 4096, 0, 5) + b"data"  # acks 5 packets never sent
    b.conn.receive(decode(bogus), 0.0)
    assert b.conn.poll_transmit(0.0) == []  # Node's rule: no ACK for it
    assert b.conn.readable_bytes == 4  # but the data itself is taken


def test_packets_never_exceed_the_payload_limit():
    data = random.Random(9).randbytes(30 * PAYLOAD + 17)
    a, b = pair(data, b"")
    net = Network(a, b)
    net.run(lambda: b.conn.eof_received)
    assert max(len(p.payload) for p in net.sent["a"]) == PAYLOAD


def test_lost_tail_is_repaired_by_a_probe_before_the_rto():
    data = random.Random(6).randbytes(40 * PAYLOAD)
    a, b = pair(data, b"")
    net = Network(a, b, delay=0.01)
    dropped = []

    def drop_the_end_once(source, packet, index):
        if source == "a" and packet.type & wire.END and not dropped:
            dropped.append(packet.seq)
            return True
        return False

    # By the time END goes out, RTT samples exist, so the probe timer (2 x SRTT) is armed.
    net.filter = drop_the_end_once
    net.run(lambda: b.conn.eof_received and a.conn.end_acked)
    assert dropped and sha(b.received) == sha(data)
    assert a.conn.stats["tail_loss_probes"] == 1
    assert a.conn.stats["rto_expiries"] == 0


def test_ack_every_few_packets_within_a_batch():
    a, b = pair(b"", b"", a_end=False, b_end=False)
    a.conn.write(bytes(10 * PAYLOAD))
    flight = a.conn.poll_transmit(0.0)
    assert len(flight) == limits.UDX_INITIAL_CWND
    acks = []
    for datagram in flight:
        b.conn.receive_datagram(datagram, 0.01)
        if b.conn.ack_due:
            acks.append(decode(b.conn.take_ack()))
    acks += [decode(d) for d in b.conn.poll_transmit(0.01)]
    every = limits.UDX_ACK_EVERY
    expected = [every * (i + 1) for i in range(10 // every)] + ([10] if 10 % every else [])
    assert [p.ack for p in acks] == expected
    assert all(p.type == 0 and p.seq == b.conn.snd_nxt for p in acks)


@given(st.binary(min_size=0, max_size=64), st.integers(0, 255), st.integers(0, 255))
def test_garbage_after_a_valid_header_never_raises_anything_but_packet_errors(tail, kind, offset):
    a, b = pair(b"", b"", a_end=False, b_end=False)
    datagram = bytes([0xFF, 0x01, kind, offset]) + (2).to_bytes(4, "little") + tail[:12].ljust(12, b"\0") + tail[12:]
    try:
        b.conn.receive_datagram(datagram, 0.0)
    except UdxPacketError:
        return
    b.conn.poll_transmit(0.0)
    b.conn.handle_timeout(10.0)


@settings(max_examples=150, deadline=None)
# Found by hypothesis: the END and all its ACKs were lost 9 round trips running, and by
# expiry count alone the live peer was declared dead after 11 s (the budget itself is
# tested by test_short_rtt_stream_waits_out_as_much_silence_as_a_fresh_one).
@example(seed=352, a_size=117505, b_size=0, drop=0.25, duplicate=0.05, jitter=0.05, receive_buffer=8 * 1024)
# Found by hand: the first flight overruns an 8 KiB window, the out-of-order part fills
# the buffer, and the packet filling the hole must still be taken.
@example(seed=1, a_size=120_000, b_size=60_000, drop=0.25, duplicate=0.05, jitter=0.05, receive_buffer=8 * 1024)
@given(
    seed=st.integers(0, 2**32 - 1),
    a_size=st.integers(0, 120_000),
    b_size=st.integers(0, 60_000),
    drop=st.sampled_from([0.0, 0.01, 0.1, 0.25]),
    duplicate=st.sampled_from([0.0, 0.05]),
    jitter=st.sampled_from([0.0, 0.01, 0.05]),
    receive_buffer=st.sampled_from([8 * 1024, 64 * 1024, limits.UDX_RECEIVE_BUFFER]),
)
def test_any_network_delivers_both_ways_intact(seed, a_size, b_size, drop, duplicate, jitter, receive_buffer):
    rng = random.Random(seed)
    a_data, b_data = rng.randbytes(a_size), rng.randbytes(b_size)
    a, b = pair(a_data, b_data, receive_buffer=receive_buffer)
    net = Network(a, b, seed=seed, drop=drop, duplicate=duplicate, delay=0.02, jitter=jitter)
    # At 25% loss each way a round trip fails 7 times in 16, so any fixed retry budget
    # runs out now and then on a live peer (8 in a row: once in ~750 stalls), and the
    # stream rightly fails. The property is about recovery, not that budget (tested on
    # its own above): give it one that this network never exhausts.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(limits, "UDX_MAX_RTO_EXPIRIES", 40)
        net.run(
            lambda: a.conn.eof_received and b.conn.eof_received and a.conn.end_acked and b.conn.end_acked,
            limit_s=600,
        )
    assert a.conn.error is None and b.conn.error is None
    assert bytes(b.received) == a_data
    assert bytes(a.received) == b_data


def test_cubic_backs_off_to_0_7_and_regains_the_old_maximum_after_k_seconds():
    cc = Cubic()
    now, rtt = 0.0, 0.2  # long enough that the cubic curve, not the Reno-friendly one, leads
    while cc.cwnd < 100:  # slow start: doubles each round trip
        before = cc.cwnd
        cc.on_acked(int(cc.cwnd), False, now, rtt)
        assert cc.cwnd == min(2 * before, limits.UDX_MAX_CWND)
        now += rtt
    cc.cwnd = 100.0
    cc.on_loss()
    assert cc.cwnd == pytest.approx(70) and cc.ssthresh == pytest.approx(70)
    loss_at = now
    while cc.cwnd < 100:
        cc.on_acked(int(cc.cwnd), False, now, rtt)
        now += rtt
    k = (30 / Cubic.C) ** (1 / 3)  # RFC 9438: K = cbrt(W_max (1 - beta) / C) = 4.2 s
    assert k - 0.5 < now - loss_at < k + 0.5
    cc.on_timeout(ever_acked=True)
    assert cc.cwnd == 1.0
