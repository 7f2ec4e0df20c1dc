"""Client-side hole punching to a hyperdht server (hyperdht connect.js probeRound /
roundPunch, holepuncher.js), the consistent-NAT cases. A trio driver.

HYPERSWARM-WIRE.md 3.9. After the IK handshake, a firewalled server lists hole-punch
relays. From our UDX socket (the punch socket):

1. Classify it: PING up to 4 DHT nodes from it and see how they saw it.
2. Probe round: `0x00` with TTL 5 to the server's address (opens our NAT towards it),
   then PEER_HOLEPUNCH {firewall, round, addresses, remoteAddress} through the server's
   relay; the encrypted reply gives the server's firewall class, addresses and token.
3. Punch round: PEER_HOLEPUNCH {punching, token(server), remoteToken} through our relay;
   the server starts punching (`0x00` to our addresses).
4. We send `0x00` to every server address once a second, for up to 10 rounds.

The first 1-byte datagram from the server, at any step, is the path: the UDX stream
goes to its source. Not done: the random-port strategies (either side RANDOM), the
TRY_LATER wait, and the LAN shortcut.
"""

from __future__ import annotations

import logging
import socket

import trio

from hypergate.dht.encoding import Address
from hypergate.dht.messages import HOLEPUNCH_PROBE as PROBE, Firewall
from hypergate.dht.node import DHTNode
from hypergate.dht.operations import DHTError, classify_socket
from hypergate.dht.payloads import HolepunchInfo, HolepunchPayload, RelayInfo
from hypergate.errors import HypergateError
from hypergate.hyperswarm.secure_payload import SecurePayload
from hypergate.limits import (
    HYPERSWARM_CLASSIFY_NODES,
    HYPERSWARM_CLASSIFY_TIMEOUT_S,
    HYPERSWARM_PUNCH_INTERVAL_S,
    HYPERSWARM_PUNCH_ROUNDS,
    HYPERSWARM_PUNCH_TTL,
)

log = logging.getLogger(__name__)

_DEFAULT_TTL = 64


class HolepunchFailed(HypergateError):
    """Hole punching could not open a path; the message says why."""


class Puncher:
    """The punch socket's side channel: 1-byte probes are noted, DHT replies go to the node."""

    def __init__(self, node: DHTNode, sock: trio.socket.SocketType) -> None:
        self.node = node
        self.sock = sock
        self.arrived: Address | None = None
        self.arrived_event = trio.Event()

    def on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        """UdxSocket's callback for non-UDX datagrams. Never raises."""
        if len(data) == 1:
            if self.arrived is None:
                self.arrived = Address(source[0], source[1])
                self.arrived_event.set()
            return
        self.node.handle_datagram(data, Address(source[0], source[1]), self.sock)

    async def send_probe(self, address: Address, ttl: int | None = None) -> None:
        try:
            if ttl is not None:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            await self.sock.sendto(PROBE, (address.host, address.port))
        except OSError as exc:
            log.debug("hyperswarm punch probe failed to=%s error=%s", address, exc)
        finally:
            if ttl is not None:
                try:
                    self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, _DEFAULT_TTL)
                except OSError:
                    pass

    async def classify(self) -> tuple[int, tuple[Address, ...]]:
        """How DHT nodes see the punch socket: (firewall class, advertised addresses).
        Answers reach `on_datagram` through the UDX socket's reader."""
        nat = await classify_socket(
            self.node, self.sock, nodes=HYPERSWARM_CLASSIFY_NODES, timeout_s=HYPERSWARM_CLASSIFY_TIMEOUT_S
        )
        return nat.firewall, nat.addresses


def _pick_server_relay(relays: tuple[RelayInfo, ...], our_relay: Address) -> RelayInfo:
    for info in relays:
        if info.relay_address == our_relay:
            return info
    return relays[0]


async def punch(
    puncher: Puncher,
    public_key: bytes,
    holepunch: HolepunchInfo,
    secure: SecurePayload,
    our_relay: Address,
    server_address: Address,
) -> Address:
    """Run the rounds; returns the server address the first probe came from.
    Raises HolepunchFailed. The caller bounds the whole with a deadline."""
    node = puncher.node
    result: list[Address] = []

    async def watch(cancel: trio.CancelScope) -> None:
        await puncher.arrived_event.wait()
        result.append(puncher.arrived)
        cancel.cancel()

    async def exchange(peer_address: Address, relay: Address, payload: HolepunchPayload) -> HolepunchPayload:
        try:
            reply = await node.peer_holepunch(
                public_key, holepunch.id, secure.encrypt(payload), relay, peer_address=peer_address, sock=puncher.sock
            )
        except DHTError as exc:
            raise HolepunchFailed(f"hole punch: no answer through the relay {relay}: {exc}") from exc
        remote = secure.decrypt(reply.payload)
        if remote is None:
            raise HolepunchFailed("hole punch: the server's reply does not decrypt")
        if remote.error:
            raise HolepunchFailed(f"hole punch: the server aborted with error {remote.error}")
        return remote

    async def rounds() -> None:
        firewall, addresses = await puncher.classify()
        if firewall in (Firewall.UNKNOWN, Firewall.RANDOM):
            name = "could not be classified" if firewall == Firewall.UNKNOWN else "randomizes ports"
            raise HolepunchFailed(f"hole punch: our NAT {name}; the random-port strategies are not implemented")
        server_relay = _pick_server_relay(holepunch.relays, our_relay)
        round_ = 0
        remote = None
        for attempt in range(2):  # the server may not know its NAT yet: ask once more, 1 s later
            await puncher.send_probe(server_address, HYPERSWARM_PUNCH_TTL)
            remote = await exchange(
                server_relay.peer_address,
                server_relay.relay_address,
                HolepunchPayload(firewall=firewall, round=round_, addresses=addresses, remote_address=server_address),
            )
            round_ += 1
            if remote.firewall != Firewall.UNKNOWN and remote.token is not None:
                break
            if attempt == 0:
                await trio.sleep(1.0)
        if remote.firewall == Firewall.UNKNOWN:
            raise HolepunchFailed("hole punch: the server could not classify its NAT (PROBE_TIMEOUT)")
        if remote.firewall == Firewall.RANDOM:
            raise HolepunchFailed("hole punch: the server's NAT randomizes ports; that strategy is not implemented")
        remote = await exchange(
            server_address,
            our_relay,
            HolepunchPayload(
                firewall=firewall, round=round_, punching=True, addresses=addresses,
                token=secure.token(server_address), remote_token=remote.token,
            ),
        )
        if not remote.punching:
            raise HolepunchFailed("hole punch: the server is not punching (REMOTE_NOT_HOLEPUNCHING)")
        targets = list(remote.addresses or ()) or [server_address]
        for _ in range(HYPERSWARM_PUNCH_ROUNDS):
            for address in targets:
                await puncher.send_probe(address)
            await trio.sleep(HYPERSWARM_PUNCH_INTERVAL_S)
        raise HolepunchFailed(
            f"hole punch: no probe from the server after {HYPERSWARM_PUNCH_ROUNDS} rounds to "
            + ",".join(str(a) for a in targets)
        )

    failure: list[HolepunchFailed] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        try:
            await rounds()
        except HolepunchFailed as exc:  # raised here, not from the nursery (no exception group)
            failure.append(exc)
            nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return result[0]
