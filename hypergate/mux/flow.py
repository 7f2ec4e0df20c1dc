"""Flow-control accounting (sans-IO): how much each side may send, and when to grant more.

Two levels, as in HTTP/2: every channel has a window, and the session has one across all
channels. A sender spends both; a receiver grants channel credit as its application
consumes data, and session credit likewise. So a slow consumer holds back only its own
channel, and however many channels there are, one peer can never make us buffer more
than the session window.

Channel windows auto-tune as in rust-yamux: when a channel consumes its window within
two round trips, the window doubles (up to a maximum), so a single bulk channel is not
capped at window/RTT on long or fast links.
"""

from __future__ import annotations

from ..errors import ProtocolError


class FlowControlError(ProtocolError):
    """The peer sent more than it was granted."""


class ReceiveWindow:
    """The receiving side of one window (a channel's, or the session's).

    `on_received(n)` when data arrives (raises if the peer overran the grant);
    `on_consumed(n, now, rtt)` when the application has taken it; that returns the credit
    to grant in a WINDOW_UPDATE, or 0 when it is not yet worth a frame.
    """

    __slots__ = ("window", "max_window", "outstanding", "consumed", "_last_grant_at", "_auto_tune")

    def __init__(self, initial: int, max_window: int | None = None) -> None:
        self.window = initial
        self.max_window = max_window if max_window is not None else initial
        self.outstanding = initial  # bytes the peer may still send us
        self.consumed = 0  # taken by the application, not yet granted back
        self._last_grant_at: float | None = None
        self._auto_tune = self.max_window > initial

    def on_received(self, n: int) -> None:
        if n > self.outstanding:
            raise FlowControlError(f"peer sent {n} bytes with only {self.outstanding} granted")
        self.outstanding -= n

    def on_consumed(self, n: int, now: float, rtt: float | None) -> int:
        self.consumed += n
        # Grant once half the window has been consumed: few update frames, never a stall.
        if self.consumed < self.window // 2:
            return 0
        grow = 0
        if self._auto_tune and rtt is not None and self._last_grant_at is not None:
            if now - self._last_grant_at < 2 * rtt and self.window < self.max_window:
                new_window = min(self.window * 2, self.max_window)
                grow = new_window - self.window
                self.window = new_window
        self._last_grant_at = now
        credit = self.consumed + grow
        self.consumed = 0
        self.outstanding += credit
        return credit


class SendWindow:
    """The sending side: credit the peer has granted us and we have not spent."""

    __slots__ = ("available",)

    def __init__(self, initial: int) -> None:
        self.available = initial

    def grant(self, n: int) -> None:
        if n <= 0 or self.available + n > 2**31:
            raise FlowControlError(f"invalid window update of {n} bytes")
        self.available += n

    def spend(self, n: int) -> None:
        assert n <= self.available
        self.available -= n
