"""Sans-IO NAT sampling: how the network sees us, from the `to` field of replies.

A port of `nat-sampler` 1.0.1 (what dht-rpc uses), including its quirks, so our idea of
our public address settles exactly when a Node node's would: it keeps the last 16
samples twice (as host:port and as host alone), matches a new sample only against the
last 4 of its kind, and settles once the best one reaches size minus a small slack.
"""

from __future__ import annotations

import attrs

# nat-sampler keeps 16 samples, two slots each (host:port and host only).
_SLOTS = 32


@attrs.define(eq=False)
class _Sample:
    host: str
    port: int
    hits: int = 1


class NatSampler:
    def __init__(self) -> None:
        self.host: str | None = None
        self.port = 0  # 0: no consistent port (or a randomizing NAT)
        self.size = 0
        self._best_address: _Sample | None = None
        self._best_host: _Sample | None = None
        self._threshold = 0
        self._top = 0
        self._samples: list[_Sample] = []

    def add(self, host: str, port: int) -> int:
        """Record one observation; returns how often this host:port was seen recently."""
        a = self._bump(host, port, 2)
        b = self._bump(host, 0, 1)
        if len(self._samples) < _SLOTS:
            self.size += 1
            slack = 0 if self.size < 4 else 1 if self.size < 8 else 2 if self.size < 12 else 3
            self._threshold = self.size - slack
            self._samples += [a, b]
            self._top += 2
        else:
            if self._top == _SLOTS:
                self._top = 0
            self._samples[self._top].hits -= 1
            self._samples[self._top] = a
            self._samples[self._top + 1].hits -= 1
            self._samples[self._top + 1] = b
            self._top += 2
        if self._best_address is None or self._best_address.hits < a.hits:
            self._best_address = a
        if self._best_host is None or self._best_host.hits < b.hits:
            self._best_host = b
        if self._best_address.hits >= self._threshold:
            self.host, self.port = self._best_address.host, self._best_address.port
        elif self._best_host.hits >= self._threshold:
            self.host, self.port = self._best_host.host, 0
        else:
            self.host, self.port = None, 0
        return a.hits

    def _bump(self, host: str, port: int, inc: int) -> _Sample:
        for i in range(4):
            j = (self._top - inc - 2 * i) & (_SLOTS - 1)
            if j >= len(self._samples):
                return _Sample(host, port)
            sample = self._samples[j]
            if sample.port == port and sample.host == host:
                sample.hits += 1
                return sample
        return _Sample(host, port)
