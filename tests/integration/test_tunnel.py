"""The tunnel as users run it: real `hypergate` processes, real sockets on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys

import pytest
import trio

from ..procs import HYPERGATE, ROOT, free_port, new_secret
from .backends import (
    read_all,
    request_then_reply_server,
    tcp_echo_server,
    tcp_named_server,
    udp_echo_server,
)


def services(*entries) -> str:
    return json.dumps(
        [
            {"gatePort": g, "serviceHost": h, "servicePort": s, "protocol": p}
            for g, h, s, p in entries
        ]
    )


def gate_open(port: int, proto: str = "tcp") -> str:
    return rf"gate={port}/{proto} event=gate_open"


async def test_curl_fetches_a_page_through_the_tunnel(cluster, tmp_path, nursery):
    (tmp_path / "index.html").write_text("<h1>behind the provider</h1>\n")
    http_port, gate, peer_port = free_port(), free_port(), free_port()
    server = await trio.lowlevel.open_process(
        [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        svc_file = tmp_path / "http.json"
        svc_file.write_text(services((gate, "127.0.0.1", http_port, "tcp")))
        secret = new_secret()
        await cluster.provider(secret, str(svc_file), peer_port)
        gateway = await cluster.gateway(secret, peer_port)
        await gateway.wait_for(gate_open(gate))
        result = await trio.run_process(
            ["curl", "-sS", "--retry", "5", "--retry-connrefused", "--retry-delay", "1", "-m", "10", f"http://127.0.0.1:{gate}/index.html"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"<h1>behind the provider</h1>\n"
    finally:
        server.kill()
        await server.wait()


async def test_hundred_concurrent_transfers_arrive_intact(cluster, nursery):
    received = []
    echo_port = await nursery.start(lambda task_status: tcp_echo_server(task_status=task_status, received_hashes=received))
    gate, peer_port, secret = free_port(), free_port(), new_secret()
    await cluster.provider(secret, services((gate, "127.0.0.1", echo_port, "tcp")), peer_port)
    gateway = await cluster.gateway(secret, peer_port)
    await gateway.wait_for(gate_open(gate))
    rng = random.Random(2026)
    sizes = [rng.randint(1, 8 * 1024 * 1024) for _ in range(100)]
    sent, echoed = [], []

    async def transfer(size):
        payload = os.urandom(size)
        stream = await trio.open_tcp_stream("127.0.0.1", gate)
        async with stream:
            async def upload():
                view = memoryview(payload)
                for offset in range(0, size, 1 << 20):
                    await stream.send_all(view[offset : offset + (1 << 20)])
                await stream.send_eof()

            async with trio.open_nursery() as inner:
                inner.start_soon(upload)
                back = await read_all(stream)
        sent.append(hashlib.sha256(payload).hexdigest())
        echoed.append(hashlib.sha256(back).hexdigest())

    with trio.fail_after(240):
        async with trio.open_nursery() as group:
            for size in sizes:
                group.start_soon(transfer, size)
    assert sorted(echoed) == sorted(sent)  # every byte came back, in order
    assert sorted(received) == sorted(sent)  # and the service saw every byte exactly once


@pytest.mark.parametrize("cipher", ["aesgcm", "chachapoly"])
async def test_the_dialling_sides_cipher_carries_an_intact_transfer(cluster, nursery, cipher):
    echo_port = await nursery.start(tcp_echo_server)
    gate, peer_port, secret = free_port(), free_port(), new_secret()
    other = "chachapoly" if cipher == "aesgcm" else "aesgcm"
    # The provider prefers the other suite: the gateway dials (--peer), so its choice wins.
    provider = await cluster.provider(
        secret, services((gate, "127.0.0.1", echo_port, "tcp")), peer_port, "--cipher", other
    )
    gateway = await cluster.gateway(secret, peer_port, extra=("--cipher", cipher))
    await gateway.wait_for(gate_open(gate))
    for node in (provider, gateway):
        await node.wait_for(rf"event=peer_connected .*initiator=\w+ cipher={cipher}")
    payload = os.urandom(3 * 1024 * 1024 + 7)
    stream = await trio.open_tcp_stream("127.0.0.1", gate)
    async with stream:
        async def upload():
            await stream.send_all(payload)
            await stream.send_eof()

        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                inner.start_soon(upload)
                back = await read_all(stream)
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()


async def test_half_close_still_delivers_the_whole_reply(cluster, nursery):
    port = await nursery.start(request_then_reply_server)
    gate, peer_port, secret = free_port(), free_port(), new_secret()
    await cluster.provider(secret, services((gate, "127.0.0.1", port, "tcp")), peer_port)
    gateway = await cluster.gateway(secret, peer_port)
    await gateway.wait_for(gate_open(gate))
    stream = await trio.open_tcp_stream("127.0.0.1", gate)
    async with stream:
        await stream.send_all(b"the question")
        await stream.send_eof()  # client shuts down its write side
        reply = await read_all(stream)
    assert reply == hashlib.sha256(b"the question").hexdigest().encode() * 50_000


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_udp_flows_keep_datagram_boundaries(cluster, nursery, host):
    port = await nursery.start(lambda task_status: udp_echo_server(host, task_status=task_status))
    gate, peer_port, secret = free_port(socket.SOCK_DGRAM, host), free_port(), new_secret()
    await cluster.provider(secret, services((gate, host, port, "udp")), peer_port)
    gateway = await cluster.gateway(secret, peer_port, listen=host)
    await gateway.wait_for(gate_open(gate, "udp"))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    clients = [trio.socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    for index, sock in enumerate(clients):
        with sock:
            await sock.connect((host, gate))
            sizes = [1, 1400, 9000, 60000]
            for size in sizes:
                payload = bytes([index]) * size
                await sock.send(payload)
                with trio.fail_after(10):
                    reply = await sock.recv(65535)
                assert reply == b"echo:" + payload  # one datagram in, one datagram out
    # Three client addresses -> three flows on the provider side.
    assert len(gateway.find("event=open_failed")) == 0


async def test_round_robin_between_two_providers(cluster, nursery):
    port_a = await nursery.start(tcp_named_server, b"A")
    port_b = await nursery.start(tcp_named_server, b"B")
    gate, secret = free_port(), new_secret()
    peer_a, peer_b = free_port(), free_port()
    await cluster.provider(secret, services((gate, "127.0.0.1", port_a, "tcp")), peer_a)
    await cluster.provider(secret, services((gate, "127.0.0.1", port_b, "tcp")), peer_b)
    gateway = await cluster.gateway(secret, peer_a, peer_b)
    await gateway.wait_for("event=routes_updated", count=2)
    await gateway.wait_for(gate_open(gate))
    answers = []
    for _ in range(6):
        stream = await trio.open_tcp_stream("127.0.0.1", gate)
        async with stream:
            answers.append(await read_all(stream))
    assert sorted(set(answers)) == [b"A", b"B"]
    assert all(answers[i] != answers[i + 1] for i in range(5))  # strictly alternating


async def test_unreachable_service_falls_through_to_the_next_provider(cluster, nursery):
    port_b = await nursery.start(tcp_named_server, b"B")
    dead_port = free_port()  # nothing listens here
    gate, secret = free_port(), new_secret()
    peer_a, peer_b = free_port(), free_port()
    await cluster.provider(secret, services((gate, "127.0.0.1", dead_port, "tcp")), peer_a)
    await cluster.provider(secret, services((gate, "127.0.0.1", port_b, "tcp")), peer_b)
    gateway = await cluster.gateway(secret, peer_a, peer_b)
    await gateway.wait_for("event=routes_updated", count=2)
    await gateway.wait_for(gate_open(gate))
    with trio.fail_after(10):  # no 15 s wait for the broken provider: its refusal comes at once
        for _ in range(4):
            stream = await trio.open_tcp_stream("127.0.0.1", gate)
            async with stream:
                assert await read_all(stream) == b"B"
    assert gateway.find("event=open_failed reason=.service_unreachable")


async def test_client_first_bytes_reach_the_next_provider_when_one_refuses(cluster, nursery):
    """The client's first bytes go out right behind the OPEN, before the provider
    accepts: when that provider cannot reach its service, the next one gets them all."""
    echo_port = await nursery.start(tcp_echo_server)
    gate, secret = free_port(), new_secret()
    peer_a, peer_b = free_port(), free_port()
    await cluster.provider(secret, services((gate, "127.0.0.1", free_port(), "tcp")), peer_a)
    await cluster.provider(secret, services((gate, "127.0.0.1", echo_port, "tcp")), peer_b)
    gateway = await cluster.gateway(secret, peer_a, peer_b)
    await gateway.wait_for("event=routes_updated", count=2)
    await gateway.wait_for(gate_open(gate))
    for i in range(4):  # round robin: some of these start at the refusing provider
        request = f"request {i} ".encode() * 1000
        stream = await trio.open_tcp_stream("127.0.0.1", gate)
        async with stream:
            await stream.send_all(request)
            await stream.send_eof()
            assert await read_all(stream) == request
    assert gateway.find("event=open_failed reason=.service_unreachable")


async def test_client_is_reset_when_no_provider_can_serve(cluster):
    gate, secret, peer = free_port(), new_secret(), free_port()
    await cluster.provider(secret, services((gate, "127.0.0.1", free_port(), "tcp")), peer)
    gateway = await cluster.gateway(secret, peer)
    await gateway.wait_for(gate_open(gate))
    stream = await trio.open_tcp_stream("127.0.0.1", gate)
    with pytest.raises(trio.BrokenResourceError):
        with trio.fail_after(10):
            await read_all(stream)  # RST, not a clean EOF that looks like an empty reply
    await gateway.wait_for("event=no_provider_available")


async def test_provider_restart_is_picked_up_by_a_running_gateway(cluster, nursery):
    port = await nursery.start(tcp_named_server, b"hello")
    gate, secret, peer = free_port(), new_secret(), free_port()
    svc = services((gate, "127.0.0.1", port, "tcp"))
    provider = await cluster.provider(secret, svc, peer)
    gateway = await cluster.gateway(secret, peer)
    await gateway.wait_for(gate_open(gate))
    await provider.stop(signal.SIGKILL)
    await gateway.wait_for(rf"gate={gate}/tcp event=gate_closed")
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", gate)
    await cluster.provider(secret, svc, peer)
    await gateway.wait_for(gate_open(gate), count=2, timeout=30)
    stream = await trio.open_tcp_stream("127.0.0.1", gate)
    async with stream:
        assert await read_all(stream) == b"hello"


async def test_wrong_secret_peer_gets_no_route_and_others_are_unaffected(cluster, nursery):
    port = await nursery.start(tcp_named_server, b"private")
    gate, secret, peer = free_port(), new_secret(), free_port()
    provider = await cluster.provider(secret, services((gate, "127.0.0.1", port, "tcp")), peer)
    good = await cluster.gateway(secret, peer)
    await good.wait_for(gate_open(gate))
    intruder = await cluster.start(
        "--router", new_secret(), "--gateway", "--listen", "127.0.0.2", "--peer", f"127.0.0.1:{peer}", name="intruder"
    )
    await provider.wait_for("event=handshake_rejected reason=.the peer uses a different router secret")
    # Garbage on the peer port is refused too, with its own reason.
    raw = await trio.open_tcp_stream("127.0.0.1", peer)
    async with raw:
        await raw.send_all(os.urandom(64))
        with trio.fail_after(10):
            assert await read_all(raw) == b""
    await provider.wait_for("event=handshake_rejected reason=.not a hypergate peer")
    assert not intruder.find("event=gate_open") and not intruder.find("routes_received")
    assert not intruder.find("event=peer_connected")
    stream = await trio.open_tcp_stream("127.0.0.1", gate)
    async with stream:
        assert await read_all(stream) == b"private"


async def test_busy_gate_port_is_one_error_line_and_other_gates_work(cluster, nursery):
    port = await nursery.start(tcp_named_server, b"ok")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    try:
        gate, secret, peer = free_port(), new_secret(), free_port()
        await cluster.provider(
            secret, services((busy_port, "127.0.0.1", port, "tcp"), (gate, "127.0.0.1", port, "tcp")), peer
        )
        gateway = await cluster.gateway(secret, peer)
        await gateway.wait_for(gate_open(gate))
        line = await gateway.wait_for(rf"gate={busy_port}/tcp event=gate_listen_failed")
        assert "in use" in line
        assert not gateway.find("Traceback")
        stream = await trio.open_tcp_stream("127.0.0.1", gate)
        async with stream:
            assert await read_all(stream) == b"ok"
    finally:
        busy.close()


async def test_environment_variables_configure_everything(cluster, nursery):
    port = await nursery.start(tcp_named_server, b"from env")
    gate, secret, peer = free_port(), new_secret(), free_port()
    provider = await cluster.start(
        env={
            "HYPERGATE_ROUTER": secret,
            "HYPERGATE_PROVIDER": services((gate, "127.0.0.1", port, "tcp")),
            "HYPERGATE_PEER_PORT": str(peer),
            "HYPERGATE_PEER_HOST": "127.0.0.1",
        },
        name="env-provider",
    )
    await provider.wait_for("event=peer_listening")
    gateway = await cluster.start(
        env={
            "HYPERGATE_ROUTER": secret,
            "HYPERGATE_GATEWAY": "true",
            "HYPERGATE_LISTEN": "127.0.0.1",
            # Comma-separated; the first address has nobody listening and is retried quietly.
            "HYPERGATE_PEER": f"127.0.0.1:{free_port()},127.0.0.1:{peer}",
            "HYPERGATE_EXPOSE_ONLY_SERVICES": "127.0.0.1",
        },
        name="env-gateway",
    )
    await gateway.wait_for(gate_open(gate))
    stream = await trio.open_tcp_stream("127.0.0.1", gate)
    async with stream:
        assert await read_all(stream) == b"from env"


async def test_expose_only_services_hides_other_services(cluster, nursery):
    port = await nursery.start(tcp_named_server, b"x")
    shown, hidden, secret, peer = free_port(), free_port(), new_secret(), free_port()
    await cluster.provider(
        secret, services((shown, "web", port, "tcp"), (hidden, "db", port, "tcp")), peer
    )
    gateway = await cluster.gateway(secret, peer, extra=("--exposeOnlyServices", "web"))
    await gateway.wait_for(gate_open(shown))
    assert not gateway.find(rf"gate={hidden}/")


def run_cli(*args, env=None):
    return subprocess.run(
        HYPERGATE + list(args), capture_output=True, text=True, cwd=ROOT, timeout=30,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )


def test_new_prints_a_fresh_32_byte_hex_secret():
    first, second = run_cli("--new"), run_cli("--new")
    assert first.returncode == 0
    assert len(bytes.fromhex(first.stdout.strip())) == 32
    assert first.stdout != second.stdout


def test_bad_service_file_is_one_line_naming_file_field_and_value(tmp_path):
    path = tmp_path / "svc.json"
    path.write_text(json.dumps([{"gatePort": 80, "serviceHost": "x", "servicePort": 99999}]))
    result = run_cli("--router", "ab" * 32, "--provider", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"hypergate: error: {path}: servicePort must be a port number 1-65535, got 99999 @ $[0]"


def test_bad_cipher_is_one_clear_error():
    result = run_cli("--router", "ab" * 32, "--gateway", env={"HYPERGATE_CIPHER": "rc4"})
    assert result.returncode == 2
    assert "hypergate: error: --cipher: expected one of auto, chachapoly, aesgcm, got 'rc4'" in result.stderr


def test_bad_secret_is_refused_without_echoing_it():
    result = run_cli("--router", "not-a-secret-value", "--gateway")
    assert result.returncode == 2
    assert "64 hex characters" in result.stderr and "not-a-secret-value" not in result.stderr


async def test_secret_never_appears_in_verbose_logs(cluster, nursery):
    from hypergate.crypto.keys import RouterKeys

    port = await nursery.start(tcp_named_server, b"x")
    gate, secret, peer = free_port(), new_secret(), free_port()
    provider = await cluster.provider(secret, services((gate, "127.0.0.1", port, "tcp")), peer, "--verbose")
    gateway = await cluster.gateway(secret, peer, extra=("--verbose",))
    await gateway.wait_for(gate_open(gate))
    stream = await trio.open_tcp_stream("127.0.0.1", gate)
    async with stream:
        assert await read_all(stream) == b"x"
    psk = RouterKeys.from_secret(bytes.fromhex(secret)).link_psk.hex()
    logs = "\n".join(provider.lines + gateway.lines)
    assert "DEBUG" in logs  # verbose really was on
    assert secret not in logs and psk not in logs


def test_busy_peer_port_is_one_clear_error():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        result = run_cli(
            "--router", "ab" * 32, "--gateway", "--peerPort", str(port), "--peerHost", "127.0.0.1"
        )
    finally:
        busy.close()
    assert result.returncode == 2
    assert f"hypergate: error: --peerPort {port}: cannot listen on 127.0.0.1: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
