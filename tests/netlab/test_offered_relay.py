"""A publicly reachable peer offers its own relay to the router (`--relayServe`).

Provider and gateway sit behind random NATs (no punch can work) and nobody gave them a
relay; a third peer of the same router, on a public address, runs `--relayServe`. Both
learn its URL from its hello, wait there, and meet there: HTTP and a SHA-256-checked bulk
transfer pass end to end, and the hub's relay forwarded the link."""

from __future__ import annotations

import subprocess
import sys

import trio

from tests.netlab.test_hypergate_nat import BULK_CLIENT, ECHO_PORT, ECHO_SERVER, HTTP_PORT, start_dht_network
from tests.procs import free_port

HUB_RELAY_PORT = 49740


async def test_random_nats_meet_at_the_relay_a_public_peer_offers(make_lab, cluster):
    lab = make_lab({
        "home": ("random", ["provider"]),
        "office": ("random", ["gateway"]),
        "dc": ("none", ["hub"]),
    })
    bootstrap = await start_dht_network(lab, cluster)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    lab.popen("provider", [sys.executable, "-c", ECHO_SERVER], **quiet)
    lab.popen("provider", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", "127.0.0.1"], **quiet)
    lab.popen("hub", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", "127.0.0.1"], **quiet)
    secret = (await trio.run_process([sys.executable, "-m", "hypergate", "--new"], capture_stdout=True)).stdout.decode().strip()
    gate_http, gate_echo, gate_hub = free_port(), free_port(), free_port()
    services = (
        f'[{{"gatePort":{gate_http},"serviceHost":"127.0.0.1","servicePort":{HTTP_PORT}}},'
        f'{{"gatePort":{gate_echo},"serviceHost":"127.0.0.1","servicePort":{ECHO_PORT}}}]'
    )
    hub_services = f'[{{"gatePort":{gate_hub},"serviceHost":"127.0.0.1","servicePort":{HTTP_PORT}}}]'
    # No punch opens two random NATs, so the relay is the only way; the hub is a
    # provider too, so the gateway keeps a link to it.
    hub = await cluster.start(
        "--router", secret, "--provider", hub_services, "--bootstrap", bootstrap,
        "--relayServe", str(HUB_RELAY_PORT), prefix=lab.argv("hub"), name="hub",
    )
    await hub.wait_for("event=relay_offered_to_peers", timeout=30)
    hub_address = lab.host("hub").address
    assert hub.find(rf"relay=ws://{hub_address}:{HUB_RELAY_PORT}/")
    provider = await cluster.start(
        "--router", secret, "--provider", services, "--bootstrap", bootstrap,
        prefix=lab.argv("provider"), name="provider",
    )
    gateway = await cluster.start(
        "--router", secret, "--gateway", "--bootstrap", bootstrap,
        prefix=lab.argv("gateway"), name="gateway",
    )
    # The provider learns the relay from the hub's hello although two providers keep no link.
    await provider.wait_for("event=relay_adopted", timeout=60)
    await gateway.wait_for("event=relay_adopted", timeout=60)
    await gateway.wait_for(rf"gate={gate_echo}/tcp event=gate_open", timeout=120)

    page = await trio.to_thread.run_sync(
        lambda: lab.exec("gateway", "curl", "-sS", "-m", "20", f"http://127.0.0.1:{gate_http}/", check=False)
    )
    assert page.returncode == 0 and "Directory listing" in page.stdout, page.stderr
    bulk = await trio.to_thread.run_sync(
        lambda: lab.exec("gateway", sys.executable, "-c", BULK_CLIENT, str(gate_echo), str(8 * 1024 * 1024),
                         check=False, timeout=120)
    )
    assert bulk.stdout.strip() == "OK", (bulk.stdout, bulk.stderr)
    paths = provider.find("event=link_path") + gateway.find("event=link_path")
    assert any("kind=relayed" in line for line in paths), paths
    # The pair was spliced by the hub's relay, not by some other one.
    assert hub.find("event=relay_pair"), hub.lines[-20:]
