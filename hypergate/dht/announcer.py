"""Keeping a server reachable: announce its key to the closest nodes and keep them warm.

As hyperdht's announcer (`hyperdht/lib/announcer.js`, HYPERSWARM-WIRE.md 3.6): FIND_PEER
for H32(public key), ANNOUNCE to the closest 3, then PING those relays every 3 s so the
NAT mapping they relay through stays open, and announce again every ~5 min or as soon
as fewer than 3 relays answer. Those relays then forward PEER_HANDSHAKE/PEER_HOLEPUNCH
for the key to this node's socket, where `DHTNode.add_server` handlers receive them.
"""

from __future__ import annotations

import logging

import attrs
import trio

from hypergate.dht import crypto
from hypergate.dht.encoding import Address
from hypergate.dht.messages import Command
from hypergate.dht.node import DHTError, DHTNode
from hypergate.dht.operations import commit_announce
from hypergate.limits import (
    DHT_RELAY_ANNOUNCE_NODES,
    DHT_RELAY_KEEPALIVE_ROUNDS,
    DHT_RELAY_KEEPALIVE_S,
    DHT_UNANNOUNCE_ON_STOP_TIMEOUT_S,
)

log = logging.getLogger(__name__)


@attrs.frozen
class Relay:
    """A DHT node relaying for us, and our address as it sees us (for holepunch relays)."""

    relay_address: Address
    peer_address: Address


class ServerAnnouncer:
    def __init__(self, node: DHTNode, key_pair: crypto.KeyPair) -> None:
        self.node = node
        self.key_pair = key_pair
        self.target = crypto.hash32(key_pair.public_key)
        self.relays: list[Relay] = []
        self.announces = 0
        self.changed = trio.Event()  # set (and replaced) whenever `relays` changes

    @property
    def relay_addresses(self) -> list[Address]:
        return [r.relay_address for r in self.relays]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Announce, report started, keep the relays; unannounce when cancelled."""
        try:
            await self._update()
            task_status.started(self)
            while True:
                await self._keep_alive()
                await self._update()
        finally:
            with trio.move_on_after(DHT_UNANNOUNCE_ON_STOP_TIMEOUT_S) as scope:
                scope.shield = True
                try:
                    await self.node.unannounce(self.target, self.key_pair)
                except DHTError as exc:
                    log.debug("dht unannounce on stop failed key=%s error=%s", self.key_pair.public_key.hex()[:16], exc)

    async def _update(self) -> None:
        try:
            accepted = await commit_announce(
                self.node, self.target, self.key_pair, [], Command.ANNOUNCE, DHT_RELAY_ANNOUNCE_NODES
            )
        except DHTError as exc:
            # Nobody to announce to yet: keep what we had and try again after a round.
            log.warning("dht announce failed key=%s error=%s", self.key_pair.public_key.hex()[:16], exc)
            accepted = []
        self.announces += 1
        relays = [Relay(r.address, r.response.to) for r in accepted]
        if relays != self.relays:
            self.relays = relays
            self.changed.set()
            self.changed = trio.Event()
        log.info(
            "dht announced key=%s relays=%s", self.key_pair.public_key.hex()[:16], ",".join(map(str, self.relay_addresses))
        )

    async def _keep_alive(self) -> None:
        """Ping the relays every few seconds until a re-announce is due or relays drop."""
        for _ in range(DHT_RELAY_KEEPALIVE_ROUNDS):
            await trio.sleep(DHT_RELAY_KEEPALIVE_S)
            alive = 0

            async def ping(address: Address) -> None:
                nonlocal alive
                try:
                    await self.node.ping(address)
                    alive += 1
                except DHTError:
                    pass

            async with trio.open_nursery() as nursery:
                for address in self.relay_addresses:
                    nursery.start_soon(ping, address)
            if alive < min(len(self.relays), DHT_RELAY_ANNOUNCE_NODES) or not self.relays:
                return
