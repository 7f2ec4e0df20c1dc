"""`hypergate demo`: the whole path on one machine.

A small HTTP service on 127.0.0.1, a provider that offers it and a gateway that exposes
it, each a full node with its own identity, talking over an encrypted peer link on
loopback exactly as two machines would. Prints the curl line that shows the page.
"""

from __future__ import annotations

import logging
import signal
import socket

import trio

from .app import Node, NodeConfig
from .config import Service
from .crypto.keys import new_router_secret, parse_router_secret
from .http.server import Request, Response, serve_http
from .router import PeerAddress

log = logging.getLogger(__name__)

PAGE = b"Hello from hypergate: this page came through an encrypted peer-to-peer tunnel.\n"


async def _demo_page(request: Request) -> Response:
    return Response(200, PAGE, (("Content-Type", "text/plain; charset=utf-8"),))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def run_demo(gate_port: int = 0, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    gate_port = gate_port or _free_port()
    secret = parse_router_secret(new_router_secret())
    async with trio.open_nursery() as nursery:
        service_port = await nursery.start(serve_http, _demo_page, "127.0.0.1", 0)
        provider = Node.build(
            NodeConfig(
                router_secret=secret,
                services=(Service(gate_port, "127.0.0.1", service_port),),
                peer_host="127.0.0.1",
                peer_port=0,
                name="demo-provider",
            )
        )
        await nursery.start(provider.run)
        gateway = Node.build(
            NodeConfig(
                router_secret=secret,
                gateway=True,
                listen="127.0.0.1",
                peers=(PeerAddress("127.0.0.1", provider.router.listening_port),),
                name="demo-gateway",
            )
        )
        await nursery.start(gateway.run)
        assert gateway.gateway is not None
        with trio.fail_after(15):
            while not gateway.gateway.open_gates:
                await gateway.gateway.gates_changed.wait()
        url = f"http://127.0.0.1:{gate_port}/"
        print(f"hypergate demo is running. Try it:\n\n    curl {url}\n\n(Ctrl-C to stop)", flush=True)
        task_status.started(url)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
