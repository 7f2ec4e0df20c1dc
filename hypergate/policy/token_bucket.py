"""Bandwidth shaping: a token bucket per channel and direction.

Rate `mbps * 1e6 / 8` bytes/s, burst `(burstMbps or mbps) * 1e6 / 8` bytes, full at start.

The bucket may go into debt: `take(n)` removes n tokens at once and says how long until
the balance is back to zero. The sender waits that long before it forwards the bytes
("pay, then wait"). Over any period the bytes forwarded are at most
`burst + rate * elapsed`, and a steady sender gets exactly `rate`.

Drop rule (what the README promises, stated precisely): the bytes a channel has taken
in but not yet paid for - its debt, i.e. data queued behind the bucket - may not exceed
the burst budget. A `take`/`wait_for` that would push the debt past `burst` bytes raises
`BandwidthExceeded` (tokens untouched) and the channel must be reset.

A TCP pump never meets the drop rule when it reads at most `Shaper.max_chunk` bytes
(<= burst) and waits before its next read: backpressure then holds the client back, via
the kernel's socket buffers, and nothing is queued in our memory. What meets it is a
sender that pushes data without waiting - UDP datagrams admitted with `admit()` as they
arrive - faster than the rate, for longer than the burst allows.

Each channel direction has its own bucket (`ChannelShaper`), so shaping one client
never slows another, and uploads do not eat into downloads.
"""

from __future__ import annotations

import math

import attrs
import trio

from .. import limits
from ..errors import ChannelError
from .ingress import BandwidthLimit


class BandwidthExceeded(ChannelError):
    """More data queued behind the token bucket than the burst budget: drop the channel."""


class TokenBucket:
    """Sans-IO token bucket in bytes; `now` is seconds on any monotonic clock."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive finite number, got {rate!r}")
        if not (burst > 0 and math.isfinite(burst)):
            raise ValueError(f"burst must be a positive finite number, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._updated = now

    def refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._updated = now

    def tokens(self, now: float) -> float:
        """Current balance; negative while in debt."""
        self.refill(now)
        return self._tokens

    def debt(self, now: float) -> float:
        """Bytes taken but not yet paid for (data queued behind the bucket)."""
        return max(0.0, -self.tokens(now))

    def try_take(self, nbytes: int, now: float) -> bool:
        """Take `nbytes` only if they are available now, without going into debt."""
        self.refill(now)
        if self._tokens >= nbytes:
            self._tokens -= nbytes
            return True
        return False

    def time_until_available(self, nbytes: int, now: float) -> float:
        """Seconds until `nbytes` tokens are there (inf if `nbytes` exceeds the burst)."""
        self.refill(now)
        if nbytes > self.burst:
            return math.inf
        return max(0.0, (nbytes - self._tokens) / self.rate)

    def take(self, nbytes: int, now: float) -> float:
        """Take `nbytes` (possibly into debt); seconds to wait before sending them.

        Raises BandwidthExceeded, taking nothing, when the debt would exceed the burst."""
        if nbytes < 0:
            raise ValueError("nbytes must not be negative")
        self.refill(now)
        after = self._tokens - nbytes
        # One byte of slack: clock arithmetic in floats leaves crumbs of debt after a
        # sender waited exactly its time, which must not turn a full-burst read into a drop.
        if -after > self.burst + 1.0:
            raise BandwidthExceeded(
                f"bandwidth exceeded: {-after:.0f} bytes queued, burst budget {self.burst:.0f}"
            )
        self._tokens = after
        return max(0.0, -after / self.rate)


class Shaper:
    """One direction of one channel, on trio's clock. `Shaper.unlimited()` does nothing."""

    def __init__(self, bucket: TokenBucket | None) -> None:
        self._bucket = bucket

    @classmethod
    def unlimited(cls) -> Shaper:
        return cls(None)

    @classmethod
    def for_rate(cls, rate_bytes_per_s: float, burst_bytes: float) -> Shaper:
        return cls(TokenBucket(rate_bytes_per_s, burst_bytes, trio.current_time()))

    @classmethod
    def from_limit(cls, limit: BandwidthLimit | None) -> Shaper:
        if limit is None:
            return cls.unlimited()
        return cls.for_rate(limit.rate_bytes_per_s, limit.burst_bytes)

    @property
    def limited(self) -> bool:
        return self._bucket is not None

    @property
    def max_chunk(self) -> int:
        """Largest read a pump should make before `wait_for`: then it is never dropped."""
        if self._bucket is None:
            return limits.SHAPER_MAX_CHUNK
        return max(1, min(limits.SHAPER_MAX_CHUNK, int(self._bucket.burst)))

    def admit(self, nbytes: int) -> float:
        """Take `nbytes` now without waiting; returns the trio deadline to send them at.

        For senders that cannot wait (UDP datagrams as they arrive): sleep until the
        deadline before forwarding. Raises BandwidthExceeded per the drop rule."""
        now = trio.current_time()
        if self._bucket is None:
            return now
        return now + self._bucket.take(nbytes, now)

    def try_admit(self, nbytes: int) -> bool:
        """For datagrams: take `nbytes` if the bucket holds them now, else False (the
        datagram is dropped, as a policer would; the flow itself stays up)."""
        if self._bucket is None:
            return True
        return self._bucket.try_take(nbytes, trio.current_time())

    def available(self) -> int:
        """Bytes that may pass now without waiting (0 while the bucket is in debt)."""
        if self._bucket is None:
            return 1 << 62
        return max(0, int(self._bucket.tokens(trio.current_time())))

    def charge(self, nbytes: int) -> float:
        """Take `nbytes` (pay, then wait); returns the seconds to wait before sending
        them, 0.0 while the bucket still holds them - the data path sleeps only then,
        so a shaper that is not limiting costs no scheduling point.

        Raises BandwidthExceeded per the drop rule."""
        if self._bucket is None:
            return 0.0
        return self._bucket.take(nbytes, trio.current_time())

    async def wait_for(self, nbytes: int) -> None:
        """Take `nbytes` and sleep until they may be sent (backpressure).

        Raises BandwidthExceeded per the drop rule. Always a checkpoint."""
        deadline = self.admit(nbytes)
        await trio.sleep_until(deadline)


@attrs.frozen
class ChannelShaper:
    """Both directions of one channel, each with the full limit."""

    client_to_service: Shaper
    service_to_client: Shaper

    @classmethod
    def from_limit(cls, limit: BandwidthLimit | None) -> ChannelShaper:
        if limit is None:
            return _NO_LIMIT  # stateless: one for every unshaped channel
        return cls(Shaper.from_limit(limit), Shaper.from_limit(limit))


_NO_LIMIT = ChannelShaper(Shaper.unlimited(), Shaper.unlimited())
