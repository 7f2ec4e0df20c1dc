"""The UDP hole-punch planner (sans-IO): strategy, targets, budgets for each pairing."""

import random

import pytest

from hypergate import limits
from hypergate.transport.punch_plan import Strategy, accepts, plan, spray_ports
from hypergate.wire.rendezvous import UdpPunchInfo

OPEN = UdpPunchInfo("open", (("198.51.100.7", 40000),), 11)
CONSISTENT = UdpPunchInfo("consistent", (("203.0.113.1", 5000), ("203.0.113.1", 5001)), 12)
RANDOM = UdpPunchInfo("random", (("192.0.2.9", 0),), 13)
UNKNOWN = UdpPunchInfo("unknown", (), 14)


def test_consistent_pairs_probe_every_advertised_address():
    p = plan(CONSISTENT, CONSISTENT)
    assert p.strategy is Strategy.PROBE
    assert p.targets == CONSISTENT.addresses
    assert p.sockets == 1
    assert p.interval_s == limits.UDP_PUNCH_PROBE_INTERVAL_S
    assert p.probes == int(limits.UDP_PUNCH_TIMEOUT_S / limits.UDP_PUNCH_PROBE_INTERVAL_S) * 2


@pytest.mark.parametrize("mine", [OPEN, CONSISTENT, RANDOM])
def test_anyone_probes_an_open_side(mine):
    p = plan(mine, OPEN)
    assert p.strategy is Strategy.PROBE and p.targets == OPEN.addresses and p.sockets == 1


def test_open_side_probes_consistent_and_waits_for_random():
    assert plan(OPEN, CONSISTENT).strategy is Strategy.PROBE
    waiting = plan(OPEN, RANDOM)
    assert waiting.strategy is Strategy.WAIT and waiting.punches and waiting.targets == ()


def test_consistent_side_sprays_the_random_host():
    p = plan(CONSISTENT, RANDOM)
    assert p.strategy is Strategy.SPRAY
    assert p.spray_host == "192.0.2.9"
    assert p.probes == limits.UDP_PUNCH_SPRAY_PROBES <= 3000
    assert p.interval_s == limits.UDP_PUNCH_SPRAY_INTERVAL_S
    # The spray fits inside the punch's time limit.
    assert p.probes * p.interval_s < p.timeout_s


def test_random_side_runs_the_birthday_attack():
    p = plan(RANDOM, CONSISTENT)
    assert p.strategy is Strategy.BIRTHDAY
    assert p.sockets == limits.UDP_PUNCH_BIRTHDAY_SOCKETS == 256
    assert p.targets == CONSISTENT.addresses
    assert p.timeout_s == limits.UDP_PUNCH_RANDOM_TIMEOUT_S


@pytest.mark.parametrize("mine, theirs", [(RANDOM, RANDOM), (UNKNOWN, CONSISTENT), (CONSISTENT, UNKNOWN),
                                          (OPEN, UNKNOWN), (UNKNOWN, RANDOM), (UNKNOWN, OPEN)])
def test_no_punch(mine, theirs):
    p = plan(mine, theirs)
    assert p.strategy is Strategy.NONE and not p.punches and p.reason


def test_both_sides_agree_on_complementary_strategies():
    """What one side does, the other side's plan must match (spray <-> birthday, ...)."""
    infos = [OPEN, CONSISTENT, RANDOM, UNKNOWN]
    complement = {Strategy.SPRAY: {Strategy.BIRTHDAY}, Strategy.BIRTHDAY: {Strategy.SPRAY},
                  Strategy.PROBE: {Strategy.PROBE, Strategy.WAIT}, Strategy.WAIT: {Strategy.PROBE},
                  Strategy.NONE: {Strategy.NONE, Strategy.PROBE, Strategy.WAIT}}
    for a in infos:
        for b in infos:
            assert plan(b, a).strategy in complement[plan(a, b).strategy], (a.firewall, b.firewall)
    # Nobody waits for a side that does not probe.
    for a in infos:
        for b in infos:
            if plan(a, b).strategy is Strategy.WAIT:
                assert plan(b, a).strategy is Strategy.PROBE


def test_missing_addresses_mean_no_punch():
    bare = UdpPunchInfo("consistent", (("203.0.113.1", 0),), 1)
    assert plan(CONSISTENT, bare).strategy is Strategy.NONE
    assert plan(RANDOM, bare).strategy is Strategy.NONE


def test_spray_ports_are_distinct_and_in_range():
    low, high = limits.UDP_PUNCH_SPRAY_PORTS
    ports = spray_ports(random.Random(1), 2500)
    assert len(ports) == len(set(ports)) == 2500
    assert all(low <= p <= high for p in ports)
    assert ports[0] not in spray_ports(random.Random(1), 10, exclude=ports[0])
    assert len(spray_ports(random.Random(2), 10**6)) == high - low + 1


def test_only_the_other_sides_hosts_are_accepted():
    assert accepts(RANDOM, ("192.0.2.9", 61000))  # any port of a random NAT
    assert accepts(CONSISTENT, ("203.0.113.1", 7))
    assert not accepts(CONSISTENT, ("203.0.113.2", 5000))


def test_holepunch_option_values():
    from hypergate.transport.paths import parse_holepunch

    assert parse_holepunch("udp,tcp") == ("udp", "tcp")
    assert parse_holepunch(" TCP ") == ("tcp",)
    assert parse_holepunch("udp,udp") == ("udp",)
    assert parse_holepunch("none") == ()
    for bad in ["", "quic", "none,udp", "udp,,x"]:
        with pytest.raises(ValueError, match="--holepunch"):
            parse_holepunch(bad)
