"""`--relayServe`: a peer runs a relay and offers it to the peers it links with."""

from __future__ import annotations

import trio
from trio_websocket import open_websocket_url

from ..procs import free_port, new_secret
from .test_tunnel import gate_open, run_cli, services
from .backends import tcp_named_server


async def test_a_provider_offers_its_relay_to_the_gateway(cluster, nursery):
    port = await nursery.start(tcp_named_server, b"x")
    gate, secret, peer, relay_port = free_port(), new_secret(), free_port(), free_port()
    provider = await cluster.provider(
        secret, services((gate, "127.0.0.1", port, "tcp")), peer, "--relayServe", f"127.0.0.1:{relay_port}"
    )
    await provider.wait_for(f"event=relay_listening host=127.0.0.1 port={relay_port}")
    gateway = await cluster.gateway(secret, peer)
    await gateway.wait_for(gate_open(gate))
    url = f"ws://127.0.0.1:{relay_port}/"
    await gateway.wait_for(f"event=relay_offered relay={url}")
    # The offered relay really is a relay: a WebSocket endpoint on that port.
    async with open_websocket_url(url) as ws:
        assert not ws.closed


async def test_the_offer_is_advertised_as_given(cluster, nursery):
    port = await nursery.start(tcp_named_server, b"x")
    gate, secret, peer, relay_port = free_port(), new_secret(), free_port(), free_port()
    advertised = "wss://relay.example.test/hypergate"
    await cluster.provider(
        secret, services((gate, "127.0.0.1", port, "tcp")), peer,
        "--relayServe", f"127.0.0.1:{relay_port}", "--relayAdvertise", advertised,
    )
    gateway = await cluster.gateway(secret, peer)
    await gateway.wait_for(f"event=relay_offered relay={advertised}")


def test_bad_relay_serve_values_are_one_clear_error():
    result = run_cli("--router", "ab" * 32, "--gateway", "--peerPort", "0", "--relayServe", "nope")
    assert result.returncode == 2
    assert "--relayServe: expected [HOST:]PORT with a port in 1-65535, got 'nope'" in result.stderr
    result = run_cli("--router", "ab" * 32, "--gateway", "--relayServe", "1234", "--relayAdvertise", "http://x/")
    assert result.returncode == 2
    assert "--relayAdvertise: expected a ws:// or wss:// URL, got 'http://x/'" in result.stderr
    # Direct mode has no DHT to tell the public address: the URL must be given.
    result = run_cli("--router", "ab" * 32, "--gateway", "--peerPort", "0", "--relayServe", "1234")
    assert result.returncode == 2
    assert "--relayServe: without the DHT we cannot tell our public address" in result.stderr
