"""Real servers behind the provider in integration tests (trio sockets on loopback)."""

from __future__ import annotations

import hashlib
import socket

import trio


async def tcp_echo_server(host="127.0.0.1", *, task_status=trio.TASK_STATUS_IGNORED, received_hashes=None):
    """Echoes every connection until EOF, then half-closes. Records SHA-256 of what came."""

    async def handle(stream):
        digest = hashlib.sha256()
        async with stream:
            while True:
                data = await stream.receive_some(256 * 1024)
                if not data:
                    break
                digest.update(data)
                await stream.send_all(data)
            if received_hashes is not None:
                received_hashes.append(digest.hexdigest())
            await stream.send_eof()

    listeners = await trio.open_tcp_listeners(0, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def tcp_named_server(name: bytes, *, task_status=trio.TASK_STATUS_IGNORED):
    """Answers every connection with its name and closes."""

    async def handle(stream):
        async with stream:
            await stream.send_all(name)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def request_then_reply_server(*, task_status=trio.TASK_STATUS_IGNORED):
    """Reads the whole request (until the client half-closes), then answers with a big reply."""

    async def handle(stream):
        async with stream:
            request = b""
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                request += data
            reply = hashlib.sha256(request).hexdigest().encode() * 50_000  # ~3.2 MB
            await stream.send_all(reply)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def udp_echo_server(host="127.0.0.1", *, task_status=trio.TASK_STATUS_IGNORED):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        await sock.bind((host, 0))
        task_status.started(sock.getsockname()[1])
        while True:
            data, addr = await sock.recvfrom(65535)
            await sock.sendto(b"echo:" + data, addr)


async def read_all(stream) -> bytes:
    parts = []
    while True:
        data = await stream.receive_some(256 * 1024)
        if not data:
            return b"".join(parts)
        parts.append(data)
