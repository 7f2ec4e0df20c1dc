"""Sans-IO inbound rate limit per source IP for the DHT socket.

dht-rpc has none (router.js has a TODO); a node that relays and answers for anyone
needs one so a single host cannot make it spend all its time or bandwidth.
"""

from __future__ import annotations

from collections import OrderedDict

from hypergate.limits import DHT_RATE_BURST, DHT_RATE_PER_SOURCE, DHT_RATE_SOURCES


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
