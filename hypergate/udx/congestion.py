"""Round-trip estimation (RFC 6298) and CUBIC congestion control, counted in packets.
Sans-IO: times are float seconds handed in by the caller.
"""

from __future__ import annotations

from hypergate import limits


class RttEstimator:
    """RFC 6298 smoothed RTT and retransmission timeout, with exponential backoff."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rtt: float | None = None
        self.base_rto = limits.UDX_INITIAL_RTO_S
        self.backoff = 1

    def sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
        self.base_rto = min(max(self.srtt + 4 * self.rttvar, limits.UDX_MIN_RTO_S), limits.UDX_MAX_RTO_S)

    @property
    def rto(self) -> float:
        # Backoff doubles per expiry but stops growing at UDX_RTO_BACKOFF_CAP_S (or the
        # base RTO when that is larger), so a vanished peer is noticed in ~10-15 s.
        cap = max(self.base_rto, limits.UDX_RTO_BACKOFF_CAP_S)
        return min(self.base_rto * self.backoff, cap)

    def back_off(self) -> None:
        self.backoff = min(self.backoff * 2, 1 << 16)

    def reset_backoff(self) -> None:
        self.backoff = 1


class Cubic:
    """CUBIC (RFC 9438) with cwnd in packets: slow start, then a window that grows as a
    cubic function of the time since the last loss, never slower than Reno would
    (its "Reno-friendly" estimate); x0.7 on a loss episode, 1 packet after an RTO.
    Its loss tolerance is what a long, slightly lossy internet path needs: Reno's
    window is 1.22/sqrt(p) packets whatever the RTT."""

    C = 0.4
    BETA = 0.7
    ALPHA = 3 * (1 - BETA) / (1 + BETA)  # Reno-friendly growth per RTT

    def __init__(self) -> None:
        self.cwnd = float(limits.UDX_INITIAL_CWND)
        self.ssthresh = float("inf")
        self.recovery_end: int | None = None  # seq that ends the current recovery episode
        self._w_max = 0.0
        self._k = 0.0
        self._epoch_start: float | None = None
        self._w_est = 0.0

    def on_acked(self, packets: int, in_recovery: bool, now: float, srtt: float | None) -> None:
        if in_recovery or packets <= 0:
            return
        if self.cwnd < self.ssthresh:
            self.cwnd = min(self.cwnd + packets, float(limits.UDX_MAX_CWND))
            return
        if self._epoch_start is None:
            self._epoch_start = now
            self._w_est = self.cwnd
            if self._w_max <= self.cwnd:
                self._k = 0.0
                self._w_max = self.cwnd
            else:
                self._k = ((self._w_max - self.cwnd) / self.C) ** (1 / 3)
        rtt = srtt or 0.0
        t = now - self._epoch_start
        target = self.C * (t + rtt - self._k) ** 3 + self._w_max
        target = min(max(target, self.cwnd), 1.5 * self.cwnd)
        self._w_est += self.ALPHA * packets / self.cwnd
        if self.C * (t - self._k) ** 3 + self._w_max < self._w_est:
            self.cwnd = max(self.cwnd, self._w_est)  # Reno-friendly region
        else:
            self.cwnd += (target - self.cwnd) / self.cwnd * packets
        self.cwnd = min(self.cwnd, float(limits.UDX_MAX_CWND))

    def on_loss(self) -> None:
        # Fast convergence: a window that stopped short of the last maximum gives way.
        self._w_max = self.cwnd * (1 + self.BETA) / 2 if self.cwnd < self._w_max else self.cwnd
        self.cwnd = self.ssthresh = max(self.cwnd * self.BETA, 2.0)
        self._epoch_start = None

    def on_timeout(self, ever_acked: bool) -> None:
        if not ever_acked:
            # The first packets went unanswered: the peer was not there yet (it opens its
            # stream after ours, or the punched path is not up). That says nothing about
            # the path's capacity, so start over as new rather than in congestion avoidance.
            self.cwnd = float(limits.UDX_INITIAL_CWND)
            return
        self.on_loss()
        self.cwnd = 1.0
