"""UDP hole punching on loopback with real DHT nodes: classification from PINGs sent on the
punch socket, the probe exchange, and the hand-over to UDX (no NAT here: the NAT cases are
in tests/netlab/test_hypergate_nat.py)."""

from __future__ import annotations

import trio

from hypergate.dht.encoding import Address
from hypergate.dht.node import NodeConfig, open_dht_node
from hypergate.transport.udp_punch import UdpPuncher, start_udx
from hypergate.wire.rendezvous import UdpPunchInfo

LOOPBACK = "127.0.0.1"


def persistent(*bootstrap: Address) -> NodeConfig:
    return NodeConfig(bootstrap=bootstrap, host=LOOPBACK, ephemeral=False)


async def test_punch_classify_probe_and_carry_a_udx_stream():
    with trio.fail_after(30):
        async with open_dht_node(persistent()) as first, open_dht_node(persistent(first.address)) as second, \
                open_dht_node(persistent(first.address)) as third, \
                open_dht_node(NodeConfig(bootstrap=(first.address,), host=LOOPBACK)) as peer:
            del second, third
            client, server = UdpPuncher(peer), UdpPuncher(peer)
            client_info = await client.prepare(2.0)
            server_info = await server.prepare(2.0)
            # Loopback: the DHT reaches us, so the sockets are OPEN, seen at their own port.
            assert client_info.firewall == server_info.firewall == "open"
            assert client_info.addresses == ((LOOPBACK, client.sock.getsockname()[1]),)
            assert client_info.stream_id != server_info.stream_id
            results = {}
            server_punched = trio.Event()

            async def run(name, puncher, theirs, initiator):
                results[name] = await puncher.punch(theirs, initiator=initiator, name=name)
                server_punched.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "server", server, client_info, False)
                client_done = await client.punch(server_info, initiator=True, name="client")
                assert client_done.remote == server_info.addresses[0]
                async with trio.open_nursery() as link:
                    stream = await start_udx(client_done, link, peer, client.stream_id, server_info.stream_id,
                                             initiator=True)
                    await stream.send_all(b"hello over udx")
                    await server_punched.wait()
                    punched = results["server"]
                    assert punched is not None and punched.early  # the server met our first UDX packet
                    theirs = await start_udx(punched, link, peer, server.stream_id, client.stream_id, initiator=False)
                    received = b""
                    while len(received) < len(b"hello over udx"):
                        received += await theirs.receive_some(100)
                    assert received == b"hello over udx"
                    await theirs.send_all(b"x" * 200_000)
                    got = 0
                    while got < 200_000:
                        got += len(await stream.receive_some(65536))
                    link.cancel_scope.cancel()
            client.close()
            server.close()


async def test_a_peer_that_never_answers_is_given_up_within_the_punch_timeout(autojump_clock):
    async with open_dht_node(persistent()) as first, open_dht_node(persistent(first.address)) as second, \
            open_dht_node(persistent(first.address)) as third, \
            open_dht_node(NodeConfig(bootstrap=(first.address,), host=LOOPBACK)) as peer:
        del second, third
        puncher = UdpPuncher(peer)
        assert await puncher.prepare(2.0) is not None
        silent = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await silent.bind((LOOPBACK, 0))
        theirs = UdpPunchInfo("consistent", ((LOOPBACK, silent.getsockname()[1]),), 5)
        start = trio.current_time()
        assert await puncher.punch(theirs, initiator=True) is None
        assert trio.current_time() - start < 10
        silent.close()
        puncher.close()
