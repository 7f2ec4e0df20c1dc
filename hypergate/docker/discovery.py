"""Provider side of Docker mode: the services offered by the containers on one network.

`discover` is one refresh; `run_discovery` repeats it every `refresh_s` seconds and calls
back when the set of services changes (so routes of a container that stopped are withdrawn
on the next refresh). The loop never ends on a daemon error: it logs one line, keeps the
last known services (containers usually outlive a daemon restart), and retries with
backoff until the daemon answers again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .. import limits
from ..config import Service
from .engine import DockerEngine, DockerError
from .labels import ContainerView, container_from_inspect, services_for_containers

log = logging.getLogger(__name__)

# The README's examples name the network `hypergatenet`; the original's default put the
# router secret in the network name, which `docker network ls` shows to anyone.
DEFAULT_NETWORK = "hypergatenet"


async def running_containers(engine: DockerEngine, network: str) -> list[ContainerView]:
    """Running containers attached to `network`, read from their inspect documents
    (the documented source of per-network aliases and exposed ports)."""
    summaries = await engine.list_containers(
        filters={"network": [network], "status": ["running"]}
    )
    containers = []
    for summary in summaries:
        container_id = str(summary.get("Id") or "")
        try:
            data = await engine.inspect_container(container_id)
        except DockerError as exc:
            if exc.status == 404:  # removed between the list and the inspect
                continue
            raise
        if not (data.get("State") or {}).get("Running", False):
            continue
        containers.append(container_from_inspect(data, network))
    return containers


async def discover(engine: DockerEngine, network: str) -> list[Service]:
    """One refresh: make sure the network exists, then the services of its containers
    (sorted, so two refreshes with the same containers compare equal)."""
    services, _ = await discover_with_addresses(engine, network)
    return services


async def discover_with_addresses(engine: DockerEngine, network: str) -> tuple[list[Service], dict[str, str]]:
    """`discover`, plus {service host: container IP on the network} for a provider that
    runs on the host, where the network's DNS names do not resolve."""
    await engine.ensure_network(network)
    containers = await running_containers(engine, network)
    services = services_for_containers(containers)
    hosts = {s.serviceHost for s in services}
    addresses = {
        c.service_host: c.ip_address for c in containers if c.ip_address and c.service_host in hosts
    }
    return services, addresses


def _describe(services: list[Service]) -> str:
    return ",".join(f"{s.serviceHost}:{s.servicePort}/{s.protocol}->{s.gatePort}" for s in services)


async def run_discovery(
    engine: DockerEngine,
    network: str,
    refresh_s: float,
    on_services: Callable[[list[Service]], None],
    *,
    addresses: dict[str, str] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Refresh forever; call `on_services(services)` with the whole new list whenever it
    differs from the last one delivered (the first successful refresh always delivers).

    `task_status.started()` fires after the first attempt, successful or not, so a
    provider starts with its containers' services when the daemon is up and does not
    wait on a daemon that is down.

    `addresses`, when given, is kept equal to {service host: container IP} (updated in
    place before each delivery) for a provider on the host to connect by IP.
    """
    delivered: list[Service] | None = None
    retry_s = limits.DOCKER_RETRY_MIN_S
    failing = False
    started = False
    while True:
        try:
            services, found_addresses = await discover_with_addresses(engine, network)
        except DockerError as exc:
            log.warning(
                "docker discovery failed network=%s error=%s retry_in_s=%.1f",
                network,
                exc,
                retry_s,
            )
            failing = True
            if not started:
                task_status.started()
                started = True
            await trio.sleep(retry_s)
            retry_s = min(retry_s * 2, limits.DOCKER_RETRY_MAX_S)
            continue
        if failing:
            log.info("docker discovery recovered network=%s", network)
            failing = False
        retry_s = limits.DOCKER_RETRY_MIN_S
        if addresses is not None and addresses != found_addresses:
            addresses.clear()
            addresses.update(found_addresses)
        if services != delivered:
            previous = set(delivered or [])
            current = set(services)
            log.info(
                "docker services changed network=%s count=%d added=%s removed=%s",
                network,
                len(services),
                _describe(sorted(current - previous, key=services.index)) or "-",
                _describe([s for s in (delivered or []) if s not in current]) or "-",
            )
            delivered = services
            on_services(list(services))
        if not started:
            task_status.started()
            started = True
        await trio.sleep(refresh_s)
