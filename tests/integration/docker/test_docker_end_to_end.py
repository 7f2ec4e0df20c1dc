"""The README's cross-host Docker scenario, end to end, on one machine.

Two Podman networks stand for two machines' `hypergatenet`: on "machine A" a database
container answers as `mysql.hyper`; a provider node discovers it from its labels. On
"machine B" a gateway node exposes the routes it learns and keeps a helper container on
B's network under the same name, so a container on B reaches `mysql.hyper:<port>`
through the encrypted peer link (direct mode on loopback, as `hypergate demo` does).
"""

import logging
import socket
from functools import partial

import attrs
import trio

from hypergate.app import Node, NodeConfig
from hypergate.crypto.keys import new_router_secret, parse_router_secret
from hypergate.docker.discovery import run_discovery
from hypergate.docker.engine import DockerEngine
from hypergate.docker.gateway_bridge import (
    BridgeSync,
    GatewayBridge,
    HelperRunner,
    address_on_network,
    bridge_routes,
)
from hypergate.router import PeerAddress

PAGE = "hello-from-machine-a"


def free_port():
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def resolve_through(addresses, find_service):
    """A provider on the host cannot resolve the network's DNS names: connect to the
    container's address instead (the hook the provider needs for Docker mode)."""

    def find(gate_port, protocol):
        service = find_service(gate_port, protocol)
        if service is None:
            return None
        return attrs.evolve(service, serviceHost=addresses.get(service.serviceHost, service.serviceHost))

    return find


def gateway_services(gateway):
    return [entry.service for key in gateway.routes.gates() for _, entry in gateway.routes.providers(key)]


async def keep_bridge_in_step(gateway, sync):
    while True:
        sync.set_routes(bridge_routes(gateway_services(gateway)))
        await gateway.gates_changed.wait()


async def test_container_on_machine_b_reaches_mysql_hyper_on_machine_a(podman, caplog):
    caplog.set_level(logging.INFO)
    engine = DockerEngine(podman.socket_path)
    net_a, net_b = podman.unique("machine-a"), podman.unique("machine-b")
    port = free_port()
    secret = parse_router_secret(new_router_secret())

    await engine.ensure_network(net_a)
    database = podman.unique("test-mysql")
    await trio.to_thread.run_sync(lambda: podman.run(
        "run", "-d", "--name", database, "--network", net_a, "--network-alias", "mysql.hyper",
        "--label", f"hypergate.EXPOSE={port}", podman.image,
        "sh", "-c", f"mkdir /www && echo {PAGE} > /www/index.html && exec httpd -f -p {port} -h /www",
    ))

    async with trio.open_nursery() as nursery:
        # Machine A: provider fed by Docker discovery.
        provider_node = Node.build(NodeConfig(router_secret=secret, services=(), peer_host="127.0.0.1",
                                              peer_port=0, name="provider-a"))
        provider = provider_node.provider
        addresses: dict[str, str] = {}
        provider.find_service = resolve_through(addresses, provider.find_service)
        await nursery.start(provider_node.run)
        await nursery.start(partial(run_discovery, engine, net_a, 0.5, provider.set_services,
                                    addresses=addresses))
        assert [s.serviceHost for s in provider.services] == ["mysql.hyper"]

        # Machine B: the phpMyAdmin stand-in, then a gateway listening where B's network
        # reaches it, plus its helpers. (Podman brings a network's bridge address up with
        # its first container; Docker does so when the network is created.)
        await engine.ensure_network(net_b)
        client = podman.unique("test-phpmyadmin")
        await trio.to_thread.run_sync(lambda: podman.run(
            "run", "-d", "--name", client, "--network", net_b, "--network-alias", "phpmyadmin.hyper",
            podman.image, "sleep", "600"))
        listen = await address_on_network(engine, net_b)
        gateway_node = Node.build(NodeConfig(
            router_secret=secret, gateway=True, listen=listen,
            peers=(PeerAddress("127.0.0.1", provider_node.router.listening_port),), name="gateway-b",
        ))
        await nursery.start(gateway_node.run)
        bridge = GatewayBridge(engine, net_b, listen, runner=HelperRunner(podman.image, kind="busybox"),
                               owner="gateway-b")
        sync = BridgeSync(bridge, refresh_s=0.5)
        await nursery.start(sync.run)
        nursery.start_soon(keep_bridge_in_step, gateway_node.gateway, sync)

        # A container on machine B, by name, through the tunnel (busybox wget's -T
        # crashes in this build; the retries are bounded by count and podman's timeout).
        script = (
            f"for i in $(seq 150); do wget -q -O - http://mysql.hyper:{port}/ && exit 0; "
            "sleep 0.1; done; exit 1"
        )
        result = await trio.to_thread.run_sync(lambda: podman.run(
            "exec", client, "sh", "-c", script, check=False))
        assert (result.returncode, result.stdout.strip()) == (0, PAGE), result.stderr

        # The database stops: its route is withdrawn, the gate closes, the helper goes.
        await trio.to_thread.run_sync(lambda: podman.run("stop", "--time", "0", database))
        with trio.fail_after(60):
            while await bridge.helpers():
                await trio.sleep(0.2)
        assert not gateway_node.gateway.open_gates
        nursery.cancel_scope.cancel()
