"""Provider/gateway behaviour over time, on in-memory links under a virtual clock:
route refresh and expiry, and the open timeout that moves on to the next provider."""

import functools
import logging

import pytest
import trio
import trio.testing

from hypergate import limits
from hypergate.app import Node, NodeConfig
from hypergate.config import Service
from hypergate.roles.routes import GateKey

from ..procs import free_port

SECRET = bytes.fromhex("17" * 32)


def provider_node(gate: int, name: str) -> Node:
    return Node.build(NodeConfig(router_secret=SECRET, services=(Service(gate, "127.0.0.1", 9),), name=name))


def gateway_node() -> Node:
    return Node.build(NodeConfig(router_secret=SECRET, gateway=True, listen="127.0.0.1", name="gw"))


async def link(nursery, dialer: Node, listener: Node):
    left, right = trio.testing.memory_stream_pair()
    nursery.start_soon(functools.partial(dialer.router.serve_stream, left, "mem", initiator=True))
    nursery.start_soon(functools.partial(listener.router.serve_stream, right, "mem", initiator=False))


async def start_gateway(nursery) -> Node:
    gateway = gateway_node()
    await nursery.start(gateway.gateway.run)
    return gateway


async def test_routes_expire_when_a_provider_stops_advertising(nursery, autojump_clock, caplog):
    caplog.set_level(logging.INFO)
    gate = free_port()
    gateway = await start_gateway(nursery)
    quiet = provider_node(gate, "quiet")  # its refresh loop is not running: one advert only
    await link(nursery, gateway, quiet)
    await trio.testing.wait_all_tasks_blocked()
    assert GateKey(gate, "tcp") in gateway.gateway.open_gates
    start = trio.current_time()
    while gateway.gateway.open_gates:
        await gateway.gateway.gates_changed.wait()
    waited = trio.current_time() - start
    assert limits.ROUTE_EXPIRY_S <= waited <= limits.ROUTE_EXPIRY_S * 1.25 + 1
    assert "event=routes_expired" in caplog.text
    assert quiet.router.peers  # the link itself is still up: only its routes went stale


async def test_periodic_adverts_keep_routes_alive(nursery, autojump_clock):
    gate = free_port()
    gateway = await start_gateway(nursery)
    provider = provider_node(gate, "chatty")
    await nursery.start(provider.provider.run)
    await link(nursery, gateway, provider)
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(10 * limits.ROUTE_EXPIRY_S)  # virtual time: autojump MockClock
    assert GateKey(gate, "tcp") in gateway.gateway.open_gates


async def test_silent_provider_is_skipped_after_the_open_timeout(nursery, autojump_clock):
    gate = free_port()
    gateway = await start_gateway(nursery)
    hanging, working = provider_node(gate, "hanging"), provider_node(gate, "working")

    async def never_answer(peer, channel):
        await trio.sleep_forever()

    async def accept(peer, channel):
        channel.accept()
        await trio.sleep_forever()

    hanging.provider.handle_channel = never_answer
    working.provider.handle_channel = accept
    await link(nursery, gateway, hanging)
    await link(nursery, gateway, working)
    await trio.testing.wait_all_tasks_blocked()
    key = GateKey(gate, "tcp")
    assert len(gateway.gateway.routes.providers(key)) == 2
    outcomes = []
    for _ in range(2):  # round robin: one of the two attempts starts at the hanging provider
        start = trio.current_time()
        channel, *_ = await gateway.gateway._open_channel(key, "192.0.2.1", 1234, ("127.0.0.1", gate))
        outcomes.append((trio.current_time() - start, channel.session))
    elapsed = sorted(t for t, _ in outcomes)
    assert elapsed[0] == pytest.approx(0, abs=0.01)
    assert elapsed[1] == pytest.approx(limits.OPEN_TIMEOUT_S, abs=0.01)
    # Both clients ended up on the working provider.
    working_link = gateway.router.peers[working.router.public_key].session
    assert [session for _, session in outcomes] == [working_link, working_link]
