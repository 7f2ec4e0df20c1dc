"""The hypergate.* label rules: every form in the README, and malformed labels."""

import logging

import pytest

from hypergate.config import Service
from hypergate.docker.labels import (
    ContainerPort,
    ContainerView,
    ExposeEntry,
    LabelError,
    UnexposeRule,
    container_from_inspect,
    effective_ports,
    parse_exclude,
    parse_expose,
    parse_unexpose,
    services_for_container,
    services_for_containers,
)


def view(labels=None, ports=(), aliases=("db.hyper",), name="db", on_network=True):
    return ContainerView(
        id="0123456789abcdef" * 4,
        name=name,
        labels=labels or {},
        aliases=tuple(aliases),
        ports=tuple(ports),
        on_network=on_network,
    )


# --- EXPOSE -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("3306", [ExposeEntry(3306, None, "tcp")]),
        ("80:8080", [ExposeEntry(80, 8080, "tcp")]),
        ("53/udp", [ExposeEntry(53, None, "udp")]),
        ("53:5353/udp", [ExposeEntry(53, 5353, "udp")]),
        ("80/tcp", [ExposeEntry(80, None, "tcp")]),
        ("80/TCP", [ExposeEntry(80, None, "tcp")]),
        (
            "80:8080, 443 ,53/udp,",
            [ExposeEntry(80, 8080, "tcp"), ExposeEntry(443, None, "tcp"), ExposeEntry(53, None, "udp")],
        ),
        ("", []),
        ("65535:1", [ExposeEntry(65535, 1, "tcp")]),
    ],
)
def test_expose_forms(value, expected):
    assert parse_expose(value) == expected


@pytest.mark.parametrize(
    "value, reason",
    [
        ("http", "port 'http' is not a port number"),
        ("0", "port '0' is not a port number"),
        ("65536", "port '65536' is not a port number"),
        ("80:", "public port '' is not a port number"),
        (":80", "port '' is not a port number"),
        ("80:x", "public port 'x' is not a port number"),
        ("80/sctp", "protocol 'sctp' is not tcp or udp"),
        ("80/", "protocol '' is not tcp or udp"),
        ("-80", "port '-80' is not a port number"),
        ("80:81:82", "public port '81:82' is not a port number"),
        ("1e3", "port '1e3' is not a port number"),
    ],
)
def test_expose_malformed(value, reason):
    with pytest.raises(LabelError) as info:
        parse_expose(value)
    assert info.value.label == "hypergate.EXPOSE"
    assert info.value.value == value
    assert reason in str(info.value)


# --- UNEXPOSE / EXCLUDE -----------------------------------------------------------------


def test_unexpose_forms():
    assert parse_unexpose("*") == UnexposeRule(everything=True)
    assert parse_unexpose(" * ") == UnexposeRule(everything=True)
    assert parse_unexpose("80,53/udp") == UnexposeRule(ports=frozenset({(80, None), (53, "udp")}))
    assert parse_unexpose("") == UnexposeRule()


@pytest.mark.parametrize("value", ["*,80", "80:8080", "x", "80/icmp"])
def test_unexpose_malformed(value):
    with pytest.raises(LabelError, match="hypergate.UNEXPOSE"):
        parse_unexpose(value)


@pytest.mark.parametrize("value, expected", [("true", True), ("TRUE", True), (" false ", False)])
def test_exclude_forms(value, expected):
    assert parse_exclude(value) is expected


@pytest.mark.parametrize("value", ["yes", "1", "", "truee"])
def test_exclude_malformed(value):
    with pytest.raises(LabelError, match="expected true or false"):
        parse_exclude(value)


# --- port computation -------------------------------------------------------------------


def test_unexpose_keeps_published_ports_and_matches_protocol():
    engine = [
        ContainerPort(80, "tcp", 8080),
        ContainerPort(53, "udp"),
        ContainerPort(53, "tcp"),
        ContainerPort(9000, "tcp"),
    ]
    kept = effective_ports(engine, [], parse_unexpose("80,53/udp"))
    assert kept == [ContainerPort(53, "tcp"), ContainerPort(80, "tcp", 8080), ContainerPort(9000, "tcp")]
    assert effective_ports(engine, [], parse_unexpose("*")) == [ContainerPort(80, "tcp", 8080)]
    # No protocol in UNEXPOSE removes both protocols of that port.
    assert effective_ports(engine, [], parse_unexpose("53")) == [
        ContainerPort(80, "tcp", 8080),
        ContainerPort(9000, "tcp"),
    ]


def test_expose_adds_after_unexpose_and_keeps_engine_public_port():
    engine = [ContainerPort(80, "tcp", 8080), ContainerPort(9000, "tcp")]
    ports = effective_ports(engine, parse_expose("80:9999,9000:9001,3306"), parse_unexpose("*"))
    assert ports == [
        ContainerPort(80, "tcp", 8080),  # published by the engine: stays 8080
        ContainerPort(3306, "tcp"),
        ContainerPort(9000, "tcp", 9001),  # unexposed, then exposed again with a public port
    ]


def test_published_port_listed_per_address_family_counts_once():
    engine = [ContainerPort(80, "tcp", 8080), ContainerPort(80, "tcp", 8080)]
    assert effective_ports(engine, [], UnexposeRule()) == [ContainerPort(80, "tcp", 8080)]


# --- services ---------------------------------------------------------------------------


def test_readme_mysql_example():
    # docker run --label hypergate.EXPOSE=3306 mysql; network connect --alias mysql.hyper
    mysql = view({"hypergate.EXPOSE": "3306"}, aliases=["mysql.hyper"], name="test-mysql")
    assert services_for_container(mysql) == [
        Service(gatePort=3306, serviceHost="mysql.hyper", servicePort=3306, protocol="tcp", tags="docker")
    ]


def test_public_port_becomes_gate_port_and_tags_published():
    web = view({"hypergate.EXPOSE": "80:8080,53/udp"}, aliases=["web.hyper", "www"])
    assert services_for_container(web) == [
        Service(gatePort=53, serviceHost="web.hyper", servicePort=53, protocol="udp", tags="docker"),
        Service(gatePort=8080, serviceHost="web.hyper", servicePort=80, protocol="tcp", tags="docker published"),
    ]


def test_name_used_without_alias():
    assert services_for_container(view({"hypergate.EXPOSE": "80"}, aliases=[], name="web1"))[0].serviceHost == "web1"


def test_image_ports_advertised_without_labels():
    container = view(ports=[ContainerPort(6379, "tcp")], aliases=["redis.hyper"])
    assert [(s.gatePort, s.servicePort) for s in services_for_container(container)] == [(6379, 6379)]


def test_excluded_or_off_network_container_offers_nothing():
    assert services_for_container(view({"hypergate.EXCLUDE": "true", "hypergate.EXPOSE": "80"})) == []
    assert services_for_container(view({"hypergate.EXCLUDE": "false", "hypergate.EXPOSE": "80"})) != []
    assert services_for_container(view({"hypergate.EXPOSE": "80"}, on_network=False)) == []


def test_two_ports_on_one_gate_port_is_an_error():
    with pytest.raises(LabelError, match="gate port 8080/tcp used by ports 80 and 8080"):
        services_for_container(view({"hypergate.EXPOSE": "80:8080,8080"}))


def test_malformed_container_skipped_with_warning_others_unaffected(caplog):
    good = view({"hypergate.EXPOSE": "80"}, aliases=["good.hyper"], name="good")
    bad = view({"hypergate.EXPOSE": "80:http"}, aliases=["bad.hyper"], name="bad")
    bad_exclude = view({"hypergate.EXCLUDE": "yes", "hypergate.EXPOSE": "81"}, name="bad2")
    with caplog.at_level(logging.WARNING, logger="hypergate.docker.labels"):
        services = services_for_containers([bad, good, bad_exclude])
    assert [s.serviceHost for s in services] == ["good.hyper"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "container=bad label=hypergate.EXPOSE value='80:http'" in messages[0]
    assert "public port 'http' is not a port number" in messages[0]
    assert "container=bad2 label=hypergate.EXCLUDE value='yes'" in messages[1]


# --- inspect documents ------------------------------------------------------------------

CONTAINER_ID = "39f22ffd7cb03995f530917881ad4112b39a16e377e6339270508a62e1ce60a5"


def inspect_doc(**overrides):
    doc = {
        "Id": CONTAINER_ID,
        "Name": "/web1",
        "Config": {"Labels": {"hypergate.EXPOSE": "80"}, "ExposedPorts": {"9000/tcp": {}}},
        "NetworkSettings": {
            "Ports": {
                "9000/tcp": None,
                "443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8443"}, {"HostIp": "::", "HostPort": "8443"}],
                "7/sctp": None,
            },
            "Networks": {
                "hypergatenet": {"Aliases": ["web.hyper", "39f22ffd7cb0"], "IPAddress": "10.89.0.2"},
                "other": {"Aliases": ["x"]},
            },
        },
    }
    doc.update(overrides)
    return doc


def test_container_from_inspect_podman_and_docker_shapes():
    container = container_from_inspect(inspect_doc(), "hypergatenet")
    assert container.name == "web1"
    assert container.aliases == ("web.hyper",)  # the short id alias is not a service name
    assert container.labels == {"hypergate.EXPOSE": "80"}
    assert set(container.ports) == {ContainerPort(9000, "tcp"), ContainerPort(443, "tcp", 8443)}
    assert [(s.gatePort, s.servicePort, s.tags) for s in services_for_container(container)] == [
        (80, 80, "docker"),
        (8443, 443, "docker published"),
        (9000, 9000, "docker"),
    ]


def test_container_from_inspect_only_id_alias_and_missing_fields():
    doc = inspect_doc(Config={"Labels": None, "ExposedPorts": None})
    doc["NetworkSettings"]["Networks"]["hypergatenet"]["Aliases"] = ["39f22ffd7cb0"]
    container = container_from_inspect(doc, "hypergatenet")
    assert container.aliases == ()
    assert container.service_host == "web1"
    assert not container_from_inspect(inspect_doc(), "absent").on_network
    bare = container_from_inspect({"Id": CONTAINER_ID}, "hypergatenet")
    assert (bare.name, bare.on_network, bare.ports) == ("39f22ffd7cb0", False, ())
