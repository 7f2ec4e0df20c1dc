"""Command line: the Node.js original's flags, plus direct-mode peering.

Every option also reads a HYPERGATE_<UPPER_SNAKE> environment variable (flag first, then
variable, then default). Repeatable options take a comma-separated list in their
variable, except those whose values are JSON documents (--provider, --ingressPolicy),
which take one document.
"""

from __future__ import annotations

import logging
import signal
import sys

import asyncclick as click
import trio

from . import __version__
from .app import Node, NodeConfig
from .config import load_filters, load_services
from .crypto.keys import new_router_secret, parse_router_secret
from .crypto.suites import parse_cipher
from .docker.engine import DEFAULT_SOCKET as DEFAULT_DOCKER_SOCKET
from .errors import ConfigError, HypergateError
from .policy.source import PolicySource
from .roles.routes import ExposurePolicy
from .router import PeerAddress

log = logging.getLogger("hypergate")


class CommaList(click.ParamType):
    """A value for a repeatable option whose environment variable is comma-separated."""

    name = "text"
    envvar_list_splitter = ","

    def split_envvar_value(self, rv: str):  # click calls this for multiple=True options
        return [part.strip() for part in rv.split(",") if part.strip()]


class SingleDocument(click.ParamType):
    """A JSON document, path or URL: its environment variable is one value, never split."""

    name = "json|path|url"

    def split_envvar_value(self, rv: str):
        return [rv] if rv.strip() else []


def parse_peer_address(text: str) -> PeerAddress:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--peer: expected HOST:PORT, got {text!r}")
    return PeerAddress(host, int(port))


def _env(name: str) -> str:
    return f"HYPERGATE_{name}"


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger("hypergate")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _gateway_option(value: str | None) -> tuple[bool, str | None]:
    """--gateway alone enables the gateway; --gateway VALUE also gives its filter."""
    if value is None:
        return False, None
    stripped = value.strip()
    if stripped.lower() in ("", "1", "true", "yes", "on"):
        return True, None
    if stripped.lower() in ("0", "false", "no", "off"):
        return False, None
    return True, value


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hypergate")
@click.option("--new", "new_secret", is_flag=True, envvar=_env("NEW"), help="Print a fresh router secret and exit.")
@click.option("--router", envvar=_env("ROUTER"), metavar="SECRET", help="Router secret shared by all peers (hex).")
@click.option(
    "--provider", "providers", multiple=True, type=SingleDocument(), envvar=_env("PROVIDER"),
    help="Services to provide: JSON text, a file path or a URL. Repeatable.",
)
@click.option(
    "--gateway", is_flag=False, flag_value="", default=None, envvar=_env("GATEWAY"),
    metavar="[FILTER]", help="Run as gateway; optional filter of services to expose (JSON, path or URL).",
)
@click.option("--listen", default="127.0.0.1", show_default=True, envvar=_env("LISTEN"), help="Address the gateway's gates listen on.")
@click.option(
    "--exposeOnlyServices", "expose_only_services", default=None, envvar=_env("EXPOSE_ONLY_SERVICES"),
    metavar="HOST,HOST", help="Gateway: expose only services with these serviceHost names.",
)
@click.option("--peerPort", "peer_port", type=click.IntRange(0, 65535), default=None, envvar=_env("PEER_PORT"), help="Listen for peers on this TCP port (direct mode).")
@click.option("--peerHost", "peer_host", default="0.0.0.0", show_default=True, envvar=_env("PEER_HOST"), help="Address the peer port listens on.")
@click.option(
    "--peer", "peers", multiple=True, type=CommaList(), envvar=_env("PEER"),
    metavar="HOST:PORT", help="Connect to a peer at this address (direct mode). Repeatable.",
)
@click.option(
    "--ingressPolicy", "ingress_policies", multiple=True, type=SingleDocument(), envvar=_env("INGRESS_POLICY"),
    help="Provider: ingress policy (JSON, path or URL); repeatable, deep-merged left to right.",
)
@click.option(
    "--ingressPolicyRefreshMs", "ingress_policy_refresh_ms", type=click.IntRange(1000), default=60000,
    show_default=True, envvar=_env("INGRESS_POLICY_REFRESH_MS"), help="How often policy URLs are re-read.",
)
@click.option("--fingerprintResolverHost", "resolver_host", default="127.0.0.1", show_default=True, envvar=_env("FINGERPRINT_RESOLVER_HOST"))
@click.option(
    "--fingerprintResolverPort", "resolver_port", type=click.IntRange(0, 65535), default=8080, show_default=True,
    envvar=_env("FINGERPRINT_RESOLVER_PORT"), help="Provider: fingerprint resolver HTTP port (0: off).",
)
@click.option("--fingerprintResolverBasicAuth", "resolver_basic_auth", default=None, metavar="USER:PASS", envvar=_env("FINGERPRINT_RESOLVER_BASIC_AUTH"))
@click.option("--unlimitedSecret", "unlimited_secret", default=None, envvar=_env("UNLIMITED_SECRET"), help="Gateway: enable /unlimited with this token secret.")
@click.option("--unlimitedHost", "unlimited_host", default="127.0.0.1", show_default=True, envvar=_env("UNLIMITED_HOST"))
@click.option("--unlimitedPort", "unlimited_port", type=click.IntRange(1, 65535), default=8091, show_default=True, envvar=_env("UNLIMITED_PORT"))
@click.option(
    "--docker", "docker_socket", is_flag=False, flag_value=DEFAULT_DOCKER_SOCKET, default=None,
    envvar=_env("DOCKER"), metavar="[SOCKET]",
    help=f"Docker mode, through the Engine API socket (default {DEFAULT_DOCKER_SOCKET}).",
)
@click.option("--network", "docker_network", default="hypergatenet", show_default=True, envvar=_env("NETWORK"), help="Docker mode: the bridge network.")
@click.option("--refreshTime", "refresh_time_ms", type=click.IntRange(500), default=20000, show_default=True, envvar=_env("REFRESH_TIME"), help="Docker mode: ms between container refreshes.")
@click.option("--image", "docker_image", default="hypergate", show_default=True, envvar=_env("IMAGE"), help="Docker mode: image of the gateway's helper containers.")
@click.option(
    "--helperKind", "docker_helper_kind", type=click.Choice(["python", "busybox"]), default="python",
    show_default=True, envvar=_env("HELPER_KIND"),
    help="Docker mode: helpers run hypergate's forwarder (TCP+UDP) or busybox nc (TCP).",
)
@click.option(
    "--exposeOnlyDocker/--no-exposeOnlyDocker", "expose_only_docker", default=None, envvar=_env("EXPOSE_ONLY_DOCKER"),
    help="Gateway: expose only services found in containers (default: on with --docker).",
)
@click.option("--exposeOnlyPublished", "expose_only_published", is_flag=True, envvar=_env("EXPOSE_ONLY_PUBLISHED"), help="Gateway: expose only published container ports.")
@click.option(
    "--bootstrap", "bootstrap", multiple=True, type=CommaList(), envvar=_env("BOOTSTRAP"), metavar="HOST:PORT",
    help="DHT bootstrap node (repeatable); replaces the public Hyperswarm bootstrap list.",
)
@click.option(
    "--relay", "relay_url", default=None, metavar="URL", envvar=_env("RELAY"),
    help="WebSocket relay (ws:// or wss://) where peers that reach us no other way can meet us.",
)
@click.option(
    "--relayServe", "relay_serve", default=None, metavar="[HOST:]PORT", envvar=_env("RELAY_SERVE"),
    help="Also run a WebSocket relay here and offer it to this router's peers (for pairs that cannot punch through).",
)
@click.option(
    "--relayAdvertise", "relay_advertise", default=None, metavar="URL", envvar=_env("RELAY_ADVERTISE"),
    help="URL peers use for --relayServe (e.g. wss:// behind a TLS proxy); default ws://<public IP>:PORT/.",
)
@click.option(
    "--holepunch", "holepunch", default="udp,tcp", show_default=True, metavar="LIST", envvar=_env("HOLEPUNCH"),
    help="Hole punches tried with peers met on the DHT: udp (link over UDX), tcp (simultaneous open), both, or none.",
)
@click.option(
    "--cipher", "cipher", default="auto", show_default=True, metavar="SUITE", envvar=_env("CIPHER"),
    help="Cipher offered on links this node dials: aesgcm, chachapoly, or auto (aesgcm where the CPU has AES instructions). Either is accepted from peers.",
)
@click.option("--scan", "scan_topic", default=None, metavar="TOPIC", envvar=_env("SCAN"), help="List the peers announced under a topic (hex) on the DHT, then exit.")
@click.option("--verbose", is_flag=True, envvar=_env("VERBOSE"), help="Debug logging.")
@click.pass_context
async def main_group(
    ctx: click.Context,
    new_secret: bool,
    router: str | None,
    providers: tuple[str, ...],
    gateway: str | None,
    listen: str,
    expose_only_services: str | None,
    peer_port: int | None,
    peer_host: str,
    peers: tuple[str, ...],
    ingress_policies: tuple[str, ...],
    ingress_policy_refresh_ms: int,
    resolver_host: str,
    resolver_port: int,
    resolver_basic_auth: str | None,
    unlimited_secret: str | None,
    unlimited_host: str,
    unlimited_port: int,
    docker_socket: str | None,
    docker_network: str,
    refresh_time_ms: int,
    docker_image: str,
    docker_helper_kind: str,
    expose_only_docker: bool | None,
    expose_only_published: bool,
    bootstrap: tuple[str, ...],
    relay_url: str | None,
    relay_serve: str | None,
    relay_advertise: str | None,
    holepunch: str,
    cipher: str,
    scan_topic: str | None,
    verbose: bool,
) -> None:
    """hypergate: expose services of a provider as ports of a gateway, over an encrypted
    peer-to-peer link. Run `hypergate demo` for a working example on this machine."""
    setup_logging(verbose)
    if ctx.invoked_subcommand is not None:
        return
    if new_secret:
        click.echo(new_router_secret())
        return
    bootstrap_nodes = _bootstrap_list(bootstrap)
    if scan_topic is not None:
        await scan(scan_topic, bootstrap_nodes)
        return
    if router is None:
        raise ConfigError("--router is required (make a secret with `hypergate --new`)")
    is_gateway, filter_source = _gateway_option(gateway)
    if not providers and not is_gateway and not docker_socket:
        raise ConfigError("nothing to do: give --provider FILE, --docker and/or --gateway")
    secret = parse_router_secret(router)
    services = None
    if providers or (docker_socket and not is_gateway):
        services = []
        for source in providers:
            services.extend(await trio.to_thread.run_sync(load_services, source))
    filters = None
    if filter_source is not None:
        filters = tuple(await trio.to_thread.run_sync(load_filters, filter_source))
    only_hosts = None
    if expose_only_services:
        only_hosts = frozenset(h.strip() for h in expose_only_services.split(",") if h.strip())
    peer_addresses = tuple(parse_peer_address(p) for value in peers for p in value.split(",") if p.strip())
    if relay_url is not None and not relay_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"--relay: expected a ws:// or wss:// URL, got {relay_url!r}")
    if relay_advertise is not None and not relay_advertise.startswith(("ws://", "wss://")):
        raise ConfigError(f"--relayAdvertise: expected a ws:// or wss:// URL, got {relay_advertise!r}")
    relay_listen = _relay_serve_option(relay_serve) if relay_serve is not None else None
    holepunch_kinds = _holepunch_option(holepunch)
    try:
        cipher_suite = parse_cipher(cipher)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # Direct mode (explicit addresses) needs no DHT; anything else finds peers on it.
    use_dht = bool(bootstrap) or (peer_port is None and not peer_addresses)
    if use_dht and peer_port is None:
        peer_port = 0  # links from peers found on the DHT arrive on any free port
    policy_source = None
    if ingress_policies:
        if services is None:
            raise ConfigError("--ingressPolicy applies to providers: give --provider too")
        policy_source = PolicySource(ingress_policies, refresh_interval_s=ingress_policy_refresh_ms / 1000)
        await policy_source.load()
    if resolver_basic_auth is not None and ":" not in resolver_basic_auth:
        raise ConfigError("--fingerprintResolverBasicAuth: expected USER:PASS")
    config = NodeConfig(
        router_secret=secret,
        services=tuple(services) if services is not None else None,
        gateway=is_gateway,
        exposure=ExposurePolicy(
            filters,
            only_hosts,
            only_docker=bool(docker_socket) if expose_only_docker is None else expose_only_docker,
            only_published=expose_only_published,
        ),
        listen=listen,
        peer_host=peer_host,
        peer_port=peer_port,
        peers=peer_addresses,
        resolver_host=resolver_host,
        resolver_port=resolver_port,
        resolver_basic_auth=resolver_basic_auth,
        unlimited_secret=unlimited_secret,
        unlimited_host=unlimited_host,
        unlimited_port=unlimited_port,
        docker_socket=docker_socket,
        docker_network=docker_network,
        docker_refresh_s=refresh_time_ms / 1000,
        docker_image=docker_image,
        docker_helper_kind=docker_helper_kind,
        listen_explicit=ctx.get_parameter_source("listen") is not click.core.ParameterSource.DEFAULT,
        dht_bootstrap=bootstrap_nodes if use_dht else None,
        relay_url=relay_url,
        relay_serve=relay_listen,
        relay_advertise=relay_advertise,
        holepunch=holepunch_kinds,
        cipher=cipher_suite,
    )
    if relay_listen is not None and config.dht_bootstrap is None and relay_advertise is None and relay_listen[0] in ("0.0.0.0", "::"):
        raise ConfigError("--relayServe: without the DHT we cannot tell our public address; give --relayAdvertise URL or a HOST")
    node = Node.build(config, policy_source)
    log.info(
        "event=starting provider=%s services=%d gateway=%s topic=%s",
        services is not None, len(services or ()), is_gateway, node.router.keys.topic.hex()[:16],
    )
    await node.run_until_signalled()


def _holepunch_option(value: str) -> tuple[str, ...]:
    """`--holepunch LIST` (udp, tcp, udp,tcp or none) as the punch kinds to try."""
    from .transport.paths import parse_holepunch

    try:
        return parse_holepunch(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _relay_serve_option(value: str) -> tuple[str, int]:
    """`--relayServe [HOST:]PORT` as (host, port)."""
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(f"--relayServe: expected [HOST:]PORT with a port in 1-65535, got {value!r}")
    return host, port


def _bootstrap_list(values: tuple[str, ...]) -> tuple[str, ...]:
    from .dht.bootstrap import PUBLIC_BOOTSTRAP

    given = tuple(p.strip() for value in values for p in value.split(",") if p.strip())
    return given or tuple(PUBLIC_BOOTSTRAP)


async def scan(topic_hex: str, bootstrap: tuple[str, ...]) -> None:
    """Print each peer announced under `topic_hex`: its public key and its relays."""
    from .dht.node import NodeConfig as DhtConfig
    from .dht.node import open_dht_node

    try:
        topic = bytes.fromhex(topic_hex)
        if len(topic) != 32:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--scan: the topic must be 64 hex characters, got {topic_hex!r}") from None
    async with open_dht_node(DhtConfig(bootstrap=bootstrap)) as node:
        results = await node.lookup(topic)
    peers = {peer.public_key: peer for result in results for peer in result.peers}
    for public_key, peer in sorted(peers.items()):
        relays = ",".join(str(address) for address in peer.relay_addresses) or "-"
        click.echo(f"{public_key.hex()} relays={relays}")
    log.info("event=scan_done topic=%s peers=%d nodes_answered=%d", topic_hex[:16], len(peers), len(results))


@main_group.command()
@click.option("--host", default="0.0.0.0", show_default=True, envvar=_env("DHT_HOST"), help="UDP address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=49737, show_default=True, envvar=_env("DHT_PORT"), help="UDP port.")
@click.option(
    "--bootstrap", "bootstrap", multiple=True, type=CommaList(), envvar=_env("BOOTSTRAP"), metavar="HOST:PORT",
    help="Nodes to join (default: the public Hyperswarm network).",
)
@click.option("--bootstrapMode", "bootstrap_mode", is_flag=True, envvar=_env("BOOTSTRAP_MODE"), help="Start a new network: join nobody, be its first node.")
@click.option("--publicAddress", "public_address", default=None, metavar="IP:PORT", envvar=_env("PUBLIC_ADDRESS"), help="Address other nodes reach this one at.")
async def dht(host: str, port: int, bootstrap: tuple[str, ...], bootstrap_mode: bool, public_address: str | None) -> None:
    """Run a persistent DHT node (bootstrap node with --bootstrapMode)."""
    from .dht.encoding import Address
    from .dht.node import DHTNode
    from .dht.node import NodeConfig as DhtConfig

    public = None
    if public_address:
        address = parse_peer_address(public_address)
        public = Address(address.host, address.port)
    config = DhtConfig(
        bootstrap=() if bootstrap_mode else _bootstrap_list(bootstrap),
        host=host, port=port, ephemeral=False, firewalled=False, public_address=public,
    )
    node = DHTNode(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        log.info("event=dht_node_running address=%s bootstrap_mode=%s", node.address, bootstrap_mode)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


@main_group.command()
@click.option("--host", default="0.0.0.0", show_default=True, envvar=_env("RELAY_HOST"), help="Address the relay listens on (127.0.0.1 behind a reverse proxy).")
@click.option("--port", type=click.IntRange(0, 65535), default=49738, show_default=True, envvar=_env("RELAY_PORT"), help="TCP port of the relay's WebSocket endpoint.")
@click.option("--path", default="", metavar="PATH", envvar=_env("RELAY_PATH"), help="Serve only this URL path, e.g. /hypergate (default: any path).")
async def relay(host: str, port: int, path: str) -> None:
    """Run a WebSocket relay for peers that cannot reach each other directly."""
    from .transport.relay import run_relay_command

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay_command, host, port, path or None)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


@main_group.command()
@click.option("--connect", "connect_key", required=True, metavar="PUBKEY_HEX", envvar=_env("TELE_CONNECT"), help="Public key of the hyperdht server (a hypertele-server), 64 hex characters.")
@click.option("--listen", required=True, metavar="[HOST:]PORT", envvar=_env("TELE_LISTEN"), help="Local TCP address; each connection to it is one connection to the server.")
@click.option(
    "--bootstrap", "bootstrap", multiple=True, type=CommaList(), envvar=_env("TELE_BOOTSTRAP"), metavar="HOST:PORT",
    help="DHT nodes to join (default: the public Hyperswarm network).",
)
async def tele(connect_key: str, listen: str, bootstrap: tuple[str, ...]) -> None:
    """Like the npm `hypertele` client: forward a local TCP port to a hyperdht server."""
    from .hyperswarm.tele import run_tele

    try:
        server_key = bytes.fromhex(connect_key.strip())
        if len(server_key) != 32:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--connect: expected the server's public key as 64 hex characters, got {connect_key!r}") from None
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"--listen: expected [HOST:]PORT, got {listen!r}")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_tele, server_key, host, int(port_text), _bootstrap_list(bootstrap))
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


@main_group.command()
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Gate port (0: any free port).")
async def demo(port: int) -> None:
    """Provider + gateway + a small HTTP service on this machine; prints a curl line."""
    from .demo import run_demo

    await run_demo(port)


def _first_user_error(exc: BaseException) -> HypergateError | None:
    """A HypergateError, also from inside the exception groups nurseries raise."""
    if isinstance(exc, HypergateError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_user_error(inner)
            if found is not None:
                return found
    return None


def main() -> None:
    try:
        main_group(_anyio_backend="trio", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:
        user_error = _first_user_error(exc)
        if user_error is None:
            raise
        print(f"hypergate: error: {user_error}", file=sys.stderr)
        sys.exit(2)
