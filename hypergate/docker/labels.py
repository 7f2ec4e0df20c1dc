"""The `hypergate.*` container labels and the services a container offers (sans-IO).

A provider in Docker mode turns each running container on its network into services:

- ports = the ports the engine reports for the container (exposed by the image, or
  published), minus `hypergate.UNEXPOSE` (`port[/proto]` CSV or `*`; published ports
  always stay), plus `hypergate.EXPOSE` (`private[:public][/proto]` CSV);
- `hypergate.EXCLUDE=true` skips the container;
- service host = the container's first alias on the network, else its name;
  gate port = the public port when there is one, else the private port.

Everything here works on plain data (an inspect document in, `Service` objects out), so
the rules are tested without an engine. A container whose labels cannot be read is
skipped with one warning naming the container, the label and the value; the other
containers are unaffected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..config import Protocol, Service
from ..errors import ConfigError

log = logging.getLogger(__name__)

LABEL_EXCLUDE = "hypergate.EXCLUDE"
LABEL_EXPOSE = "hypergate.EXPOSE"
LABEL_UNEXPOSE = "hypergate.UNEXPOSE"

# Tags on discovered services, as the original sets them: a gateway's
# --exposeOnlyDocker keeps services tagged "docker", --exposeOnlyPublished those tagged
# "published".
TAG_DOCKER = "docker"
TAG_PUBLISHED = "published"

_PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp")
_PORT_RE = re.compile(r"[0-9]{1,5}")


class LabelError(ConfigError):
    """A `hypergate.*` label whose value does not follow its documented form."""

    def __init__(self, label: str, value: str, reason: str) -> None:
        super().__init__(f"label {label}={value!r}: {reason}")
        self.label = label
        self.value = value
        self.reason = reason


@attrs.frozen
class ContainerPort:
    """A port of a container: `private` inside it, `public` on the host when published."""

    private: int
    protocol: Protocol
    public: int | None = None


@attrs.frozen
class ExposeEntry:
    private: int
    public: int | None
    protocol: Protocol


@attrs.frozen
class UnexposeRule:
    """Ports to withhold: every port (`*`), or (port, protocol) pairs where a None
    protocol means both."""

    everything: bool = False
    ports: frozenset[tuple[int, Protocol | None]] = frozenset()

    def removes(self, port: ContainerPort) -> bool:
        if port.public is not None:
            return False  # a published port stays: the user asked the engine to publish it
        return (
            self.everything
            or (port.private, port.protocol) in self.ports
            or (port.private, None) in self.ports
        )


@attrs.frozen
class ContainerView:
    """What the label rules need to know about one container."""

    id: str
    name: str
    labels: Mapping[str, str] = attrs.field(factory=dict)
    # User-given aliases on the hypergate network, in the engine's order (container ids,
    # which engines add as aliases, are already removed).
    aliases: tuple[str, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    on_network: bool = True
    # The container's IPv4 address on the network: how a provider running on the host
    # (outside the network's DNS) reaches `service_host`.
    ip_address: str | None = None

    @property
    def service_host(self) -> str:
        return self.aliases[0] if self.aliases else self.name


# --- label values -----------------------------------------------------------------------


def _parse_port(text: str, label: str, value: str, what: str) -> int:
    text = text.strip()
    if not _PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise LabelError(label, value, f"{what} {text!r} is not a port number 1-65535")
    return int(text)


def _parse_protocol(text: str, label: str, value: str) -> Protocol:
    proto = text.strip().lower()
    if proto not in _PROTOCOLS:
        raise LabelError(label, value, f"protocol {text.strip()!r} is not tcp or udp")
    return proto  # type: ignore[return-value]


def _items(value: str) -> list[str]:
    # "80, 443," is the same as "80,443": blanks around items and empty items are ignored.
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_exclude(value: str) -> bool:
    """`hypergate.EXCLUDE`: `true` or `false`, any case."""
    normalized = value.strip().lower()
    if normalized == "true":
        return True
    if normalized == "false":
        return False
    raise LabelError(LABEL_EXCLUDE, value, "expected true or false")


def parse_expose(value: str) -> list[ExposeEntry]:
    """`hypergate.EXPOSE`: CSV of `private[:public][/proto]`, proto tcp (default) or udp."""
    entries = []
    for item in _items(value):
        ports_text, slash, proto_text = item.partition("/")
        protocol = _parse_protocol(proto_text, LABEL_EXPOSE, value) if slash else "tcp"
        private_text, colon, public_text = ports_text.partition(":")
        private = _parse_port(private_text, LABEL_EXPOSE, value, "port")
        public = _parse_port(public_text, LABEL_EXPOSE, value, "public port") if colon else None
        entries.append(ExposeEntry(private=private, public=public, protocol=protocol))
    return entries


def parse_unexpose(value: str) -> UnexposeRule:
    """`hypergate.UNEXPOSE`: `*`, or CSV of `port[/proto]` (no proto: both protocols)."""
    items = _items(value)
    if "*" in items:
        if len(items) > 1:
            raise LabelError(LABEL_UNEXPOSE, value, "'*' cannot be combined with ports")
        return UnexposeRule(everything=True)
    ports: set[tuple[int, Protocol | None]] = set()
    for item in items:
        port_text, slash, proto_text = item.partition("/")
        protocol = _parse_protocol(proto_text, LABEL_UNEXPOSE, value) if slash else None
        ports.add((_parse_port(port_text, LABEL_UNEXPOSE, value, "port"), protocol))
    return UnexposeRule(ports=frozenset(ports))


# --- ports and services -----------------------------------------------------------------


def effective_ports(
    engine_ports: Iterable[ContainerPort], expose: list[ExposeEntry], unexpose: UnexposeRule
) -> list[ContainerPort]:
    """The engine's ports minus UNEXPOSE, plus EXPOSE (the original's order of rules).

    EXPOSE of a port the engine already reports gives it a public port only when it has
    none; a published port keeps the one the engine published.
    """
    ports: dict[tuple[int, Protocol], ContainerPort] = {}
    for port in engine_ports:
        if unexpose.removes(port):
            continue
        key = (port.private, port.protocol)
        # An engine lists a published port once per host address (IPv4 and IPv6).
        if key not in ports or ports[key].public is None:
            ports[key] = port
    for entry in expose:
        key = (entry.private, entry.protocol)
        existing = ports.get(key)
        if existing is None or existing.public is None:
            ports[key] = ContainerPort(entry.private, entry.protocol, entry.public)
    return sorted(ports.values(), key=lambda p: (p.private, p.protocol))


def services_for_container(container: ContainerView) -> list[Service]:
    """The services one container offers; [] when excluded or not on the network.

    Raises LabelError when a label is malformed or two ports claim one gate port.
    """
    if not container.on_network:
        return []
    labels = container.labels
    if LABEL_EXCLUDE in labels and parse_exclude(labels[LABEL_EXCLUDE]):
        return []
    expose = parse_expose(labels.get(LABEL_EXPOSE, ""))
    unexpose = parse_unexpose(labels.get(LABEL_UNEXPOSE, ""))
    services = []
    gates: dict[tuple[int, str], int] = {}
    for port in effective_ports(container.ports, expose, unexpose):
        gate_port = port.public if port.public is not None else port.private
        claimed_by = gates.setdefault((gate_port, port.protocol), port.private)
        if claimed_by != port.private:
            raise LabelError(
                LABEL_EXPOSE,
                labels.get(LABEL_EXPOSE, ""),
                f"gate port {gate_port}/{port.protocol} used by ports {claimed_by} "
                f"and {port.private}",
            )
        tags = f"{TAG_DOCKER} {TAG_PUBLISHED}" if port.public is not None else TAG_DOCKER
        services.append(
            Service(
                gatePort=gate_port,
                serviceHost=container.service_host,
                servicePort=port.private,
                protocol=port.protocol,
                tags=tags,
            )
        )
    return services


def services_for_containers(containers: Iterable[ContainerView]) -> list[Service]:
    """Services of all containers; a container with a malformed label is skipped with a
    warning and does not affect the others."""
    services: list[Service] = []
    for container in containers:
        try:
            services.extend(services_for_container(container))
        except LabelError as exc:
            log.warning(
                "docker container skipped: malformed label container=%s label=%s value=%r reason=%s",
                container.name,
                exc.label,
                exc.value,
                exc.reason,
            )
    return sorted(set(services), key=_service_order)


def _service_order(service: Service) -> tuple[Any, ...]:
    return (service.serviceHost, service.gatePort, service.protocol, service.servicePort)


# --- engine documents -------------------------------------------------------------------


def _is_container_id(alias: str, container_id: str) -> bool:
    # Docker (API < 1.45) and Podman add the short container id to a container's aliases;
    # it names no service.
    return len(alias) >= 12 and container_id.startswith(alias)


def _ports_from_inspect(data: Mapping[str, Any]) -> list[ContainerPort]:
    """Ports from an inspect document: `Config.ExposedPorts` (the image's EXPOSE and
    `--expose`) and `NetworkSettings.Ports` (with host bindings when published)."""
    keys: dict[str, list[Any] | None] = {}
    for key in (data.get("Config") or {}).get("ExposedPorts") or {}:
        keys.setdefault(key, None)
    for key, bindings in ((data.get("NetworkSettings") or {}).get("Ports") or {}).items():
        if bindings or key not in keys:
            keys[key] = bindings
    ports = []
    for key, bindings in keys.items():
        port_text, _, proto = key.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in _PROTOCOLS or not port_text.isdigit():
            log.debug("docker port ignored port=%s reason=unsupported protocol", key)
            continue
        public = None
        for binding in bindings or []:
            host_port = str((binding or {}).get("HostPort") or "")
            if host_port.isdigit() and 1 <= int(host_port) <= 65535:
                public = int(host_port)
                break
        ports.append(ContainerPort(int(port_text), proto, public))  # type: ignore[arg-type]
    return ports


def container_from_inspect(data: Mapping[str, Any], network: str) -> ContainerView:
    """A `ContainerView` from a `GET /containers/{id}/json` document (Docker and Podman
    return the same shape for the fields used here)."""
    container_id = str(data.get("Id") or "")
    name = str(data.get("Name") or "").lstrip("/") or container_id[:12]
    labels = (data.get("Config") or {}).get("Labels") or {}
    networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
    endpoint = networks.get(network)
    aliases: list[str] = []
    for alias in (endpoint or {}).get("Aliases") or []:
        if isinstance(alias, str) and alias and not _is_container_id(alias, container_id):
            if alias not in aliases:
                aliases.append(alias)
    return ContainerView(
        id=container_id,
        name=name,
        labels={str(k): str(v) for k, v in labels.items()},
        aliases=tuple(aliases),
        ports=tuple(_ports_from_inspect(data)),
        on_network=endpoint is not None,
        ip_address=str((endpoint or {}).get("IPAddress") or "") or None,
    )
