"""UDP hole punching for peers met on the DHT, and the UDX stream on the punched socket.

    puncher = UdpPuncher(node)
    await puncher.prepare(timeout_s)         # bind 0.0.0.0:0, classify it from DHT PINGs
    puncher.info                             # UdpPunchInfo for FINISH / READY, or None
    punched = await puncher.punch(theirs, initiator=True, name=...)   # None: no path
    stream = await start_udx(punched, link_nursery, node, puncher.stream_id, theirs.stream_id,
                             initiator=True)

Classification is hyperdht's (`FirewallClassifier`): the socket PINGs up to 4 DHT nodes
and the `to` fields of their answers say whether our NAT keeps one public port for it
(consistent), picks a new one per destination (random), or whether we are not behind a
NAT at all (open). The answers come back on the punch socket, whose reader hands them to
`node.handle_datagram` (first byte 0x13) so the node matches them to its requests.

The punch itself follows `punch_plan.plan`. Probes are 1-byte `0x00` datagrams; a side
answers every probe with one from the same socket. On the client, the first probe (or UDX
packet) from the other side's host on any of our sockets picks that socket and that
source; the server picks the socket the client's first UDX packet arrives on (with many
sockets, the first probe the client saw may have come from another one of ours than the
first probe we saw). The losing sockets are closed, and the winner is given to
`UdxSocket`: the client connects its stream to the source, the server's stream connects
to whoever sent that first UDX packet. UDX datagrams read before UDX took over are passed on.
"""

from __future__ import annotations

import logging
import random
import secrets
import socket

import attrs
import trio

from .. import limits
from ..dht.encoding import Address
from ..dht.messages import HOLEPUNCH_PROBE as PROBE, Firewall
from ..dht.node import DHTNode
from ..dht.operations import classify_socket
from ..udx.packet import is_udx
from ..udx.socket import UdxSocket
from ..wire.rendezvous import UdpPunchInfo
from . import punch_plan
from .punch_plan import Strategy

log = logging.getLogger(__name__)

_DHT_RESPONSE = 0x13
_RECV_SIZE = 2048
_FIREWALL_NAMES = {
    Firewall.OPEN: "open", Firewall.CONSISTENT: "consistent", Firewall.RANDOM: "random", Firewall.UNKNOWN: "unknown"
}


def _udp_socket() -> trio.socket.SocketType:
    return trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


@attrs.define(eq=False)
class Punched:
    """The outcome of a successful punch: the socket that met the other side, and where
    the other side's packets came from."""

    sock: trio.socket.SocketType
    remote: tuple[str, int]
    theirs: UdpPunchInfo
    early: list[tuple[bytes, tuple[str, int]]] = attrs.Factory(list)

    def close(self) -> None:
        self.sock.close()


class UdpPuncher:
    """One punch attempt: its socket(s), its classification, its UDX stream id."""

    def __init__(self, node: DHTNode, rng: random.Random | None = None) -> None:
        self.node = node
        self.rng = rng or random.SystemRandom()
        self.stream_id = secrets.randbits(32) or 1
        self.info: UdpPunchInfo | None = None
        self.sock: trio.socket.SocketType | None = None
        self._sockets: list[trio.socket.SocketType] = []
        self._winner: trio.socket.SocketType | None = None

    def close(self) -> None:
        """Close every socket but one handed over to a winner."""
        for sock in self._sockets:
            if sock is not self._winner:
                sock.close()

    # --- classification -------------------------------------------------------------

    async def prepare(self, timeout_s: float) -> UdpPunchInfo | None:
        """Bind a socket and classify it; `info` stays None when that fails."""
        start = trio.current_time()
        sock = _udp_socket()
        self._sockets.append(sock)
        await sock.bind(("0.0.0.0", 0))
        self.sock = sock
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_dht_only, sock)
            nat = await classify_socket(self.node, sock, nodes=limits.UDP_PUNCH_CLASSIFY_NODES, timeout_s=timeout_s)
            nursery.cancel_scope.cancel()
        firewall = _FIREWALL_NAMES[nat.firewall]
        addresses = [(a.host, a.port) for a in nat.addresses]
        if firewall == "unknown" or not addresses:
            firewall, addresses = "unknown", []
        self.info = UdpPunchInfo(firewall, tuple(addresses[:4]), self.stream_id)
        log.info(
            "event=udp_punch_socket firewall=%s addresses=%s answers=%d of=%d elapsed_ms=%d",
            firewall, ",".join(f"{h}:{p}" for h, p in addresses) or "-", nat.answers, nat.asked,
            (trio.current_time() - start) * 1000,
        )
        return self.info if firewall != "unknown" else None

    async def _read_dht_only(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, source = await sock.recvfrom(_RECV_SIZE)
            except OSError:
                continue
            if data[:1] == bytes([_DHT_RESPONSE]):
                self.node.handle_datagram(data, Address(*source[:2]), sock)

    # --- punching -------------------------------------------------------------------

    async def punch(
        self, theirs: UdpPunchInfo, *, initiator: bool, name: str = "?", spray_delay_s: float = 0.0
    ) -> Punched | None:
        """Run our half of the punch; the winning socket and source, or None."""
        assert self.info is not None and self.sock is not None
        plan = punch_plan.plan(self.info, theirs)
        start = trio.current_time()
        counts = {"probes": 0, "answers": 0}
        if not plan.punches:
            self._log(name, plan, theirs, counts, start, "skipped")
            return None
        sockets = [self.sock]
        while len(sockets) < plan.sockets:
            try:
                extra = _udp_socket()
            except OSError:  # out of file descriptors: punch with what we have
                break
            self._sockets.append(extra)
            await extra.bind(("0.0.0.0", 0))
            sockets.append(extra)
        result: list[Punched] = []
        won = trio.Event()

        async def read(sock: trio.socket.SocketType) -> None:
            while True:
                try:
                    data, source = await sock.recvfrom(_RECV_SIZE)
                except OSError:
                    continue
                source = source[:2]
                if data[:1] == bytes([_DHT_RESPONSE]):
                    self.node.handle_datagram(data, Address(*source), sock)
                    continue
                if not punch_plan.accepts(theirs, source):
                    continue
                if data == PROBE:
                    counts["answers"] += 1
                    await _send(sock, source)
                    if not initiator:
                        continue  # the client's first UDX packet tells which socket it chose
                elif not is_udx(data):
                    continue
                if not result:
                    result.append(Punched(sock, source, theirs))
                    won.set()
                if result[0].sock is sock and is_udx(data):
                    result[0].early.append((data, source))

        async def send() -> None:
            if plan.strategy is Strategy.PROBE:
                while counts["probes"] < plan.probes:
                    for target in plan.targets:
                        counts["probes"] += await _send(self.sock, target)
                    await trio.sleep(plan.interval_s)
            elif plan.strategy is Strategy.BIRTHDAY:
                while counts["probes"] < plan.probes:
                    for sock in sockets:
                        for target in plan.targets:
                            counts["probes"] += await _send(sock, target)
                    await trio.sleep(plan.interval_s)
            elif plan.strategy is Strategy.SPRAY:
                await trio.sleep(spray_delay_s)
                ports = punch_plan.spray_ports(self.rng, plan.probes)
                next_at = trio.current_time()
                for port in ports:
                    counts["probes"] += await _send(self.sock, (plan.spray_host, port))
                    next_at += plan.interval_s
                    if next_at > trio.current_time():
                        await trio.sleep_until(next_at)
            await trio.sleep_forever()  # WAIT, or every probe sent: wait for an answer

        over = False
        try:
            async with trio.open_nursery() as nursery:
                for sock in sockets:
                    nursery.start_soon(read, sock)
                nursery.start_soon(send)
                with trio.move_on_after(plan.timeout_s):
                    await won.wait()
                nursery.cancel_scope.cancel()
            over = True
        finally:
            if not over:  # cancelled: another path won the race
                self._log(name, plan, theirs, counts, start, "cancelled", sockets=len(sockets))
        punched = result[0] if result else None
        self._winner = punched.sock if punched else None
        self.close()
        # (A server whose probes were answered but that got no UDX: the client chose another path.)
        outcome = "punched" if punched else "unused" if counts["answers"] and not initiator else "failed"
        self._log(name, plan, theirs, counts, start, outcome,
                  sockets=len(sockets), remote=punched.remote if punched else None)
        return punched

    def _log(self, name, plan, theirs, counts, start, outcome, sockets=0, remote=None) -> None:
        log.info(
            "peer=%s event=udp_punch strategy=%s outcome=%s firewall=%s remote_firewall=%s probes=%d "
            "answers=%d sockets=%d elapsed_ms=%d remote=%s%s",
            name, plan.strategy.value, outcome, self.info.firewall if self.info else "-", theirs.firewall,
            counts["probes"], counts["answers"], sockets, (trio.current_time() - start) * 1000,
            f"{remote[0]}:{remote[1]}" if remote else "-", f" reason={plan.reason!r}" if plan.reason else "",
        )


async def _send(sock: trio.socket.SocketType, to: tuple[str, int]) -> int:
    try:
        await sock.sendto(PROBE, to)
        return 1
    except OSError:  # e.g. an ICMP error left on the socket by an earlier probe
        return 0


async def start_udx(
    punched: Punched, nursery: trio.Nursery, node: DHTNode, local_id: int, remote_id: int, *, initiator: bool
):
    """Run a UdxSocket on the punched socket in `nursery` (the link's: cancel it when the
    link ends) and open our stream on it. The server keeps answering probes: the client
    may still be punching when our first answer got lost."""
    sock = punched.sock
    answers_in, answers_out = trio.open_memory_channel[tuple[str, int]](limits.UDP_PUNCH_ANSWER_QUEUE)

    def on_datagram(data: bytes, source: tuple[str, int]) -> None:
        source = tuple(source[:2])
        if data[:1] == bytes([_DHT_RESPONSE]):
            node.handle_datagram(data, Address(*source), sock)
        elif data == PROBE and not initiator and punch_plan.accepts(punched.theirs, source):
            try:
                answers_in.send_nowait(source)
            except trio.WouldBlock:
                pass

    udx = UdxSocket(sock, on_datagram=on_datagram)
    await nursery.start(udx.run)
    if not initiator:
        nursery.start_soon(_answer_probes, udx, answers_out)
    stream = udx.open_stream(local_id, remote_id, punched.remote if initiator else None)
    for data, source in punched.early:
        udx.handle_datagram(data, source)
    punched.early.clear()
    return stream


async def _answer_probes(udx, answers: trio.MemoryReceiveChannel) -> None:
    async for source in answers:
        try:
            await udx.send_to(PROBE, source)
        except OSError:
            pass
