"""Ingress policies, the fingerprint resolver and /unlimited through the real tunnel:
policies set on the provider, enforced by the gateway, seen by the backend via curl."""

from __future__ import annotations

import json

import trio

from ..procs import free_port, new_secret
from .backends import read_all
from .test_http_endpoints import curl_json, now_ms, readme_token
from .test_tunnel import gate_open, services


async def holding_server(accepted: list, release: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED):
    """Says hello, records the provider's socket as the backend sees it, holds the line."""

    async def handle(stream):
        async with stream:
            accepted.append(stream.socket.getpeername()[:2])
            await stream.send_all(b"hello")
            await release.wait()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


POLICY = {
    "defaults": {"allow": False},
    "ips": {
        "127.0.0.1": {"allow": True, "bandwidthLimit": None, "labels": ["trusted"]},
        "127.0.0.3/32": {"allow": True, "bandwidthLimit": {"mbps": 50}, "labels": ["metered"]},
    },
}


async def connect_from(source_ip: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source_ip, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def test_policy_labels_reach_the_backend_through_the_resolver(cluster, nursery, tmp_path):
    accepted, release = [], trio.Event()
    backend = await nursery.start(holding_server, accepted, release)
    gate, peer, resolver, secret = free_port(), free_port(), free_port(), new_secret()
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    provider = await cluster.provider(
        secret, services((gate, "127.0.0.1", backend, "tcp")), peer,
        "--ingressPolicy", str(policy_file),
        "--fingerprintResolverPort", str(resolver), "--fingerprintResolverBasicAuth", "be:pw",
    )
    gateway = await cluster.gateway(secret, peer)
    await gateway.wait_for(gate_open(gate))

    # Denied by defaults: closed at once, no provider tried.
    denied = await connect_from("127.0.0.2", gate)
    async with denied:
        try:
            assert await read_all(denied) == b""
        except trio.BrokenResourceError:
            pass  # reset: also a refusal
    await gateway.wait_for("client=127.0.0.2:.* event=client_denied")
    assert not provider.find("service_unreachable")

    client = await connect_from("127.0.0.1", gate)
    async with client:
        assert await client.receive_some(5) == b"hello"
        remote_addr, remote_port = accepted[-1]
        base = f"http://127.0.0.1:{resolver}"
        query = f"proto=tcp&remote_addr={remote_addr}&remote_port={remote_port}&local_addr=127.0.0.1&local_port={backend}"
        status, body = await curl_json(f"{base}/resolve?{query}", "-u", "be:pw")
        assert status == 200
        fingerprint = body["fingerprint"]
        assert fingerprint["gatePort"] == gate and fingerprint["protocol"] == "tcp"
        assert fingerprint["source"]["ip"] == "127.0.0.1"
        assert fingerprint["source"]["port"] == client.socket.getsockname()[1]
        assert fingerprint["ingressLabels"] == ["trusted"]
        assert (await curl_json(f"{base}/resolve?{query}", "-u", "be:wrong"))[0] == 401
        assert (await curl_json(f"{base}/resolve?proto=tcp", "-u", "be:pw"))[0] == 400
        assert (await curl_json(f"{base}/health"))[1] == {"ok": True}
        release.set()
        assert await read_all(client) == b""
    # Once the channel is gone, so is its entry.
    with trio.fail_after(10):  # the provider learns of the close within a round trip or two
        while (await curl_json(f"{base}/resolve?{query}", "-u", "be:pw"))[0] != 404:
            pass


async def test_unlimited_token_lifts_the_limit_and_labels_the_client(cluster, nursery):
    accepted, release = [], trio.Event()
    backend = await nursery.start(holding_server, accepted, release)
    gate, peer, resolver, unlimited, secret = free_port(), free_port(), free_port(), free_port(), new_secret()
    policy = {"defaults": {"allow": True, "bandwidthLimit": {"mbps": 1}}}
    await cluster.provider(
        secret, services((gate, "127.0.0.1", backend, "tcp")), peer,
        "--ingressPolicy", json.dumps(policy), "--fingerprintResolverPort", str(resolver),
    )
    gateway = await cluster.gateway(
        secret, peer, extra=("--unlimitedSecret", "tok-secret", "--unlimitedPort", str(unlimited))
    )
    await gateway.wait_for(gate_open(gate))
    await gateway.wait_for("http_listening")
    token = await readme_token(f'{{"timestamp":{now_ms()},"ip":"127.0.0.1"}}', "tok-secret")
    status, body = await curl_json(f"http://127.0.0.1:{unlimited}/unlimited?payload={token}")
    assert status == 200 and body["ip"] == "127.0.0.1"
    status, body = await curl_json(f"http://127.0.0.1:{unlimited}/unlimited?payload={token}")
    assert status == 409  # the same token again is a replay

    client = await connect_from("127.0.0.1", gate)
    async with client:
        assert await client.receive_some(5) == b"hello"
        remote_addr, remote_port = accepted[-1]
        query = f"proto=tcp&remote_addr={remote_addr}&remote_port={remote_port}&local_addr=127.0.0.1&local_port={backend}"
        status, body = await curl_json(f"http://127.0.0.1:{resolver}/resolve?{query}")
        assert status == 200 and body["fingerprint"]["ingressLabels"] == ["gateway-unlimited"]
        release.set()
