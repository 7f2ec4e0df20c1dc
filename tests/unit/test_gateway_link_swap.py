"""A gateway while a provider's link is swapped for another (two paths came up at once,
or the link is being redialled): clients of that moment are served on the new link,
not turned away, and the gate does not close and reopen in between."""

from __future__ import annotations

import logging
import socket

import trio
import trio.testing

from hypergate import limits
from hypergate.config import Service
from hypergate.mux.session import MuxSession
from hypergate.peer import REPLACED_LINK, PeerConnection
from hypergate.roles.gateway import Gateway
from hypergate.roles.routes import GateKey
from hypergate.wire.messages import PROTOCOL_VERSION, Hello, RouteEntry, Routes

from ..mux_harness import echo_handler, socket_links
from ..procs import free_port


def provider_link(session: MuxSession | None) -> PeerConnection:
    peer = PeerConnection("127.0.0.1:1", initiator=True)
    peer.session = session
    peer.hello = Hello(type="hello", version=PROTOCOL_VERSION, provider=True)
    return peer


def advertise(gateway: Gateway, peer: PeerConnection, gate: int) -> None:
    service = Service(gatePort=gate, serviceHost="127.0.0.1", servicePort=1, protocol="tcp")
    gateway.on_message(peer, Routes(type="routes", routes=[RouteEntry(service=service)]))


async def wait_for_gate(gateway: Gateway) -> None:
    with trio.fail_after(10):
        while not gateway.open_gates:
            await gateway.gates_changed.wait()


class EventOnLog(logging.Handler):
    """Sets a trio Event when a record containing `text` is logged (from trio's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_a_client_waits_for_the_new_link_when_the_only_one_is_down(nursery):
    """The gate's only provider has no live link (its replacement is coming up): the
    client's request waits, and goes through the new link once its routes arrive."""
    waiting = EventOnLog("event=open_waiting_for_link")
    gateway_log = logging.getLogger("hypergate.roles.gateway")
    gateway_log.addHandler(waiting)
    level = gateway_log.level
    gateway_log.setLevel(logging.INFO)
    gateway = Gateway("127.0.0.1")
    await nursery.start(gateway.run)
    gate = free_port()
    advertise(gateway, provider_link(None), gate)  # routes known, link gone
    await wait_for_gate(gateway)

    client = socket.create_connection(("127.0.0.1", gate))
    client.sendall(b"sent while no link was up")
    client.setblocking(False)
    sock = trio.socket.from_stdlib_socket(client)
    try:
        with sock, trio.fail_after(10):
            await waiting.seen.wait()
            link_a, link_b = await socket_links()
            a = MuxSession(link_a, on_channel=echo_handler, on_message=lambda m: None, name="a")
            b = MuxSession(link_b, on_channel=echo_handler, on_message=lambda m: None, name="b")
            await nursery.start(a.run)
            await nursery.start(b.run)
            advertise(gateway, provider_link(a), gate)
            received = b""
            while len(received) < len(b"sent while no link was up"):
                chunk = await sock.recv(100)
                assert chunk, "the gateway closed the client"
                received += chunk
    finally:
        gateway_log.removeHandler(waiting)
        gateway_log.setLevel(level)
    assert received == b"sent while no link was up"


async def test_a_client_is_turned_away_when_no_link_comes_back(autojump_clock, nursery):
    """The wait is bounded: with no link back within OPEN_WAIT_FOR_LINK_S the client
    gets a reset (not a hang), at that time and not before."""
    gateway = Gateway("127.0.0.1")
    await nursery.start(gateway.run)
    gate = free_port()
    advertise(gateway, provider_link(None), gate)
    await wait_for_gate(gateway)
    key = GateKey(gate, "tcp")
    started = trio.current_time()
    opened = await gateway._open_channel(key, "127.0.0.1", 5555, ("127.0.0.1", gate))
    assert opened is None
    assert trio.current_time() - started == limits.OPEN_WAIT_FOR_LINK_S


async def test_a_replaced_link_keeps_its_gates_open_until_the_grace_ends(autojump_clock, nursery):
    """A link closed in favour of a duplicate keeps its routes for the grace period (the
    gate stays open for the replacement), then they go; any other loss closes at once."""
    gateway = Gateway("127.0.0.1")
    await nursery.start(gateway.run)
    key = GateKey(free_port(), "tcp")
    replaced = provider_link(None)
    advertise(gateway, replaced, key.port)
    await wait_for_gate(gateway)

    replaced.close_reason = REPLACED_LINK
    gateway.peer_lost(replaced)
    await trio.sleep(limits.REPLACED_LINK_ROUTES_GRACE_S - 1)
    assert key in gateway.routes.gates() and key in gateway._gate_scopes
    await trio.sleep(2)
    assert key not in gateway.routes.gates() and key not in gateway._gate_scopes

    lost = provider_link(None)
    advertise(gateway, lost, key.port)
    lost.close_reason = "link read failed"
    gateway.peer_lost(lost)
    assert key not in gateway.routes.gates() and key not in gateway._gate_scopes
