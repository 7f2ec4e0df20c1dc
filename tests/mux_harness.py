"""Peer links for tests: real handshake and mux, in memory (no sockets, MockClock-friendly)
or over a real socket pair."""

from __future__ import annotations

import socket

import trio
import trio.testing

from hypergate.crypto.keys import LinkIdentity, RouterKeys
from hypergate.crypto.secure_link import establish_link
from hypergate.mux.session import MuxSession

KEYS = RouterKeys.from_secret(bytes.fromhex("42" * 32))


async def linked_links():
    left, right = trio.testing.memory_stream_pair()
    links = {}

    async def side(name, stream, initiator):
        links[name] = await establish_link(
            stream, initiator=initiator, identity=LinkIdentity.generate(), router=KEYS
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", left, True)
        nursery.start_soon(side, "b", right, False)
    return links["a"], links["b"]


async def refuse(channel):
    channel.reset("refused", "test default")


async def linked_sessions(nursery, on_channel_a=refuse, on_channel_b=refuse, on_message_a=None, on_message_b=None):
    link_a, link_b = await linked_links()
    a = MuxSession(link_a, on_channel=on_channel_a, on_message=on_message_a or (lambda m: None), name="a")
    b = MuxSession(link_b, on_channel=on_channel_b, on_message=on_message_b or (lambda m: None), name="b")
    await nursery.start(a.run)
    await nursery.start(b.run)
    return a, b


async def read_all(channel) -> bytes:
    parts = []
    while True:
        data = await channel.receive()
        if not data:
            return b"".join(parts)
        parts.append(data)


async def echo_handler(channel):
    channel.accept()
    while True:
        data = await channel.receive()
        if not data:
            await channel.send_eof()
            return
        await channel.send(data)


async def socket_links(buffer: int | None = None, tcp: bool = False):
    """Two linked SecureLinks over a real socket pair (small kernel buffers on request,
    so writes come back partial and the write-later path runs), or over TCP on
    loopback, as peer links are."""
    if tcp:
        with socket.create_server(("127.0.0.1", 0)) as server:
            dialled = socket.create_connection(server.getsockname())
            accepted, _ = server.accept()
        left, right = (trio.socket.from_stdlib_socket(s) for s in (dialled, accepted))
    else:
        left, right = trio.socket.socketpair()
    if buffer:
        for sock in (left, right):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    links = {}

    async def side(name, sock, initiator):
        links[name] = await establish_link(
            trio.SocketStream(sock), initiator=initiator, identity=LinkIdentity.generate(), router=KEYS
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", left, True)
        nursery.start_soon(side, "b", right, False)
    return links["a"], links["b"]
