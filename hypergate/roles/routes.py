"""The gateway's route table (no I/O; time passed in).

Each provider's latest advert replaces its previous one; a provider's routes go when its
link closes or when it has not re-advertised within the expiry. A gate is a
(gatePort, protocol) pair; a TCP gate is never served by a UDP route or the reverse.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import attrs

from ..config import Service, ServiceFilter
from ..wire.messages import RouteEntry

Peer = TypeVar("Peer", bound=Hashable)


@attrs.frozen(order=True)
class GateKey:
    port: int
    protocol: str

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


def gate_of(service: Service) -> GateKey:
    return GateKey(service.gatePort, service.protocol)


@attrs.frozen
class ExposurePolicy:
    """Which advertised services this gateway exposes: all, or those its filter file
    lists (any entry matches) and, independently, those --exposeOnlyServices names."""

    filters: tuple[ServiceFilter, ...] | None = None
    only_service_hosts: frozenset[str] | None = None
    # Docker mode: only services a provider found in containers / with published ports
    # (providers tag them "docker" and "published").
    only_docker: bool = False
    only_published: bool = False

    def allows(self, service: Service) -> bool:
        if self.filters is not None and not any(f.matches(service) for f in self.filters):
            return False
        if self.only_service_hosts is not None and service.serviceHost not in self.only_service_hosts:
            return False
        tags = set((service.tags or "").replace(",", " ").split())
        if self.only_docker and "docker" not in tags:
            return False
        if self.only_published and "published" not in tags:
            return False
        return True


class RouteTable(Generic[Peer]):
    def __init__(self, exposure: ExposurePolicy = ExposurePolicy()) -> None:
        self.exposure = exposure
        self._routes: dict[Peer, dict[GateKey, RouteEntry]] = {}
        self._expires_at: dict[Peer, float] = {}
        self._turn: dict[GateKey, int] = {}

    def replace(self, peer: Peer, entries: list[RouteEntry], now: float, ttl: float) -> None:
        routes: dict[GateKey, RouteEntry] = {}
        for entry in entries:
            if self.exposure.allows(entry.service):
                # One route per gate per provider: the first one advertised wins.
                routes.setdefault(gate_of(entry.service), entry)
        self._routes[peer] = routes
        self._expires_at[peer] = now + ttl

    def routes_of(self, peer: Peer) -> dict[GateKey, Any]:
        return dict(self._routes.get(peer, {}))

    def remove_peer(self, peer: Peer) -> None:
        self._routes.pop(peer, None)
        self._expires_at.pop(peer, None)

    def expire(self, now: float) -> list[Peer]:
        stale = [peer for peer, at in self._expires_at.items() if at <= now]
        for peer in stale:
            self.remove_peer(peer)
        return stale

    def services(self) -> list[Service]:
        """Every exposed service, once per (host, gate, protocol)."""
        seen = {}
        for routes in self._routes.values():
            for route in routes.values():
                seen.setdefault((route.service.serviceHost, gate_of(route.service)), route.service)
        return list(seen.values())

    def gates(self) -> set[GateKey]:
        return {key for routes in self._routes.values() for key in routes}

    def providers(self, key: GateKey) -> list[tuple[Peer, RouteEntry]]:
        return [(peer, routes[key]) for peer, routes in self._routes.items() if key in routes]

    def rotation(self, key: GateKey) -> list[tuple[Peer, RouteEntry]]:
        """Providers of a gate in round-robin order: each call starts one further along."""
        candidates = self.providers(key)
        if not candidates:
            return []
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        start = turn % len(candidates)
        return candidates[start:] + candidates[:start]
