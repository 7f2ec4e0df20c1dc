"""The WebSocket relay in-process, with real sockets on loopback."""

import hashlib
import os
from contextlib import asynccontextmanager

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from hypergate import limits
from hypergate.crypto.keys import LinkIdentity, RouterKeys
from hypergate.crypto.secure_link import establish_link
from hypergate.transport.relay import (
    PAIRED,
    RelayError,
    RelayServer,
    RelayStream,
    encode_hello,
    open_relay_stream,
    relay_capability,
    run_relay_command,
    serve_relay,
)

ROUTER = RouterKeys.from_secret(b"r" * 32)
CAP = relay_capability(ROUTER.topic)
OTHER_CAP = relay_capability(RouterKeys.from_secret(b"o" * 32).topic)


@asynccontextmanager
async def running_relay(**settings):
    relay = RelayServer(path="/hypergate", **settings)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(relay.serve, "127.0.0.1", 0)
        yield relay, f"ws://127.0.0.1:{port}/hypergate"
        nursery.cancel_scope.cancel()


async def open_pair(url, cap=CAP, pair_id=None, **kwargs) -> tuple[RelayStream, RelayStream]:
    """A "wait" and a "join" stream for one fresh pair id, opened concurrently."""
    pair_id = pair_id or os.urandom(16)
    streams = {}

    async def open_one(role):
        streams[role] = await open_relay_stream(url, cap, pair_id, role, **kwargs)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_one, "wait")
        nursery.start_soon(open_one, "join")
    return streams["wait"], streams["join"]


async def send_then_eof(stream, data, piece=1024 * 1024):
    for start in range(0, len(data), piece):
        await stream.send_all(data[start : start + piece])
    await stream.send_eof()


async def read_to_eof(stream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(256 * 1024):
        chunks.append(chunk)
    return b"".join(chunks)


async def exchange(a, b, size):
    """Both directions at once, each ended by EOF; compares SHA-256 of what arrived."""
    data = {a: os.urandom(size), b: os.urandom(size)}
    got = {}

    async def receive(stream):
        got[stream] = await read_to_eof(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_then_eof, a, data[a])
        nursery.start_soon(send_then_eof, b, data[b])
        nursery.start_soon(receive, a)
        nursery.start_soon(receive, b)
    assert hashlib.sha256(got[b]).digest() == hashlib.sha256(data[a]).digest()
    assert hashlib.sha256(got[a]).digest() == hashlib.sha256(data[b]).digest()


async def test_two_peers_exchange_mebibytes_both_ways():
    with trio.fail_after(30):
        async with running_relay() as (relay, url):
            a, b = await open_pair(url)
            assert isinstance(a, trio.abc.Stream)
            await exchange(a, b, 3 * 1024 * 1024 + 12345)
            # Writes are cut into messages the relay accepts.
            assert relay.forwarded_bytes >= 2 * (3 * 1024 * 1024 + 12345)
            assert relay.forwarded_messages >= 2 * (3 * 1024 * 1024) // limits.RELAY_CHUNK
            await a.aclose()
            await b.aclose()


async def test_a_stalled_reader_slows_its_sender_instead_of_filling_the_relay():
    size = 48 * 1024 * 1024
    data = os.urandom(size)
    with trio.fail_after(60):
        async with running_relay() as (relay, url):
            a, b = await open_pair(url)
            done = trio.Event()

            async def send():
                await send_then_eof(a, data)
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                # b reads nothing for a while: the sender must get stuck, with only socket
                # buffers' worth of data past the relay (no queue grows anywhere).
                with trio.move_on_after(1.0):
                    await done.wait()
                assert not done.is_set()
                assert relay.forwarded_bytes < 16 * 1024 * 1024
                received = await read_to_eof(b)
            assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
            await a.aclose()
            await b.aclose()


async def test_eof_is_a_half_close():
    with trio.fail_after(10):
        async with running_relay() as (relay, url):
            a, b = await open_pair(url)
            await a.send_all(b"question")
            await a.send_eof()
            await a.send_eof()  # idempotent
            with pytest.raises(trio.ClosedResourceError):
                await a.send_all(b"more")
            assert await read_to_eof(b) == b"question"
            assert await b.receive_some() == b""  # and stays at EOF
            # The other direction still works after a's EOF.
            await b.send_all(b"answer")
            await b.send_eof()
            assert await read_to_eof(a) == b"answer"
            await a.aclose()
            await b.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await a.receive_some()


async def test_close_reads_as_eof_on_the_other_side():
    with trio.fail_after(10):
        async with running_relay() as (relay, url):
            a, b = await open_pair(url)
            await a.send_all(b"last words")
            await a.aclose()  # no send_eof: the normal close is the EOF
            assert await read_to_eof(b) == b"last words"
            assert relay.active_pairs == 0
            await b.aclose()


async def test_a_different_capability_is_never_paired(autojump_clock):
    async with running_relay() as (relay, url):
        pair_id = os.urandom(16)
        errors = {}

        async def attempt(cap, role):
            with pytest.raises(RelayError) as info:
                await open_relay_stream(url, cap, pair_id, role)
            errors[role] = (str(info.value), trio.current_time())

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, CAP, "wait")
            nursery.start_soon(attempt, OTHER_CAP, "join")
        assert "4001 no peer arrived within 10s" in errors["join"][0]
        assert errors["join"][1] - start == pytest.approx(limits.RELAY_JOIN_TIMEOUT_S, abs=0.5)
        assert "4001 no peer arrived within 60s" in errors["wait"][0]
        assert relay.active_pairs == 0 and relay.waiting == 0 and relay.forwarded_messages == 0


async def test_join_without_a_waiter_times_out_with_a_reason(autojump_clock):
    async with running_relay(join_timeout=3.0) as (relay, url):
        start = trio.current_time()
        with pytest.raises(RelayError, match=r"4001 no peer arrived within 3s"):
            await open_relay_stream(url, CAP, os.urandom(16), "join")
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.5)
        assert relay.waiting == 0
        # The client's own bound, when it is the shorter one.
        with pytest.raises(RelayError, match=r"not paired within 1s \(role=join\)"):
            await open_relay_stream(url, CAP, os.urandom(16), "join", timeout=1.0)


async def test_pair_cap_refuses_the_next_pair_only():
    with trio.fail_after(20):
        async with running_relay(max_pairs=2) as (relay, url):
            first = await open_pair(url)
            second = await open_pair(url)
            assert relay.active_pairs == 2
            with pytest.raises(RelayError, match=r"1013 relay full \(2 pairs\)"):
                await open_relay_stream(url, CAP, os.urandom(16), "wait")
            await exchange(*first, 200_000)
            await exchange(*second, 200_000)
            # Ending a pair frees its slot.
            await first[0].aclose()
            await first[1].aclose()
            third = await open_pair(url)
            await exchange(*third, 1000)
            for stream in (*second, *third):
                await stream.aclose()


async def test_waiting_connections_per_capability_are_bounded():
    with trio.fail_after(10):
        async with running_relay(max_waiting_per_capability=2) as (relay, url):
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(open_relay_stream, url, CAP, os.urandom(16), "wait")
                while relay.waiting < 2:
                    await trio.sleep(0.01)
                with pytest.raises(RelayError, match="1013 too many peers waiting on this capability"):
                    await open_relay_stream(url, CAP, os.urandom(16), "wait")
                # Another router's peers are not affected.
                a, b = await open_pair(url, cap=OTHER_CAP)
                await exchange(a, b, 1000)
                await a.aclose()
                await b.aclose()
                nursery.cancel_scope.cancel()


async def test_second_waiter_for_a_pair_is_refused_and_the_first_keeps_its_slot():
    with trio.fail_after(10):
        async with running_relay() as (relay, url):
            pair_id = os.urandom(16)
            streams = []

            async def wait_first():
                streams.append(await open_relay_stream(url, CAP, pair_id, "wait"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_first)
                while relay.waiting < 1:
                    await trio.sleep(0.01)
                with pytest.raises(RelayError, match="1008 a 'wait' for this pair is already waiting"):
                    await open_relay_stream(url, CAP, pair_id, "wait")
                streams.append(await open_relay_stream(url, CAP, pair_id, "join"))
            await exchange(*streams, 5000)
            for stream in streams:
                await stream.aclose()


async def test_oversized_message_closes_only_that_pair():
    with trio.fail_after(10):
        async with running_relay(max_message=4096) as (relay, url):
            bystanders = await open_pair(url)
            pair_id = os.urandom(16)
            async with open_websocket_url(url) as raw:
                await raw.send_message(encode_hello(CAP, pair_id, "wait"))
                joiner = await open_relay_stream(url, CAP, pair_id, "join")
                assert await raw.get_message() == PAIRED
                await raw.send_message(b"x" * 1000)
                assert await joiner.receive_some() == b"x" * 1000
                await raw.send_message(b"x" * 5000)
                with pytest.raises(ConnectionClosed) as closed:
                    await raw.get_message()
                assert closed.value.reason.code == 1009
                with pytest.raises(trio.BrokenResourceError, match=r"4003 peer gone \(1009"):
                    await joiner.receive_some()
                await joiner.aclose()
            assert relay.active_pairs == 1
            await exchange(*bystanders, 3000)  # under this relay's message limit
            for stream in bystanders:
                await stream.aclose()


async def test_protocol_violations_close_with_a_reason_and_the_relay_goes_on():
    with trio.fail_after(10):
        async with running_relay() as (relay, url):
            for message, code in [(b"garbage", 1008), ("text hello", 1003)]:
                async with open_websocket_url(url) as raw:
                    await raw.send_message(message)
                    with pytest.raises(ConnectionClosed) as closed:
                        await raw.get_message()
                    assert closed.value.reason.code == code
            # Sending before "paired" breaks the protocol too.
            async with open_websocket_url(url) as raw:
                await raw.send_message(encode_hello(CAP, os.urandom(16), "wait"))
                await raw.send_message(b"too early")
                with pytest.raises(ConnectionClosed) as closed:
                    await raw.get_message()
                assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "data before paired")
            with pytest.raises(RelayError, match="HTTP 404"):
                await open_relay_stream(url.replace("/hypergate", "/elsewhere"), CAP, os.urandom(16), "wait")
            a, b = await open_pair(url)
            await exchange(a, b, 1000)
            assert relay.waiting == 0
            await a.aclose()
            await b.aclose()


async def test_idle_pair_is_closed(autojump_clock):
    async with running_relay(idle_timeout=30.0) as (relay, url):
        a, b = await open_pair(url)
        await a.send_all(b"hello")
        assert await b.receive_some() == b"hello"
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError, match="4002 idle for 30s"):
            await a.receive_some()
        assert trio.current_time() - start == pytest.approx(30.0, abs=0.5)
        with pytest.raises(trio.BrokenResourceError, match="4002"):
            await b.receive_some()
        assert relay.active_pairs == 0
        await a.aclose()
        await b.aclose()


async def test_relay_sees_ciphertext_only():
    marker = b"PLAINTEXT-MARKER-" * 64
    seen = []
    with trio.fail_after(20):
        async with running_relay(on_forward=seen.append) as (relay, url):
            a, b = await open_pair(url)
            links = {}

            async def handshake(stream, initiator):
                links[initiator] = await establish_link(
                    stream, initiator=initiator, identity=LinkIdentity.generate(), router=ROUTER
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(handshake, a, True)
                nursery.start_soon(handshake, b, False)
            await links[True].send_record(marker)
            received = b""
            while marker not in received:
                received += b"".join(await links[False].receive_records())
            assert seen, "the test hook saw no traffic"
            assert all(marker[:17] not in message for message in seen)
            assert marker[:17] not in b"".join(seen)
            await a.aclose()
            await b.aclose()


async def test_full_relay_refuses_the_upgrade_with_503(monkeypatch):
    monkeypatch.setattr(limits, "RELAY_HELLO_SLACK", 0)
    with trio.fail_after(10):
        async with running_relay(max_pairs=0) as (relay, url):
            with pytest.raises(RelayError, match="HTTP 503: relay full"):
                await open_relay_stream(url, CAP, os.urandom(16), "wait")


async def test_client_answers_pings_and_reports_close_before_pairing(nursery):
    """Against a scripted WebSocket server: pings are answered while reading."""
    from trio_websocket import serve_websocket

    async def handler(request):
        ws = await request.accept()
        hello = await ws.get_message()
        if b'"wait"' in hello:
            await ws.aclose(1000, "bye")  # a normal close before "paired" is still a failure
            return
        await ws.send_message(PAIRED)
        with trio.fail_after(5):
            await ws.ping(b"are you there")  # returns once the client's pong arrives
        await ws.send_message(b"after the ping")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    url = f"ws://127.0.0.1:{server.port}/"
    with trio.fail_after(10):
        stream = await open_relay_stream(url, CAP, os.urandom(16), "join")
        assert await stream.receive_some() == b"after the ping"
        await stream.aclose()
        with pytest.raises(RelayError, match="relay closed the connection: 1000 bye"):
            await open_relay_stream(url, CAP, os.urandom(16), "wait")


async def test_silent_connection_is_closed_after_the_hello_timeout(autojump_clock):
    async with running_relay(hello_timeout=5.0) as (relay, url):
        start = trio.current_time()
        async with open_websocket_url(url) as raw:
            with pytest.raises(ConnectionClosed) as closed:
                await raw.get_message()
        assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "no hello within 5s")
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.5)


async def test_serve_relay_and_the_cli_entry_point(nursery):
    port = await nursery.start(serve_relay, "127.0.0.1", 0)
    with trio.fail_after(10):
        a, b = await open_pair(f"ws://127.0.0.1:{port}/any/path")
        await exchange(a, b, 10_000)
        await a.aclose()
        await b.aclose()
    # `hypergate relay --host --port --path`: serves until cancelled, only on its path.
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with trio.CancelScope() as scope:
        nursery.start_soon(run_relay_command, "127.0.0.1", free, "/hypergate")
        with trio.fail_after(10):
            while True:
                try:
                    await open_relay_stream(f"ws://127.0.0.1:{free}/", CAP, os.urandom(16), "wait")
                except RelayError as exc:
                    if "HTTP 404" in str(exc):
                        break  # listening, and only on its path
                    assert "OSError: all attempts to connect" in str(exc)
                    await trio.sleep(0.02)  # not listening yet
            a, b = await open_pair(f"ws://127.0.0.1:{free}/hypergate")
            await exchange(a, b, 10_000)
            await a.aclose()
            await b.aclose()
    scope.cancel()
