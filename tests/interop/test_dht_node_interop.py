"""Our DHT node in a real Node.js hyperdht testnet on 127.0.0.1 (tests/interop/testnet.js).

Shows that Node nodes keep our node in their tables (it answers PING and FIND_NODE with
a valid id), that our lookup finds what Node announced, that Node's lookup finds what we
announced (so our signatures and tokens are accepted by the real code), that Node nodes
relay handshakes and hole-punch messages to a Python server that announced its key, and
that Node peers whose only DHT node is ours connect through it (tests/interop/peer_pair.js).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import trio

from hypergate.dht import crypto
from hypergate.dht.encoding import Address
from hypergate.dht.node import NodeConfig, PeerMessage, PeerReply, open_dht_node
from tests.interop.node_support import INTEROP_DIR, require_node

pytestmark = pytest.mark.interop

# Starting 5 Node nodes takes ~1 s; every step below is a few loopback round trips.
TESTNET_START_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 30
TESTNET_SIZE = 5


class NodeTestnet:
    def __init__(self, process: trio.Process) -> None:
        self._process = process
        self._buffer = b""
        self._next_id = 0
        self.bootstrap: list[Address] = []
        self.nodes: list[dict] = []

    async def _read_line(self) -> dict:
        while b"\n" not in self._buffer:
            chunk = await self._process.stdout.receive_some(65536)
            if not chunk:
                raise RuntimeError("testnet.js exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    async def start(self) -> None:
        with trio.fail_after(TESTNET_START_TIMEOUT_S):
            ready = await self._read_line()
        assert ready["ready"]
        self.bootstrap = [Address(b["host"], b["port"]) for b in ready["bootstrap"]]
        self.nodes = ready["nodes"]

    async def command(self, cmd: str, **args) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "cmd": cmd, **args}
        await self._process.stdin.send_all(json.dumps(message).encode() + b"\n")
        with trio.fail_after(COMMAND_TIMEOUT_S):
            reply = await self._read_line()
        assert reply["id"] == self._next_id
        assert "error" not in reply, reply
        return reply


@pytest.fixture
async def testnet():
    node = require_node()
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            lambda task_status: trio.run_process(
                [node, str(INTEROP_DIR / "testnet.js"), str(TESTNET_SIZE)],
                cwd=INTEROP_DIR,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
                task_status=task_status,
            )
        )
        net = NodeTestnet(process)
        try:
            await net.start()
            yield net
        finally:
            with trio.move_on_after(5):
                await process.stdin.aclose()
                await process.wait()
            if process.returncode is None:
                process.kill()


def _config(net: NodeTestnet) -> NodeConfig:
    return NodeConfig(bootstrap=net.bootstrap, host="127.0.0.1", ephemeral=False)


async def test_node_nodes_keep_our_node_and_get_answers(testnet):
    async with open_dht_node(_config(testnet)) as node:
        assert node.persistent
        assert node.id == crypto.node_id(node.address)
        # Our bootstrap query carried our id, so the Node nodes we asked added us.
        held = await testnet.command("tablesWith", host=node.address.host, port=node.address.port)
        assert held["count"] >= 1
        # Every persistent Node node is in our table (the bootstrap node is id-less).
        node_ids = {bytes.fromhex(n["id"]) for n in testnet.nodes if n["id"]}
        assert node_ids <= {n.id for n in node.table}
        # A Node PING gets our valid id back; a Node FIND_NODE for our id counts us
        # among the closest replies, which requires a well-formed reply with a valid id.
        pong = await testnet.command("ping", host=node.address.host, port=node.address.port, **{"from": 1})
        assert pong["fromId"] == node.id.hex()
        assert pong["to"]["port"] == testnet.nodes[1]["port"]
        found = await testnet.command("findNode", target=node.id.hex(), **{"from": 2})
        assert {"host": node.address.host, "port": node.address.port, "id": node.id.hex()} in found["closest"]


async def test_our_lookup_finds_a_node_announce(testnet):
    topic = crypto.hash32(b"hypergate interop topic")
    announced = await testnet.command("announce", topic=topic.hex(), seed=("07" * 32), **{"from": 3})
    async with open_dht_node(NodeConfig(bootstrap=testnet.bootstrap, host="127.0.0.1")) as node:
        assert not node.persistent
        results = await node.lookup(topic)
        keys = {peer.public_key.hex() for result in results for peer in result.peers}
        assert announced["publicKey"] in keys
        assert await node.lookup(crypto.hash32(b"nobody announced this")) == []


async def test_node_lookup_finds_our_signed_announce_and_unannounce_removes_it(testnet):
    topic = crypto.hash32(b"announced from python")
    key_pair = crypto.KeyPair.from_seed(b"\x09" * 32)
    async with open_dht_node(NodeConfig(bootstrap=testnet.bootstrap, host="127.0.0.1")) as node:
        stored = await node.announce(topic, key_pair, [Address("127.0.0.1", 4000)])
        assert len(stored) >= 3  # the 4 persistent Node nodes check token and signature
        found = await testnet.command("lookup", topic=topic.hex(), **{"from": 1})
        assert found["publicKeys"] == [key_pair.public_key.hex()]
        removed = await node.unannounce(topic, key_pair)
        assert len(removed) >= 3
        found = await testnet.command("lookup", topic=topic.hex(), **{"from": 1})
        assert found["publicKeys"] == []


async def test_python_server_reached_through_node_relays(testnet):
    """The path the connection layer will use: announce our key, get relayed messages."""
    key_pair = crypto.KeyPair.from_seed(b"\x0b" * 32)
    target = crypto.hash32(key_pair.public_key)
    received: list[tuple[str, Address, bytes]] = []
    config = NodeConfig(bootstrap=testnet.bootstrap, host="127.0.0.1")
    async with open_dht_node(config) as server, open_dht_node(config) as client:

        async def on_handshake(message: PeerMessage) -> PeerReply:
            received.append(("handshake", message.peer_address, message.payload))
            return PeerReply(b"msg2 for " + message.payload)

        async def on_holepunch(message: PeerMessage) -> PeerReply:
            received.append(("holepunch", message.peer_address, message.payload))
            return PeerReply(b"punch back")

        server.add_server(key_pair, on_handshake, on_holepunch)
        relays = await server.announce(target, key_pair, commit_nodes=3)
        assert len(relays) == 3
        found = await client.find_peer(key_pair.public_key)
        assert {r.node for r in found} == {r.address for r in relays}
        assert all(r.peers[0].public_key == key_pair.public_key for r in found)
        relay = found[0].node

        reply = await client.peer_handshake(key_pair.public_key, b"msg1", relay)
        assert (reply.noise, reply.relayed, reply.server_address) == (b"msg2 for msg1", True, server.address)
        assert reply.client_address == client.address

        punch = await client.peer_holepunch(key_pair.public_key, 7, b"probe", relay)
        assert (punch.payload, punch.peer_address, punch.relay) == (b"punch back", server.address, relay)

    assert received == [("handshake", client.address, b"msg1"), ("holepunch", client.address, b"probe")]


async def test_node_peers_connect_through_our_node_as_their_only_dht():
    """A Node server and client whose only DHT node is ours: a topic announce and lookup
    are stored and served by us, then they find each other, run the IK handshake through
    our relay and exchange data."""
    node_binary = require_node()
    async with open_dht_node(NodeConfig(host="127.0.0.1", ephemeral=False)) as ours:
        with trio.fail_after(COMMAND_TIMEOUT_S):
            result = await trio.run_process(
                [node_binary, str(INTEROP_DIR / "peer_pair.js"), str(ours.address)],
                cwd=INTEROP_DIR,
                capture_stdout=True,
                check=False,
            )
        outcome = json.loads(result.stdout.decode().strip().splitlines()[-1])
        assert outcome["ok"], outcome
        assert outcome["echo"] == "hello through the python relay"
        # Node's LOOKUP was answered from the record Node's ANNOUNCE left in our store.
        assert outcome["topicPeers"] == [outcome["serverKey"]]
        assert ours.stats["announces_stored"] == 2  # the topic, then the server's own key
        assert ours.stats["relayed_peer_handshake"] == 1
        assert ours.stats["replied_for_peer_handshake"] == 1
        assert ours.stats["unannounces_done"] == 1, "the server's close removed its entry"
