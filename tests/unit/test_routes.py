"""Gateway route table: round robin, protocol separation, expiry, exposure filters."""

from hypergate.config import Service, ServiceFilter
from hypergate.roles.routes import ExposurePolicy, GateKey, RouteTable
from hypergate.wire.messages import RouteEntry


def entry(port, host="web", proto="tcp", service_port=80):
    return RouteEntry(Service(port, host, service_port, proto))


def test_round_robin_rotates_across_providers_of_a_gate():
    table = RouteTable()
    for peer in ["a", "b", "c"]:
        table.replace(peer, [entry(80)], now=0, ttl=60)
    firsts = [table.rotation(GateKey(80, "tcp"))[0][0] for _ in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    # Every rotation still lists every provider, so a failed one falls through to the rest.
    assert sorted(p for p, _ in table.rotation(GateKey(80, "tcp"))) == ["a", "b", "c"]


def test_tcp_and_udp_gates_on_one_port_never_mix():
    table = RouteTable()
    table.replace("tcp-provider", [entry(53, proto="tcp")], now=0, ttl=60)
    table.replace("udp-provider", [entry(53, proto="udp")], now=0, ttl=60)
    assert [p for p, _ in table.rotation(GateKey(53, "udp"))] == ["udp-provider"]
    assert [p for p, _ in table.rotation(GateKey(53, "tcp"))] == ["tcp-provider"]


def test_new_advert_replaces_old_and_expiry_removes_silent_providers():
    table = RouteTable()
    table.replace("a", [entry(80), entry(81)], now=0, ttl=60)
    table.replace("b", [entry(80)], now=30, ttl=60)
    table.replace("a", [entry(81)], now=10, ttl=60)
    assert table.gates() == {GateKey(80, "tcp"), GateKey(81, "tcp")}
    assert [p for p, _ in table.providers(GateKey(80, "tcp"))] == ["b"]
    assert table.expire(now=70) == ["a"]
    assert table.gates() == {GateKey(80, "tcp")}
    assert table.expire(now=90) == ["b"]
    assert table.gates() == set()


def test_exposure_filter_file_and_expose_only_services_both_apply():
    exposure = ExposurePolicy(
        filters=(ServiceFilter(gatePort=80), ServiceFilter(serviceHost="db", protocol="tcp")),
        only_service_hosts=frozenset({"web", "db"}),
    )
    table = RouteTable(exposure)
    table.replace(
        "p",
        [entry(80, "web"), entry(80, "other", service_port=81), entry(3306, "db"), entry(5353, "db", "udp"), entry(22, "ssh")],
        now=0,
        ttl=60,
    )
    assert table.gates() == {GateKey(80, "tcp"), GateKey(3306, "tcp")}
    assert table.providers(GateKey(80, "tcp"))[0][1].service.serviceHost == "web"


def test_expose_only_services_alone_filters_without_a_filter_file():
    table = RouteTable(ExposurePolicy(only_service_hosts=frozenset({"web"})))
    table.replace("p", [entry(80, "web"), entry(22, "ssh")], now=0, ttl=60)
    assert table.gates() == {GateKey(80, "tcp")}
