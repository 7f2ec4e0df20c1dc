"""Gateway side of Docker mode: remote services reachable by name inside a local network.

For each remote service host (e.g. `mysql.hyper`) the gateway keeps one small helper
container on the hypergate network, joined with that name as its network alias. The
helper relays each port it serves to the gateway's own listener for that port, at an
address the network can reach (`address_on_network`). So a container on this machine
connects to `mysql.hyper:3306`; the engine's DNS answers with the helper; the helper
relays to `<gateway>:3306`; the gateway tunnels to the provider that owns the service.

The helpers carry no secret: they are plain relays (see `forwarder.py`), named and
labelled from the network, the alias and an owner string chosen by the caller.
`reconcile` is idempotent: it creates missing helpers, replaces helpers whose
configuration changed, and removes helpers no longer wanted; call it on every route
change or refresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Iterable
from typing import Any, Literal

import attrs
import trio

from .. import limits
from ..config import Protocol, Service
from .discovery import running_containers
from .engine import DockerEngine, DockerError

log = logging.getLogger(__name__)

LABEL_HELPER_OWNER = "hypergate.helper.owner"
LABEL_HELPER_NETWORK = "hypergate.helper.network"
LABEL_HELPER_ALIAS = "hypergate.helper.alias"
LABEL_HELPER_SPEC = "hypergate.helper.spec"

# Hostnames and IP literals only: the busybox runner puts the target in a shell command.
_SAFE_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]*")
_NAME_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]")


@attrs.frozen(order=True)
class BridgeRoute:
    """A remote service to make reachable as `alias:port` inside the network. The helper
    relays to the gateway's listener on the same port (the service's gate port)."""

    alias: str
    port: int
    protocol: Protocol = "tcp"


@attrs.frozen
class HelperRunner:
    """What the helper containers run.

    `python`: the hypergate image (or any image with hypergate installed) running
    `python -m hypergate.docker.forwarder`; TCP and UDP, half-close kept.
    `busybox`: any busybox image, one `nc -ll -e nc` per port; TCP only, for hosts where
    a tiny stock image is preferred.
    `binds` are host paths mounted into the helper (tests use them to run the forwarder
    from a host checkout in a busybox image); production leaves them empty.
    """

    image: str = "hypergate"
    kind: Literal["python", "busybox"] = "python"
    python: str = "python"
    binds: tuple[str, ...] = ()

    def supports(self, protocol: Protocol) -> bool:
        return self.kind == "python" or protocol == "tcp"

    def command(self, target_host: str, routes: list[BridgeRoute]) -> tuple[list[str], list[str]]:
        """(Entrypoint, Cmd) for a helper relaying `routes` to `target_host`."""
        if self.kind == "python":
            return (
                [self.python, "-m", "hypergate.docker.forwarder"],
                ["--to", target_host] + [f"{r.protocol}:{r.port}" for r in routes],
            )
        relays = [f"nc -ll -p {r.port} -e nc {target_host} {r.port} &" for r in routes]
        return ["/bin/sh", "-c"], [" ".join(relays) + " wait"]


def helper_name(owner: str, network: str, alias: str) -> str:
    """A container name readable in `docker ps`, unique per (owner, network, alias)."""
    digest = hashlib.sha256(f"{owner}\0{network}\0{alias}".encode()).hexdigest()[:8]
    return f"hypergate-helper-{_NAME_UNSAFE_RE.sub('-', alias)[:40]}-{digest}"


def helper_config(
    runner: HelperRunner, network: str, owner: str, target_host: str, alias: str, routes: list[BridgeRoute]
) -> dict[str, Any]:
    """The `POST /containers/create` body for one helper (Docker Engine API v1.41)."""
    entrypoint, cmd = runner.command(target_host, routes)
    spec = {"image": runner.image, "entrypoint": entrypoint, "cmd": cmd, "binds": list(runner.binds)}
    spec_digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    host_config: dict[str, Any] = {
        "NetworkMode": network,
        # Survives a daemon restart; removed by reconcile when no longer wanted.
        "RestartPolicy": {"Name": "unless-stopped"},
        # The hypergate image runs as a non-root user; a helper must still listen on
        # ports like 80 or 443 (a per-container sysctl, allowed by Docker and Podman).
        "Sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"},
    }
    if runner.binds:
        host_config["Binds"] = list(runner.binds)
    return {
        "Image": runner.image,
        "Entrypoint": entrypoint,
        "Cmd": cmd,
        "Labels": {
            # A provider on this host must not advertise the helper as a service.
            "hypergate.EXCLUDE": "true",
            LABEL_HELPER_OWNER: owner,
            LABEL_HELPER_NETWORK: network,
            LABEL_HELPER_ALIAS: alias,
            LABEL_HELPER_SPEC: spec_digest,
        },
        "ExposedPorts": {f"{r.port}/{r.protocol}": {} for r in routes},
        "HostConfig": host_config,
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [alias]}}},
    }


@attrs.define
class GatewayBridge:
    """Keeps one helper container per remote service host on `network`.

    `owner` tells this gateway's helpers from another gateway's on the same engine; it
    appears in labels and names, so pick something public (never the router secret).
    """

    engine: DockerEngine
    network: str
    target_host: str
    runner: HelperRunner = attrs.field(factory=HelperRunner)
    owner: str = "default"

    def __attrs_post_init__(self) -> None:
        if not _SAFE_HOST_RE.fullmatch(self.target_host):
            raise ValueError(f"target host {self.target_host!r} is not a hostname or IP address")

    async def helpers(self) -> list[dict[str, Any]]:
        """This bridge's helper containers (running or not), as list summaries."""
        return await self.engine.list_containers(
            all=True,
            filters={
                "label": [f"{LABEL_HELPER_OWNER}={self.owner}", f"{LABEL_HELPER_NETWORK}={self.network}"]
            },
        )

    async def local_names(self) -> set[str]:
        """Aliases and names of the network's own (non-helper) containers: a remote service
        of the same name would be shadowed by, or would shadow, the local one."""
        names: set[str] = set()
        for container in await running_containers(self.engine, self.network):
            if LABEL_HELPER_OWNER not in container.labels:
                names.update(container.aliases)
                names.add(container.name)
        return names

    async def reconcile(self, routes: Iterable[BridgeRoute]) -> dict[str, str]:
        """Make the helpers match `routes`; return {alias: container id} now in place.

        A failure for one alias is logged and leaves the others alone; the next call
        retries it. Errors reaching the engine at all propagate (DockerError).
        """
        await self.engine.ensure_network(self.network)
        local = await self.local_names()
        wanted: dict[str, list[BridgeRoute]] = {}
        for route in sorted(set(routes)):
            if route.alias in local:
                log.debug("docker helper skipped alias=%s reason=served by a local container", route.alias)
                continue
            if not self.runner.supports(route.protocol):
                log.warning(
                    "docker helper cannot relay alias=%s port=%d protocol=%s image_kind=%s",
                    route.alias, route.port, route.protocol, self.runner.kind,
                )
                continue
            wanted.setdefault(route.alias, []).append(route)

        existing: dict[str, dict[str, Any]] = {}
        for summary in await self.helpers():
            alias = (summary.get("Labels") or {}).get(LABEL_HELPER_ALIAS, "")
            if alias in wanted and alias not in existing:
                existing[alias] = summary
            else:
                await self._remove(summary, reason="not wanted")

        in_place: dict[str, str] = {}
        for alias, alias_routes in wanted.items():
            config = helper_config(self.runner, self.network, self.owner, self.target_host, alias, alias_routes)
            current = existing.get(alias)
            try:
                if current is not None:
                    same = (current.get("Labels") or {}).get(LABEL_HELPER_SPEC) == config["Labels"][LABEL_HELPER_SPEC]
                    if same and current.get("State") == "running":
                        in_place[alias] = str(current["Id"])
                        continue
                    await self._remove(current, reason="changed" if not same else "not running")
                in_place[alias] = await self._create(alias, config)
            except DockerError as exc:
                log.warning("docker helper failed alias=%s network=%s error=%s", alias, self.network, exc)
        return in_place

    async def remove_all(self) -> None:
        """Remove every helper of this bridge (on gateway shutdown)."""
        for summary in await self.helpers():
            await self._remove(summary, reason="shutdown")

    async def _create(self, alias: str, config: dict[str, Any]) -> str:
        name = helper_name(self.owner, self.network, alias)
        try:
            container_id = await self.engine.create_container(config, name=name)
        except DockerError as exc:
            if exc.status != 409:
                raise
            # A leftover of that name the label query did not return (labels edited?).
            await self.engine.remove_container(name, force=True)
            container_id = await self.engine.create_container(config, name=name)
        await self.engine.start_container(container_id)
        ports = ",".join(k for k in config["ExposedPorts"])
        log.info("docker helper started alias=%s ports=%s name=%s", alias, ports, name)
        return container_id

    async def _remove(self, summary: dict[str, Any], *, reason: str) -> None:
        alias = (summary.get("Labels") or {}).get(LABEL_HELPER_ALIAS, "?")
        try:
            await self.engine.remove_container(str(summary["Id"]), force=True)
        except DockerError as exc:
            if exc.status != 404:
                log.warning("docker helper not removed alias=%s error=%s", alias, exc)
                return
        log.info("docker helper removed alias=%s reason=%s", alias, reason)


def bridge_routes(services: Iterable[Service]) -> set[BridgeRoute]:
    """One route per (service host, gate port, protocol) the gateway exposes."""
    return {BridgeRoute(s.serviceHost, s.gatePort, s.protocol) for s in services}


class BridgeSync:
    """Drives a `GatewayBridge` from a gateway: `set_routes` (sync, cheap, call it on every
    route change) and `run` (reconciles on change and every `refresh_s`, retries with
    backoff on daemon errors, and removes the helpers when cancelled)."""

    def __init__(self, bridge: GatewayBridge, refresh_s: float = limits.DOCKER_REFRESH_S) -> None:
        self.bridge = bridge
        self.refresh_s = refresh_s
        self._routes: frozenset[BridgeRoute] = frozenset()
        self._changed = trio.Event()
        self.in_place: dict[str, str] = {}

    def set_routes(self, routes: Iterable[BridgeRoute]) -> None:
        routes = frozenset(routes)
        if routes != self._routes:
            self._routes = routes
            self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        retry_s = limits.DOCKER_RETRY_MIN_S
        started = False
        try:
            while True:
                self._changed = trio.Event()
                wait_s = self.refresh_s
                try:
                    self.in_place = await self.bridge.reconcile(self._routes)
                    retry_s = limits.DOCKER_RETRY_MIN_S
                except DockerError as exc:
                    log.warning(
                        "docker helpers not updated network=%s error=%s retry_in_s=%.1f",
                        self.bridge.network, exc, retry_s,
                    )
                    wait_s = retry_s
                    retry_s = min(retry_s * 2, limits.DOCKER_RETRY_MAX_S)
                if not started:
                    task_status.started()
                    started = True
                with trio.move_on_after(wait_s):
                    await self._changed.wait()
        finally:
            # Helpers relay to our listeners: without us they only refuse connections.
            with trio.CancelScope(shield=True), trio.move_on_after(limits.DOCKER_REQUEST_TIMEOUT_S):
                try:
                    await self.bridge.remove_all()
                except DockerError as exc:
                    log.warning("docker helpers not removed network=%s error=%s", self.bridge.network, exc)


# --- where helpers reach the gateway ------------------------------------------------------


def detect_own_container() -> str | None:
    """This process's container id (or hostname, which Docker sets to the short id) when
    running inside a Docker or Podman container, else None."""
    if not (os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")):
        return None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            match = re.search(r"/containers/([0-9a-f]{64})/", fh.read())
        if match:
            return match.group(1)
    except OSError:
        pass
    return socket.gethostname()


async def address_on_network(engine: DockerEngine, network: str, *, own_container: str | None = None) -> str:
    """The address at which containers on `network` reach this process (a gateway's
    listeners), after making sure this process can reach them (a provider's services).

    On the host: the network's gateway address (the host's end of the bridge), so the
    gateway must listen on 0.0.0.0 or on that address. In a container: the container's
    address on the network, connecting it to the network first when it is not attached.
    """
    network_doc = await engine.ensure_network(network)
    if own_container:
        data = await engine.inspect_container(own_container)
        endpoints = (data.get("NetworkSettings") or {}).get("Networks") or {}
        if network not in endpoints:
            log.info("docker connecting own container to network=%s", network)
            await engine.connect_network(network, own_container)
            data = await engine.inspect_container(own_container)
            endpoints = (data.get("NetworkSettings") or {}).get("Networks") or {}
        address = (endpoints.get(network) or {}).get("IPAddress")
        if not address:
            raise DockerError(f"docker network {network}: own container has no address on it")
        return str(address)
    for ipam in (network_doc.get("IPAM") or {}).get("Config") or []:
        gateway = (ipam or {}).get("Gateway")
        if gateway and ":" not in gateway:
            return str(gateway)
    raise DockerError(f"docker network {network}: no IPv4 gateway address in its IPAM config")
