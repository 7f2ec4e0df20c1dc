"""Our hyperdht client (hypergate.hyperswarm) against a real Node hyperdht server.

A local Node testnet (testnet.js) on 127.0.0.1, a Node server (hyperdht_echo_server.js)
announced on it, and our DHT node joining it as a client. Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from functools import partial

import pytest
import trio

from hypergate.dht.crypto import KeyPair
from hypergate.dht.messages import Firewall
from hypergate.dht.node import DHTNode, NodeConfig, open_dht_node
from hypergate.hyperswarm.connect import HyperswarmConnectError, connect
from hypergate.hyperswarm.punch import Puncher
from tests.interop.node_support import INTEROP_DIR, require_node
from tests.interop.test_dht_node_interop import NodeTestnet

pytestmark = pytest.mark.interop

SERVER_SCRIPT = INTEROP_DIR / "hyperdht_echo_server.js"
# Loopback: the testnet starts in ~1 s, a server announces in ~1 s, a connect takes
# a few round trips; generous bounds that still end a hung test.
START_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 20
BULK = 1 << 20
# A server that is gone: 3 relays x 4 sends x 1 s of DHT request timeout, plus the walk.
GONE_TIMEOUT_S = 30


class LineReader:
    def __init__(self, stream) -> None:
        self._stream = stream
        self._buffer = b""

    async def line(self) -> dict:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise RuntimeError("the Node process exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"Node process failed: {message['error']}")
        return message


async def _start(nursery, args):
    return await nursery.start(
        lambda task_status: trio.run_process(
            args, cwd=INTEROP_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False, task_status=task_status
        )
    )


async def _stop(process) -> None:
    with trio.move_on_after(5):
        await process.stdin.aclose()
        await process.wait()
    if process.returncode is None:
        process.kill()


@pytest.fixture
async def testnet():
    node = require_node()
    async with trio.open_nursery() as nursery:
        process = await _start(nursery, [node, str(INTEROP_DIR / "testnet.js"), "5"])
        net = NodeTestnet(process)
        try:
            await net.start()
            yield net
        finally:
            await _stop(process)


class NodeServer:
    def __init__(self, process) -> None:
        self.process = process
        self.reader = LineReader(process.stdout)
        self.public_key = b""

    async def start(self) -> None:
        with trio.fail_after(START_TIMEOUT_S):
            ready = await self.reader.line()
        self.public_key = bytes.fromhex(ready["publicKey"])


async def start_server(nursery, net: NodeTestnet, mode: str = "echo") -> NodeServer:
    bootstrap = net.bootstrap[0]
    process = await _start(nursery, [require_node(), str(SERVER_SCRIPT), f"{bootstrap.host}:{bootstrap.port}", mode])
    server = NodeServer(process)
    await server.start()
    return server


def client_config(net: NodeTestnet) -> NodeConfig:
    return NodeConfig(bootstrap=net.bootstrap, host="127.0.0.1")


async def test_connect_echoes_one_mebibyte(testnet):
    data = os.urandom(BULK)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, testnet)
        try:
            async with open_dht_node(client_config(testnet)) as node:
                key_pair = KeyPair.generate()
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    conn = await connect(node, server.public_key, key_pair)
                info = conn.info
                # The Node server answers through its relay from its punch socket; on
                # loopback our UDX stream reaches that socket without hole punching.
                assert info.relayed and info.server_address.host == "127.0.0.1"
                assert info.remote_public_key == server.public_key
                announced = await server.reader.line()
                assert announced == {"event": "connection", "remotePublicKey": key_pair.public_key.hex()}
                digest = hashlib.sha256()
                received = 0

                async def sender():
                    for i in range(0, BULK, 50_000):
                        await conn.send_all(data[i : i + 50_000])
                    await conn.send_eof()

                with trio.fail_after(CONNECT_TIMEOUT_S):
                    async with trio.open_nursery() as inner:
                        inner.start_soon(sender)
                        while True:
                            chunk = await conn.receive_some()
                            if not chunk:
                                break
                            digest.update(chunk)
                            received += len(chunk)
                    ended = await server.reader.line()
                assert ended == {"event": "end", "received": BULK}
                assert received == BULK
                assert digest.digest() == hashlib.sha256(data).digest()
                await conn.aclose()
        finally:
            await _stop(server.process)


async def test_unknown_key_fails_clearly(testnet):
    async with open_dht_node(client_config(testnet)) as node:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            with pytest.raises(HyperswarmConnectError, match="is not announced on the DHT"):
                await connect(node, KeyPair.generate().public_key)


async def test_server_gone_fails_clearly(testnet):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, testnet)
        server.process.kill()  # no unannounce: the records stay on the testnet
        await server.process.wait()
        async with open_dht_node(client_config(testnet)) as node:
            start = trio.current_time()
            with trio.fail_after(GONE_TIMEOUT_S):
                with pytest.raises(HyperswarmConnectError, match="no handshake reply from the server"):
                    await connect(node, server.public_key)
            assert trio.current_time() - start < GONE_TIMEOUT_S


async def _echo_service(stream: trio.SocketStream) -> None:
    """The TCP service behind the Node server: echoes, answers EOF with EOF."""
    async with stream:
        async for data in stream:
            await stream.send_all(data)
        await stream.send_eof()


async def _exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        reply = bytearray()

        async def send():
            await stream.send_all(data)
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            async for chunk in stream:
                reply += chunk
    return bytes(reply)


async def test_tele_command_reaches_a_tcp_service_behind_the_node_server(testnet, cluster):
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _echo_service, 0, host="127.0.0.1"))
        service_port = listeners[0].socket.getsockname()[1]
        server = await start_server(nursery, testnet, f"pipe:{service_port}")
        try:
            bootstrap = testnet.bootstrap[0]
            tele = await cluster.start(
                "tele", "--connect", server.public_key.hex(), "--listen", "127.0.0.1:0",
                "--bootstrap", f"{bootstrap.host}:{bootstrap.port}", name="tele",
            )
            line = await tele.wait_for(r"event=tele_listening listen=127\.0\.0\.1:\d+", timeout=START_TIMEOUT_S)
            port = int(line.split("listen=127.0.0.1:")[1].split()[0])
            payloads = [os.urandom(256 * 1024), b"hello through hyperswarm\n"]
            with trio.fail_after(CONNECT_TIMEOUT_S):
                replies = [None, None]

                async def one(i):
                    replies[i] = await _exchange(port, payloads[i])

                async with trio.open_nursery() as clients:  # two TCP streams, two connections
                    clients.start_soon(one, 0)
                    clients.start_soon(one, 1)
            assert [hashlib.sha256(r).hexdigest() for r in replies] == [hashlib.sha256(p).hexdigest() for p in payloads]
            await tele.wait_for("event=tele_connected", count=2)
            await tele.wait_for(r"event=tele_closed .*bytes_up=262144 bytes_down=262144 .*failure=-")
        finally:
            await _stop(server.process)
            nursery.cancel_scope.cancel()


async def test_tele_command_resets_the_client_when_the_key_is_unknown(testnet, cluster):
    bootstrap = testnet.bootstrap[0]
    tele = await cluster.start(
        "tele", "--connect", KeyPair.generate().public_key.hex(), "--listen", "127.0.0.1:0",
        "--bootstrap", f"{bootstrap.host}:{bootstrap.port}", name="tele",
    )
    line = await tele.wait_for(r"event=tele_listening listen=127\.0\.0\.1:\d+", timeout=START_TIMEOUT_S)
    port = int(line.split("listen=127.0.0.1:")[1].split()[0])
    with trio.fail_after(CONNECT_TIMEOUT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()  # RST, not a clean EOF
    await tele.wait_for("event=tele_connect_failed .*is not announced on the DHT")


async def _http_service(stream: trio.SocketStream) -> None:
    """A tiny HTTP responder: one request, one fixed answer, close."""
    async with stream:
        request = b""
        async for chunk in stream:
            request += chunk
            if b"\r\n\r\n" in request:
                break
        body = b"hello from behind hypertele-server\n"
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )


async def test_tele_command_with_curl_through_the_real_hypertele_server(testnet, cluster):
    server_bin = INTEROP_DIR / "node_modules" / "hypertele" / "server.js"
    if not server_bin.is_file():
        pytest.skip(f"npm package hypertele missing: run `npm install` in {INTEROP_DIR}")
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _http_service, 0, host="127.0.0.1"))
        service_port = listeners[0].socket.getsockname()[1]
        bootstrap = testnet.bootstrap[0]
        # hypertele-server's --bootstrap (its test option) takes a port on 127.0.0.1.
        seed = os.urandom(32).hex()
        process = await _start(
            nursery,
            [require_node(), str(server_bin), "-l", str(service_port), "--seed", seed, "--bootstrap", str(bootstrap.port)],
        )
        try:
            with trio.fail_after(START_TIMEOUT_S):
                buffer = b""
                while b"\n" not in buffer:
                    chunk = await process.stdout.receive_some(4096)
                    assert chunk, "hypertele-server exited"
                    buffer += chunk
            public_key = buffer.split(b"hypertele:")[1].split()[0].decode()
            tele = await cluster.start(
                "tele", "--connect", public_key, "--listen", "127.0.0.1:0",
                "--bootstrap", f"{bootstrap.host}:{bootstrap.port}", name="tele",
            )
            line = await tele.wait_for(r"event=tele_listening listen=127\.0\.0\.1:\d+", timeout=START_TIMEOUT_S)
            port = int(line.split("listen=127.0.0.1:")[1].split()[0])
            with trio.fail_after(CONNECT_TIMEOUT_S):
                result = await trio.run_process(
                    [curl, "-sS", "--max-time", "15", f"http://127.0.0.1:{port}/"], capture_stdout=True, check=False
                )
            assert result.returncode == 0
            assert result.stdout == b"hello from behind hypertele-server\n"
            await tele.wait_for("event=tele_connected")
        finally:
            process.terminate()
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
            nursery.cancel_scope.cancel()


async def _echo_once(conn, message: bytes) -> bytes:
    await conn.send_all(message)
    await conn.send_eof()
    reply = b""
    while True:
        chunk = await conn.receive_some()
        if not chunk:
            return reply
        reply += chunk


@pytest.mark.parametrize("server_fast_mode", [True, False])
async def test_hole_punch_rounds_with_the_node_server(testnet, monkeypatch, server_fast_mode):
    """On loopback our TTL-5 probe would reach the server, which answers it: that alone
    opens the path. Drop it, as a real network does, so the PEER_HOLEPUNCH rounds must
    open it. Without fast mode, also ignore the server's probes until our punch round
    is answered: then the server's own punching (and ours) must meet."""
    exchanges = []
    original_exchange = DHTNode.peer_holepunch
    original_probe = Puncher.send_probe
    original_datagram = Puncher.on_datagram

    async def peer_holepunch(self, *args, **kwargs):
        exchanges.append(args)  # counted when sent: fast mode may open the path before the reply
        return await original_exchange(self, *args, **kwargs)

    async def send_probe(self, address, ttl=None):
        if ttl is None:  # TTL-limited probes die on the way
            await original_probe(self, address)

    def on_datagram(self, data, source):
        if len(data) == 1 and not server_fast_mode and len(exchanges) < 2:
            return  # lost until our punch round is on its way (the server's fast-mode probe)
        original_datagram(self, data, source)

    monkeypatch.setattr(DHTNode, "peer_holepunch", peer_holepunch)
    monkeypatch.setattr(Puncher, "send_probe", send_probe)
    monkeypatch.setattr(Puncher, "on_datagram", on_datagram)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, testnet, "echo+nat")
        try:
            async with open_dht_node(client_config(testnet)) as node:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    conn = await connect(node, server.public_key)
                    assert conn.info.punched
                    assert len(exchanges) >= (1 if server_fast_mode else 2)
                    assert await _echo_once(conn, b"punched through") == b"punched through"
                await conn.aclose()
        finally:
            await _stop(server.process)


async def test_without_hole_punching_the_seen_address_is_tried(testnet):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, testnet, "echo+nat")
        try:
            async with open_dht_node(client_config(testnet)) as node:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    conn = await connect(node, server.public_key, holepunch=False)
                    assert not conn.info.punched
                    assert await _echo_once(conn, b"direct") == b"direct"
                await conn.aclose()
        finally:
            await _stop(server.process)


async def test_idle_connection_keeps_alive_both_ways(testnet):
    """hyperdht sends an empty frame after 5 s of silence (its timer may take up to
    twice that), and so do we; both are swallowed, and the connection still carries
    data afterwards."""
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, testnet)
        try:
            async with open_dht_node(client_config(testnet)) as node:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    conn = await connect(node, server.public_key)
                received = []
                async with trio.open_nursery() as inner:

                    async def reader():
                        while chunk := await conn.receive_some():
                            received.append(chunk)

                    inner.start_soon(reader)
                    with trio.fail_after(CONNECT_TIMEOUT_S):
                        while conn.secret.keepalives_received < 1 or conn.keepalives_sent < 1:
                            await trio.sleep(0.1)
                        await conn.send_all(b"still there")
                        await conn.send_eof()
                assert b"".join(received) == b"still there"
                await conn.aclose()
        finally:
            await _stop(server.process)


async def test_failed_hole_punch_falls_back_to_the_seen_address(testnet, monkeypatch):
    async def classify(self):
        return Firewall.RANDOM, ()  # as if our NAT randomized ports: not implemented

    monkeypatch.setattr(Puncher, "classify", classify)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, testnet, "echo+nat")
        try:
            async with open_dht_node(client_config(testnet)) as node:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    conn = await connect(node, server.public_key)
                    assert not conn.info.punched and conn.info.holepunch_relays > 0
                    assert await _echo_once(conn, b"fallback") == b"fallback"
                await conn.aclose()
        finally:
            await _stop(server.process)
