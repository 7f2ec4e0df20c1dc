"""Mux session over a real handshake on in-memory streams: data, flow control, faults."""

import hashlib
import os

import pytest
import trio
import trio.testing

from hypergate import limits
from hypergate.mux.channel import ChannelReset
from hypergate.wire.frames import FrameType, encode_frame, encode_header
from hypergate.wire.messages import Hello, OpenRequest, ResetCode

from ..mux_harness import echo_handler, linked_links, linked_sessions, read_all

REQ = OpenRequest(gatePort=80, protocol="tcp")


async def test_many_concurrent_channels_carry_data_intact(nursery):
    a, _ = await linked_sessions(nursery, on_channel_b=echo_handler)

    async def transfer(size):
        payload = os.urandom(size)
        channel = await a.open_channel(REQ)
        async with trio.open_nursery() as inner:
            async def send():
                await channel.send(payload)
                await channel.send_eof()
            inner.start_soon(send)
            echoed = await read_all(channel)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()

    async with trio.open_nursery() as group:
        for i in range(20):
            group.start_soon(transfer, 50_000 * (i + 1))
    assert a.channel_count == 0


async def test_half_close_lets_the_reply_through(nursery):
    async def server(channel):
        channel.accept()
        request = await read_all(channel)
        await channel.send(b"reply to " + request)
        await channel.send_eof()

    a, _ = await linked_sessions(nursery, on_channel_b=server)
    channel = await a.open_channel(REQ)
    await channel.send(b"question")
    await channel.send_eof()
    assert await read_all(channel) == b"reply to question"


async def test_slow_reader_holds_back_only_its_own_channel(nursery):
    stalled = {}
    release = trio.Event()

    async def handler(channel):
        channel.accept()
        if channel.request.gatePort == 1:
            stalled["channel"] = channel
            await release.wait()
            await read_all(channel)
            return
        data = await read_all(channel)
        await channel.send(hashlib.sha256(data).digest())
        await channel.send_eof()

    a, _ = await linked_sessions(nursery, on_channel_b=handler)
    slow = await a.open_channel(OpenRequest(gatePort=1, protocol="tcp"))
    nursery.start_soon(slow.send, os.urandom(8 * 1024 * 1024))
    fast = await a.open_channel(OpenRequest(gatePort=2, protocol="tcp"))
    payload = os.urandom(4 * 1024 * 1024)
    await fast.send(payload)
    await fast.send_eof()
    assert await read_all(fast) == hashlib.sha256(payload).digest()
    # The stalled channel's receiver holds at most its window; the sender is blocked.
    buffered = sum(len(chunk) for chunk in stalled["channel"]._inbox)
    assert 0 < buffered <= limits.INITIAL_CHANNEL_WINDOW
    assert slow.bytes_out <= limits.INITIAL_CHANNEL_WINDOW
    release.set()


async def test_refusal_reason_reaches_the_opener_at_once(nursery):
    async def handler(channel):
        channel.reset(ResetCode.SERVICE_UNREACHABLE, "10.0.0.1:80: Connection refused")

    a, _ = await linked_sessions(nursery, on_channel_b=handler)
    with pytest.raises(ChannelReset) as info:
        await a.open_channel(REQ)
    assert info.value.reason.code == ResetCode.SERVICE_UNREACHABLE
    assert "Connection refused" in info.value.reason.message


async def test_open_times_out_when_the_peer_never_answers(nursery, autojump_clock):
    async def never_accept(channel):
        await trio.sleep_forever()

    a, _ = await linked_sessions(nursery, on_channel_b=never_accept)
    start = trio.current_time()
    with pytest.raises(ChannelReset, match="open timed out"):
        await a.open_channel(REQ, timeout=15)
    assert trio.current_time() - start == pytest.approx(15)


async def test_dead_peer_is_detected_by_keepalive(nursery, autojump_clock):
    from hypergate.mux.session import MuxSession

    link_a, _silent_link_b = await linked_links()  # b completes the handshake, then says nothing
    a = MuxSession(link_a, on_channel=echo_handler, on_message=lambda m: None, name="a")
    start = trio.current_time()
    await a.run()
    elapsed = trio.current_time() - start
    assert a.closed and "dead peer" in a.close_reason
    assert limits.DEAD_PEER_TIMEOUT_S <= elapsed <= limits.DEAD_PEER_TIMEOUT_S + limits.KEEPALIVE_INTERVAL_S


async def test_idle_but_alive_link_survives_keepalive(nursery, autojump_clock):
    a, b = await linked_sessions(nursery, on_channel_b=echo_handler)
    await trio.sleep(10 * limits.DEAD_PEER_TIMEOUT_S)  # virtual time: autojump MockClock
    assert not a.closed and not b.closed and a.rtt is not None
    channel = await a.open_channel(REQ)
    await channel.send(b"still here")
    await channel.send_eof()
    assert await read_all(channel) == b"still here"


async def test_go_away_lets_open_channels_finish_and_refuses_new_ones(nursery):
    a, b = await linked_sessions(nursery, on_channel_a=echo_handler, on_channel_b=echo_handler)
    channel = await a.open_channel(REQ)
    closing = trio.Event()

    async def close_b():
        await b.close(grace=5)
        closing.set()

    nursery.start_soon(close_b)
    await trio.testing.wait_all_tasks_blocked()
    assert a.remote_going_away
    with pytest.raises(ChannelReset, match="closing"):
        await a.open_channel(REQ)
    await channel.send(b"last words")
    await channel.send_eof()
    assert await read_all(channel) == b"last words"
    await closing.wait()


async def test_garbage_frames_close_the_session_with_a_reason(nursery):
    from hypergate.mux.session import MuxSession

    link_a, link_b = await linked_links()
    a = MuxSession(link_a, on_channel=echo_handler, on_message=lambda m: None, name="a")
    await link_b.send_record(b"\xff" * 40)  # authenticated record, nonsense inside
    with trio.fail_after(5):
        await a.run()
    assert "unsupported frame version" in a.close_reason


async def test_bad_open_request_costs_only_that_channel(nursery):
    a, b = await linked_sessions(nursery, on_channel_a=echo_handler, on_channel_b=echo_handler)
    good = await b.open_channel(REQ)
    bad_id = b._next_id
    b._next_id += 2
    b._queue_control(encode_frame(FrameType.OPEN, bad_id, payload=b"{not json"))
    await good.send(b"fine")
    await good.send_eof()
    assert await read_all(good) == b"fine"
    assert not a.closed and not b.closed


async def test_window_overrun_closes_the_session(nursery):
    async def hold(channel):
        channel.accept()
        await trio.sleep_forever()

    a, b = await linked_sessions(nursery, on_channel_b=hold)
    channel = await a.open_channel(REQ)
    chunk = b"x" * limits.MAX_FRAME_PAYLOAD
    # Bypass our own flow control to send more than the window allows.
    for _ in range(limits.INITIAL_CHANNEL_WINDOW // len(chunk) + 1):
        a._queue_control(encode_header(FrameType.DATA, channel.id, 0, len(chunk)) + chunk)
    await trio.testing.wait_all_tasks_blocked()
    assert b.closed and "granted" in b.close_reason


async def test_bad_control_message_is_ignored_and_later_ones_arrive(nursery):
    received = []
    a, b = await linked_sessions(nursery, on_message_b=received.append)
    a._queue_control(encode_frame(FrameType.MESSAGE, 0, payload=b"[1,2"))
    a._queue_control(encode_frame(FrameType.MESSAGE, 0, payload=b'{"type":"nope"}'))
    a.send_message(Hello(type="hello", version=1, gateway=True))
    await trio.testing.wait_all_tasks_blocked()
    assert received == [Hello(type="hello", version=1, gateway=True)] and not b.closed


async def test_link_loss_resets_open_channels(nursery):
    async def hold(channel):
        channel.accept()
        await trio.sleep_forever()

    a, b = await linked_sessions(nursery, on_channel_b=hold)
    channel = await a.open_channel(REQ)
    b.abort("test: link cut")
    with pytest.raises(ChannelReset) as info:
        with trio.fail_after(5):
            await channel.receive()
    assert info.value.reason.code == ResetCode.LINK_CLOSED


async def test_go_away_ends_udp_flows_at_once_but_waits_for_tcp(nursery, autojump_clock):
    async def hold(channel):
        channel.accept()
        await trio.sleep_forever()

    a, b = await linked_sessions(nursery, on_channel_b=hold)
    udp = await a.open_channel(OpenRequest(gatePort=53, protocol="udp"))
    tcp = await a.open_channel(REQ)
    start = trio.current_time()
    await a.close(grace=5)
    assert udp.reset_reason.code == ResetCode.GOING_AWAY and udp.reset_reason.message == "peer shut down"
    assert trio.current_time() - start >= 5  # the TCP channel got its grace period
    assert tcp.reset_reason is not None
