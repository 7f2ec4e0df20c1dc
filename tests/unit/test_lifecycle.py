"""Nothing outlives its owner: sockets and tasks end with the node; UDP flows expire."""

import os

import trio
import trio.testing

from hypergate import limits
from hypergate.app import Node, NodeConfig
from hypergate.config import Service
from hypergate.roles.forwarding import IdleTimer, channel_datagrams
from hypergate.router import PeerAddress
from hypergate.wire.messages import OpenRequest

from ..mux_harness import linked_sessions
from ..procs import free_port

SECRET = bytes.fromhex("23" * 32)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def echo_server(task_status=trio.TASK_STATUS_IGNORED):
    async def handle(stream):
        async with stream:
            async for data in stream:
                await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_stopping_nodes_closes_every_socket_and_task():
    before_fds = open_fds()
    gate = free_port()
    async with trio.open_nursery() as outer:
        backend = await outer.start(echo_server)
        async with trio.open_nursery() as nodes:
            provider = Node.build(NodeConfig(
                router_secret=SECRET, services=(Service(gate, "127.0.0.1", backend),),
                peer_host="127.0.0.1", peer_port=0,
            ))
            await nodes.start(provider.run)
            gateway = Node.build(NodeConfig(
                router_secret=SECRET, gateway=True,
                peers=(PeerAddress("127.0.0.1", provider.router.listening_port),),
            ))
            await nodes.start(gateway.run)
            with trio.fail_after(10):
                while not gateway.gateway.open_gates:
                    await gateway.gateway.gates_changed.wait()
            clients = []
            for _ in range(20):  # open connections, left open on purpose
                stream = await trio.open_tcp_stream("127.0.0.1", gate)
                await stream.send_all(b"x")
                assert await stream.receive_some(1) == b"x"
                clients.append(stream)
            assert open_fds() > before_fds + 40
            nodes.cancel_scope.cancel()
        for stream in clients:
            with trio.fail_after(5):
                try:
                    assert await stream.receive_some(1) == b""  # the tunnel side is gone
                except trio.BrokenResourceError:
                    pass  # reset: also gone
            await stream.aclose()
        outer.cancel_scope.cancel()
    assert open_fds() == before_fds


async def test_idle_udp_flow_expires_and_an_active_one_does_not(nursery, autojump_clock):
    async def hold(channel):
        channel.accept()
        await trio.sleep_forever()

    a, _ = await linked_sessions(nursery, on_channel_b=hold)
    idle_channel = await a.open_channel(OpenRequest(gatePort=53, protocol="udp"))
    start = trio.current_time()
    await channel_datagrams(idle_channel, IdleTimer(), deliver=None)
    assert trio.current_time() - start == limits.UDP_IDLE_TIMEOUT_S
    assert idle_channel.reset_reason is not None and "idle" in idle_channel.reset_reason.message

    busy_channel = await a.open_channel(OpenRequest(gatePort=53, protocol="udp"))
    timer = IdleTimer()

    async def keep_busy():
        for _ in range(10):  # a datagram from the client every half timeout
            await trio.sleep(limits.UDP_IDLE_TIMEOUT_S / 2)  # virtual time: autojump MockClock
            timer.touch()

    nursery.start_soon(keep_busy)
    start = trio.current_time()
    await channel_datagrams(busy_channel, timer, deliver=None)
    assert trio.current_time() - start >= 5 * limits.UDP_IDLE_TIMEOUT_S
