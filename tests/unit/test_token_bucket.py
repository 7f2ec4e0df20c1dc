"""Token bucket and Shaper: rate, burst allowance, drop rule, isolation (virtual time)."""

from __future__ import annotations

import math

import pytest
import trio

from hypergate import limits
from hypergate.policy.ingress import BandwidthLimit
from hypergate.policy.token_bucket import BandwidthExceeded, ChannelShaper, Shaper, TokenBucket

MBIT = 1e6 / 8  # bytes per second in one Mbit/s


# --- sans-IO bucket --------------------------------------------------------------------


def test_bucket_starts_full_and_refills_up_to_burst_only():
    bucket = TokenBucket(rate=1000, burst=5000, now=0.0)
    assert bucket.tokens(0.0) == 5000
    assert bucket.try_take(5000, 0.0)
    assert not bucket.try_take(1, 0.0)
    assert bucket.tokens(2.0) == pytest.approx(2000)
    assert bucket.tokens(100.0) == 5000  # idle time never buys more than the burst


def test_time_until_available():
    bucket = TokenBucket(rate=1000, burst=5000, now=0.0)
    assert bucket.time_until_available(5000, 0.0) == 0
    bucket.try_take(5000, 0.0)
    assert bucket.time_until_available(500, 0.0) == pytest.approx(0.5)
    assert bucket.time_until_available(500, 0.25) == pytest.approx(0.25)
    assert bucket.time_until_available(5001, 0.0) == math.inf


def test_take_goes_into_debt_and_says_how_long_to_wait():
    bucket = TokenBucket(rate=1000, burst=5000, now=0.0)
    assert bucket.take(3000, 0.0) == 0
    assert bucket.take(4000, 0.0) == pytest.approx(2.0)  # 2000 bytes of debt at 1000 B/s
    assert bucket.debt(0.0) == pytest.approx(2000)
    assert bucket.debt(2.0) == pytest.approx(0)


def test_drop_rule_debt_may_not_exceed_burst_and_refusal_takes_nothing():
    bucket = TokenBucket(rate=1000, burst=5000, now=0.0)
    bucket.take(5000, 0.0)
    bucket.take(5000, 0.0)  # debt == burst: still allowed
    with pytest.raises(BandwidthExceeded, match="10002 bytes queued, burst budget 5000"):
        bucket.take(5002, 0.0)
    assert bucket.debt(0.0) == pytest.approx(5000)


def test_bucket_rejects_nonsense_parameters():
    for rate, burst in [(0, 1), (-1, 1), (1, 0), (math.inf, 1), (1, math.nan)]:
        with pytest.raises(ValueError):
            TokenBucket(rate, burst, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 1, 0.0).take(-1, 0.0)


# --- trio Shaper under MockClock ------------------------------------------------------


async def pump(shaper: Shaper, total: int | None, until: float | None, chunk: int) -> tuple[int, float]:
    """What a channel pump does: read (here: invent) at most `chunk`, wait, forward.

    Returns bytes forwarded and the virtual time the last byte left."""
    sent = 0
    last = trio.current_time()
    for _ in range(10_000_000):  # bounded; the conditions below end it long before
        if total is not None and sent >= total:
            break
        if until is not None and trio.current_time() >= until:
            break
        n = chunk if total is None else min(chunk, total - sent)
        await shaper.wait_for(n)
        sent += n
        last = trio.current_time()
    return sent, last


@pytest.mark.parametrize("mbps", [1, 10, 200])
async def test_measured_rate_within_5_percent_over_virtual_10s(autojump_clock, mbps):
    limit = BandwidthLimit(mbps=mbps, burstMbps=mbps / 10)  # a 0.1 s burst
    shaper = Shaper.from_limit(limit)
    start = trio.current_time()
    sent, _ = await pump(shaper, total=None, until=start + 10.0, chunk=shaper.max_chunk)
    elapsed = trio.current_time() - start
    assert 10.0 <= elapsed < 10.5
    measured = sent / elapsed
    assert measured == pytest.approx(limit.rate_bytes_per_s, rel=0.05)


async def test_long_run_rate_excluding_burst_is_exact_with_full_second_burst(autojump_clock):
    # Burst defaults to one second's worth: 10 s of sending moves burst + 10 s of rate.
    limit = BandwidthLimit(mbps=10)
    shaper = Shaper.from_limit(limit)
    total = int(limit.burst_bytes + 10 * limit.rate_bytes_per_s)
    sent, last = await pump(shaper, total=total, until=None, chunk=shaper.max_chunk)
    assert sent == total
    assert last == pytest.approx(10.0, rel=0.01)
    assert (sent - limit.burst_bytes) / last == pytest.approx(limit.rate_bytes_per_s, rel=0.01)


async def test_burst_allowance_passes_at_once_then_rate_applies(autojump_clock):
    limit = BandwidthLimit(mbps=8, burstMbps=16)  # 1 MB/s, 2 MB burst
    shaper = Shaper.from_limit(limit)
    sent, last = await pump(shaper, total=2_000_000, until=None, chunk=shaper.max_chunk)
    assert last == 0.0  # the whole burst went without waiting
    before = trio.current_time()
    await shaper.wait_for(100_000)
    assert trio.current_time() - before == pytest.approx(0.1)
    # Idle refills the bucket, but never beyond the burst.
    await trio.sleep(60)
    before = trio.current_time()
    await pump(shaper, total=2_000_000, until=None, chunk=shaper.max_chunk)
    assert trio.current_time() == before
    await shaper.wait_for(1_000)
    assert trio.current_time() - before == pytest.approx(0.001)


async def test_pump_reading_max_chunk_is_never_dropped_even_with_tiny_burst(autojump_clock):
    limit = BandwidthLimit(mbps=0.008, burstMbps=0.0008)  # 1000 B/s, 100-byte burst
    shaper = Shaper.from_limit(limit)
    assert shaper.max_chunk == 100
    sent, last = await pump(shaper, total=None, until=30.0, chunk=shaper.max_chunk)
    assert sent / trio.current_time() == pytest.approx(1000, rel=0.05)


async def test_a_read_larger_than_the_burst_is_dropped(autojump_clock):
    shaper = Shaper.for_rate(1000, 5000)
    await shaper.wait_for(5000)
    with pytest.raises(BandwidthExceeded):
        await shaper.wait_for(5002)


async def test_udp_sender_faster_than_rate_is_dropped_when_queue_exceeds_burst(autojump_clock):
    # 1000 B/s, 5000-byte burst; 1000-byte datagrams arrive every 0.5 s (2000 B/s), so
    # the balance falls by 1000 bytes a second: 0 at t = 5 s, and after the datagram at
    # t = 9.5 s the queue would be 5500 bytes > 5000: that one is refused.
    shaper = Shaper.for_rate(1000, 5000)
    admitted = 0
    with pytest.raises(BandwidthExceeded):
        for _ in range(1000):
            deadline = shaper.admit(1000)
            assert deadline >= trio.current_time()
            admitted += 1
            await trio.sleep(0.5)
    dropped_at = trio.current_time()
    assert dropped_at == pytest.approx(9.5)
    assert admitted == 19


async def test_udp_sender_at_the_rate_is_never_dropped(autojump_clock):
    shaper = Shaper.for_rate(1000, 5000)
    for _ in range(600):  # 60 virtual seconds at 1000 B/s
        deadline = shaper.admit(100)
        assert deadline - trio.current_time() <= 5.0 + 1e-9
        await trio.sleep(0.1)


async def test_shaping_one_client_never_slows_another(autojump_clock):
    slow = ChannelShaper.from_limit(BandwidthLimit(mbps=8))  # 1 MB/s
    fast = ChannelShaper.from_limit(BandwidthLimit(mbps=80))  # 10 MB/s
    free = ChannelShaper.from_limit(None)
    finished: dict[str, float] = {}

    async def transfer(name: str, shaper: Shaper, nbytes: int) -> None:
        await pump(shaper, total=nbytes, until=None, chunk=shaper.max_chunk)
        finished[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(transfer, "slow", slow.client_to_service, 11_000_000)
        nursery.start_soon(transfer, "fast", fast.client_to_service, 110_000_000)
        nursery.start_soon(transfer, "free", free.client_to_service, 110_000_000)
        nursery.start_soon(transfer, "slow-down", slow.service_to_client, 6_000_000)
    assert finished["slow"] == pytest.approx(10.0, rel=0.01)
    assert finished["fast"] == pytest.approx(10.0, rel=0.01)
    assert finished["free"] == 0.0
    # The other direction of the slow channel has its own bucket.
    assert finished["slow-down"] == pytest.approx(5.0, rel=0.01)


async def test_unlimited_shaper_never_waits_but_is_a_checkpoint(autojump_clock):
    shaper = Shaper.unlimited()
    assert not shaper.limited and shaper.max_chunk == limits.SHAPER_MAX_CHUNK
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await shaper.wait_for(10**9)
    await shaper.wait_for(10**12)
    assert trio.current_time() == 0.0


async def test_charge_waits_only_once_the_bucket_is_empty(autojump_clock):
    """The data path's way: pay per chunk, sleep only for a debt; same long-run rate."""
    shaper = Shaper.for_rate(1_000_000, 100_000)  # 1 MB/s, 100 kB burst
    assert shaper.available() == 100_000
    assert shaper.charge(60_000) == 0.0  # within the burst: no wait at all
    assert shaper.available() == 40_000
    assert shaper.charge(60_000) == pytest.approx(0.02)  # 20 kB of debt at 1 MB/s
    assert shaper.available() == 0
    with pytest.raises(BandwidthExceeded):
        shaper.charge(200_000)  # the debt would pass the burst: drop, nothing taken
    await trio.sleep(0.02)
    start, sent = trio.current_time(), 0
    while trio.current_time() - start < 10:
        delay = shaper.charge(50_000)
        if delay:
            await trio.sleep(delay)
        sent += 50_000
    assert sent / (trio.current_time() - start) == pytest.approx(1_000_000, rel=0.05)
    unlimited = Shaper.unlimited()
    assert unlimited.charge(10**12) == 0.0 and unlimited.available() > 10**12
