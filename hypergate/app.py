"""Assembles a running node from parsed options: router, roles, and their task tree."""

from __future__ import annotations

import logging
import signal

import attrs
import trio

from . import limits
from .config import Service
from .crypto.keys import RouterKeys
from .roles import Roles
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


@attrs.define
class Node:
    """A provider and/or gateway with its router, ready to `run`."""

    router: Router
    provider: Provider | None
    gateway: Gateway | None

    @classmethod
    def build(cls, config: NodeConfig) -> Node:
        provider = Provider(list(config.services)) if config.services is not None else None
        gateway = Gateway(config.listen, config.exposure) if config.gateway else None
        router = Router(
            RouterKeys.from_secret(config.router_secret),
            Roles(provider, gateway),
            provider=provider is not None,
            gateway=gateway is not None,
            peer_host=config.peer_host,
            peer_port=config.peer_port,
            peers=list(config.peers),
            name=config.name,
        )
        return cls(router, provider, gateway)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.provider is not None:
                await nursery.start(self.provider.run)
            if self.gateway is not None:
                await nursery.start(self.gateway.run)
            await nursery.start(self.router.run)
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
