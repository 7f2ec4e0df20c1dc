"""The helper containers' forwarder, on loopback: TCP with half-close, UDP round trips."""

from functools import partial

import pytest
import trio

from hypergate.docker.forwarder import ForwardSpec, main, serve_tcp_forward, serve_udp_forward


def test_spec_forms():
    assert ForwardSpec.parse("tcp:3306") == ForwardSpec("tcp", 3306, 3306)
    assert ForwardSpec.parse("udp:53:5353") == ForwardSpec("udp", 53, 5353)
    assert str(ForwardSpec("udp", 53, 5353)) == "udp:53:5353"
    for bad in ["3306", "sctp:1", "tcp:0", "tcp:x", "tcp:1:2:3"]:
        with pytest.raises(ValueError):
            ForwardSpec.parse(bad)


def test_main_rejects_bad_spec(capsys):
    with pytest.raises(SystemExit):
        main(["--to", "127.0.0.1", "tcp:http"])
    assert "expected proto:port[:target_port], got 'tcp:http'" in capsys.readouterr().err


async def test_tcp_forward_relays_both_ways_and_keeps_half_close():
    async def upstream_handler(stream):
        # Reads until the client's EOF, then answers: only works if half-close is relayed.
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
        await stream.send_all(b"got " + str(len(received)).encode())
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, upstream_handler, 0, host="127.0.0.1"))
        upstream_port = listeners[0].socket.getsockname()[1]
        port = await nursery.start(
            serve_tcp_forward, ForwardSpec("tcp", 0, upstream_port), "127.0.0.1"
        )
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"x" * 300_000)
            await client.send_eof()
            answer = b""
            while chunk := await client.receive_some(65536):
                answer += chunk
        assert answer == b"got 300000"
        nursery.cancel_scope.cancel()


async def test_tcp_forward_closes_client_when_target_refuses():
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tcp_forward, ForwardSpec("tcp", 0, dead_port), "127.0.0.1")
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            assert await client.receive_some(10) == b""
        nursery.cancel_scope.cancel()


async def test_udp_forward_round_trip_per_client():
    echo = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await echo.bind(("127.0.0.1", 0))

    async def echo_server():
        while True:
            data, addr = await echo.recvfrom(65535)
            await echo.sendto(b"echo " + data, addr)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_server)
        port = await nursery.start(
            serve_udp_forward, ForwardSpec("udp", 0, echo.getsockname()[1]), "127.0.0.1"
        )
        clients = [trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) for _ in range(2)]
        with trio.fail_after(10):
            for i, client in enumerate(clients):
                await client.connect(("127.0.0.1", port))
                await client.send(b"hello %d" % i)
            for i, client in enumerate(clients):
                assert await client.recv(100) == b"echo hello %d" % i
        nursery.cancel_scope.cancel()
    for client in clients:
        client.close()
    echo.close()
