"""A gate's connections in one process, over real sockets: accepting (bursts, routine
accept errors, running out of descriptors) and the first record of each connection."""

from __future__ import annotations

import errno
import logging
import socket

import trio
import trio.testing

from hypergate.config import Service
from hypergate.mux.session import MuxSession
from hypergate.peer import PeerConnection
from hypergate.roles.gateway import Gateway
from hypergate.tcp_server import _accept_forever
from hypergate.wire.frames import FrameDecoder, FrameType
from hypergate.wire.messages import PROTOCOL_VERSION, Hello, RouteEntry, Routes

from ..mux_harness import echo_handler, socket_links
from ..procs import free_port


class FlakyListener(socket.socket):
    """A listening socket whose next accepts fail with the given errnos, in order."""

    def __init__(self, failures: list[int]) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.failures = failures
        self.bind(("127.0.0.1", 0))
        self.listen(16)
        self.setblocking(False)

    def accept(self):
        if self.failures:
            code = self.failures.pop(0)
            raise OSError(code, errno.errorcode[code])
        return super().accept()


async def test_a_burst_is_accepted_and_streams_left_open_are_closed(nursery):
    listener = FlakyListener([])
    port = listener.getsockname()[1]
    served = []

    async def handler(stream: trio.SocketStream) -> None:
        served.append(await stream.receive_some(10))  # and leave the stream open

    nursery.start_soon(_accept_forever, listener, handler, nursery)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    for number, client in enumerate(clients):
        client.sendall(b"client %d" % number)
    for client in clients:
        client.setblocking(False)
        sock = trio.socket.from_stdlib_socket(client)
        with trio.fail_after(10):
            assert await sock.recv(10) == b""  # closed once its handler returned
        sock.close()
    assert sorted(served) == [b"client %d" % n for n in range(5)]
    listener.close()


async def test_routine_errors_are_skipped_and_running_out_of_descriptors_pauses(
    nursery, autojump_clock, caplog
):
    listener = FlakyListener([errno.ECONNABORTED, errno.EMFILE, errno.EMFILE, errno.ENFILE])
    port = listener.getsockname()[1]
    served = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        await stream.send_all(b"served")
        served.set()

    caplog.set_level(logging.ERROR, logger="hypergate.tcp_server")
    started = trio.current_time()
    nursery.start_soon(_accept_forever, listener, handler, nursery)
    client = socket.create_connection(("127.0.0.1", port))
    with trio.fail_after(10):
        await served.wait()
    assert client.recv(10) == b"served"  # the connection waited in the backlog meanwhile
    assert trio.current_time() - started >= 0.3  # a pause after each of the three
    assert [r.getMessage() for r in caplog.records] == [  # the repeats are not logged
        "event=accept_failed error=EMFILE reason='Too many open files' pause_s=0.1 failures=1"
    ]
    client.close()
    listener.close()


async def test_client_bytes_waiting_at_accept_travel_in_the_opens_record(nursery):
    """A client that sends at once (most do): its request goes in the same record as the
    OPEN, so the provider is woken once, not twice; the reply comes back intact."""
    link_a, link_b = await socket_links()
    records: list[list[FrameType]] = []
    send_now = link_a.send_now

    def recording_send_now(plaintext):
        records.append([frame.type for frame in FrameDecoder().feed(bytes(plaintext))])
        return send_now(plaintext)

    link_a.send_now = recording_send_now
    a = MuxSession(link_a, on_channel=echo_handler, on_message=lambda m: None, name="a")
    b = MuxSession(link_b, on_channel=echo_handler, on_message=lambda m: None, name="b")
    await nursery.start(a.run)
    await nursery.start(b.run)
    gateway = Gateway("127.0.0.1")
    await nursery.start(gateway.run)
    provider = PeerConnection("127.0.0.1:1", initiator=True)
    provider.session = a
    provider.hello = Hello(type="hello", version=PROTOCOL_VERSION, provider=True)
    gate = free_port()
    service = Service(gatePort=gate, serviceHost="127.0.0.1", servicePort=1, protocol="tcp")
    gateway.on_message(provider, Routes(type="routes", routes=[RouteEntry(service=service)]))
    with trio.fail_after(10):
        while not gateway.open_gates:
            await gateway.gates_changed.wait()

    client = socket.create_connection(("127.0.0.1", gate))
    client.sendall(b"the request")  # before the gateway's accept task runs
    client.setblocking(False)
    sock = trio.socket.from_stdlib_socket(client)
    with sock, trio.fail_after(10):
        assert await sock.recv(100) == b"the request"
    opens = [record for record in records if FrameType.OPEN in record]
    assert opens == [[FrameType.OPEN, FrameType.DATA]]


async def test_provider_connects_to_ip_literals_and_names_and_reports_a_refusal():
    from hypergate.roles.provider import connect_tcp

    for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6), ("localhost", None)):
        family = family or socket.AF_INET
        listener = socket.create_server(("::1" if host == "::1" else "127.0.0.1", 0), family=family)
        port = listener.getsockname()[1]
        with trio.fail_after(10):
            stream = await connect_tcp(host, port)
        accepted, _ = listener.accept()
        await stream.send_all(b"ping")
        assert accepted.recv(4) == b"ping"
        assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await stream.aclose()
        accepted.close()
        listener.close()
    closed_port = free_port()
    try:
        await connect_tcp("127.0.0.1", closed_port)
    except OSError as exc:
        assert exc.errno == errno.ECONNREFUSED
        assert exc.strerror == "Connection refused"
    else:
        raise AssertionError("connected to a port nobody listens on")


async def test_a_service_that_does_not_answer_times_out(autojump_clock):
    from hypergate.roles.provider import connect_tcp

    # A listener whose accept queue is full drops further SYNs: the connect hangs.
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    started = trio.current_time()
    try:
        await connect_tcp("127.0.0.1", port, timeout=7)
    except trio.TooSlowError:
        assert trio.current_time() - started == 7
    else:
        raise AssertionError("connected to a listener with a full queue")
    for sock in [*fillers, listener]:
        sock.close()
