"""Issue #3, proof 4: a hypergate provider and gateway whose only DHT is a testnet of real
Node.js hyperdht nodes find each other under the router topic, run their link handshake
through a Node relay, and carry a real HTTP request and a SHA-256-checked bulk transfer."""

from __future__ import annotations

import hashlib
import os
import socket
import re
import subprocess
import sys

import pytest
import trio

from tests.integration.backends import read_all, tcp_echo_server
from tests.integration.test_tunnel import gate_open, services
from tests.interop.test_dht_node_interop import testnet  # noqa: F401  (fixture)
from tests.procs import free_port, new_secret

pytestmark = pytest.mark.interop


async def test_provider_and_gateway_meet_through_node_relays(testnet, cluster, nursery, tmp_path):  # noqa: F811
    bootstrap = ",".join(f"{a.host}:{a.port}" for a in testnet.bootstrap)
    node_ports = {node["port"] for node in testnet.nodes}
    (tmp_path / "index.html").write_text("found through the DHT\n")
    http_port, http_gate, echo_gate = free_port(), free_port(), free_port()
    echo_port = await nursery.start(tcp_echo_server)
    web = await trio.lowlevel.open_process(
        [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        secret = new_secret()
        svc = services((http_gate, "127.0.0.1", http_port, "tcp"), (echo_gate, "127.0.0.1", echo_port, "tcp"))
        provider = await cluster.start(
            "--router", secret, "--provider", svc, "--bootstrap", bootstrap,
            "--fingerprintResolverPort", "0", name="dht-provider",
        )
        gateway = await cluster.start("--router", secret, "--gateway", "--bootstrap", bootstrap, name="dht-gateway")
        await gateway.wait_for(gate_open(http_gate), timeout=60)
        await gateway.wait_for(gate_open(echo_gate))

        relayed = provider.find("event=handshake_relayed") + gateway.find("event=handshake_relayed")
        assert relayed, "no relayed handshake in the logs"
        relay_ports = {int(re.search(r"relay=127\.0\.0\.1:(\d+)", line).group(1)) for line in relayed}
        assert relay_ports <= node_ports  # the relay was a Node hyperdht node

        result = await trio.run_process(
            ["curl", "-sS", "-m", "10", f"http://127.0.0.1:{http_gate}/index.html"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
        assert (result.returncode, result.stdout) == (0, b"found through the DHT\n"), result.stderr

        payload = os.urandom(16 * 1024 * 1024)
        stream = await trio.open_tcp_stream("127.0.0.1", echo_gate)
        async with stream:
            async def upload():
                await stream.send_all(payload)
                await stream.send_eof()

            async with trio.open_nursery() as inner:
                inner.start_soon(upload)
                echoed = await read_all(stream)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    finally:
        web.kill()
        await web.wait()


async def test_scan_lists_the_peers_announced_under_the_router_topic(testnet, cluster):  # noqa: F811
    from hypergate.crypto.keys import RouterKeys

    bootstrap = ",".join(f"{a.host}:{a.port}" for a in testnet.bootstrap)
    secret = new_secret()
    provider = await cluster.start(
        "--router", secret, "--provider", services((free_port(), "127.0.0.1", 9, "tcp")),
        "--bootstrap", bootstrap, "--fingerprintResolverPort", "0", name="announcer",
    )
    await provider.wait_for("event=topic_announced", timeout=60)
    announced = re.search(r"dht announced key=([0-9a-f]+)", "\n".join(provider.lines)).group(1)
    topic = RouterKeys.from_secret(bytes.fromhex(secret)).topic.hex()
    result = await trio.run_process(
        [sys.executable, "-m", "hypergate", "--scan", topic, "--bootstrap", bootstrap],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(announced) and "relays=127.0.0.1:" in lines[0]


async def test_hypergate_dht_nodes_form_a_network_peers_can_meet_on(cluster, nursery):
    """`hypergate dht`: a bootstrap node and two more persistent nodes, all Python; a
    provider and a gateway that know only the bootstrap node connect through them."""
    first = free_port(socket.SOCK_DGRAM)
    await cluster.start("dht", "--bootstrapMode", "--host", "127.0.0.1", "--port", str(first), name="dht-0")
    for index in (1, 2):
        node = await cluster.start(
            "dht", "--host", "127.0.0.1", "--port", "0", "--bootstrap", f"127.0.0.1:{first}", name=f"dht-{index}"
        )
        await node.wait_for("event=dht_node_running")
    port = await nursery.start(tcp_echo_server)
    gate, secret = free_port(), new_secret()
    await cluster.start(
        "--router", secret, "--provider", services((gate, "127.0.0.1", port, "tcp")),
        "--bootstrap", f"127.0.0.1:{first}", "--fingerprintResolverPort", "0", name="provider",
    )
    gateway = await cluster.start("--router", secret, "--gateway", "--bootstrap", f"127.0.0.1:{first}", name="gateway")
    await gateway.wait_for(gate_open(gate), timeout=60)
    stream = await trio.open_tcp_stream("127.0.0.1", gate)
    async with stream:
        await stream.send_all(b"ping over a python DHT")
        await stream.send_eof()
        assert await read_all(stream) == b"ping over a python DHT"
