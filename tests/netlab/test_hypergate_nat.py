"""Hypergate itself in the NAT lab: peers behind NATs find each other on a DHT that runs on
the lab's "internet", and carry HTTP and a SHA-256-checked bulk transfer end to end.

A public gateway, two peers behind one NAT, and two consistent NATs get a direct or a
punched path (UDP with the link over UDX, or TCP simultaneous open: --holepunch chooses);
a consistent and a random NAT punch over UDP with many ports (hyperdht's birthday
strategy); two random NATs, or peers without hole punching, meet at a WebSocket relay
on the lab's internet, end-to-end encrypted."""

from __future__ import annotations

import subprocess
import sys

import trio

from tests.procs import free_port

DHT_PORT = 49737
ECHO_PORT = 7000
HTTP_PORT = 8000
BULK_BYTES = 8 * 1024 * 1024

# Runs in the provider's namespace: an echo service and a static HTTP page.
ECHO_SERVER = f"""
import socketserver
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(262144)
            if not data:
                break
            self.request.sendall(data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", {ECHO_PORT}), Echo).serve_forever()
"""

# Runs in the gateway's namespace: sends random bytes through the gate, checks the echo.
BULK_CLIENT = """
import hashlib, os, socket, sys, threading
port, size = int(sys.argv[1]), int(sys.argv[2])
payload = os.urandom(size)
sock = socket.create_connection(("127.0.0.1", port), timeout=60)
def upload():
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=upload).start()
received = hashlib.sha256()
total = 0
while True:
    data = sock.recv(262144)
    if not data:
        break
    received.update(data)
    total += len(data)
print("OK" if received.digest() == hashlib.sha256(payload).digest() else f"MISMATCH {total}")
"""


async def start_dht_network(lab, cluster) -> str:
    """Three persistent DHT nodes on the lab's internet; returns the bootstrap address."""
    bootstrap = f"{lab.bootstrap_address}:{DHT_PORT}"
    first = await cluster.start(
        "dht", "--bootstrapMode", "--host", lab.bootstrap_address, "--port", str(DHT_PORT),
        prefix=lab.argv("public"), name="dht-0",
    )
    await first.wait_for("event=dht_node_running")
    for index, address in enumerate(lab.internet_addresses[1:3], start=1):
        node = await cluster.start(
            "dht", "--host", address, "--port", str(DHT_PORT), "--bootstrap", bootstrap,
            prefix=lab.argv("public"), name=f"dht-{index}",
        )
        await node.wait_for("event=dht_node_running")
    return bootstrap


RELAY_PORT = 49738


async def start_relay(lab, cluster) -> str:
    address = lab.internet_addresses[3]
    relay = await cluster.start(
        "relay", "--host", address, "--port", str(RELAY_PORT), prefix=lab.argv("public"), name="relay"
    )
    await relay.wait_for("event=relay_listening")
    return f"ws://{address}:{RELAY_PORT}/"


async def run_case(lab, cluster, provider_host: str, gateway_host: str, relay: bool = True, holepunch: str | None = None):
    bootstrap = await start_dht_network(lab, cluster)
    relay_args = ("--relay", await start_relay(lab, cluster)) if relay else ()
    if holepunch is not None:
        relay_args += ("--holepunch", holepunch)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    lab.popen(provider_host, [sys.executable, "-c", ECHO_SERVER], **quiet)
    lab.popen(provider_host, [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", "127.0.0.1"], **quiet)
    gate_http, gate_echo = free_port(), free_port()
    secret = (await trio.run_process([sys.executable, "-m", "hypergate", "--new"], capture_stdout=True)).stdout.decode().strip()
    services = (
        f'[{{"gatePort":{gate_http},"serviceHost":"127.0.0.1","servicePort":{HTTP_PORT}}},'
        f'{{"gatePort":{gate_echo},"serviceHost":"127.0.0.1","servicePort":{ECHO_PORT}}}]'
    )
    provider = await cluster.start(
        "--router", secret, "--provider", services, "--bootstrap", bootstrap, "--fingerprintResolverPort", "0",
        *relay_args, prefix=lab.argv(provider_host), name=f"provider@{provider_host}",
    )
    gateway = await cluster.start(
        "--router", secret, "--gateway", "--bootstrap", bootstrap, *relay_args,
        prefix=lab.argv(gateway_host), name=f"gateway@{gateway_host}",
    )
    start = trio.current_time()
    await gateway.wait_for(rf"gate={gate_echo}/tcp event=gate_open", timeout=90)
    connected_after = trio.current_time() - start

    page = await trio.to_thread.run_sync(
        lambda: lab.exec(gateway_host, "curl", "-sS", "-m", "20", f"http://127.0.0.1:{gate_http}/", check=False)
    )
    first_byte_after = trio.current_time() - start
    assert page.returncode == 0 and "Directory listing" in page.stdout, page.stderr
    bulk_started = trio.current_time()
    bulk = await trio.to_thread.run_sync(
        lambda: lab.exec(gateway_host, sys.executable, "-c", BULK_CLIENT, str(gate_echo), str(BULK_BYTES),
                         check=False, timeout=120)
    )
    bulk_s = trio.current_time() - bulk_started
    assert bulk.stdout.strip() == "OK", (bulk.stdout, bulk.stderr)
    paths = provider.find("event=link_path") + gateway.find("event=link_path")
    return provider, gateway, {
        "secret": secret, "bootstrap": bootstrap, "relay_args": relay_args,
        "http": gate_http, "echo": gate_echo, "connected_after": connected_after,
        "first_byte_after": first_byte_after,
        # Echoed: the bytes cross the link both ways at once (includes the client's start-up).
        "bulk_s": bulk_s, "bulk_mib_s": BULK_BYTES / bulk_s / 2**20,
        "path": paths[0].split("kind=")[1].split()[0] if paths else "lan/direct listener",
    }


async def test_provider_behind_consistent_nat_gateway_public(make_lab, cluster):
    lab = make_lab({"home": ("consistent", ["provider"]), "dc": ("none", ["gateway"])})
    provider, gateway, _ = await run_case(lab, cluster, "provider", "gateway")
    # Either dial may carry the link: the provider reaches the public gateway directly or
    # by a punch, and the gateway reaches the provider by a punch. Only the dial of the
    # larger key yields to the other's (RENDEZVOUS_DIAL_YIELD_S).
    assert provider.find("event=handshake_relayed") + gateway.find("event=handshake_relayed")
    assert provider.find("event=peer_connected .*initiator=True") + gateway.find("event=peer_connected .*initiator=True")


async def test_both_behind_the_same_nat_use_the_lan_path(make_lab, cluster):
    lab = make_lab({"office": ("consistent", ["provider", "gateway"])})
    provider, gateway, _ = await run_case(lab, cluster, "provider", "gateway")
    lan_prefix = lab.host("provider").address.rsplit(".", 1)[0] + "."
    connected = provider.find("event=peer_connected") + gateway.find("event=peer_connected")
    assert connected and all(f"@{lan_prefix}" in line for line in connected), connected


def link_paths(provider, gateway) -> list[str]:
    return provider.find("event=link_path") + gateway.find("event=link_path")


async def test_both_behind_consistent_nats_punch_a_udp_path(make_lab, cluster):
    lab = make_lab({"home": ("consistent", ["provider"]), "office": ("consistent", ["gateway"])})
    provider, gateway, _ = await run_case(lab, cluster, "provider", "gateway", holepunch="udp")
    paths = link_paths(provider, gateway)
    assert paths and all("kind=punched-udp" in line for line in paths), paths
    punches = provider.find("event=udp_punch ") + gateway.find("event=udp_punch ")
    assert punches and all("strategy=probe outcome=punched" in line for line in punches), punches


async def test_both_behind_consistent_nats_punch_a_tcp_path(make_lab, cluster):
    lab = make_lab({"home": ("consistent", ["provider"]), "office": ("consistent", ["gateway"])})
    provider, gateway, _ = await run_case(lab, cluster, "provider", "gateway", holepunch="tcp")
    paths = link_paths(provider, gateway)
    assert paths and all("kind=punched-tcp" in line for line in paths), paths
    assert not provider.find("event=udp_punch") and not gateway.find("event=udp_punch")


async def test_both_behind_consistent_nats_punch_by_default(make_lab, cluster):
    lab = make_lab({"home": ("consistent", ["provider"]), "office": ("consistent", ["gateway"])})
    provider, gateway, _ = await run_case(lab, cluster, "provider", "gateway")
    paths = link_paths(provider, gateway)
    assert paths and all("kind=punched-udp" in line or "kind=punched-tcp" in line for line in paths), paths


async def test_link_recovers_after_the_nat_forgets_its_mappings(make_lab, cluster):
    """An idle hour, simulated: the provider's NAT drops every mapping (conntrack flush).
    The link comes back by itself (keepalives re-create the mapping, or the dead link is
    replaced) and new channels work."""
    lab = make_lab({"home": ("consistent", ["provider"]), "dc": ("none", ["gateway"])})
    provider, gateway, gates = await run_case(lab, cluster, "provider", "gateway")
    await trio.to_thread.run_sync(lab.flush_conntrack, "home")
    gate_http = gates["http"]
    page = await trio.to_thread.run_sync(
        lambda: lab.exec("gateway", "curl", "-sS", "-m", "100", "--retry", "10", "--retry-all-errors",
                         "--retry-delay", "5", f"http://127.0.0.1:{gate_http}/", check=False, timeout=150)
    )
    assert page.returncode == 0 and "Directory listing" in page.stdout, (page.stderr, gateway.lines[-20:])


async def test_link_over_udp_recovers_after_the_nat_forgets_its_mappings(make_lab, cluster):
    """The same over a UDP-punched link (UDX): after the flush the provider's next
    packets (UDX retransmits, mux keepalives) re-create the mapping, or the dead link is
    replaced by a new punch; new channels work either way."""
    lab = make_lab({"home": ("consistent", ["provider"]), "office": ("consistent", ["gateway"])})
    provider, gateway, gates = await run_case(lab, cluster, "provider", "gateway", holepunch="udp")
    assert all("kind=punched-udp" in line for line in link_paths(provider, gateway))
    await trio.to_thread.run_sync(lab.flush_conntrack, "home")
    await trio.to_thread.run_sync(lab.flush_conntrack, "office")
    gate_http = gates["http"]
    page = await trio.to_thread.run_sync(
        lambda: lab.exec("gateway", "curl", "-sS", "-m", "100", "--retry", "10", "--retry-all-errors",
                         "--retry-delay", "5", f"http://127.0.0.1:{gate_http}/", check=False, timeout=150)
    )
    assert page.returncode == 0 and "Directory listing" in page.stdout, (page.stderr, gateway.lines[-20:])
    bulk = await trio.to_thread.run_sync(
        lambda: lab.exec("gateway", sys.executable, "-c", BULK_CLIENT, str(gates["echo"]), str(1024 * 1024),
                         check=False, timeout=120)
    )
    assert bulk.stdout.strip() == "OK", (bulk.stdout, bulk.stderr)


async def test_a_dead_udp_path_ends_the_link_and_the_peers_meet_again(make_lab, cluster):
    """UDP between the two NATs stops for good: the UDX stream gives up (retransmits of the
    keepalive go unanswered), the link ends, the peers look each other up again and, the
    UDP punch failing now, meet at the relay; new channels work. The provider's link to a
    second, public gateway is untouched throughout."""
    lab = make_lab({
        "home": ("consistent", ["provider"]), "office": ("consistent", ["gateway"]), "dc": ("none", ["gateway2"]),
    })
    provider, gateway, gates = await run_case(lab, cluster, "provider", "gateway", holepunch="udp")
    assert all("kind=punched-udp" in line for line in link_paths(provider, gateway))
    other = await cluster.start(
        "--router", gates["secret"], "--gateway", "--bootstrap", gates["bootstrap"], *gates["relay_args"],
        prefix=lab.argv("gateway2"), name="gateway2@dc",
    )
    await other.wait_for(rf"gate={gates['http']}/tcp event=gate_open", timeout=90)
    office = lab.nat("office").public_address
    for direction in ("saddr", "daddr"):
        await trio.to_thread.run_sync(lambda d=direction: lab.exec(
            "home", "nft", "insert", "rule", "inet", "hglab", "forward", "ip", d, office, "meta", "l4proto", "udp", "drop"))
    line = None
    with trio.move_on_after(120):
        while line is None:
            found = [x for x in link_paths(provider, gateway) if "kind=relayed" in x]
            line = found[0] if found else None
            await trio.sleep(0.5)
    assert line is not None, (provider.lines[-30:], gateway.lines[-30:])
    ended = provider.find("event=peer_disconnected") + gateway.find("event=peer_disconnected")
    assert ended, ended
    page = await trio.to_thread.run_sync(
        lambda: lab.exec("gateway", "curl", "-sS", "-m", "30", "--retry", "5", "--retry-all-errors",
                         "--retry-delay", "2", f"http://127.0.0.1:{gates['http']}/", check=False, timeout=120)
    )
    assert page.returncode == 0 and "Directory listing" in page.stdout, (page.stderr, gateway.lines[-20:])
    # The other peer's link never dropped, and it still carries new channels.
    assert other.find("event=peer_connected") and not other.find("event=peer_disconnected"), other.lines[-20:]
    page = await trio.to_thread.run_sync(
        lambda: lab.exec("gateway2", "curl", "-sS", "-m", "20", f"http://127.0.0.1:{gates['http']}/", check=False)
    )
    assert page.returncode == 0 and "Directory listing" in page.stdout, (page.stderr, other.lines[-20:])


async def test_consistent_and_random_nats_punch_over_udp(make_lab, cluster):
    """One port cannot open a random NAT (tests/netlab/test_lab.py shows why): the random
    side opens 256 sockets towards the consistent side, which sprays random ports of the
    random NAT until one of their mappings answers."""
    lab = make_lab({"home": ("consistent", ["provider"]), "office": ("random", ["gateway"])})
    provider, gateway, _ = await run_case(lab, cluster, "provider", "gateway")
    paths = link_paths(provider, gateway)
    punches = provider.find("event=udp_punch") + gateway.find("event=udp_punch")
    assert paths and all("kind=punched-udp" in line for line in paths), (paths, punches)
    strategies = " ".join(provider.find("event=udp_punch .*outcome=punched") + gateway.find("event=udp_punch .*outcome=punched"))
    assert "strategy=spray" in strategies and "strategy=birthday" in strategies, strategies


async def test_consistent_and_random_nats_meet_at_the_relay_without_udp_punching(make_lab, cluster):
    """A TCP punch cannot open a random NAT; the peers fall back to the relay without any
    user action."""
    lab = make_lab({"home": ("consistent", ["provider"]), "office": ("random", ["gateway"])})
    provider, gateway, _ = await run_case(lab, cluster, "provider", "gateway", holepunch="tcp")
    paths = link_paths(provider, gateway)
    assert paths and any("kind=relayed" in line for line in paths), paths


async def test_both_random_nats_are_relayed_automatically(make_lab, cluster):
    lab = make_lab({"home": ("random", ["provider"]), "office": ("random", ["gateway"])})
    provider, gateway, _ = await run_case(lab, cluster, "provider", "gateway")
    paths = link_paths(provider, gateway)
    assert paths and all("kind=relayed" in line for line in paths), paths
    skipped = provider.find("event=udp_punch .*strategy=none") + gateway.find("event=udp_punch .*strategy=none")
    assert skipped and all("both NATs randomize ports" in line for line in skipped), skipped
