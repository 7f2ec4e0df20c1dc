"""Provider: advertises its services to gateways and connects their channels to them.

Providers are authoritative for routes: every admitted gateway gets the complete route
list at once, again whenever it changes, and every ROUTE_REFRESH_S in any case.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import os
import select
import socket
from collections.abc import Callable
from typing import Any

import trio

from .. import limits
from ..config import Service
from ..mux.channel import Channel, ChannelReset
from ..peer import PeerConnection
from ..wire.messages import Message, ResetCode, RouteEntry, Routes
from .forwarding import IdleTimer, channel_datagrams, splice_tcp

log = logging.getLogger(__name__)

# Called with (channel, the provider's outbound socket name, the service address) while a
# forwarded TCP connection is open, and with None when it closes: the fingerprint
# resolver's registry hangs here.
ConnectionObserver = Callable[[Channel, PeerConnection, tuple | None, tuple | None], None]


async def connect_tcp(
    host: str, port: int, timeout: float = limits.SERVICE_CONNECT_TIMEOUT_S
) -> trio.SocketStream:
    """Connect to a service; trio.TooSlowError after `timeout`. An IP literal skips the
    resolver and happy-eyeballs machinery of `open_tcp_stream`, which is most of the
    cost of a short connection; and as a connect to a local service has mostly completed
    by the time the call returns, it is checked at once, before a wait for the socket
    and its timeout (a cancel scope and a run-loop pass) are paid for."""
    family = _ip_family(host)
    if family is None:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        error = sock.connect_ex((host, port))
        if error == errno.EINPROGRESS:
            if not _writable_now(sock):
                with trio.fail_after(timeout):
                    await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


@functools.lru_cache(maxsize=256)
def _ip_family(host: str) -> int | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def _writable_now(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))


class Provider:
    def __init__(self, services: list[Service], policy: dict[str, Any] | None = None) -> None:
        self._services = list(services)
        self._policy = policy
        self.gateways: set[PeerConnection] = set()
        self.observers: list[ConnectionObserver] = []
        self.datagrams_dropped = 0
        # Maps a service host to the address to connect to. Docker mode points container
        # names at container addresses, as a provider on the host cannot resolve them.
        self.resolve_host: Callable[[str], str] = lambda host: host

    @property
    def services(self) -> list[Service]:
        return list(self._services)

    def set_services(self, services: list[Service]) -> None:
        if services != self._services:
            self._services = list(services)
            log.info("event=services_changed count=%d", len(services))
            self.advertise_all()

    def set_policy(self, policy: dict[str, Any] | None) -> None:
        if policy != self._policy:
            self._policy = policy
            self.advertise_all()

    def routes_message(self) -> Routes:
        return Routes(
            type="routes", routes=[RouteEntry(service, self._policy) for service in self._services]
        )

    def advertise(self, peer: PeerConnection) -> None:
        if peer.session is not None:
            peer.session.send_message(self.routes_message())

    def advertise_all(self) -> None:
        for peer in list(self.gateways):
            self.advertise(peer)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(limits.ROUTE_REFRESH_S)
            self.advertise_all()

    # --- peer hooks -----------------------------------------------------------------

    def peer_ready(self, peer: PeerConnection) -> None:
        if peer.is_gateway:
            self.gateways.add(peer)
            self.advertise(peer)
            log.info("peer=%s event=routes_advertised services=%d", peer.name, len(self._services))

    def peer_lost(self, peer: PeerConnection) -> None:
        self.gateways.discard(peer)

    def on_message(self, peer: PeerConnection, message: Message) -> None:
        pass  # gateways send providers nothing but channels

    def find_service(self, gate_port: int, protocol: str) -> Service | None:
        for service in self._services:
            if service.gatePort == gate_port and service.protocol == protocol:
                return service
        return None

    async def handle_channel(self, peer: PeerConnection, channel: Channel) -> None:
        request = channel.request
        service = self.find_service(request.gatePort, request.protocol)
        if service is None:
            channel.reset(
                ResetCode.NO_SUCH_SERVICE,
                f"this provider serves no {request.protocol} gate {request.gatePort}",
            )
            return
        if service.protocol == "udp":
            await self._serve_udp(peer, service, channel)
        else:
            await self._serve_tcp(peer, service, channel)

    # --- TCP ------------------------------------------------------------------------

    async def _serve_tcp(self, peer: PeerConnection, service: Service, channel: Channel) -> None:
        target = f"{service.serviceHost}:{service.servicePort}"
        try:
            stream = await connect_tcp(self.resolve_host(service.serviceHost), service.servicePort)
        except trio.TooSlowError:
            self._refuse(peer, channel, target, f"connect timed out after {limits.SERVICE_CONNECT_TIMEOUT_S:g}s")
            return
        except OSError as exc:
            self._refuse(peer, channel, target, exc.strerror or str(exc))
            return
        if self.observers:
            self._notify(channel, peer, stream.socket.getsockname(), stream.socket.getpeername())
        try:
            log.debug("peer=%s channel=%d event=connected service=%s", peer.name, channel.id, target)
            # Accepted once the client's first bytes are in the service's socket.
            await splice_tcp(stream, channel, started=channel.accept)
        finally:
            if self.observers:
                self._notify(channel, peer, None, None)

    def _refuse(self, peer: PeerConnection, channel: Channel, target: str, reason: str) -> None:
        log.warning(
            "peer=%s channel=%d event=service_unreachable service=%s error=%r",
            peer.name, channel.id, target, reason,
        )
        channel.reset(ResetCode.SERVICE_UNREACHABLE, f"{target}: {reason}")

    def _notify(self, channel: Channel, peer: PeerConnection, local, remote) -> None:
        for observer in self.observers:
            try:
                observer(channel, peer, local, remote)
            except Exception:
                log.exception("event=connection_observer_failed")

    # --- UDP ------------------------------------------------------------------------

    async def _serve_udp(self, peer: PeerConnection, service: Service, channel: Channel) -> None:
        target = f"{service.serviceHost}:{service.servicePort}"
        try:
            infos = await trio.socket.getaddrinfo(
                self.resolve_host(service.serviceHost), service.servicePort, type=socket.SOCK_DGRAM
            )
            family, _, _, _, address = infos[0]
            # A plain non-blocking socket: datagrams from the service are read in batches
            # (one record to the gateway per wakeup); those from the gateway are sent
            # straight from the session's reader (Channel.sink), no task switch each.
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(address)  # (UDP: only sets the default destination)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            self._refuse(peer, channel, target, exc.strerror or str(exc))
            return
        idle = IdleTimer()
        with sock:
            self._notify(channel, peer, sock.getsockname(), sock.getpeername())
            channel.accept()
            session = channel.session

            async def from_service() -> None:
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    session.cork()
                    try:
                        for _ in range(limits.UDP_RECV_BATCH):
                            try:
                                datagram = sock.recv(limits.MAX_DATAGRAM)
                            except (BlockingIOError, InterruptedError):
                                break
                            except ConnectionRefusedError:
                                continue  # ICMP port unreachable from an earlier send; keep the flow
                            idle.touch()
                            if not channel.try_send_whole(datagram):
                                self.datagrams_dropped += 1
                    finally:
                        session.uncork()

            def sink(datagram: bytes | memoryview) -> int:
                idle.touch()
                try:
                    sock.send(datagram)
                except (BlockingIOError, InterruptedError):
                    self.datagrams_dropped += 1  # the socket buffer is full: as a network would
                except OSError as exc:
                    if exc.errno not in (errno.ECONNREFUSED, errno.EMSGSIZE):
                        return 0  # left to to_service, which ends the flow as before
                return len(datagram)

            async def to_service(datagram: bytes) -> None:
                try:
                    sock.send(datagram)
                except (BlockingIOError, InterruptedError):
                    self.datagrams_dropped += 1
                except OSError as exc:
                    if exc.errno not in (errno.ECONNREFUSED, errno.EMSGSIZE):
                        raise
                await trio.lowlevel.checkpoint()

            try:
                channel.sink = sink
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(from_service)
                    await channel_datagrams(channel, idle, to_service)
                    nursery.cancel_scope.cancel()
            except* ChannelReset:
                pass
            finally:
                channel.sink = None
                self._notify(channel, peer, None, None)
