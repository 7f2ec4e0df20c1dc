"""Flow-control windows: overrun detection, grant timing, auto-tuning."""

import pytest

from hypergate.mux.flow import FlowControlError, ReceiveWindow, SendWindow


def test_overrun_is_a_protocol_error():
    window = ReceiveWindow(1000)
    window.on_received(1000)
    with pytest.raises(FlowControlError, match="1 bytes with only 0 granted"):
        window.on_received(1)


def test_credit_is_granted_after_half_the_window_is_consumed():
    window = ReceiveWindow(1000)
    window.on_received(1000)
    assert window.on_consumed(499, now=0.0, rtt=None) == 0
    assert window.on_consumed(1, now=0.0, rtt=None) == 500
    assert window.outstanding == 500


def test_window_doubles_when_consumed_within_two_round_trips_up_to_the_max():
    # Consume half the window every 0.05 s with a 0.1 s round trip: a fast consumer.
    window = ReceiveWindow(1000, max_window=4000)
    sizes = []
    for step in range(8):
        window.on_received(window.window // 2)
        window.on_consumed(window.window // 2, now=step * 0.05, rtt=0.1)
        sizes.append(window.window)
    assert sizes[0] == 1000  # first grant only records the time
    assert max(sizes) == 4000 and sizes == sorted(sizes)


def test_window_does_not_grow_for_a_slow_consumer():
    window = ReceiveWindow(1000, max_window=4000)
    for step in range(5):
        window.on_received(500)
        window.on_consumed(500, now=step * 10.0, rtt=0.1)
    assert window.window == 1000


def test_send_window_rejects_zero_and_overflowing_updates():
    window = SendWindow(10)
    with pytest.raises(FlowControlError):
        window.grant(0)
    with pytest.raises(FlowControlError):
        window.grant(2**31)
    window.grant(5)
    window.spend(15)
    assert window.available == 0
