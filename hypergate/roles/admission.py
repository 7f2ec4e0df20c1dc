"""Gateway admission: the provider's ingress policy (and /unlimited grants) decide, for
each new client, whether it gets in, with which labels and at what bandwidth."""

from __future__ import annotations

import logging

import attrs

from ..config import Service
from ..errors import ProtocolError
from ..http.fingerprint_resolver import wall_clock_ms
from ..policy.ingress import BandwidthLimit, IngressPolicy
from ..policy.unlimited import UnlimitedService
from ..wire.messages import RouteEntry
from .routes import GateKey

log = logging.getLogger(__name__)


@attrs.frozen
class GatewayRoute:
    """A route as the gateway keeps it: the service and its provider's parsed policy."""

    service: Service
    policy: IngressPolicy = IngressPolicy.empty()


@attrs.frozen
class Admission:
    allowed: bool = True
    reason: str = ""
    labels: tuple[str, ...] = ()
    bandwidth: BandwidthLimit | None = None


def parse_routes(entries: list[RouteEntry], peer_name: str) -> list[GatewayRoute]:
    """Routes from an advert; one whose policy does not parse is dropped, never exposed
    without the restrictions its provider meant it to have."""
    routes = []
    for entry in entries:
        try:
            policy = IngressPolicy.from_wire(entry.policy)
        except ProtocolError as exc:
            log.warning(
                "peer=%s gate=%d/%s event=route_dropped reason=%r",
                peer_name, entry.service.gatePort, entry.service.protocol, str(exc),
            )
            continue
        routes.append(GatewayRoute(entry.service, policy))
    return routes


class PolicyAdmission:
    """Decides with the route's policy, then lets an /unlimited grant lift its limits."""

    def __init__(self, unlimited: UnlimitedService | None = None) -> None:
        self.unlimited = unlimited

    def __call__(self, client_ip: str, key: GateKey, route: GatewayRoute) -> Admission:
        now_ms = wall_clock_ms()
        decision = route.policy.decide(client_ip, key.port, key.protocol, now_ms)
        if self.unlimited is not None:
            decision = self.unlimited.apply(decision, client_ip, now_ms)
        return Admission(decision.allowed, decision.reason, decision.labels, decision.bandwidth)
