"""UdxSocket / UdxStream over real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import random
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from hypergate.udx import UdxSocket
from hypergate.udx import packet as wire
from hypergate.udx.packet import encode_header

LOOPBACK = "127.0.0.1"


async def bound_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((LOOPBACK, 0))
    return sock


@asynccontextmanager
async def udx_pair(on_datagram_b=None):
    """Two running UdxSockets; yields (udx_a, udx_b)."""
    async with trio.open_nursery() as nursery:
        udx_a = UdxSocket(await bound_socket())
        udx_b = UdxSocket(await bound_socket(), on_datagram_b)
        await nursery.start(udx_a.run)
        await nursery.start(udx_b.run)
        yield udx_a, udx_b
        nursery.cancel_scope.cancel()


def connect(udx_a, udx_b, address_of_b=None):
    """Client stream on a, server stream on b (remote_address None: learnt)."""
    id_a, id_b = udx_a.new_stream_id(), udx_b.new_stream_id()
    client = udx_a.open_stream(id_a, id_b, address_of_b or udx_b.local_address)
    server = udx_b.open_stream(id_b, id_a, None)
    return client, server


async def receive_all(stream) -> bytes:
    chunks = []
    while True:
        data = await stream.receive_some()
        if not data:
            return b"".join(chunks)
        chunks.append(data)


async def send_and_eof(stream, data: bytes) -> None:
    await stream.send_all(data)
    await stream.send_eof()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def exchange(client, server, to_server: bytes, to_client: bytes):
    results = {}

    async def collect(name, stream):
        results[name] = await receive_all(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_and_eof, client, to_server)
        nursery.start_soon(send_and_eof, server, to_client)
        nursery.start_soon(collect, "server", server)
        nursery.start_soon(collect, "client", client)
    assert sha(results["server"]) == sha(to_server)
    assert sha(results["client"]) == sha(to_client)


async def test_8_mib_both_ways_with_half_close_and_learnt_address():
    up, down = os.urandom(8 << 20), os.urandom(8 << 20)
    async with udx_pair() as (udx_a, udx_b):
        client, server = connect(udx_a, udx_b)
        assert server.remote_address is None
        with trio.fail_after(60):
            await exchange(client, server, up, down)
        assert server.remote_address == udx_a.local_address
        with trio.fail_after(10):
            await client.aclose()
            await server.aclose()


async def test_half_close_lets_the_other_side_keep_sending():
    async with udx_pair() as (udx_a, udx_b):
        client, server = connect(udx_a, udx_b)
        with trio.fail_after(10):
            await send_and_eof(client, b"question")
            assert await receive_all(server) == b"question"
            with pytest.raises(trio.ClosedResourceError):
                await client.send_all(b"more")
            await server.send_all(b"answer after the client's EOF")
            await server.send_eof()
            assert await receive_all(client) == b"answer after the client's EOF"


async def test_non_udx_datagrams_go_to_the_callback_and_garbage_is_counted():
    seen = []
    all_seen = trio.Event()

    def on_datagram(data, source):
        seen.append((data, source))
        if len(seen) == 3:
            all_seen.set()

    async with udx_pair(on_datagram) as (udx_a, udx_b):
        client, server = connect(udx_a, udx_b)
        probe = await bound_socket()
        await probe.sendto(b"\x00", udx_b.local_address)  # hole-punch probe
        await probe.sendto(b"\x03dht-rpc", udx_b.local_address)
        unknown = encode_header(wire.DATA, 12345 if server.local_id != 12345 else 54321, 0, 0, 0) + b"?"
        await probe.sendto(unknown, udx_b.local_address)
        with trio.fail_after(10):
            await all_seen.wait()
        assert [d for d, _ in seen] == [b"\x00", b"\x03dht-rpc", unknown]
        assert all(source == probe.getsockname() for _, source in seen)
        assert udx_b.stats["dropped_unknown_stream"] == 1
        probe.close()


async def test_garbage_does_not_disturb_a_live_stream():
    data = os.urandom(1 << 20)
    async with udx_pair() as (udx_a, udx_b):
        client, server = connect(udx_a, udx_b)
        attacker = await bound_socket()
        rng = random.Random(11)
        live_id = server.local_id.to_bytes(4, "little")

        async def spray():
            for i in range(300):
                junk = [
                    rng.randbytes(rng.randrange(0, 64)),
                    b"\xff\x01" + bytes([wire.DATA, 200]) + live_id + rng.randbytes(rng.randrange(12, 100)),
                    b"\xff\x01" + bytes([rng.randrange(256), 0]) + live_id[:2],
                ][i % 3]
                await attacker.sendto(junk, udx_b.local_address)
                await trio.testing.wait_all_tasks_blocked()  # interleaved with the transfer

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(spray)
                nursery.start_soon(send_and_eof, client, data)
                assert sha(await receive_all(server)) == sha(data)
        assert udx_b.stats["dropped_malformed"] >= 50  # 100 sent; loopback may drop a few
        attacker.close()


async def test_handle_datagram_injects_packets_read_by_someone_else():
    async with trio.open_nursery() as nursery:
        udx_a = UdxSocket(await bound_socket())
        sock_b = await bound_socket()
        udx_b = UdxSocket(sock_b)
        await nursery.start(udx_a.run)
        client, server = connect(udx_a, udx_b)
        with trio.fail_after(10):
            await client.send_all(b"early bytes")
            # The hole puncher owns the socket for now: it reads the first packet itself.
            datagram, source = await sock_b.recvfrom(2048)
            udx_b.handle_datagram(datagram, source)
            udx_b.handle_datagram(b"\xff\x01garbage", source)  # never raises
            assert server.remote_address == source
            await nursery.start(udx_b.run)
            assert await server.receive_some() == b"early bytes"
            await server.send_all(b"reply")
            assert await client.receive_some() == b"reply"
        nursery.cancel_scope.cancel()


class LossyProxy:
    """Forwards datagrams between a client and a server address, dropping a seeded 3%."""

    def __init__(self, server_address, *, drop=0.03, seed=1):
        self.server_address = server_address
        self.rng = random.Random(seed)
        self.drop = drop
        self.client_address = None
        self.dropped = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        self.front = await bound_socket()
        self.back = await bound_socket()
        task_status.started(self.front.getsockname())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, self.front, self.back, True)
            nursery.start_soon(self._pump, self.back, self.front, False)

    async def _pump(self, source, target, from_client):
        while True:
            data, address = await source.recvfrom(4096)
            if from_client:
                self.client_address = address
            if self.rng.random() < self.drop:
                self.dropped += 1
                continue
            destination = self.server_address if from_client else self.client_address
            if destination is not None:
                await target.sendto(data, destination)


async def test_lossy_path_still_delivers_intact_both_ways():
    up, down = os.urandom(3 << 20), os.urandom(1 << 20)
    async with udx_pair() as (udx_a, udx_b):
        async with trio.open_nursery() as nursery:
            proxy = LossyProxy(udx_b.local_address)
            proxy_address = await nursery.start(proxy.run)
            client, server = connect(udx_a, udx_b, proxy_address)
            with trio.fail_after(120):
                await exchange(client, server, up, down)
            assert proxy.dropped > 50
            assert udx_a.stats["datagrams_out"] > 0
            assert client.conn.stats["retransmits"] > 0 and server.conn.stats["retransmits"] > 0
            assert udx_a.stats["retransmits"] >= client.conn.stats["retransmits"]
            nursery.cancel_scope.cancel()


async def test_vanished_peer_breaks_the_stream_with_the_cause(autojump_clock):
    async with trio.open_nursery() as outer:
        udx_a = UdxSocket(await bound_socket())
        await outer.start(udx_a.run)
        udx_b = UdxSocket(await bound_socket())
        async with trio.open_nursery() as b_nursery:
            await b_nursery.start(udx_b.run)
            client, server = connect(udx_a, udx_b)
            await client.send_all(b"ping")
            assert await server.receive_some() == b"ping"
            b_nursery.cancel_scope.cancel()  # b vanishes: its socket is closed
        start = trio.current_time()
        with trio.fail_after(60):
            await client.send_all(b"anyone?")
            with pytest.raises(trio.BrokenResourceError, match=r"UDX peer 127\.0\.0\.1:\d+ stopped acknowledging"):
                await client.receive_some()
        assert trio.current_time() - start < 30
        outer.cancel_scope.cancel()


async def test_concurrent_receivers_are_refused():
    async with udx_pair() as (udx_a, udx_b):
        client, server = connect(udx_a, udx_b)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.receive_some)
                await trio.testing.wait_all_tasks_blocked()  # the first receiver waits
                with pytest.raises(trio.BusyResourceError):
                    await server.receive_some()
                await client.send_all(b"wakes the first receiver")


async def test_aclose_forcefully_resets_the_peer():
    async with udx_pair() as (udx_a, udx_b):
        client, server = connect(udx_a, udx_b)
        with trio.fail_after(10):
            await client.send_all(b"hi")
            assert await server.receive_some() == b"hi"
            await trio.aclose_forcefully(client)
            with pytest.raises(trio.BrokenResourceError, match=r"peer reset the stream \(DESTROY\)"):
                await server.receive_some()
            with pytest.raises(trio.ClosedResourceError):
                await client.send_all(b"x")


async def test_messages_both_ways():
    async with udx_pair() as (udx_a, udx_b):
        client, server = connect(udx_a, udx_b)
        with trio.fail_after(10):
            client.send_message(b"")  # opens the server side (first packet connects)
            assert await server.receive_message() == b""
            server.send_message(b"pong")
            assert await client.receive_message() == b"pong"
            with pytest.raises(ValueError):
                client.send_message(bytes(2000))


async def test_cancelling_run_ends_every_stream():
    async with trio.open_nursery() as nursery:
        udx_a = UdxSocket(await bound_socket())
        udx_b = UdxSocket(await bound_socket())
        await nursery.start(udx_b.run)
        async with trio.open_nursery() as a_nursery:
            await a_nursery.start(udx_a.run)
            client, _ = connect(udx_a, udx_b)
            a_nursery.cancel_scope.cancel()
        with trio.fail_after(5):
            with pytest.raises(trio.BrokenResourceError, match="UDX socket was closed"):
                await client.receive_some()
            with pytest.raises(trio.BrokenResourceError):
                await client.send_all(b"x")
        assert udx_a._sock.fileno() == -1
        with pytest.raises(trio.ClosedResourceError):
            udx_a.open_stream(1, 2, udx_b.local_address)
        nursery.cancel_scope.cancel()


async def test_without_gso_one_datagram_per_call_delivers_the_same():
    data = os.urandom(2 << 20)
    async with udx_pair() as (udx_a, udx_b):
        udx_a._gso = False  # as on a kernel that refuses UDP_SEGMENT
        client, server = connect(udx_a, udx_b)
        with trio.fail_after(30):
            await exchange(client, server, data, b"")
        assert udx_a.stats["datagrams_out"] >= len(data) // 1152


async def test_closed_stream_answers_for_a_while_then_resets_a_peer_that_never_ends(autojump_clock):
    async with udx_pair() as (udx_a, udx_b):
        client, server = connect(udx_a, udx_b)
        await client.send_all(b"hello")
        assert await server.receive_some() == b"hello"
        await client.aclose()  # END, acked at once: aclose returns
        assert await server.receive_some() == b""
        # The server keeps sending into the closed stream: acked and discarded...
        await server.send_all(b"nobody reads this")
        await trio.sleep(5)
        await server.send_all(b"still acked")
        # ...until the closed side gives up on it and resets it.
        with trio.fail_after(120):
            with pytest.raises(trio.BrokenResourceError, match=r"peer reset the stream \(DESTROY\)"):
                while True:
                    await server.send_all(b"x")
                    await trio.sleep(1)


async def test_secure_link_runs_over_a_udx_stream():
    from hypergate.crypto.keys import LinkIdentity
    from hypergate.crypto.records import MAX_PLAINTEXT
    from hypergate.crypto.secure_link import establish_link

    from ..mux_harness import KEYS

    records = [os.urandom(n) for n in (1, 100, 70_000, MAX_PLAINTEXT, 5)]
    async with udx_pair() as (udx_a, udx_b):
        client, server = connect(udx_a, udx_b)
        links = {}

        async def side(name, stream, initiator):
            links[name] = await establish_link(
                stream, initiator=initiator, identity=LinkIdentity.generate(), router=KEYS
            )

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(side, "a", client, True)
                nursery.start_soon(side, "b", server, False)
            received = []

            async def receive():
                while len(received) < len(records):
                    received.extend(await links["b"].receive_records())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                for record in records:
                    await links["a"].send_record(record)
            assert received == records
            await links["a"].aclose()
            assert await links["b"].receive_records() == []
