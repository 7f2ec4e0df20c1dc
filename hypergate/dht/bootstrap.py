"""Bootstrap node notation and resolution (hyperdht constants.js, dht-rpc _resolveBootstrapNodes).

hyperdht writes bootstrap nodes as `suggestedIP@hostname:port`: the IP is tried first
(one PING), and the hostname is resolved (IPv4) only if that IP does not answer, so a
DNS outage does not stop a node from joining. Plain `host:port` works too.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable

import attrs
import trio

from hypergate.dht.encoding import Address
from hypergate.errors import ConfigError

log = logging.getLogger(__name__)

# The public Hyperswarm DHT (hyperdht 6.34 constants.js). Tests never use these.
PUBLIC_BOOTSTRAP = (
    "88.99.3.86@node1.hyperdht.org:49737",
    "142.93.90.113@node2.hyperdht.org:49737",
    "138.68.147.8@node3.hyperdht.org:49737",
)


@attrs.frozen
class BootstrapNode:
    host: str  # an IPv4 address or a hostname
    port: int
    suggested_ip: str | None = None

    def __str__(self) -> str:
        prefix = f"{self.suggested_ip}@" if self.suggested_ip else ""
        return f"{prefix}{self.host}:{self.port}"


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def parse_bootstrap(text: str) -> BootstrapNode:
    """`[suggestedIP@]host:port` -> BootstrapNode; ConfigError names the bad part."""
    suggested, _, rest = text.strip().rpartition("@")
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"bootstrap node {text!r}: expected [ip@]host:port")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bootstrap node {text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"bootstrap node {text!r}: port {port} out of range")
    if suggested and not _is_ipv4(suggested):
        raise ConfigError(f"bootstrap node {text!r}: suggested address {suggested!r} is not IPv4")
    return BootstrapNode(host, port, suggested or None)


def as_bootstrap_node(value: BootstrapNode | Address | str) -> BootstrapNode:
    if isinstance(value, BootstrapNode):
        return value
    if isinstance(value, Address):
        return BootstrapNode(value.host, value.port)
    return parse_bootstrap(value)


async def resolve_bootstrap(
    nodes: tuple[BootstrapNode, ...],
    ping: Callable[[Address], Awaitable[object]],
    getaddrinfo: Callable[..., Awaitable[list]] = trio.socket.getaddrinfo,
) -> list[Address]:
    """Addresses to start from; nodes that cannot be resolved are skipped (and logged)."""
    resolved: list[Address] = []
    for node in nodes:
        if node.suggested_ip is not None:
            suggested = Address(node.suggested_ip, node.port)
            try:
                await ping(suggested)
            except Exception as exc:  # any failure means: fall back to the hostname
                log.debug("dht bootstrap suggested address silent node=%s error=%s", node, exc)
            else:
                resolved.append(suggested)
                continue
        if _is_ipv4(node.host):
            resolved.append(Address(node.host, node.port))
            continue
        try:
            infos = await getaddrinfo(node.host, node.port, socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning("dht bootstrap node unresolvable node=%s error=%s", node, exc)
            continue
        resolved.append(Address(infos[0][4][0], node.port))
    return resolved
