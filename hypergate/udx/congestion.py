"""Round-trip estimation (RFC 6298) and NewReno congestion control, counted in packets.
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


class NewReno:
    """cwnd in packets: slow start, congestion avoidance (+1 per RTT), halve on a loss
    episode (once per window), collapse to 1 on an RTO."""

    def __init__(self) -> None:
        self.cwnd = float(limits.UDX_INITIAL_CWND)
        self.ssthresh = float("inf")
        self.recovery_end: int | None = None  # seq that ends the current recovery episode

    def on_acked(self, packets: int, in_recovery: bool) -> None:
        if in_recovery or packets <= 0:
            return
        if self.cwnd < self.ssthresh:
            self.cwnd += packets
        else:
            self.cwnd += packets / self.cwnd
        self.cwnd = min(self.cwnd, float(limits.UDX_MAX_CWND))

    def on_loss(self, pipe: int) -> None:
        self.ssthresh = max(pipe / 2, 2.0)
        self.cwnd = self.ssthresh

    def on_timeout(self, pipe: int, ever_acked: bool) -> None:
        if not ever_acked:
            # The first packets went unanswered: the peer was not there yet (it opens its
            # stream after ours, or the punched path is not up). That says nothing about
            # the path's capacity, so start over as new rather than in congestion avoidance.
            self.cwnd = float(limits.UDX_INITIAL_CWND)
            return
        self.ssthresh = max(pipe / 2, 2.0)
        self.cwnd = 1.0
