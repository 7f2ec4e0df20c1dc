"""Our UDX streams against Node's udx-native (tests/interop/udx_peer.js), on loopback,
directly and through a lossy proxy (so Node's SACK/retransmissions and ours meet)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest
import trio

from hypergate.udx import UdxSocket
from tests.interop.node_support import INTEROP_DIR, NODE_MODULES, require_node
from tests.unit.test_udx_socket import LossyProxy, bound_socket

PEER_SCRIPT = INTEROP_DIR / "udx_peer.js"
BULK = 8 << 20


def require_udx_native() -> str:
    node = require_node()
    if not (NODE_MODULES / "udx-native").is_dir():
        pytest.skip(f"npm package udx-native missing: run `npm install` in {INTEROP_DIR}")
    return node


class NodePeer:
    """udx_peer.js as a child process, spoken to in JSON lines."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = bytearray()

    async def line(self) -> dict:
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise AssertionError(f"udx_peer.js exited early (rc={self.process.returncode})")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        message = json.loads(line)
        if "error" in message:
            raise AssertionError(f"Node udx peer failed: {message['error']}")
        return message

    async def expect(self, key: str) -> dict:
        while True:
            message = await self.line()
            if key in message:
                return message

    async def tell(self, message: dict) -> None:
        await self.process.stdin.send_all(json.dumps(message).encode() + b"\n")


async def start_node(nursery, *args: str) -> NodePeer:
    node = require_udx_native()
    process = await nursery.start(
        lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
            [node, str(PEER_SCRIPT), *args],
            cwd=INTEROP_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
            task_status=task_status,
        )
    )
    return NodePeer(process)


async def receive_all(stream, digest) -> int:
    total = 0
    while True:
        data = await stream.receive_some()
        if not data:
            return total
        digest.update(data)
        total += len(data)


@pytest.mark.parametrize("lossy", [False, True], ids=["direct", "lossy-proxy"])
async def test_python_to_node_echo_8_mib_with_half_close(lossy):
    require_udx_native()
    payload = os.urandom(BULK)
    async with trio.open_nursery() as nursery:
        peer = await start_node(nursery, "echo")
        hello = await peer.line()
        udx = UdxSocket(await bound_socket())
        await nursery.start(udx.run)
        node_address = ("127.0.0.1", hello["port"])
        if lossy:
            proxy = LossyProxy(node_address, seed=5)
            node_address_for_python = await nursery.start(proxy.run)
            python_address_for_node = proxy.back.getsockname()
        else:
            node_address_for_python = node_address
            python_address_for_node = udx.local_address
        local_id = udx.new_stream_id()
        stream = udx.open_stream(local_id, hello["id"], node_address_for_python)
        await peer.tell({"port": python_address_for_node[1], "id": local_id})
        with trio.fail_after(120):
            await peer.expect("connected")
            echoed = hashlib.sha256()

            async def send():
                await stream.send_all(payload)
                await stream.send_eof()  # half-close: Node sees 'end' and ends its side

            nursery.start_soon(send)
            assert await receive_all(stream, echoed) == BULK
            assert echoed.hexdigest() == hashlib.sha256(payload).hexdigest()
            node_saw = await peer.expect("received_sha256")
            assert node_saw["received_bytes"] == BULK
            assert node_saw["received_sha256"] == hashlib.sha256(payload).hexdigest()
            await peer.expect("closed")  # Node closed cleanly: both ENDs acknowledged
            await stream.aclose()
        if lossy:
            assert proxy.dropped > 50
            assert stream.conn.stats["retransmits"] > 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("lossy", [False, True], ids=["direct", "lossy-proxy"])
async def test_node_to_python_bulk_then_reply_after_node_end(lossy):
    require_udx_native()
    reply = os.urandom(100_000)
    async with trio.open_nursery() as nursery:
        peer = await start_node(nursery, "send", str(BULK))
        hello = await peer.line()
        udx = UdxSocket(await bound_socket())
        await nursery.start(udx.run)
        if lossy:
            proxy = LossyProxy(udx.local_address, seed=9)
            await nursery.start(proxy.run)
            python_address_for_node = proxy.front.getsockname()
        else:
            python_address_for_node = udx.local_address
        local_id = udx.new_stream_id()
        # Server side: the first packet from Node (or the proxy) connects the stream.
        stream = udx.open_stream(local_id, hello["id"], None)
        await peer.tell({"port": python_address_for_node[1], "id": local_id})
        with trio.fail_after(120):
            got = hashlib.sha256()
            assert await receive_all(stream, got) == BULK  # Node's END arrived
            sent = await peer.expect("sent_sha256")
            assert got.hexdigest() == sent["sent_sha256"]
            expected_source = proxy.back.getsockname() if lossy else ("127.0.0.1", hello["port"])
            assert stream.remote_address == expected_source
            # The other direction is still open after Node's END.
            await stream.send_all(reply)
            await stream.send_eof()
            node_saw = await peer.expect("received_sha256")
            assert node_saw["received_sha256"] == hashlib.sha256(reply).hexdigest()
            await peer.expect("closed")
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_messages_and_destroy_with_node():
    require_udx_native()
    async with trio.open_nursery() as nursery:
        peer = await start_node(nursery, "echo")
        hello = await peer.line()
        udx = UdxSocket(await bound_socket())
        await nursery.start(udx.run)
        local_id = udx.new_stream_id()
        stream = udx.open_stream(local_id, hello["id"], ("127.0.0.1", hello["port"]))
        await peer.tell({"port": udx.local_address[1], "id": local_id})
        with trio.fail_after(30):
            await peer.expect("connected")
            await stream.send_all(b"x" * 5000)
            received = b""
            while len(received) < 5000:
                received += await stream.receive_some()
            for attempt in range(20):  # MESSAGE is unreliable: loopback rarely loses one
                stream.send_message(b"datagram %d" % attempt)
                with trio.move_on_after(0.5):
                    assert await stream.receive_message() == b"datagram %d" % attempt
                    break
            else:
                raise AssertionError("Node never echoed a MESSAGE")
            await trio.aclose_forcefully(stream)  # DESTROY: Node's stream errors (ECONNRESET)
            with pytest.raises(AssertionError, match="Node udx peer failed: connection reset by peer"):
                await peer.expect("closed")
        nursery.cancel_scope.cancel()


async def test_node_destroy_breaks_our_stream_with_the_reason():
    require_udx_native()
    async with trio.open_nursery() as nursery:
        peer = await start_node(nursery, "destroy")
        hello = await peer.line()
        udx = UdxSocket(await bound_socket())
        await nursery.start(udx.run)
        local_id = udx.new_stream_id()
        stream = udx.open_stream(local_id, hello["id"], ("127.0.0.1", hello["port"]))
        await peer.tell({"port": udx.local_address[1], "id": local_id})
        with trio.fail_after(30):
            await peer.expect("connected")
            await stream.send_all(b"goodbye")
            with pytest.raises(trio.BrokenResourceError, match=r"peer reset the stream \(DESTROY\)"):
                await stream.receive_some()
        nursery.cancel_scope.cancel()


async def test_node_respects_our_window_when_we_read_slowly():
    require_udx_native()
    size = 1 << 20
    async with trio.open_nursery() as nursery:
        peer = await start_node(nursery, "send", str(size))
        hello = await peer.line()
        udx = UdxSocket(await bound_socket())
        await nursery.start(udx.run)
        local_id = udx.new_stream_id()
        stream = udx.open_stream(local_id, hello["id"], None)
        window = 64 * 1024
        stream.conn.receive_buffer = stream.conn._rwnd_sent = window  # a small reader buffer
        await peer.tell({"port": udx.local_address[1], "id": local_id})
        with trio.fail_after(60):
            got = hashlib.sha256()
            total = 0
            most_buffered = 0
            while True:
                await trio.sleep(0.005)  # a slow reader
                most_buffered = max(most_buffered, stream.conn.readable_bytes)
                data = await stream.receive_some(16 * 1024)
                if not data:
                    break
                got.update(data)
                total += len(data)
            sent = await peer.expect("sent_sha256")
            assert total == size and got.hexdigest() == sent["sent_sha256"]
            assert most_buffered <= window + 2048  # Node kept within our rwnd
            assert stream.conn.stats["dropped_out_of_window"] == 0
            await stream.send_eof()
            await peer.expect("closed")
            await stream.aclose()
        nursery.cancel_scope.cancel()
