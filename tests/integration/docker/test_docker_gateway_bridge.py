"""Gateway side of Docker mode against a real engine: helper containers joined to the
network under a service's name relay a real connection from another container to a
server on the host (where the gateway's listener would be)."""

import os
import sys
from functools import partial

import pytest
import trio

import hypergate

from hypergate.docker.engine import DockerEngine
from hypergate.docker.gateway_bridge import (
    LABEL_HELPER_ALIAS,
    BridgeRoute,
    BridgeSync,
    GatewayBridge,
    HelperRunner,
    address_on_network,
    bridge_routes,
)
from hypergate.config import Service

REPO = os.path.dirname(os.path.dirname(os.path.abspath(hypergate.__file__)))


def host_python_runner(image):
    """The forwarder from this checkout, run in the busybox image with the host's
    interpreter, libraries and virtualenv mounted read-only (the production image has
    them built in)."""
    mounts = {REPO, sys.base_prefix, "/usr", "/lib"}
    if os.path.isdir("/lib64"):
        mounts.add("/lib64")
    return HelperRunner(
        image=image,
        kind="python",
        python=os.path.join(REPO, ".venv", "bin", "python"),
        binds=tuple(sorted(f"{path}:{path}:ro" for path in mounts)),
    )


async def start_tcp_server(nursery):
    """A server on all host addresses (the gateway's listener stands here): answers
    `pong:<first line>` and closes."""

    async def handler(stream):
        async with stream:
            data = b""
            with trio.move_on_after(10):
                while b"\n" not in data:
                    chunk = await stream.receive_some(1024)
                    if not chunk:
                        break
                    data += chunk
            await stream.send_all(b"pong:" + data)

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="0.0.0.0"))
    return listeners[0].socket.getsockname()[1]


async def start_udp_echo(nursery):
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("0.0.0.0", 0))

    async def serve():
        with sock:
            while True:
                data, addr = await sock.recvfrom(2048)
                await sock.sendto(b"echo:" + data, addr)

    nursery.start_soon(serve)
    return sock.getsockname()[1]


async def client_in_container(podman, network, script, *extra):
    """Run `script` in a fresh container on the network; retries inside are bounded
    (the helper may still be starting)."""
    result = await trio.to_thread.run_sync(
        lambda: podman.run("run", "--rm", "--network", network, *extra, podman.image, "sh", "-c", script,
                           check=False)
    )
    return result


def tcp_probe(host, port):
    return (
        f"for i in $(seq 100); do out=$(echo hello | nc -w 2 {host} {port}) && [ -n \"$out\" ] "
        f"&& echo \"$out\" && exit 0; sleep 0.1; done; exit 1"
    )


async def test_helper_relays_tcp_and_udp_from_a_container_to_the_host(podman):
    engine = DockerEngine(podman.socket_path)
    network = podman.unique("hgnet")
    target = await address_on_network(engine, network)
    runner = host_python_runner(podman.image)
    bridge = GatewayBridge(engine, network, target, runner=runner, owner="test")
    async with trio.open_nursery() as nursery:
        tcp_port = await start_tcp_server(nursery)
        udp_port = await start_udp_echo(nursery)
        in_place = await bridge.reconcile(
            [BridgeRoute("mysql.hyper", tcp_port, "tcp"), BridgeRoute("dns.hyper", udp_port, "udp")]
        )
        assert set(in_place) == {"mysql.hyper", "dns.hyper"}

        result = await client_in_container(podman, network, tcp_probe("mysql.hyper", tcp_port))
        assert (result.returncode, result.stdout.strip()) == (0, "pong:hello"), result.stderr

        udp_client = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(0.5)\n"
            "for i in range(60):\n"
            f"    s.sendto(b'ping',('dns.hyper',{udp_port}))\n"
            "    try: print(s.recv(100).decode()); sys.exit(0)\n"
            "    except (socket.timeout, OSError): pass\n"
            "sys.exit(1)\n"
        )
        binds = [arg for b in runner.binds for arg in ("-v", b)]
        result = await trio.to_thread.run_sync(
            lambda: podman.run("run", "--rm", "--network", network, *binds, podman.image,
                               runner.python, "-c", udp_client, check=False)
        )
        assert (result.returncode, result.stdout.strip()) == (0, "echo:ping"), result.stderr

        # Nothing secret to see: only our labels, no environment of ours.
        data = await engine.inspect_container(in_place["mysql.hyper"])
        assert data["Name"].lstrip("/").startswith("hypergate-helper-mysql.hyper-")
        assert sorted(data["Config"]["Labels"]) == [
            "hypergate.EXCLUDE",
            "hypergate.helper.alias",
            "hypergate.helper.network",
            "hypergate.helper.owner",
            "hypergate.helper.spec",
        ]
        assert [e for e in data["Config"]["Env"] or [] if not e.startswith(("PATH=", "container=", "HOSTNAME=", "HOME=", "TERM="))] == []
        nursery.cancel_scope.cancel()


async def test_reconcile_is_idempotent_replaces_changed_removes_stale(podman):
    engine = DockerEngine(podman.socket_path)
    network = podman.unique("hgnet")
    target = await address_on_network(engine, network)
    bridge = GatewayBridge(engine, network, target, runner=HelperRunner(podman.image, kind="busybox"),
                           owner="test")
    other_owner = GatewayBridge(engine, network, target, runner=HelperRunner(podman.image, kind="busybox"),
                                owner="someone-else")
    # A local container already answers to local.hyper: no helper may shadow it.
    await trio.to_thread.run_sync(
        lambda: podman.run("run", "-d", "--network", network, "--network-alias", "local.hyper",
                           podman.image, "sleep", "600")
    )
    async with trio.open_nursery() as nursery:
        port = await start_tcp_server(nursery)
        theirs = await other_owner.reconcile([BridgeRoute("theirs.hyper", port)])

        first = await bridge.reconcile([BridgeRoute("a.hyper", port), BridgeRoute("local.hyper", port),
                                        BridgeRoute("u.hyper", port, "udp")])
        assert list(first) == ["a.hyper"]  # local.hyper is local; busybox cannot relay UDP
        again = await bridge.reconcile([BridgeRoute("a.hyper", port)])
        assert again == first  # nothing changed: the same container kept

        result = await client_in_container(podman, network, tcp_probe("a.hyper", port))
        assert (result.returncode, result.stdout.strip()) == (0, "pong:hello"), result.stderr

        # a.hyper gains a port (its helper is replaced); b.hyper appears.
        changed = await bridge.reconcile([BridgeRoute("a.hyper", port), BridgeRoute("a.hyper", 4000),
                                          BridgeRoute("b.hyper", port)])
        assert set(changed) == {"a.hyper", "b.hyper"}
        assert changed["a.hyper"] != first["a.hyper"]
        result = await client_in_container(podman, network, tcp_probe("b.hyper", port))
        assert (result.returncode, result.stdout.strip()) == (0, "pong:hello"), result.stderr

        # A helper that died is started afresh.
        await trio.to_thread.run_sync(lambda: podman.run("stop", "--time", "0", changed["b.hyper"]))
        revived = await bridge.reconcile([BridgeRoute("a.hyper", port), BridgeRoute("a.hyper", 4000),
                                          BridgeRoute("b.hyper", port)])
        assert revived["a.hyper"] == changed["a.hyper"] and revived["b.hyper"] != changed["b.hyper"]

        # b.hyper's routes are gone: its helper goes; the other owner's helper stays.
        await bridge.reconcile([BridgeRoute("a.hyper", port), BridgeRoute("a.hyper", 4000)])
        assert sorted(h["Labels"][LABEL_HELPER_ALIAS] for h in await bridge.helpers()) == ["a.hyper"]
        await bridge.remove_all()
        assert await bridge.helpers() == []
        assert [h["Id"] for h in await other_owner.helpers()] == [theirs["theirs.hyper"]]
        nursery.cancel_scope.cancel()


def test_target_host_must_be_an_address():
    with pytest.raises(ValueError, match="not a hostname or IP address"):
        GatewayBridge(DockerEngine("/nonexistent"), "net", "1.2.3.4; rm -rf /")


async def test_bridge_sync_follows_routes_and_cleans_up_on_cancel(podman):
    engine = DockerEngine(podman.socket_path)
    network = podman.unique("hgnet")
    target = await address_on_network(engine, network)
    bridge = GatewayBridge(engine, network, target, runner=HelperRunner(podman.image, kind="busybox"),
                           owner="sync")
    sync = BridgeSync(bridge, refresh_s=3600)  # only route changes trigger work here

    def aliases():
        return sorted(sync.in_place)

    async with trio.open_nursery() as nursery:
        port = await start_tcp_server(nursery)
        sync.set_routes(bridge_routes([Service(gatePort=port, serviceHost="mysql.hyper", servicePort=3306)]))
        await nursery.start(sync.run)
        assert aliases() == ["mysql.hyper"]
        result = await client_in_container(podman, network, tcp_probe("mysql.hyper", port))
        assert (result.returncode, result.stdout.strip()) == (0, "pong:hello"), result.stderr

        sync.set_routes(bridge_routes([Service(gatePort=port, serviceHost="pma.hyper", servicePort=80)]))
        with trio.fail_after(30):
            while aliases() != ["pma.hyper"]:
                await trio.sleep(0.05)
        assert [h["Labels"][LABEL_HELPER_ALIAS] for h in await bridge.helpers()] == ["pma.hyper"]
        nursery.cancel_scope.cancel()
    assert await bridge.helpers() == []  # removed when the gateway stops


async def test_address_on_network_connects_own_container(podman):
    # A gateway (or provider) running in a container that is not yet on the network.
    engine = DockerEngine(podman.socket_path)
    home, network = podman.unique("home"), podman.unique("hgnet")
    await engine.ensure_network(home)
    own = await trio.to_thread.run_sync(
        lambda: podman.run("run", "-d", "--network", home, podman.image, "sleep", "600").stdout.strip()
    )
    address = await address_on_network(engine, network, own_container=own)
    endpoints = (await engine.inspect_container(own))["NetworkSettings"]["Networks"]
    assert set(endpoints) == {home, network}
    assert endpoints[network]["IPAddress"] == address
    assert await address_on_network(engine, network, own_container=own) == address  # no second connect
