"""The trio DHT node between Python nodes and raw sockets on 127.0.0.1.

Real UDP on loopback; each test is bounded by trio.fail_after. Timeouts and retries run
under MockClock so the 1 s x 4 sends take no real time.
"""

from __future__ import annotations

import random
import socket

import pytest
import trio
import trio.testing

from hypergate.dht import crypto
from hypergate.dht.encoding import Address
from hypergate.dht.messages import (
    Command,
    Handshake,
    HandshakeMode,
    Holepunch,
    InternalCommand,
    Request,
    Response,
    RpcError,
)
from hypergate.dht.node import DHTError, NodeConfig, PeerMessage, PeerReply, RequestTimeout, open_dht_node
from hypergate.limits import (
    DHT_CONGESTION_ROTATE_S,
    DHT_CONGESTION_WINDOW,
    DHT_MAX_DATAGRAM,
    DHT_RATE_BURST,
    DHT_REQUEST_RETRIES,
    DHT_STABLE_TICKS,
    DHT_TICK_S,
)

LOOPBACK = "127.0.0.1"
# Everything here is a handful of loopback round trips.
TEST_TIMEOUT_S = 20


def persistent(*bootstrap: Address) -> NodeConfig:
    return NodeConfig(bootstrap=bootstrap, host=LOOPBACK, ephemeral=False)


def ephemeral(*bootstrap: Address) -> NodeConfig:
    return NodeConfig(bootstrap=bootstrap, host=LOOPBACK)


class RawPeer:
    """A bare UDP socket speaking the wire format by hand."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tid = 100

    async def bind(self, host: str = LOOPBACK) -> RawPeer:
        await self.sock.bind((host, 0))
        return self

    @property
    def address(self) -> Address:
        return Address(*self.sock.getsockname())

    async def send(self, data: bytes, to: Address) -> None:
        await self.sock.sendto(data, (to.host, to.port))

    async def request(self, to: Address, command: int, **fields) -> Response:
        self.tid += 1
        await self.send(Request(self.tid, to, command, **fields).encode(), to)
        while True:
            data, _ = await self.sock.recvfrom(4096)
            response = Response.decode(data)
            if response.tid == self.tid:
                return response


async def test_python_nodes_bootstrap_announce_lookup_and_unannounce():
    topic = crypto.hash32(b"python-only topic")
    key_pair = crypto.KeyPair.from_seed(b"\x05" * 32)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_dht_node(persistent()) as first:
            async with open_dht_node(persistent(first.address)) as second:
                async with open_dht_node(persistent(first.address)) as third:
                    assert third.id == crypto.node_id(third.address)
                    assert {second.id, first.id} <= {n.id for n in third.table}
                    accepted = await third.announce(topic, key_pair, [Address("10.1.2.3", 4000)])
                    assert {r.address for r in accepted} == {first.address, second.address}
                    async with open_dht_node(ephemeral(first.address)) as client:
                        results = await client.lookup(topic)
                        peers = {p for result in results for p in result.peers}
                        assert [(p.public_key, p.relay_addresses) for p in peers] == [
                            (key_pair.public_key, (Address("10.1.2.3", 4000),))
                        ]
                        await third.unannounce(topic, key_pair)
                        assert await client.lookup(topic) == []


async def test_ephemeral_node_stays_out_of_tables_and_refuses_storage():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_dht_node(persistent()) as first:
            async with open_dht_node(ephemeral(first.address)) as client:
                assert client.id is None
                assert len(first.table) == 0, "an id-less node is never added"
                raw = await RawPeer().bind()
                response = await raw.request(client.address, Command.LOOKUP, target=b"\x01" * 32)
                assert response.error == RpcError.UNKNOWN_COMMAND
                assert response.id is None


async def test_internal_commands_answer_like_dht_rpc():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_dht_node(persistent()) as node:
            raw = await RawPeer().bind()
            pong = await raw.request(node.address, InternalCommand.PING, internal=True)
            assert pong.to == raw.address and pong.id == node.id and pong.token is None
            # PING_NAT answers to the port asked for, on the requester's IP.
            other = await RawPeer().bind()
            raw.tid += 1
            value = other.address.port.to_bytes(2, "little")
            await raw.send(
                Request(raw.tid, node.address, InternalCommand.PING_NAT, internal=True, value=value).encode(),
                node.address,
            )
            data, _ = await other.sock.recvfrom(4096)
            assert Response.decode(data).to == other.address
            found = await raw.request(node.address, InternalCommand.FIND_NODE, internal=True, target=b"\x02" * 32)
            assert found.error == 0 and found.token is None
            unknown = await raw.request(node.address, 77, internal=True, target=b"\x02" * 32)
            assert unknown.error == RpcError.UNKNOWN_COMMAND
            hint = await raw.request(node.address, InternalCommand.DOWN_HINT, internal=True, value=bytes(6))
            assert hint.error == 0


async def test_tokens_are_issued_per_ip_and_a_bad_token_gets_invalid_token():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_dht_node(persistent()) as node:
            raw = await RawPeer().bind()
            target = b"\x03" * 32
            lookup = await raw.request(node.address, Command.LOOKUP, target=target)
            assert lookup.error == 0 and lookup.token is not None and lookup.value is None
            refused = await raw.request(node.address, Command.LOOKUP, target=target, token=b"\x00" * 32)
            assert refused.error == RpcError.INVALID_TOKEN
            assert refused.token == lookup.token
            again = await raw.request(node.address, Command.LOOKUP, target=target, token=lookup.token)
            assert again.error == 0
            # A well-formed but unsigned announce is dropped without an answer, as in Node.
            assert node.store.record_count() == 0


async def test_malformed_and_oversized_datagrams_are_counted_and_the_node_keeps_serving():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_dht_node(persistent()) as node:
            raw = await RawPeer().bind()
            valid = Request(1, node.address, InternalCommand.FIND_NODE, internal=True, target=b"\x04" * 32).encode()
            junk = [b"\x03", b"\x99garbage", valid[:-5], b"\x13\x04\x00", bytes([0x03, 0xFF]) + b"\xff" * 40]
            for data in junk:
                await raw.send(data, node.address)
            await raw.send(b"\x03" + b"\x00" * DHT_MAX_DATAGRAM, node.address)
            pong = await raw.request(node.address, InternalCommand.PING, internal=True)
            assert pong.error == 0
            assert node.stats["dropped_malformed"] == len(junk)
            assert node.stats["dropped_oversized"] == 1


async def test_one_source_is_rate_limited():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_dht_node(persistent()) as node:
            raw = await RawPeer().bind()
            flood = 3 * int(DHT_RATE_BURST)
            for tid in range(flood):
                await raw.send(Request(tid, node.address, InternalCommand.PING, internal=True).encode(), node.address)
                if tid % 50 == 49:
                    # Let the node drain its socket so the kernel buffer never overflows.
                    await trio.testing.wait_all_tasks_blocked()
            # Another source (127.0.0.2 is loopback too) is still answered.
            other = await RawPeer().bind("127.0.0.2")
            pong = await other.request(node.address, InternalCommand.PING, internal=True)
            assert pong.error == 0
            assert node.stats["dropped_rate_limited"] >= DHT_RATE_BURST


async def test_request_to_a_silent_peer_retries_then_times_out(autojump_clock):
    silent = await RawPeer().bind()
    async with open_dht_node(ephemeral()) as node:
        with pytest.raises(RequestTimeout):
            await node.request(silent.address, InternalCommand.PING, internal=True)
        assert node.stats["request_timeouts"] == 1
    sends = 0
    for _ in range(20):
        with trio.move_on_after(0.1) as waited:
            await silent.sock.recv(4096)
        if waited.cancelled_caught:
            break
        sends += 1
    assert sends == DHT_REQUEST_RETRIES + 1


async def test_handshake_is_relayed_through_a_node_to_an_announced_server():
    key_pair = crypto.KeyPair.from_seed(b"\x06" * 32)
    target = crypto.hash32(key_pair.public_key)
    seen_by_server: list[tuple[bytes, Address, Address]] = []
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_dht_node(persistent()) as relay_node:
            async with open_dht_node(ephemeral(relay_node.address)) as server:

                async def on_handshake(message: PeerMessage) -> PeerReply:
                    seen_by_server.append((message.payload, message.peer_address, message.incoming.source))
                    return PeerReply(b"msg2:" + message.payload)

                server.add_server(key_pair, on_handshake, None)
                accepted = await server.announce(target, key_pair, commit_nodes=3)
                assert [r.address for r in accepted] == [relay_node.address]
                async with open_dht_node(ephemeral(relay_node.address)) as client:
                    found = await client.find_peer(key_pair.public_key)
                    assert [r.node for r in found] == [relay_node.address]
                    response, source = await client.request(
                        relay_node.address,
                        Command.PEER_HANDSHAKE,
                        target=target,
                        value=Handshake(HandshakeMode.FROM_CLIENT, b"msg1").encode(),
                    )
    assert source == relay_node.address
    reply = Handshake.decode(response.value)
    assert reply.mode == HandshakeMode.REPLY and reply.noise == b"msg2:msg1"
    assert reply.peer_address == server.address
    assert seen_by_server == [(b"msg1", client.address, relay_node.address)]



async def test_reachability_check_finds_a_loopback_node_reachable():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_dht_node(persistent()) as first:
            async with open_dht_node(ephemeral(first.address)) as node:
                assert not node.firewalled
                assert node.remote_address() == node.address
                assert node.id is None, "ephemeral: reachable but never persistent"


async def test_a_node_whose_server_socket_gets_no_answers_stays_firewalled(autojump_clock):
    """The only node it knows answers FIND_NODE but never PING_NAT (as if a firewall
    dropped the answer): the node keeps sending from its client socket."""
    bootstrap = await RawPeer().bind()
    sources: list[Address] = []

    async def answer_all_but_ping_nat() -> None:
        for _ in range(50):
            data, (host, port) = await bootstrap.sock.recvfrom(4096)
            request = Request.decode(data)
            sources.append(Address(host, port))
            if request.command != InternalCommand.PING_NAT:
                reply = Response(request.tid, Address(host, port))
                await bootstrap.send(reply.encode(), Address(host, port))

    with trio.fail_after(TEST_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_all_but_ping_nat)
            async with open_dht_node(ephemeral(bootstrap.address)) as node:
                assert node.firewalled
                assert node.remote_address() is None
                await node.ping(bootstrap.address)
            nursery.cancel_scope.cancel()
    assert sources and all(s.port != node.address.port for s in sources), "server socket stayed silent"


async def test_adaptive_node_turns_persistent_after_a_stable_period(autojump_clock):
    async with open_dht_node(persistent()) as first:
        config = NodeConfig(bootstrap=(first.address,), host=LOOPBACK, ephemeral=None)
        async with open_dht_node(config) as node:
            assert node.id is None and not node.firewalled
            await trio.sleep((DHT_STABLE_TICKS + 2) * DHT_TICK_S)
            assert node.id == crypto.node_id(node.address)
            # It now answers with its id, so other nodes add it to their tables.
            await node.ping(first.address)
            assert node.id in first.table


def _hostile_datagrams(rng: random.Random, to: Address, count: int) -> list[bytes]:
    """Well-framed requests with random commands, flags and bodies (so they reach the
    handlers), plus mutated and truncated copies of them."""
    modes = list(range(6))
    out = []
    for _ in range(count):
        internal = rng.random() < 0.4
        command = rng.randrange(6) if internal else rng.randrange(12)
        body_kind = rng.randrange(4)
        if body_kind == 0:
            value = rng.randbytes(rng.randrange(0, 80))
        elif body_kind == 1:
            address = Address("127.0.0.1", rng.randrange(1, 65536)) if rng.random() < 0.5 else None
            value = Handshake(rng.choice(modes), rng.randbytes(rng.randrange(0, 40)), address, address).encode()
        elif body_kind == 2:
            value = Holepunch(rng.choice(modes), rng.randrange(300), rng.randbytes(8)).encode()
        else:
            value = None
        request = Request(
            tid=rng.randrange(65536),
            to=to,
            command=command,
            internal=internal,
            id=rng.randbytes(32) if rng.random() < 0.2 else None,
            token=None,
            target=rng.randbytes(32) if rng.random() < 0.8 else None,
            value=value,
        )
        data = bytearray(request.encode())
        if rng.random() < 0.3:
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            del data[rng.randrange(1, len(data)) :]
        out.append(bytes(data))
    return out


async def test_hostile_datagrams_never_stop_the_node(autojump_clock):
    rng = random.Random(1234)
    async with open_dht_node(persistent()) as node:
        # Sources spread over 127.0.0.0/8 so the per-source limit does not hide anything.
        senders = [await RawPeer().bind(f"127.0.{i}.{i + 2}") for i in range(8)]
        for i, data in enumerate(_hostile_datagrams(rng, node.address, 800)):
            await senders[i % len(senders)].send(data, node.address)
            if i % 40 == 39:
                await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(30)  # let delayed pings and relays finish
        other = await RawPeer().bind("127.0.9.9")
        pong = await other.request(node.address, InternalCommand.PING, internal=True)
        assert pong.error == 0
        assert node.stats["requests_in_internal"] + node.stats["requests_in_external"] > 300
        assert node.stats["dropped_malformed"] > 0


async def test_a_server_handler_that_cannot_parse_a_value_does_not_stop_the_node():
    key_pair = crypto.KeyPair.from_seed(b"\x0d" * 32)

    async def strict_handler(message: PeerMessage) -> PeerReply | None:
        Handshake.decode(message.payload)  # raises CodecError on junk
        return None

    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_dht_node(persistent()) as node:
            target = node.add_server(key_pair, strict_handler, None)
            raw = await RawPeer().bind()
            junk_noise = Handshake(HandshakeMode.FROM_CLIENT, b"\xff").encode()
            junk = Request(1, node.address, Command.PEER_HANDSHAKE, target=target, value=junk_noise).encode()
            await raw.send(junk, node.address)
            pong = await raw.request(node.address, InternalCommand.PING, internal=True)
            assert pong.error == 0
            await trio.testing.wait_all_tasks_blocked()
            assert node.stats["dropped_by_handler"] == 1


async def test_client_handshake_direct_to_the_server_node_and_bad_replies_rejected():
    key_pair = crypto.KeyPair.from_seed(b"\x0e" * 32)

    async def echo(message: PeerMessage) -> PeerReply:
        return PeerReply(b"re:" + message.payload)

    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_dht_node(persistent()) as server:
            server.add_server(key_pair, echo, None)
            async with open_dht_node(ephemeral(server.address)) as client:
                # Straight to the server's own node: a plain REPLY, not relayed.
                reply = await client.peer_handshake(key_pair.public_key, b"hi", server.address)
                assert (reply.noise, reply.relayed, reply.server_address) == (b"re:hi", False, server.address)

                # A "relay" that answers with the wrong mode is refused.
                liar = await RawPeer().bind()

                async def lie() -> None:
                    data, (host, port) = await liar.sock.recvfrom(4096)
                    request = Request.decode(data)
                    wrong = Handshake(HandshakeMode.FROM_SERVER, b"x").encode()
                    await liar.send(Response(request.tid, Address(host, port), value=wrong).encode(), Address(host, port))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lie)
                    with pytest.raises(DHTError, match="bad handshake reply"):
                        await client.peer_handshake(key_pair.public_key, b"hi", liar.address)


async def test_tokens_expire_after_two_rotations(autojump_clock):
    async with open_dht_node(persistent()) as node:
        raw = await RawPeer().bind()
        target = b"\x07" * 32
        token = (await raw.request(node.address, Command.LOOKUP, target=target)).token
        await trio.sleep(crypto.TOKEN_ROTATE_INTERVAL_S + 1)
        still = await raw.request(node.address, Command.LOOKUP, target=target, token=token)
        assert still.error == 0
        await trio.sleep(crypto.TOKEN_ROTATE_INTERVAL_S + 1)
        expired = await raw.request(node.address, Command.LOOKUP, target=target, token=token)
        assert expired.error == RpcError.INVALID_TOKEN and expired.token != token


async def test_outbound_requests_are_paced_by_the_congestion_window(autojump_clock):
    silent = await RawPeer().bind()
    arrivals: list[float] = []

    async def count_arrivals() -> None:
        for _ in range(10_000):
            await silent.sock.recv(4096)
            arrivals.append(trio.current_time())

    async with open_dht_node(ephemeral()) as node:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_arrivals)
            start = trio.current_time()
            async with trio.open_nursery() as pings:
                for _ in range(200):
                    pings.start_soon(_expect_timeout, node, silent.address)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(arrivals) == 200 * (DHT_REQUEST_RETRIES + 1)
    first_bucket = [t for t in arrivals if t - start < DHT_CONGESTION_ROTATE_S]
    assert len(first_bucket) <= DHT_CONGESTION_WINDOW
    assert node.stats["congestion_waits"] > 0


async def _expect_timeout(node, address: Address) -> None:
    with pytest.raises(RequestTimeout):
        await node.ping(address)
