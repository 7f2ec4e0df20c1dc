"""The fast data path: records over real sockets (write-now, partial writes, exact reads),
zero-copy frame payloads and their memory bound, and the channel sink's ordering."""

import hashlib
import os
import socket

import trio
import trio.testing

from hypergate import limits
from hypergate.crypto.keys import LinkIdentity
from hypergate.crypto.records import MAX_PLAINTEXT, RecordOpener, RecordSealer
from hypergate.crypto.secure_link import establish_link
from hypergate.mux.session import MuxSession
from hypergate.wire.frames import FrameDecoder, FrameType, encode_frame
from hypergate.wire.messages import OpenRequest

from ..mux_harness import echo_handler, read_all, socket_links

KEY = bytes(range(32))
SIOCOUTQNSD = 0x894B  # (linux/sockios.h: bytes in a TCP send queue not yet sent)
REQ = OpenRequest(gatePort=80, protocol="tcp")


def test_sealed_records_open_in_order_and_the_buffer_is_reused():
    sealer, opener = RecordSealer(KEY), RecordOpener(KEY)
    first = bytes(sealer.seal_into(b"one"))
    second = sealer.seal_into(b"two")
    wire = first + bytes(second)
    assert opener.feed(wire) == [b"one", b"two"]
    assert sealer.seal(b"x" * MAX_PLAINTEXT)[:4] == (MAX_PLAINTEXT + 16).to_bytes(4, "big")


async def test_a_tcp_link_takes_a_whole_record_while_the_peer_is_not_reading():
    """A link's socket holds a record's worth of unsent bytes (TCP_NOTSENT_LOWAT): at
    trio's 16 KiB a 256 KiB record went out in pieces, each a writer wakeup."""
    a, _ = await socket_links(tcp=True)
    a.send_now(os.urandom(limits.MAX_FRAME_PAYLOAD))
    assert a.pending is None


async def test_records_cross_a_full_socket_intact():
    a, b = await socket_links(buffer=16 * 1024)
    assert a.can_send_now
    records = [os.urandom(n) for n in (1, 100, 70_000, MAX_PLAINTEXT, 5, 300_000)]
    received = []

    async def receive():
        while len(received) < len(records):
            received.extend(await b.receive_records())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        for record in records:
            await a.send_record(record)
    assert received == records
    assert a.pending is None


async def test_write_now_leaves_the_rest_pending_until_flushed():
    a, b = await socket_links(buffer=16 * 1024)
    payload = os.urandom(MAX_PLAINTEXT)
    a.send_now(payload)  # far more than the socket takes at once
    assert a.pending is not None and not a.can_send_now
    got = []

    async def receive():
        got.extend(await b.receive_records())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await a.flush()
    assert a.pending is None and a.can_send_now
    assert got == [payload]


async def test_sessions_over_sockets_carry_bulk_and_small_messages_intact(nursery):
    link_a, link_b = await socket_links(buffer=32 * 1024)
    a = MuxSession(link_a, on_channel=echo_handler, on_message=lambda m: None, name="a")
    b = MuxSession(link_b, on_channel=echo_handler, on_message=lambda m: None, name="b")
    await nursery.start(a.run)
    await nursery.start(b.run)

    async def transfer(chunks):
        channel = await a.open_channel(REQ)
        sent = hashlib.sha256()
        async with trio.open_nursery() as inner:
            async def send():
                for chunk in chunks:
                    sent.update(chunk)
                    await channel.send(chunk)
                await channel.send_eof()

            inner.start_soon(send)
            echoed = await read_all(channel)
        assert hashlib.sha256(echoed).digest() == sent.digest()

    async with trio.open_nursery() as group:
        group.start_soon(transfer, [os.urandom(1 << 20) for _ in range(4)])
        group.start_soon(transfer, [os.urandom(64) for _ in range(300)])
        group.start_soon(transfer, [bytearray(os.urandom(200_000))])  # mutable: copied
    assert not a.closed and not b.closed


def test_data_payloads_are_views_of_a_data_heavy_record():
    record = encode_frame(FrameType.DATA, 3, payload=b"x" * 5000) + encode_frame(FrameType.PING, 0, value=1)
    frames = FrameDecoder().feed(record)
    assert isinstance(frames[0].payload, memoryview) and frames[0].payload == b"x" * 5000


def test_a_record_mostly_of_control_frames_does_not_pin_it_through_a_view():
    pings = b"".join(encode_frame(FrameType.PING, 0, value=i) for i in range(1000))
    record = encode_frame(FrameType.DATA, 3, payload=b"y") + pings
    frames = FrameDecoder().feed(record)
    assert type(frames[0].payload) is bytes and frames[0].payload == b"y"
    assert len(frames) == 1001


async def test_sink_takes_data_in_order_and_leaves_the_rest_to_the_reader(nursery):
    taken = []
    capacity = {"n": 3}

    def sink(data):
        n = min(len(data), capacity["n"])
        taken.append(bytes(data[:n]))
        return n

    accepted = trio.Event()
    holder = {}

    async def server(channel):
        holder["channel"] = channel
        channel.sink = sink
        channel.accept()
        accepted.set()
        await trio.sleep_forever()

    link_a, link_b = await socket_links()
    a = MuxSession(link_a, on_channel=echo_handler, on_message=lambda m: None, name="a")
    b = MuxSession(link_b, on_channel=server, on_message=lambda m: None, name="b")
    await nursery.start(a.run)
    await nursery.start(b.run)
    channel = await a.open_channel(REQ)
    await accepted.wait()
    await channel.send(b"abcdef")  # the sink takes "abc"; "def" waits in the inbox
    await trio.testing.wait_all_tasks_blocked()
    await channel.send(b"ghi")  # the inbox is not empty: the sink must not jump ahead
    await trio.testing.wait_all_tasks_blocked()
    await channel.send_eof()
    rest = await read_all(holder["channel"])
    assert b"".join(taken) + rest == b"abcdefghi"
    assert taken == [b"abc"]


async def test_splice_passes_a_backlog_in_order_then_half_closes_both_ways(nursery):
    """A client that does not read while the peer sends: the sink fills the socket, the
    rest waits for the drain task, and every byte arrives once, in order, before EOF."""
    from hypergate.roles.forwarding import splice_tcp

    from ..mux_harness import linked_sessions

    client, local = trio.socket.socketpair()
    for sock in (client, local):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    payload = os.urandom(3_000_000)
    upload = os.urandom(200_000)
    received = {}

    async def remote(channel):
        channel.accept()
        await channel.send(payload)
        await channel.send_eof()
        received["upload"] = await read_all(channel)

    a, _ = await linked_sessions(nursery, on_channel_b=remote)
    channel = await a.open_channel(REQ)
    nursery.start_soon(splice_tcp, trio.SocketStream(local), channel)
    await trio.testing.wait_all_tasks_blocked()  # the socket is full, a backlog waits
    client_stream = trio.SocketStream(client)
    got = bytearray()
    while chunk := await client_stream.receive_some(65536):
        got += chunk
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    await client_stream.send_all(upload)
    await client_stream.send_eof()
    while "upload" not in received:
        await trio.testing.wait_all_tasks_blocked()
    assert received["upload"] == upload


async def test_a_fin_with_nothing_before_it_half_closes_and_the_other_way_stays_open(nursery):
    """The peer's FIN alone is passed on from the session's reader (no task started for
    it): the local end reads EOF at once, and can still send its whole answer."""
    from hypergate.roles.forwarding import splice_tcp

    from ..mux_harness import linked_sessions

    client, local = trio.socket.socketpair()
    answer = os.urandom(500_000)
    received = {}
    finished = trio.Event()

    async def remote(channel):
        channel.accept()
        await channel.send_eof()
        received["answer"] = await read_all(channel)
        finished.set()

    a, _ = await linked_sessions(nursery, on_channel_b=remote)
    channel = await a.open_channel(REQ)
    nursery.start_soon(splice_tcp, trio.SocketStream(local), channel)
    client_stream = trio.SocketStream(client)
    with trio.fail_after(10):
        assert await client_stream.receive_some(100) == b""
        await client_stream.send_all(answer)
        await client_stream.send_eof()
        await finished.wait()
    assert received["answer"] == answer


async def test_a_frame_from_the_peer_goes_into_a_local_socket_in_one_write(nursery):
    """The client's socket holds a frame's worth unsent (TCP_NOTSENT_LOWAT), so a bulk
    frame goes in whole from the session's reader even when the client is not reading;
    at trio's 16 KiB the rest went through a drain task in pieces."""
    import fcntl
    import termios

    from hypergate.roles.forwarding import splice_tcp

    from ..mux_harness import linked_sessions

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        local, _ = server.accept()
    payload = os.urandom(limits.MAX_FRAME_PAYLOAD)

    async def remote(channel):
        channel.accept()
        await channel.send(payload)
        await trio.sleep_forever()

    a, _ = await linked_sessions(nursery, on_channel_b=remote)
    channel = await a.open_channel(REQ)
    local.setblocking(False)
    nursery.start_soon(splice_tcp, trio.SocketStream(trio.socket.from_stdlib_socket(local)), channel)
    await trio.testing.wait_all_tasks_blocked()

    def queued(sock, request):
        return int.from_bytes(fcntl.ioctl(sock.fileno(), request, b"\0" * 4), "little")

    # What the kernel took: in the client's receive queue, plus what waits unsent.
    assert queued(client, termios.FIONREAD) + queued(local, SIOCOUTQNSD) == len(payload)
    client.close()


async def test_spliced_uploads_go_straight_into_records_and_wait_for_a_busy_link(nursery):
    """Pumps on a socket link read into the record buffer (never queue a data frame),
    wait while the link is busy, fall back to queued sends when the window is short, and
    every connection's bytes arrive intact, with a receiver that first reads nothing."""
    from hypergate.roles.forwarding import splice_tcp

    link_a, link_b = await socket_links(buffer=16 * 1024)
    received: dict[int, bytes] = {}
    reading = trio.Event()

    async def remote(channel):
        channel.accept()
        await reading.wait()  # windows fill up first: the pumps must wait for credit
        received[channel.id] = await read_all(channel)
        await channel.send_eof()

    a = MuxSession(link_a, on_channel=echo_handler, on_message=lambda m: None, name="a")
    b = MuxSession(link_b, on_channel=remote, on_message=lambda m: None, name="b")
    await nursery.start(a.run)
    await nursery.start(b.run)
    sent = {"direct": 0, "queued": 0}
    send_direct, queue_data = a.send_direct, a._queue_data

    def counting_send_direct(channel, fd, size):
        n = send_direct(channel, fd, size)
        sent["direct"] += n
        return n

    def counting_queue_data(channel, payload):
        sent["queued"] += len(payload)
        queue_data(channel, payload)

    a.send_direct, a._queue_data = counting_send_direct, counting_queue_data

    payloads = [os.urandom(size) for size in (1, 70_000, 1_500_000, 3_000_000)]
    clients = []
    ids = []
    for payload in payloads:
        client, local = trio.socket.socketpair()
        channel = await a.open_channel(REQ)
        ids.append(channel.id)
        nursery.start_soon(splice_tcp, trio.SocketStream(local), channel)
        clients.append(trio.SocketStream(client))

    async def upload(stream, payload):
        await stream.send_all(payload)
        await stream.send_eof()
        await read_all_stream(stream)

    with trio.fail_after(30):
        async with trio.open_nursery() as group:
            for stream, payload in zip(clients, payloads):
                group.start_soon(upload, stream, payload)
            await trio.testing.wait_all_tasks_blocked()
            reading.set()
    for channel_id, payload in zip(ids, payloads):
        assert hashlib.sha256(received[channel_id]).digest() == hashlib.sha256(payload).digest()
    total = sum(map(len, payloads))
    assert sent["direct"] + sent["queued"] == total
    # Both paths ran: straight into records while the link was free and the window
    # open, queued while the window was short (how much of each depends on timing).
    assert sent["direct"] > 0 and sent["queued"] > 0, sent
    assert not a.closed and not b.closed


async def read_all_stream(stream) -> bytes:
    out = bytearray()
    while chunk := await stream.receive_some(65536):
        out += chunk
    return bytes(out)


async def test_a_reset_ends_the_drain_task_before_the_splice_returns():
    """The drain task runs beside the connection's task (no nursery of its own), yet
    never outlives it: a reset while the drain is stuck on a client that does not read
    cancels it, the splice returns only after it ended, and the client gets an RST."""
    from hypergate.roles.forwarding import splice_tcp
    from hypergate.wire.messages import ResetCode

    from ..mux_harness import linked_sessions

    with socket.create_server(("127.0.0.1", 0)) as server:  # (TCP: an abort is an RST)
        client = socket.create_connection(server.getsockname())
        local, _ = server.accept()
    for sock in (client, local):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
    client, local = trio.socket.from_stdlib_socket(client), trio.socket.from_stdlib_socket(local)
    give_up = trio.Event()

    async def remote(channel):
        channel.accept()
        await channel.send(os.urandom(200_000))  # (within the window: never waits)
        await give_up.wait()
        channel.reset(ResetCode.CLOSED, "the service failed")

    spliced = trio.Event()
    async with trio.open_nursery() as sessions:
        a, _ = await linked_sessions(sessions, on_channel_b=remote)
        channel = await a.open_channel(REQ)

        async def connection():
            await splice_tcp(trio.SocketStream(local), channel)
            spliced.set()

        async with trio.open_nursery() as connections:
            connections.start_soon(connection)
            await trio.testing.wait_all_tasks_blocked()
            drains = [task for task in connections.child_tasks if task.name.endswith("run_drain")]
            assert len(drains) == 1  # the client reads nothing: a backlog waits
            give_up.set()
            with trio.fail_after(5):
                await spliced.wait()
            assert not connections.child_tasks  # the drain ended before the splice did
        sessions.cancel_scope.cancel()
    try:
        with trio.fail_after(5):
            while await client.recv(65536):
                pass
        raise AssertionError("the client saw a clean end of data")
    except ConnectionResetError:
        pass


async def test_a_provider_accepts_only_once_the_first_bytes_are_in_the_service_socket(nursery):
    """The bytes that came with the OPEN go to the service before the ACCEPT goes back,
    so the service works on the request while the ACCEPT travels."""
    from hypergate.roles.forwarding import splice_tcp

    from ..mux_harness import linked_sessions

    service, local = socket.socketpair()
    local.setblocking(False)
    waiting_at_accept = []

    async def provider(channel):
        accept = channel.accept

        def accept_and_look():
            waiting_at_accept.append(service.recv(100, socket.MSG_PEEK | socket.MSG_DONTWAIT))
            accept()

        await splice_tcp(
            trio.SocketStream(trio.socket.from_stdlib_socket(local)), channel, started=accept_and_look
        )

    a, _ = await linked_sessions(nursery, on_channel_b=provider)
    a.cork()
    try:
        channel = a.start_open(REQ)
        assert channel.try_send_whole(b"GET / HTTP/1.0\r\n\r\n")
    finally:
        a.uncork()
    with trio.fail_after(5):
        await a.wait_accepted(channel)
    assert waiting_at_accept == [b"GET / HTTP/1.0\r\n\r\n"]
