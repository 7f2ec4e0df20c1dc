"""Assembles a running node from parsed options: router, roles, and their task tree."""

from __future__ import annotations

import functools
import logging
import signal

import attrs
import trio

from . import limits
from .config import Service
from .crypto.keys import RouterKeys
from .crypto.suites import CipherSuite
from .http.fingerprint_resolver import (
    FingerprintEntry,
    FingerprintRegistry,
    key_for_outbound_socket,
    serve_fingerprint_resolver,
    wall_clock_ms,
)
from .http.unlimited_endpoint import serve_unlimited
from .policy.ingress import IngressPolicy
from .policy.source import PolicySource
from .policy.unlimited import UnlimitedService
from .roles import Roles
from .roles.admission import PolicyAdmission
from .roles.gateway import Gateway
from .roles.provider import Provider
from .roles.routes import ExposurePolicy
from .router import PeerAddress, Router

log = logging.getLogger(__name__)


@attrs.frozen
class NodeConfig:
    router_secret: bytes = attrs.field(repr=False)
    services: tuple[Service, ...] | None = None  # None: not a provider
    gateway: bool = False
    exposure: ExposurePolicy = ExposurePolicy()
    listen: str = "127.0.0.1"
    peer_host: str = "0.0.0.0"
    peer_port: int | None = None
    peers: tuple[PeerAddress, ...] = ()
    name: str = ""
    # Provider: fingerprint resolver (port 0: off).
    resolver_host: str = "127.0.0.1"
    resolver_port: int = 0
    resolver_basic_auth: str | None = attrs.field(default=None, repr=False)
    # Gateway: /unlimited endpoint (off without a secret).
    unlimited_secret: str | None = attrs.field(default=None, repr=False)
    unlimited_host: str = "127.0.0.1"
    unlimited_port: int = 8091
    # Docker mode (off without a socket path).
    docker_socket: str | None = None
    docker_network: str = "hypergatenet"
    docker_refresh_s: float = 20.0
    docker_image: str = "hypergate"
    docker_helper_kind: str = "python"
    # The gateway listens on the Docker network's address unless --listen was given.
    listen_explicit: bool = False
    # DHT discovery: bootstrap nodes ("host:port" or "ip@host:port"); None: direct mode only.
    dht_bootstrap: tuple[str, ...] | None = None
    # A WebSocket relay for peers that cannot reach us directly (ws:// or wss://).
    relay_url: str | None = None
    # Run a relay here too (host, port) and offer it to our peers at `relay_advertise`
    # (default: ws://<our public address>:<port>/).
    relay_serve: tuple[str, int] | None = None
    relay_advertise: str | None = None
    # Hole punches tried with peers met on the DHT ("udp", "tcp"; empty: none).
    holepunch: tuple[str, ...] = ("udp", "tcp")
    # The cipher suite offered on links we dial (None: AES-GCM where the CPU has AES
    # instructions, else ChaCha20-Poly1305); either is accepted from a dialling peer.
    cipher: CipherSuite | None = None


@attrs.define
class Node:
    """A provider and/or gateway with its router, ready to `run`."""

    router: Router
    provider: Provider | None
    gateway: Gateway | None
    config: NodeConfig
    policy_source: PolicySource | None = None
    fingerprints: FingerprintRegistry | None = None
    unlimited: UnlimitedService | None = None
    resolver_port: int | None = None  # bound port, once serving
    dht_node: object = None
    unlimited_bound_port: int | None = None
    relay_bound_port: int | None = None

    @classmethod
    def build(cls, config: NodeConfig, policy_source: PolicySource | None = None) -> Node:
        """`policy_source` must already be loaded (so start-up fails on a bad policy)."""
        provider = None
        fingerprints = None
        if config.services is not None:
            provider = Provider(list(config.services), _policy_wire(policy_source))
            if policy_source is not None:
                policy_source.on_change = lambda policy: provider.set_policy(policy.to_wire() or None)
            if config.resolver_port:
                fingerprints = FingerprintRegistry()
                provider.observers.append(_fingerprint_observer(fingerprints))
        unlimited = UnlimitedService(config.unlimited_secret) if config.unlimited_secret else None
        gateway = None
        if config.gateway:
            gateway = Gateway(config.listen, config.exposure, PolicyAdmission(unlimited))
        router = Router(
            RouterKeys.from_secret(config.router_secret),
            Roles(provider, gateway),
            provider=provider is not None,
            gateway=gateway is not None,
            peer_host=config.peer_host,
            peer_port=config.peer_port,
            peers=list(config.peers),
            name=config.name,
            cipher=config.cipher,
        )
        return cls(
            router, provider, gateway, config,
            policy_source=policy_source if provider is not None else None,
            fingerprints=fingerprints,
            unlimited=unlimited if gateway is not None else None,
        )

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            if self.provider is not None:
                await nursery.start(self.provider.run)
                if self.policy_source is not None:
                    await nursery.start(self.policy_source.run)
                if self.fingerprints is not None:
                    self.resolver_port = await nursery.start(
                        functools.partial(
                            _serve_optional, "fingerprint_resolver", serve_fingerprint_resolver,
                            self.fingerprints, host=config.resolver_host, port=config.resolver_port,
                            extra=(config.resolver_basic_auth,),
                        )
                    )
            if config.docker_socket and self.provider is not None:
                await nursery.start(self._run_docker_provider)
            if config.docker_socket and self.gateway is not None:
                await self._prepare_docker_gateway()
            if self.gateway is not None:
                await nursery.start(self.gateway.run)
                if config.docker_socket:
                    await nursery.start(self._run_docker_bridge)
                if self.unlimited is not None:
                    self.unlimited_bound_port = await nursery.start(
                        functools.partial(
                            _serve_optional, "unlimited", serve_unlimited,
                            self.unlimited, host=config.unlimited_host, port=config.unlimited_port,
                        )
                    )
            if config.relay_serve is not None:
                await self._serve_relay(nursery)
            await nursery.start(self.router.run)
            if config.dht_bootstrap is not None:
                await nursery.start(self._run_dht)
            task_status.started()

    async def run_until_signalled(self) -> None:
        """Run until SIGINT/SIGTERM; then shut down gracefully (a second signal: at once)."""
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await nursery.start(self.run)
                async for signum in signals:
                    log.info("event=shutting_down signal=%s", signal.Signals(signum).name)
                    nursery.cancel_scope.deadline = trio.current_time() + limits.GO_AWAY_GRACE_S + 1
                    nursery.start_soon(self._shutdown_then_cancel, nursery.cancel_scope)
                    async for _ in signals:
                        log.info("event=shutdown_forced")
                        nursery.cancel_scope.cancel()
                        break
                    break

    async def _shutdown_then_cancel(self, scope: trio.CancelScope) -> None:
        await self.router.shutdown()
        scope.cancel()


    async def _run_dht(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Find peers of this router on the DHT and connect through relayed handshakes."""
        from .dht.node import DHTNode
        from .dht.node import NodeConfig as DhtConfig
        from .transport.rendezvous import DhtRendezvous

        node = DHTNode(DhtConfig(bootstrap=self.config.dht_bootstrap, ephemeral=True))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            self.dht_node = node
            if self.config.relay_serve is not None and not self.router.hello.relay:
                self._offer_relay_at_public_address(node)
            rendezvous = DhtRendezvous(self.router, node, self.config.relay_url, self.config.holepunch)
            await nursery.start(rendezvous.run)
            task_status.started()

    # --- relay service --------------------------------------------------------------

    async def _serve_relay(self, nursery: trio.Nursery) -> None:
        """Run a relay in this process; offer it to peers once its URL is known."""
        from .transport.relay import serve_relay

        host, port = self.config.relay_serve
        self.relay_bound_port = await nursery.start(functools.partial(serve_relay, host, port))
        url = self.config.relay_advertise
        if url is None and host not in ("0.0.0.0", "::"):
            url = f"ws://{PeerAddress(host, self.relay_bound_port)}/"
        if url is not None:
            self.router.offer_relay(url)
            log.info("event=relay_offered_to_peers relay=%s", url)

    def _offer_relay_at_public_address(self, node) -> None:
        """--relayServe on a wildcard address: offer it where the DHT sees us, if we are
        reachable there."""
        public = node.remote_address()
        if public is not None and not node.firewalled:
            url = f"ws://{PeerAddress(public.host, self.relay_bound_port)}/"
            self.router.offer_relay(url)
            log.info("event=relay_offered_to_peers relay=%s", url)
        else:
            # Behind a NAT the port is likely unreachable; offering it would only send
            # peers to a dead end.
            log.warning(
                "event=relay_not_offered reason='no public address (behind a NAT?); "
                "give --relayAdvertise URL if the port is reachable'"
            )

    # --- Docker mode ----------------------------------------------------------------

    async def _run_docker_provider(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Containers on the network become services, next to any --provider files."""
        from .docker.discovery import run_discovery
        from .docker.engine import DockerEngine

        provider = self.provider
        assert provider is not None
        static = list(self.config.services or ())
        addresses: dict[str, str] = {}
        provider.resolve_host = lambda host: addresses.get(host, host)
        await run_discovery(
            DockerEngine(self.config.docker_socket),
            self.config.docker_network,
            self.config.docker_refresh_s,
            lambda found: provider.set_services(static + list(found)),
            addresses=addresses,
            task_status=task_status,
        )

    async def _prepare_docker_gateway(self) -> None:
        """Gates must listen where the network's containers (the helpers) reach us."""
        from .docker.engine import DockerEngine, DockerError
        from .docker.gateway_bridge import address_on_network, detect_own_container

        if self.config.listen_explicit:
            return
        assert self.gateway is not None
        engine = DockerEngine(self.config.docker_socket)
        own = detect_own_container()
        try:
            try:
                address = await address_on_network(engine, self.config.docker_network, own_container=own)
            except DockerError as exc:
                if own is None:
                    raise
                # Container-like sandbox the engine does not know: we run beside it, as on a host.
                log.info("event=docker_not_our_engine container=%s error=%r", own, str(exc))
                address = await address_on_network(engine, self.config.docker_network)
        except DockerError as exc:
            log.error("event=docker_unavailable error=%r listen=%s", str(exc), self.gateway.listen_host)
            return
        log.info("event=docker_listen network=%s address=%s", self.config.docker_network, address)
        self.gateway.listen_host = address

    async def _run_docker_bridge(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Helper containers make every exposed service reachable by name on the network."""
        from .docker.engine import DockerEngine
        from .docker.gateway_bridge import BridgeSync, GatewayBridge, HelperRunner, bridge_routes

        gateway = self.gateway
        assert gateway is not None
        bridge = GatewayBridge(
            DockerEngine(self.config.docker_socket),
            self.config.docker_network,
            gateway.listen_host,
            runner=HelperRunner(self.config.docker_image, kind=self.config.docker_helper_kind),
            # Stable across restarts, so a restarted gateway adopts (and cleans up) the
            # helpers of a predecessor that died without removing them.
            owner="gateway",
        )
        sync = BridgeSync(bridge, refresh_s=self.config.docker_refresh_s)
        gateway.route_listeners.append(lambda: sync.set_routes(bridge_routes(gateway.routes.services())))
        await sync.run(task_status=task_status)


def _policy_wire(source: PolicySource | None):
    if source is None or source.policy == IngressPolicy.empty():
        return None
    return source.policy.to_wire()


def _fingerprint_observer(registry: FingerprintRegistry):
    """Keeps the resolver's registry in step with the provider's open connections."""
    keys = {}

    def observe(channel, peer, local, remote) -> None:
        if local is None:
            key = keys.pop(channel, None)
            if key is not None:
                registry.remove(key)
            return
        request = channel.request
        key = key_for_outbound_socket(request.protocol, local, remote)
        keys[channel] = key
        registry.add(
            key,
            FingerprintEntry(request.fingerprint, request.protocol, request.gatePort, channel.id, wall_clock_ms()),
        )

    return observe


async def _serve_optional(
    what: str, serve, *args, host: str, port: int, extra: tuple = (),
    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
):
    """An auxiliary HTTP endpoint: if its port cannot be bound, say so in one line and
    run without it rather than take the tunnel down."""
    try:
        await serve(*args, host, port, *extra, task_status=task_status)
    except OSError as exc:
        log.error(
            "event=%s_listen_failed host=%s port=%d error=%r (continuing without it)",
            what, host, port, exc.strerror or str(exc),
        )
        task_status.started(None)
