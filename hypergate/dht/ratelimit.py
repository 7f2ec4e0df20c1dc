"""Sans-IO rate limits of the DHT socket: inbound per source IP, outbound pacing.

dht-rpc has no inbound limit (router.js has a TODO); a node that relays and answers for
anyone needs one so a single host cannot make it spend all its time or bandwidth.
"""

from __future__ import annotations

from collections import OrderedDict

from hypergate.limits import DHT_CONGESTION_WINDOW, DHT_RATE_BURST, DHT_RATE_PER_SOURCE, DHT_RATE_SOURCES


class SourceRateLimiter:
    """A token bucket per IP; the least recently active IPs are forgotten past a bound."""

    def __init__(
        self,
        rate_per_s: float = DHT_RATE_PER_SOURCE,
        burst: float = DHT_RATE_BURST,
        max_sources: int = DHT_RATE_SOURCES,
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, host: str, now: float) -> bool:
        tokens, last = self._buckets.pop(host, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[host] = (tokens, now)
        if len(self._buckets) > self.max_sources:
            # A forgotten source starts again with a full bucket: the bound trades a
            # little burst allowance for memory that does not grow with spoofed sources.
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class CongestionWindow:
    """Outbound pacing as dht-rpc's io.js CongestionWindow.

    Sends are counted in 4 buckets rotated every DHT_CONGESTION_ROTATE_S; a send counts
    until its request is answered or given up. Full when the current bucket holds
    `max_window` or all four hold twice that, so a node never fires more than ~160
    requests per 3 s at the network however many queries run at once.
    """

    def __init__(self, max_window: int = DHT_CONGESTION_WINDOW) -> None:
        self.max_window = max_window
        self._buckets = [0, 0, 0, 0]
        self._current = 0
        self._total = 0

    def is_full(self) -> bool:
        return self._total >= 2 * self.max_window or self._buckets[self._current] >= self.max_window

    def sent(self) -> None:
        self._total += 1
        self._buckets[self._current] += 1

    def settled(self) -> None:
        """A request got its answer or was given up."""
        if self._buckets[self._current] > 0:
            self._buckets[self._current] -= 1
            self._total -= 1

    def rotate(self) -> None:
        self._current = (self._current + 1) & 3
        self._total -= self._buckets[self._current]
        self._buckets[self._current] = 0
