"""Sans-IO NAT sampling: how the network sees us, from the `to` field of replies.

A port of `nat-sampler` 1.0.1 (what dht-rpc uses), including its quirks, so our idea of
our public address settles exactly when a Node node's would: it keeps the last 16
samples twice (as host:port and as host alone), matches a new sample only against the
last 4 of its kind, and settles once the best one reaches size minus a small slack.
FirewallClassifier ports hyperdht's per-socket classification (OPEN/CONSISTENT/RANDOM)
that hole punching decides its strategy by.
"""

from __future__ import annotations

import attrs

from hypergate.dht.messages import Firewall

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


@attrs.define
class _Tally:
    host: str
    port: int
    hits: int = 1


def _tally(samples: list[_Tally], host: str, port: int) -> None:
    """Count a sample, keeping the list sorted by hits (most first, ties by age)."""
    for i, sample in enumerate(samples):
        if sample.host != host or sample.port != port:
            continue
        sample.hits += 1
        while i > 0 and samples[i - 1].hits < sample.hits:
            samples[i - 1], samples[i] = sample, samples[i - 1]
            i -= 1
        return
    samples.append(_Tally(host, port))


class FirewallClassifier:
    """Classifies one socket's NAT from PING answers (`hyperdht/lib/nat.js` Nat).

    Feed it, for each answering DHT node, how that node saw the socket. OPEN if the DHT
    node is not firewalled; otherwise, from 3 samples on: CONSISTENT when one address
    keeps coming back (hole punching works), RANDOM when the port changes per
    destination (the NAT randomizes, so only the host is advertised, with port 0).
    `addresses` is what a hyperdht peer would advertise for this socket.
    """

    def __init__(self, dht_firewalled: bool) -> None:
        self.dht_firewalled = dht_firewalled
        self.firewall = Firewall.UNKNOWN if dht_firewalled else Firewall.OPEN
        self.sampled = 0
        self._hosts: list[_Tally] = []
        self._full: list[_Tally] = []
        self._seen_from: set[tuple[str, int]] = set()

    @property
    def addresses(self) -> list[tuple[str, int]] | None:
        if self.firewall == Firewall.UNKNOWN:
            return None
        if self.firewall == Firewall.RANDOM:
            return [(self._hosts[0].host, 0)]
        if self.firewall == Firewall.CONSISTENT:
            out: list[tuple[str, int]] = []
            for sample in self._full:
                if sample.hits >= 2 or len(out) < 2:
                    out.append((sample.host, sample.port))
            return out
        return None  # OPEN: the node's own public address is used instead

    def add(self, seen_as: tuple[str, int], answered_by: tuple[str, int]) -> None:
        """One answer: `seen_as` is the reply's `to`, `answered_by` the DHT node's address."""
        if answered_by in self._seen_from:
            return
        self._seen_from.add(answered_by)
        _tally(self._hosts, seen_as[0], 0)
        _tally(self._full, seen_as[0], seen_as[1])
        self.sampled += 1
        if self.sampled >= 3 or not self.dht_firewalled:
            self._update()

    def _update(self) -> None:
        if not self.dht_firewalled:
            self.firewall = Firewall.OPEN
            return
        if self.sampled < 3:
            return
        best = self._full[0].hits
        if best >= 3:
            self.firewall = Firewall.CONSISTENT
        elif best == 1:
            self.firewall = Firewall.RANDOM
        elif len(self._hosts) == 1 and self.sampled > 3:
            self.firewall = Firewall.RANDOM  # one IP, two different ports among 4+ samples
        elif len(self._hosts) > 1 and self._full[1].hits > 1:
            self.firewall = Firewall.CONSISTENT  # double hits on two IPs (multi-homed)
        elif self.sampled > 4:
            self.firewall = Firewall.RANDOM  # all the samples we expect, no decision
