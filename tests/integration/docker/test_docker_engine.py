"""Docker mode against a real engine (Podman's Docker-compatible API): the Engine API
client, and the provider's discovery of labelled containers."""

import logging

import pytest
import trio

from hypergate.config import Service
from hypergate.docker.discovery import discover, run_discovery
from hypergate.docker.engine import DockerEngine, DockerError


async def podman_cli(podman, *args):
    # Off the event loop, so a discovery loop running beside it keeps its schedule.
    return await trio.to_thread.run_sync(lambda: podman.run(*args))


def run_detached(podman, network, name, *, alias=None, labels=(), publish=None, command=("sleep", "600")):
    args = ["run", "-d", "--name", name, "--network", network]
    if alias:
        args += ["--network-alias", alias]
    for label in labels:
        args += ["--label", label]
    if publish:
        args += ["--publish", publish]
    return [*args, podman.image, *command]


async def start_container(podman, network, name, **kwargs):
    result = await podman_cli(podman, *run_detached(podman, network, name, **kwargs))
    return result.stdout.strip()


async def wait_for(predicate, timeout_s=30.0):
    """Bounded polling of a real condition (the engine's state changes asynchronously)."""
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)


async def test_engine_calls_against_podman(podman):
    engine = DockerEngine(podman.socket_path)
    await engine.ping()
    assert (await engine.version())["ApiVersion"]

    network = podman.unique("hgnet")
    created = await engine.ensure_network(network)
    assert created["Name"] == network
    again = await engine.ensure_network(network)  # idempotent: the same network
    assert again["Id"] == created["Id"]
    assert network in [n["Name"] for n in await engine.list_networks()]

    container_id = await engine.create_container(
        {
            "Image": podman.image,
            "Cmd": ["sleep", "600"],
            "Labels": {"probe": "1"},
            "HostConfig": {"NetworkMode": network},
            "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": ["probe.hyper"]}}},
        },
        name=podman.unique("probe"),
    )
    await engine.start_container(container_id)
    await engine.start_container(container_id)  # already running: 304, not an error
    data = await engine.inspect_container(container_id)
    assert data["State"]["Running"]
    assert "probe.hyper" in data["NetworkSettings"]["Networks"][network]["Aliases"]
    listed = await engine.list_containers(filters={"label": ["probe=1"]})
    assert [c["Id"] for c in listed] == [container_id]

    await engine.stop_container(container_id, timeout_s=0)
    assert not (await engine.inspect_container(container_id))["State"]["Running"]
    await engine.remove_container(container_id)
    with pytest.raises(DockerError) as info:
        await engine.inspect_container(container_id)
    assert info.value.status == 404


async def test_discovery_reads_labels_aliases_and_skips_malformed(podman, caplog):
    engine = DockerEngine(podman.socket_path)
    network = podman.unique("hgnet")
    await engine.ensure_network(network)
    await start_container(podman, network, podman.unique("web"), alias="web.hyper",
                          labels=["hypergate.EXPOSE=80:8080,53/udp"])
    named = podman.unique("noalias")
    await start_container(podman, network, named, labels=["hypergate.EXPOSE=9000"])
    await start_container(podman, network, podman.unique("excluded"), alias="hidden.hyper",
                          labels=["hypergate.EXCLUDE=true", "hypergate.EXPOSE=81"])
    await start_container(podman, network, podman.unique("unexposed"), alias="pub.hyper",
                          labels=["hypergate.UNEXPOSE=*"], publish="127.0.0.1::7000")
    bad = podman.unique("bad")
    await start_container(podman, network, bad, alias="bad.hyper",
                          labels=["hypergate.EXPOSE=80:http"])
    # Off the network: not ours to advertise.
    other = podman.unique("other")
    await engine.ensure_network(other)
    await start_container(podman, other, podman.unique("elsewhere"), alias="else.hyper",
                          labels=["hypergate.EXPOSE=82"])

    with caplog.at_level(logging.WARNING, logger="hypergate.docker"):
        services = await discover(engine, network)

    published = (await podman_cli(podman, "port", "--all")).stdout
    public_port = int(published.strip().rsplit(":", 1)[1])
    assert services == sorted(
        [
            Service(gatePort=public_port, serviceHost="pub.hyper", servicePort=7000, protocol="tcp",
                    tags="docker published"),
            Service(gatePort=53, serviceHost="web.hyper", servicePort=53, protocol="udp", tags="docker"),
            Service(gatePort=8080, serviceHost="web.hyper", servicePort=80, protocol="tcp",
                    tags="docker published"),
            Service(gatePort=9000, serviceHost=named, servicePort=9000, protocol="tcp", tags="docker"),
        ],
        key=lambda s: (s.serviceHost, s.gatePort, s.protocol),
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert f"container={bad} label=hypergate.EXPOSE value='80:http'" in warnings[0]


async def test_discover_creates_missing_network(podman):
    engine = DockerEngine(podman.socket_path)
    network = podman.unique("fresh")
    assert await discover(engine, network) == []
    assert (await engine.inspect_network(network))["Driver"] == "bridge"


async def test_stopped_container_withdrawn_and_daemon_restart_survived(podman, caplog):
    engine = DockerEngine(podman.socket_path)
    network = podman.unique("hgnet")
    await engine.ensure_network(network)
    db = podman.unique("db")
    await start_container(podman, network, db, alias="mysql.hyper", labels=["hypergate.EXPOSE=3306"])
    await start_container(podman, network, podman.unique("web"), alias="web.hyper",
                          labels=["hypergate.EXPOSE=80"])
    deliveries = []

    def hosts():
        return [s.serviceHost for s in deliveries[-1]] if deliveries else None

    with caplog.at_level(logging.INFO, logger="hypergate.docker.discovery"):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_discovery, engine, network, 0.2, deliveries.append)
            assert hosts() == ["mysql.hyper", "web.hyper"]

            await podman_cli(podman, "stop", "--time", "0", db)
            await wait_for(lambda: hosts() == ["web.hyper"])

            # The daemon goes away: one warning a retry, the last services stay.
            count_before = len(deliveries)
            await trio.to_thread.run_sync(podman.stop_service)
            await wait_for(lambda: any("docker discovery failed" in r.getMessage() for r in caplog.records))
            await podman_cli(podman, "start", db)  # changed while the daemon was away
            assert len(deliveries) == count_before
            await trio.to_thread.run_sync(podman.start_service)
            await wait_for(lambda: any("docker discovery recovered" in r.getMessage() for r in caplog.records))
            await wait_for(lambda: hosts() == ["mysql.hyper", "web.hyper"])
            nursery.cancel_scope.cancel()
    failure = next(r.getMessage() for r in caplog.records if "docker discovery failed" in r.getMessage())
    assert f"network={network}" in failure and podman.socket_path in failure
