"""The discovery loop: change detection, and surviving a daemon that fails or goes away.

The engine here is a scripted stand-in so the loop's timing runs on trio's MockClock;
tests/integration/test_docker_engine.py runs the same code against a real Podman daemon.
"""

import logging
from functools import partial

import trio

from hypergate import limits
from hypergate.docker.discovery import discover, run_discovery
from hypergate.docker.engine import DockerError, DockerUnavailable


def inspect_doc(cid, alias, expose, running=True):
    return {
        "Id": cid * 16,
        "Name": f"/{alias.split('.')[0]}",
        "State": {"Running": running},
        "Config": {"Labels": {"hypergate.EXPOSE": expose}},
        "NetworkSettings": {"Networks": {"net": {"Aliases": [alias], "IPAddress": f"10.0.0.{ord(cid)}"}}},
    }


class ScriptedEngine:
    """Answers like an engine whose containers are `self.containers`; `self.down` makes
    every call fail the way a stopped daemon does."""

    def __init__(self):
        self.containers = {}
        self.down = False
        self.networks_ensured = []
        self.calls_at = []

    def _check(self):
        self.calls_at.append(trio.current_time())
        if self.down:
            raise DockerUnavailable("docker socket /x.sock: connection refused")

    async def ensure_network(self, name):
        self._check()
        self.networks_ensured.append(name)
        return {"Name": name}

    async def list_containers(self, *, all=False, filters=None):
        self._check()
        assert filters == {"network": ["net"], "status": ["running"]}
        return [{"Id": doc["Id"]} for doc in self.containers.values()]

    async def inspect_container(self, cid):
        self._check()
        for doc in self.containers.values():
            if doc["Id"] == cid:
                return doc
        raise DockerError("no such container", status=404)


async def test_discover_ensures_network_and_reads_labels():
    engine = ScriptedEngine()
    engine.containers["a"] = inspect_doc("a", "web.hyper", "80:8080")
    engine.containers["b"] = inspect_doc("b", "db.hyper", "3306", running=False)
    services = await discover(engine, "net")
    assert engine.networks_ensured == ["net"]
    assert [(s.serviceHost, s.gatePort, s.servicePort) for s in services] == [("web.hyper", 8080, 80)]


async def test_discover_propagates_other_errors_than_vanished_container():
    engine = ScriptedEngine()
    engine.containers["a"] = inspect_doc("a", "web.hyper", "80")

    async def failing_inspect(cid):
        raise DockerError("boom", status=500)

    engine.inspect_container = failing_inspect
    try:
        await discover(engine, "net")
    except DockerError as exc:
        assert exc.status == 500
    else:
        raise AssertionError("a 500 from inspect must fail the refresh")


async def test_run_discovery_calls_back_on_change_only(autojump_clock):
    engine = ScriptedEngine()
    engine.containers["a"] = inspect_doc("a", "web.hyper", "80")
    deliveries = []
    addresses = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_discovery, engine, "net", 10.0, deliveries.append, addresses=addresses))
        assert [[s.serviceHost for s in d] for d in deliveries] == [["web.hyper"]]
        assert addresses == {"web.hyper": "10.0.0.97"}
        await trio.sleep(35)  # three more refreshes, nothing changed
        assert len(deliveries) == 1
        engine.containers["b"] = inspect_doc("b", "db.hyper", "3306")
        await trio.sleep(10)
        assert [s.serviceHost for s in deliveries[-1]] == ["db.hyper", "web.hyper"]
        del engine.containers["a"]  # the container stopped: withdrawn on the next refresh
        await trio.sleep(10)
        assert [s.serviceHost for s in deliveries[-1]] == ["db.hyper"]
        assert addresses == {"db.hyper": "10.0.0.98"}
        assert len(deliveries) == 3
        nursery.cancel_scope.cancel()


async def test_run_discovery_survives_daemon_outage_with_backoff(autojump_clock, caplog):
    engine = ScriptedEngine()
    engine.containers["a"] = inspect_doc("a", "web.hyper", "80")
    engine.down = True
    deliveries = []
    with caplog.at_level(logging.INFO, logger="hypergate.docker.discovery"):
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            await nursery.start(run_discovery, engine, "net", 20.0, deliveries.append)
            assert deliveries == []  # started without waiting for a daemon that is down
            await trio.sleep(60)
            failures = [t - start for t in engine.calls_at]
            # 1, 2, 4, 8, 16, 30 s apart: backoff doubles up to the cap.
            gaps = [round(b - a, 3) for a, b in zip(failures, failures[1:])]
            assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
            assert max(gaps) <= limits.DOCKER_RETRY_MAX_S
            engine.down = False
            await trio.sleep(limits.DOCKER_RETRY_MAX_S + 1)
            assert [s.serviceHost for s in deliveries[-1]] == ["web.hyper"]
            # Down again: the last known services stay, nothing is withdrawn.
            engine.down = True
            await trio.sleep(45)
            assert len(deliveries) == 1
            nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "docker discovery failed network=net error=docker socket /x.sock: connection refused" in m
        for m in messages
    )
    assert any("docker discovery recovered network=net" in m for m in messages)
