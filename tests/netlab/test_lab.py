"""The NAT lab behaves like the NATs it claims to be: real UDP and TCP sockets in namespaces.

The observer ("rendezvous") runs in the public namespace and answers every datagram or
connection with the address it saw. Punch tests send to each other's observed address from
the same socket that asked the observer, both sides at once.
"""

from __future__ import annotations

import contextlib
import subprocess

import pytest
import trio

from hypergate.netlab import Lab, LabError, cleanup_stale
from hypergate.netlab.client import Agent
from hypergate.netlab.lab import PREFIX

pytestmark = pytest.mark.netlab

TEST_TIMEOUT = 30
PUNCH_OK_TIMEOUT = 3.0
"""A punch that works here takes one round trip after both sides start (milliseconds)."""
PUNCH_FAIL_TIMEOUT = 1.5
"""How long a punch expected to fail keeps trying (30 packets at 50 ms)."""
SILENCE = 0.5
"""How long "nothing arrives" is waited for; the lab's round trips take well under 1 ms."""
OBSERVER_PORT = 4000


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()}


@contextlib.asynccontextmanager
async def agents(lab: Lab, *nodes: str):
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(lab.agent(node)) for node in nodes]


async def observers(public: Agent, lab: Lab, count: int = 2) -> list[tuple[str, int]]:
    """Observer servers on `count` different internet addresses of the public namespace."""
    return [await public.serve_observer(addr, OBSERVER_PORT)
            for addr in lab.internet_addresses[:count]]


async def punch_both(a: Agent, sa: int, to_b: tuple[str, int], b: Agent, sb: int,
                     to_a: tuple[str, int], timeout: float, payload: str = "punch"):
    results: dict[str, dict] = {}

    async def one(agent: Agent, sock: int, to: tuple[str, int]) -> None:
        results[agent.node] = await agent.punch(sock, to, timeout=timeout, payload=payload)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, a, sa, to_b)
        nursery.start_soon(one, b, sb, to_a)
    return results[a.node], results[b.node]


async def tcp_pair(server: Agent, listener: int, client: Agent, to: tuple[str, int]):
    """Accept on `server` while `client` connects; both results."""
    results: dict[str, dict] = {}

    async def accept() -> None:
        results["accepted"] = await server.call("tcp_accept", sock=listener, timeout=2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        results["connected"] = await client.call("tcp_connect", to=list(to))
    return results["accepted"], results["connected"]


# -- the lab itself -----------------------------------------------------------------------


def test_builds_and_removes_everything(make_lab):
    before = namespaces()
    lab = make_lab({"na": ("consistent", ["alice", "ann"]), "nb": ("random", ["bob"]),
                    "open": ("none", ["carol"])})
    assert set(lab.namespaces) <= namespaces()
    assert len(lab.namespaces) == 7  # public, 2 routers, 4 hosts
    assert lab.host("alice").public_address == lab.nat("na").public_address
    assert lab.host("ann").public_address == lab.nat("na").public_address
    assert lab.host("alice").address != lab.host("ann").address
    assert lab.host("carol").public_address == lab.host("carol").address
    assert lab.nat("open").netns is None
    assert "masquerade random,fully-random" in lab.exec("nb", "nft", "list", "ruleset").stdout
    # Addresses exist only inside the lab's namespaces.
    assert lab.bootstrap_address in lab.exec("public", "ip", "-4", "addr").stdout
    with pytest.raises(LabError, match="failed"):
        lab.exec("alice", "false")
    with pytest.raises(LabError, match="no NAT router"):
        lab.flush_conntrack("open")
    lab.close()
    assert not set(lab.namespaces) & namespaces()
    assert {n for n in namespaces() - before if n.startswith(PREFIX)} == set()


def test_failed_build_leaves_nothing(monkeypatch):
    calls = []
    original = Lab._forwarding

    def forwarding(netns: str) -> None:
        calls.append(netns)
        if len(calls) == 2:  # the first NAT router: public and the router exist by now
            raise LabError("injected failure")
        original(netns)

    monkeypatch.setattr(Lab, "_forwarding", staticmethod(forwarding))
    before = namespaces()
    with pytest.raises(LabError, match="injected"):
        Lab({"na": ("consistent", ["alice"])})
    assert len(calls) == 2
    assert {n for n in namespaces() - before if n.startswith(PREFIX)} == set()


def test_rejects_bad_specs():
    with pytest.raises(ValueError, match="kind"):
        Lab({"na": ("full-cone", ["alice"])})
    with pytest.raises(ValueError, match="twice"):
        Lab({"na": ("consistent", ["alice"]), "nb": ("random", ["alice"])})
    with pytest.raises(ValueError, match="name"):
        Lab({"na": ("consistent", ["Alice_1"])})


def test_stale_namespaces_of_dead_processes_are_removed():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}-{dead.pid}-abcdef-public"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in cleanup_stale()
        assert stale not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_in_process_socket_lives_in_the_namespace(make_lab):
    lab = make_lab({"open": ("none", ["carol"])})
    sock = lab.socket("public")
    with sock:
        sock.bind((lab.bootstrap_address, 0))  # that address exists only in "public"
    with lab.socket("carol") as sock:
        sock.bind((lab.host("carol").address, 0))
    # A child started while switched inherits the namespace too.
    with lab.in_netns("carol"):
        out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert lab.host("carol").address in out
    # And this thread is back where it was.
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert lab.host("carol").address not in out


# -- NAT behaviour ------------------------------------------------------------------------


async def test_consistent_nat_keeps_the_port_towards_every_destination(make_lab):
    lab = make_lab({"na": ("consistent", ["alice"])})
    with trio.fail_after(TEST_TIMEOUT):
        async with agents(lab, "public", "alice") as (public, alice):
            one, two = await observers(public, lab)
            sock, _ = await alice.udp_bind(5000)
            seen = [await alice.observe(sock, one), await alice.observe(sock, two)]
            assert seen == [(lab.nat("na").public_address, 5000)] * 2
            # TCP from one local port to two destinations: the same public port too.
            tcp = [await alice.call("tcp_connect", to=list(server), local_port=5001)
                   for server in (one, two)]
            assert all(t["ok"] for t in tcp), tcp
            assert {t["data"] for t in tcp} == {
                f'{{"observed": ["{lab.nat("na").public_address}", 5001]}}'}


async def test_random_nat_changes_the_port_per_destination(make_lab):
    lab = make_lab({"nb": ("random", ["bob"])})
    with trio.fail_after(TEST_TIMEOUT):
        async with agents(lab, "public", "bob") as (public, bob):
            servers = await observers(public, lab, count=4)
            sock, _ = await bob.udp_bind(5000)
            seen = [await bob.observe(sock, server) for server in servers]
            assert {ip for ip, _ in seen} == {lab.nat("nb").public_address}
            # A port per destination; the same destination keeps its mapping.
            assert len({port for _, port in seen}) == 4, seen
            assert await bob.observe(sock, servers[0]) == seen[0]
            tcp = [await bob.call("tcp_connect", to=list(server), local_port=5001)
                   for server in servers[:2]]
            assert tcp[0]["ok"] and tcp[1]["ok"], tcp
            assert tcp[0]["data"] != tcp[1]["data"]


@pytest.mark.parametrize("kind", ["consistent", "random"])
async def test_unsolicited_inbound_is_dropped(make_lab, kind):
    lab = make_lab({"na": (kind, ["alice"]), "open": ("none", ["carol"])})
    with trio.fail_after(TEST_TIMEOUT):
        async with agents(lab, "public", "alice", "carol") as (public, alice, carol):
            (server,) = await observers(public, lab, count=1)
            sock, _ = await alice.udp_bind(5000)
            mapped = await alice.observe(sock, server)  # a live mapping towards the observer
            stranger, _ = await carol.udp_bind(6000)
            # Another source aiming at the mapped port, and at the local port: both dropped.
            for target in {mapped, (lab.nat("na").public_address, 5000)}:
                await carol.call("udp_send", sock=stranger, to=list(target), data="unsolicited")
            got = await alice.call("udp_recv", sock=sock, timeout=SILENCE, match="unsolicited")
            assert got == {"timeout": True}
            # TCP to the NAT's public address goes nowhere (no RST: silently dropped).
            await alice.call("tcp_listen", port=5002)
            tcp = await carol.call("tcp_connect", to=[lab.nat("na").public_address, 5002],
                                   timeout=SILENCE)
            assert tcp["ok"] is False and "timed out" in tcp["reason"], tcp
            # A public host ("none") gets unsolicited traffic: it is open.
            listener = await carol.call("tcp_listen", port=5003)
            probe, _ = await alice.udp_bind(0)
            await alice.call("udp_send", sock=probe, to=[lab.host("carol").address, 6000],
                             data="hello carol")
            got = await carol.call("udp_recv", sock=stranger, timeout=2, match="hello")
            assert got["from"][0] == lab.nat("na").public_address
            accepted, connected = await tcp_pair(carol, listener["sock"], alice,
                                                 (lab.host("carol").address, 5003))
            assert connected["ok"] and connected["data"] == "hello", connected
            assert accepted["from"][0] == lab.nat("na").public_address


async def test_two_consistent_nats_punch_udp(make_lab):
    lab = make_lab({"na": ("consistent", ["alice"]), "nb": ("consistent", ["bob"])})
    with trio.fail_after(TEST_TIMEOUT):
        async with agents(lab, "public", "alice", "bob") as (public, alice, bob):
            (server,) = await observers(public, lab, count=1)
            sa, _ = await alice.udp_bind(5000)
            sb, _ = await bob.udp_bind(5000)
            seen_a, seen_b = await alice.observe(sa, server), await bob.observe(sb, server)
            ra, rb = await punch_both(alice, sa, seen_b, bob, sb, seen_a, PUNCH_OK_TIMEOUT)
            assert ra["ok"] and rb["ok"], (ra, rb)
            assert tuple(ra["from"]) == seen_b and tuple(rb["from"]) == seen_a
            # The punched flow carries data both ways.
            await alice.call("udp_send", sock=sa, to=list(seen_b), data="data a->b")
            assert (await bob.call("udp_recv", sock=sb, timeout=2, match="data"))["data"] == "data a->b"
            await bob.call("udp_send", sock=sb, to=list(seen_a), data="data b->a")
            assert (await alice.call("udp_recv", sock=sa, timeout=2, match="data"))["data"] == "data b->a"


@pytest.mark.parametrize("kinds", [("consistent", "random"), ("random", "consistent"),
                                   ("random", "random")])
async def test_one_port_punch_fails_with_a_random_nat(make_lab, kinds):
    """Aiming at the port the observer saw does not work when either NAT is random.

    The random side's packets to its peer leave from a new port (not the observed one), so
    they match no mapping on the other side; the other side's packets aim at the port the
    random NAT gave the observer, which is bound to the observer only: dropped. hyperdht
    needs its birthday-paradox strategies (many ports) there, and gives up on random/random.
    """
    lab = make_lab({"na": (kinds[0], ["alice"]), "nb": (kinds[1], ["bob"])})
    with trio.fail_after(TEST_TIMEOUT):
        async with agents(lab, "public", "alice", "bob") as (public, alice, bob):
            (server,) = await observers(public, lab, count=1)
            sa, _ = await alice.udp_bind(5000)
            sb, _ = await bob.udp_bind(5000)
            seen_a, seen_b = await alice.observe(sa, server), await bob.observe(sb, server)
            ra, rb = await punch_both(alice, sa, seen_b, bob, sb, seen_a, PUNCH_FAIL_TIMEOUT)
            assert not ra["ok"] and not rb["ok"], (ra, rb)
            assert ra["sent"] > 10 and rb["sent"] > 10


async def test_two_hosts_behind_one_nat(make_lab):
    lab = make_lab({"na": ("consistent", ["alice", "ann"])})
    with trio.fail_after(TEST_TIMEOUT):
        async with agents(lab, "public", "alice", "ann") as (public, alice, ann):
            (server,) = await observers(public, lab, count=1)
            sa, _ = await alice.udp_bind(5000)
            sn, _ = await ann.udp_bind(5000)
            seen_a, seen_n = await alice.observe(sa, server), await ann.observe(sn, server)
            # One public address; the second host's same local port needs another public port.
            assert seen_a[0] == seen_n[0] == lab.nat("na").public_address
            assert seen_a[1] == 5000 and seen_n[1] != 5000
            # On the LAN they reach each other directly, both protocols.
            await alice.call("udp_send", sock=sa, to=[lab.host("ann").address, 5000], data="lan")
            got = await ann.call("udp_recv", sock=sn, timeout=2, match="lan")
            assert tuple(got["from"]) == (lab.host("alice").address, 5000)
            listener = await ann.call("tcp_listen", port=5002)
            accepted, tcp = await tcp_pair(ann, listener["sock"], alice,
                                           (lab.host("ann").address, 5002))
            assert tcp["ok"] and tcp["data"] == "hello", tcp
            assert accepted["from"][0] == lab.host("alice").address
            # No hairpinning: aiming at each other's public address:port does not arrive.
            await alice.call("udp_send", sock=sa, to=list(seen_n), data="hairpin")
            got = await ann.call("udp_recv", sock=sn, timeout=SILENCE, match="hairpin")
            assert got == {"timeout": True}


async def test_flushed_conntrack_forgets_a_punched_mapping(make_lab):
    lab = make_lab({"na": ("consistent", ["alice"]), "nb": ("consistent", ["bob"])})
    with trio.fail_after(TEST_TIMEOUT):
        async with agents(lab, "public", "alice", "bob") as (public, alice, bob):
            (server,) = await observers(public, lab, count=1)
            sa, _ = await alice.udp_bind(5000)
            sb, _ = await bob.udp_bind(5000)
            seen_a, seen_b = await alice.observe(sa, server), await bob.observe(sb, server)
            ra, rb = await punch_both(alice, sa, seen_b, bob, sb, seen_a, PUNCH_OK_TIMEOUT)
            assert ra["ok"] and rb["ok"], (ra, rb)
            assert seen_a[0] in lab.conntrack("nb")

            lab.flush_conntrack("nb")  # bob's NAT forgets: the mapping has "expired"
            assert seen_a[0] not in lab.conntrack("nb")
            await bob.call("udp_drain", sock=sb)
            await alice.call("udp_send", sock=sa, to=list(seen_b), data="after flush")
            got = await bob.call("udp_recv", sock=sb, timeout=SILENCE, match="after")
            assert got == {"timeout": True}  # unsolicited again: dropped at bob's NAT

            # Punching again restores the flow (bob's port is free, so it is the same one).
            ra, rb = await punch_both(alice, sa, seen_b, bob, sb, seen_a, PUNCH_OK_TIMEOUT,
                                      payload="repunch")
            assert ra["ok"] and rb["ok"], (ra, rb)
            await alice.call("udp_send", sock=sa, to=list(seen_b), data="after repunch")
            got = await bob.call("udp_recv", sock=sb, timeout=2, match="after")
            assert got["data"] == "after repunch"


async def test_many_ports_punch_a_random_nat_from_a_consistent_one(make_lab):
    """hyperdht's consistent/random strategy works in the lab (faster: 1 ms, not 20 ms).

    The random side opens 256 sockets, each sending to the consistent side's observed
    address (each gets its own random public port); the consistent side sends to random
    ports of the random side's public address until one hits a mapping: about
    64512 / 256 = 252 probes on average.
    """
    lab = make_lab({"na": ("consistent", ["alice"]), "nb": ("random", ["bob"])})
    with trio.fail_after(TEST_TIMEOUT):
        async with agents(lab, "public", "alice", "bob") as (public, alice, bob):
            (server,) = await observers(public, lab, count=1)
            sa, _ = await alice.udp_bind(5000)
            seen_a = await alice.observe(sa, server)
            socks = (await bob.call("udp_bind_many", count=256))["socks"]
            results: dict[str, dict] = {}

            async def random_side() -> None:
                results["bob"] = await bob.call("punch_many", socks=socks, to=list(seen_a),
                                                timeout=15)

            async def consistent_side() -> None:
                results["alice"] = await alice.call(
                    "spray", sock=sa, host=lab.nat("nb").public_address, timeout=15)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(random_side)
                nursery.start_soon(consistent_side)
            ra, rb = results["alice"], results["bob"]
            print(f"birthday punch: {ra}, {rb}")
            assert ra["ok"] and rb["ok"], (ra, rb)
            # The flow found is a real two-way path between alice's port and bob's socket.
            assert tuple(rb["from"]) == seen_a
            assert ra["from"][0] == lab.nat("nb").public_address
