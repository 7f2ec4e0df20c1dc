"""ServerAnnouncer between Python nodes on 127.0.0.1, time under MockClock."""

from __future__ import annotations

import trio

from hypergate.dht import crypto
from hypergate.dht.announcer import ServerAnnouncer
from hypergate.dht.node import DHTNode, NodeConfig, open_dht_node
from hypergate.limits import DHT_RELAY_KEEPALIVE_ROUNDS, DHT_RELAY_KEEPALIVE_S

LOOPBACK = "127.0.0.1"


async def _start_node(nursery: trio.Nursery, config: NodeConfig) -> tuple[DHTNode, trio.CancelScope]:
    node = DHTNode(config)
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await node.run(task_status=task_status)

    await nursery.start(run)
    return node, scope


async def test_announcer_keeps_three_relays_replaces_a_lost_one_and_unannounces(autojump_clock):
    key_pair = crypto.KeyPair.from_seed(b"\x0c" * 32)
    async with trio.open_nursery() as nursery:
        first, first_scope = await _start_node(nursery, NodeConfig(host=LOOPBACK, ephemeral=False))
        nodes = {first.address: (first, first_scope)}
        for _ in range(3):
            node, scope = await _start_node(
                nursery, NodeConfig(bootstrap=(first.address,), host=LOOPBACK, ephemeral=False)
            )
            nodes[node.address] = (node, scope)
        async with open_dht_node(NodeConfig(bootstrap=(first.address,), host=LOOPBACK)) as server:
            announcer = ServerAnnouncer(server, key_pair)
            async with trio.open_nursery() as inner:
                await inner.start(announcer.run)
                assert len(announcer.relays) == 3
                assert all(r.peer_address == server.address for r in announcer.relays)
                # Each relay holds a router entry pointing at the server's socket.
                for address in announcer.relay_addresses:
                    entry = nodes[address][0].store.router_entry(announcer.target, trio.current_time())
                    assert entry.relay == server.address

                # A relay goes away: the next keep-alive round notices and re-announces.
                lost = announcer.relay_addresses[-1]
                changed = announcer.changed
                nodes.pop(lost)[1].cancel()
                with trio.fail_after(2 * DHT_RELAY_KEEPALIVE_S + 30):
                    await changed.wait()
                assert lost not in announcer.relay_addresses
                assert len(announcer.relays) == 3

                # Without losses it re-announces once per keep-alive period (~5 min).
                before = announcer.announces
                await trio.sleep(DHT_RELAY_KEEPALIVE_ROUNDS * DHT_RELAY_KEEPALIVE_S + 30)
                assert announcer.announces == before + 1
                inner.cancel_scope.cancel()
            # Stopping the announcer removed the entry from every live relay.
            now = trio.current_time()
            assert [a for a, (n, _) in nodes.items() if n.store.router_entry(announcer.target, now)] == []
        nursery.cancel_scope.cancel()
