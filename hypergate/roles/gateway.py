"""Gateway: exposes the gates providers advertise and forwards each client over a channel.

One listener per gate (gatePort, protocol) on --listen, opened when the first provider
advertises it and closed when none is left. Each new client goes to the next provider in
round-robin order; if that provider cannot reach its service, the next one is tried at
once, and the client is turned away only when none can serve it.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import trio

from .. import limits
from ..http.fingerprint_resolver import make_fingerprint
from ..mux.channel import Channel, ChannelReset
from ..peer import REPLACED_LINK, PeerConnection
from ..policy.token_bucket import ChannelShaper
from ..tcp_server import serve_tcp
from ..wire.messages import RETRYABLE_CODES, Message, OpenRequest, ResetCode, Routes
from .admission import Admission, GatewayRoute, parse_routes
from .forwarding import IdleTimer, abort_socket, channel_datagrams, splice_tcp
from .routes import ExposurePolicy, GateKey, RouteTable

log = logging.getLogger(__name__)



# (client ip, gate, the route chosen) -> Admission.
AdmissionCheck = Callable[[str, GateKey, GatewayRoute], Admission]


def admit_everyone(client_ip: str, key: GateKey, route: GatewayRoute) -> Admission:
    return Admission()


class Gateway:
    def __init__(
        self,
        listen_host: str = "127.0.0.1",
        exposure: ExposurePolicy = ExposurePolicy(),
        admission: AdmissionCheck = admit_everyone,
    ) -> None:
        self.listen_host = listen_host
        self.routes: RouteTable[PeerConnection] = RouteTable(exposure)
        self.admission = admission
        self._gate_scopes: dict[GateKey, trio.CancelScope] = {}
        self.open_gates: dict[GateKey, int] = {}  # gate -> bound port, once listening
        self.gates_changed = trio.Event()
        self._routes_changed = trio.Event()  # set (and replaced) on every route change
        # Called after every change of the route table (Docker mode keeps helpers in step).
        self.route_listeners: list[Callable[[], None]] = []
        self._nursery: trio.Nursery | None = None
        self.datagrams_dropped = 0

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._expire_routes)
            task_status.started()

    async def _expire_routes(self) -> None:
        while True:
            await trio.sleep(limits.ROUTE_EXPIRY_S / 4)
            for peer in self.routes.expire(trio.current_time()):
                log.warning("peer=%s event=routes_expired", peer.name)
            self._sync_gates()

    # --- peer hooks -----------------------------------------------------------------

    def peer_ready(self, peer: PeerConnection) -> None:
        pass  # routes arrive in the provider's first message

    def peer_lost(self, peer: PeerConnection) -> None:
        if peer.close_reason == REPLACED_LINK and self._nursery is not None:
            # Its replacement is up already and sends its routes first thing: closing
            # the gates now would turn away (and cancel) the clients of the next moment.
            self._nursery.start_soon(self._forget_replaced_link, peer)
            return
        self.routes.remove_peer(peer)
        self._sync_gates()

    async def _forget_replaced_link(self, peer: PeerConnection) -> None:
        await trio.sleep(limits.REPLACED_LINK_ROUTES_GRACE_S)
        self.routes.remove_peer(peer)
        self._sync_gates()

    def on_message(self, peer: PeerConnection, message: Message) -> None:
        if isinstance(message, Routes) and peer.is_provider:
            routes = parse_routes(message.routes, peer.name)
            before = self.routes.routes_of(peer)
            self.routes.replace(peer, routes, trio.current_time(), limits.ROUTE_EXPIRY_S)
            after = self.routes.routes_of(peer)
            if after != before:
                log.info(
                    "peer=%s event=routes_updated gates=%s",
                    peer.name, ",".join(str(key) for key in sorted(after)) or "-",
                )
            self._sync_gates()

    async def handle_channel(self, peer: PeerConnection, channel: Channel) -> None:
        channel.reset(ResetCode.REFUSED, "gateways do not accept channels")

    # --- gates ----------------------------------------------------------------------

    def _sync_gates(self) -> None:
        self._routes_changed.set()
        self._routes_changed = trio.Event()
        for listener in self.route_listeners:
            listener()
        if self._nursery is None:
            return
        wanted = self.routes.gates()
        for key in list(self._gate_scopes):
            if key not in wanted:
                self._gate_scopes.pop(key).cancel()
        for key in sorted(wanted - set(self._gate_scopes)):
            scope = trio.CancelScope()
            self._gate_scopes[key] = scope
            self._nursery.start_soon(self._run_gate, key, scope)

    async def _run_gate(self, key: GateKey, scope: trio.CancelScope) -> None:
        with scope:
            try:
                retry_s = limits.GATE_RETRY_MIN_S
                while True:
                    try:
                        if key.protocol == "udp":
                            await self._serve_udp_gate(key)
                        else:
                            await self._serve_tcp_gate(key)
                    except OSError as exc:
                        log.error(
                            "gate=%s event=gate_listen_failed host=%s error=%r retry_in=%gs",
                            key, self.listen_host, exc.strerror or str(exc), retry_s,
                        )
                    await trio.sleep(retry_s)
                    retry_s = min(retry_s * 2, limits.GATE_RETRY_MAX_S)
            finally:
                if self.open_gates.pop(key, None) is not None:
                    log.info("gate=%s event=gate_closed", key)
                    self._signal_gates_changed()

    def _gate_opened(self, key: GateKey, port: int) -> None:
        self.open_gates[key] = port
        log.info("gate=%s event=gate_open host=%s port=%d", key, self.listen_host, port)
        self._signal_gates_changed()

    def _signal_gates_changed(self) -> None:
        self.gates_changed.set()
        self.gates_changed = trio.Event()

    async def _open_channel(
        self, key: GateKey, client_ip: str, client_port: int, local: tuple,
        stream: trio.SocketStream | None = None,
    ) -> tuple[Channel, Admission, ChannelShaper] | None:
        """Try the gate's providers in round-robin order; None when none can serve.

        With a TCP client's `stream`, its first bytes go right behind the OPEN instead of
        after the provider's ACCEPT (one round trip less per connection): in the OPEN's
        own record when they are there already, else as soon as they come while the
        OPEN is in flight; and again to the next provider if this one refuses."""
        deadline = trio.current_time() + limits.OPEN_TOTAL_TIMEOUT_S
        early: bytes | None = None
        while True:
            routes_changed = self._routes_changed
            for peer, route in self.routes.rotation(key):
                session = peer.session
                if session is None or not session.usable:
                    continue
                admission = self.admission(client_ip, key, route)
                if not admission.allowed:
                    log.info(
                        "gate=%s client=%s:%d event=client_denied reason=%r",
                        key, client_ip, client_port, admission.reason,
                    )
                    return None
                shaper = ChannelShaper.from_limit(admission.bandwidth)
                request = OpenRequest(
                    gatePort=key.port,
                    protocol=key.protocol,
                    fingerprint=make_fingerprint(
                        protocol=key.protocol,
                        gate_port=key.port,
                        channel_port=session.next_channel_id,
                        client=(client_ip, client_port),
                        gateway=(local[0], local[1]),
                        labels=admission.labels,
                    ),
                )
                now = trio.current_time()
                if deadline - now <= 0:
                    break
                answer_by = now + min(limits.OPEN_TIMEOUT_S, deadline - now)
                try:
                    if stream is not None and early is None and not shaper.client_to_service.limited:
                        # Usually the client's request is there already: it goes in the
                        # OPEN's record (one write and one wakeup of the provider, not two).
                        early = _bytes_waiting(stream.socket, limits.EARLY_DATA_MAX)
                    session.cork()
                    try:
                        channel = session.start_open(request)
                        sent_early = bool(early) and channel.try_send_whole(early)
                    finally:
                        session.uncork()
                    if stream is not None:
                        if early is None:
                            early = await _first_bytes(stream, channel, answer_by, shaper)
                        if early and not sent_early:
                            await channel.send(early)
                    await session.wait_accepted(channel, max(0.0, answer_by - trio.current_time()))
                except ChannelReset as exc:
                    log.warning(
                        "gate=%s client=%s:%d peer=%s event=open_failed reason=%r",
                        key, client_ip, client_port, peer.name, str(exc),
                    )
                    if exc.reason.code not in RETRYABLE_CODES:
                        return None
                    continue
                return channel, admission, shaper
            # A provider of this gate has no live link (one closed under us, or is being
            # replaced or redialled): wait, bounded, for the route table to change.
            if not self._some_provider_lacks_a_link(key):
                break
            log.info("gate=%s client=%s:%d event=open_waiting_for_link", key, client_ip, client_port)
            with trio.move_on_at(min(trio.current_time() + limits.OPEN_WAIT_FOR_LINK_S, deadline)):
                await routes_changed.wait()
            if not routes_changed.is_set():
                break
        log.warning("gate=%s client=%s:%d event=no_provider_available", key, client_ip, client_port)
        return None

    def _some_provider_lacks_a_link(self, key: GateKey) -> bool:
        return any(peer.session is None or not peer.session.usable for peer, _ in self.routes.providers(key))

    # --- TCP ------------------------------------------------------------------------

    async def _serve_tcp_gate(self, key: GateKey) -> None:
        listeners = await trio.open_tcp_listeners(key.port, host=self.listen_host)
        self._gate_opened(key, listeners[0].socket.getsockname()[1])
        await serve_tcp(functools.partial(self._serve_tcp_client, key), listeners)

    async def _serve_tcp_client(self, key: GateKey, stream: trio.SocketStream) -> None:
        try:
            client_ip, client_port = stream.socket.getpeername()[:2]
            local = stream.socket.getsockname()[:2]
        except OSError:  # (the client is gone already)
            stream.socket.close()
            return
        opened = await self._open_channel(key, client_ip, client_port, local, stream)
        if opened is None:
            abort_socket(stream)
            return
        channel, _, shaper = opened
        await splice_tcp(stream, channel, shaper)

    # --- UDP ------------------------------------------------------------------------

    async def _serve_udp_gate(self, key: GateKey) -> None:
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        # A plain non-blocking socket: each wakeup reads every datagram waiting (up to a
        # batch), and the sessions they go to send them as one record.
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            if _is_ip(self.listen_host):
                sock.bind((self.listen_host, key.port))
            else:  # a name: resolved off the event loop
                await trio.to_thread.run_sync(sock.bind, (self.listen_host, key.port))
            self._gate_opened(key, sock.getsockname()[1])
            flows: dict[Any, _UdpFlow] = {}
            corked: list = []
            async with trio.open_nursery() as nursery:
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        for _ in range(limits.UDP_RECV_BATCH):
                            try:
                                datagram, client = sock.recvfrom(limits.MAX_DATAGRAM)
                            except (BlockingIOError, InterruptedError):
                                break
                            except OSError:
                                continue  # (an ICMP error for an earlier send)
                            flow = flows.get(client)
                            if flow is None:
                                if len(flows) >= limits.MAX_UDP_FLOWS_PER_GATE:
                                    self.datagrams_dropped += 1
                                    continue
                                flow = flows[client] = _UdpFlow(client)
                                nursery.start_soon(self._run_udp_flow, key, sock, flow, flows)
                            elif flow.channel is not None and not flow.channel.session._corked:
                                session = flow.channel.session
                                session.cork()
                                corked.append(session)
                            if not flow.push(datagram):
                                self.datagrams_dropped += 1
                    finally:
                        for session in corked:
                            session.uncork()
                        corked.clear()

    async def _run_udp_flow(self, key: GateKey, sock: socket.socket, flow: _UdpFlow, flows: dict) -> None:
        try:
            opened = await self._open_channel(key, flow.client[0], flow.client[1], sock.getsockname()[:2])
            if opened is None:
                return
            channel, _, shaper = opened
            flow.attach(channel, shaper)
            to_client = shaper.service_to_client

            def sink(datagram: bytes | memoryview) -> int:
                # In the session's reader: sent at once, or dropped as a full network
                # would drop it; never queued.
                flow.idle.touch()
                if not to_client.try_admit(len(datagram)):
                    self.datagrams_dropped += 1
                    return len(datagram)
                try:
                    sock.sendto(datagram, flow.client)
                except OSError:
                    self.datagrams_dropped += 1
                return len(datagram)

            channel.sink = sink

            async def to_client_slow(datagram: bytes) -> None:  # (only what came before the sink)
                sink(datagram)

            try:
                await channel_datagrams(channel, flow.idle, to_client_slow)
            except ChannelReset:
                pass
            finally:
                channel.sink = None
                channel.reset(ResetCode.CLOSED, "UDP flow ended")
        finally:
            flows.pop(flow.client, None)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bytes_waiting(sock: trio.socket.SocketType, size: int) -> bytes | None:
    """What the client sent so far, without waiting; None when nothing (or EOF, or an
    error: the splice reads the socket again and sees those)."""
    try:
        return os.read(sock.fileno(), size) or None
    except OSError:  # (BlockingIOError: nothing yet)
        return None


async def _first_bytes(
    stream: trio.SocketStream, channel: Channel, answer_by: float, shaper: ChannelShaper
) -> bytes | None:
    """The client's first bytes, if it sends any before the provider answers the OPEN
    (protocols where the server speaks first wait for the answer instead), charged to
    the client's shaper; None when there are none yet (or EOF, or an error: the splice
    reads the socket again and sees those)."""
    sock = stream.socket
    with trio.move_on_at(answer_by) as scope:
        channel.waker = scope.cancel  # ACCEPT or RESET ends the wait
        try:
            if channel.accepted is not None and not channel.accepted.is_set():
                await trio.lowlevel.wait_readable(sock)
        finally:
            channel.waker = None
    data = _bytes_waiting(sock, min(limits.EARLY_DATA_MAX, shaper.client_to_service.max_chunk))
    if data is None:
        return None
    delay = shaper.client_to_service.charge(len(data))
    if delay > 0:
        await trio.sleep(delay)
    return data


class _UdpFlow:
    """One UDP client address at a gate: its channel, once open, and its idle timer."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.idle = IdleTimer()
        self.channel: Channel | None = None
        self.shaper = ChannelShaper.from_limit(None)
        self.pending: collections.deque[bytes] = collections.deque()

    def push(self, datagram: bytes) -> bool:
        self.idle.touch()
        if self.channel is None:
            if len(self.pending) >= limits.UDP_PENDING_DATAGRAMS:
                return False
            self.pending.append(datagram)
            return True
        return self._forward(datagram)

    def _forward(self, datagram: bytes) -> bool:
        assert self.channel is not None
        if not self.shaper.client_to_service.try_admit(len(datagram)):
            return False
        try:
            return self.channel.try_send_whole(datagram)
        except ChannelReset:
            return False

    def attach(self, channel: Channel, shaper: ChannelShaper) -> None:
        self.channel = channel
        self.shaper = shaper
        while self.pending:
            self._forward(self.pending.popleft())
