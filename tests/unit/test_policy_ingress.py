"""Ingress policy: parsing, merging, validation errors, matching, wire form."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypergate.errors import ConfigError, ProtocolError
from hypergate.policy.ingress import (
    BandwidthLimit,
    Decision,
    IngressPolicy,
    deep_merge,
    load_policy,
    merge_documents,
)


def policy(doc: dict) -> IngressPolicy:
    return IngressPolicy.from_document(doc, "test.json")


# The original README's example: defaults limit everyone, a trusted range is unlimited.
README_EXAMPLE = {
    "defaults": {"allow": True, "bandwidthLimit": {"mbps": 10, "burstMbps": 20}},
    "ips": {
        "10.0.0.0/8": {"bandwidthLimit": None, "labels": ["trusted"]},
        "203.0.113.7": {"allow": False, "desc": "abuser"},
    },
}


def test_readme_example_rule_without_allow_inherits_allow_and_has_no_limit():
    decision = policy(README_EXAMPLE).decide("10.20.30.40", 443, "tcp", now_ms=0)
    assert decision == Decision(True, "allowed by ips[10.0.0.0/8]", None, ("trusted",))


def test_defaults_apply_to_unmatched_client_with_their_limit():
    decision = policy(README_EXAMPLE).decide("198.51.100.1", 443, "tcp", now_ms=0)
    assert decision.allowed
    assert decision.bandwidth == BandwidthLimit(mbps=10, burstMbps=20)
    assert decision.bandwidth.rate_bytes_per_s == 1_250_000
    assert decision.bandwidth.burst_bytes == 2_500_000
    assert decision.reason == "allowed by defaults"


def test_deny_rule_denies():
    decision = policy(README_EXAMPLE).decide("203.0.113.7", 80, "tcp", now_ms=0)
    assert not decision.allowed
    assert "203.0.113.7" in decision.reason


def test_empty_policy_allows_without_limit():
    assert IngressPolicy.empty().decide("1.2.3.4", 1, "udp", 0) == Decision(True, "no matching rule")


def test_burst_defaults_to_rate():
    limit = BandwidthLimit(mbps=8)
    assert limit.burst_bytes == limit.rate_bytes_per_s == 1_000_000


def test_first_match_in_document_order_wins():
    p = policy(
        {
            "ips": {
                "10.1.0.0/16": {"labels": ["narrow"]},
                "10.0.0.0/8": {"labels": ["wide"]},
                "*": {"labels": ["any"]},
            }
        }
    )
    assert p.decide("10.1.2.3", 80, "tcp", 0).labels == ("narrow",)
    assert p.decide("10.2.2.3", 80, "tcp", 0).labels == ("wide",)
    assert p.decide("192.0.2.1", 80, "tcp", 0).labels == ("any",)
    assert p.decide("2001:db8::1", 80, "tcp", 0).labels == ("any",)


def test_expired_rule_is_skipped_and_next_match_wins():
    p = policy(
        {
            "ips": {
                "192.0.2.1": {"allow": False, "expireAt": 1000},
                "192.0.2.0/24": {"labels": ["net"]},
            }
        }
    )
    assert not p.decide("192.0.2.1", 80, "tcp", now_ms=999).allowed
    later = p.decide("192.0.2.1", 80, "tcp", now_ms=1000)
    assert later.allowed and later.labels == ("net",)


def test_expired_defaults_are_neither_applied_nor_inherited():
    p = policy(
        {
            "defaults": {"allow": False, "expireAt": 50, "labels": ["d"]},
            "ips": {"192.0.2.1": {"desc": "x"}},
        }
    )
    assert not p.decide("198.51.100.1", 80, "tcp", 10).allowed
    assert not p.decide("192.0.2.1", 80, "tcp", 10).allowed  # inherits allow=false
    assert p.decide("198.51.100.1", 80, "tcp", 60) == Decision(True, "no matching rule")
    assert p.decide("192.0.2.1", 80, "tcp", 60) == Decision(True, "allowed by ips[192.0.2.1]")


def test_port_and_protocol_conditions_select_rules():
    p = policy(
        {
            "defaults": {"allow": False},
            "ips": {
                "*": {"allow": True, "onlyPorts": [8000, 8099], "excludePorts": [8080, 8080]},
                "192.0.2.1": {"allow": True, "onlyProtocols": ["udp"]},
                "192.0.2.2": {"allow": True, "excludeProtocols": ["udp"]},
            },
        }
    )
    assert p.decide("198.51.100.1", 8000, "tcp", 0).allowed
    assert p.decide("198.51.100.1", 8099, "udp", 0).allowed
    assert not p.decide("198.51.100.1", 8080, "tcp", 0).allowed
    assert not p.decide("198.51.100.1", 7999, "tcp", 0).allowed
    assert p.decide("192.0.2.1", 53, "udp", 0).allowed
    assert not p.decide("192.0.2.1", 53, "tcp", 0).allowed
    assert p.decide("192.0.2.2", 22, "tcp", 0).allowed
    assert not p.decide("192.0.2.2", 22, "udp", 0).allowed


def test_defaults_conditions_limit_where_defaults_apply():
    p = policy({"defaults": {"allow": False, "excludePorts": [80, 80]}})
    assert not p.decide("192.0.2.9", 22, "tcp", 0).allowed
    assert p.decide("192.0.2.9", 80, "tcp", 0) == Decision(True, "no matching rule")


def test_rule_inherits_unset_fields_but_explicit_values_win():
    p = policy(
        {
            "defaults": {"allow": True, "bandwidthLimit": {"mbps": 5}, "labels": ["base"]},
            "ips": {
                "192.0.2.1": {"desc": "inherits all"},
                "192.0.2.2": {"labels": [], "bandwidthLimit": {"mbps": 50}},
                "192.0.2.3": {"allow": False},
            },
        }
    )
    d1 = p.decide("192.0.2.1", 1, "tcp", 0)
    assert d1.allowed and d1.bandwidth == BandwidthLimit(5) and d1.labels == ("base",)
    d2 = p.decide("192.0.2.2", 1, "tcp", 0)
    assert d2.bandwidth == BandwidthLimit(50) and d2.labels == ()
    assert not p.decide("192.0.2.3", 1, "tcp", 0).allowed


@pytest.mark.parametrize(
    "client",
    ["::ffff:192.0.2.1", "::FFFF:c000:0201", "192.0.2.1", " 192.0.2.1 "],
)
def test_ipv4_mapped_ipv6_counts_as_ipv4(client):
    p = policy({"ips": {"192.0.2.0/24": {"labels": ["v4"]}}})
    assert p.decide(client, 80, "tcp", 0).labels == ("v4",)


def test_mapped_keys_count_as_ipv4_and_families_never_cross():
    p = policy(
        {
            "ips": {
                "::ffff:192.0.2.1": {"labels": ["mapped-key"]},
                "::ffff:198.51.100.0/120": {"labels": ["mapped-cidr"]},
                "::/0": {"labels": ["all-v6"]},
                "0.0.0.0/0": {"labels": ["all-v4"]},
            }
        }
    )
    assert p.decide("192.0.2.1", 80, "tcp", 0).labels == ("mapped-key",)
    assert p.decide("198.51.100.200", 80, "tcp", 0).labels == ("mapped-cidr",)
    assert p.decide("203.0.113.1", 80, "tcp", 0).labels == ("all-v4",)
    assert p.decide("2001:db8::1", 80, "tcp", 0).labels == ("all-v6",)
    assert p.decide("fe80::1%eth0", 80, "tcp", 0).labels == ("all-v6",)


def test_unparseable_client_only_matches_star_or_defaults():
    p = policy({"defaults": {"labels": ["d"]}, "ips": {"0.0.0.0/0": {"allow": False}}})
    assert p.decide("not-an-ip", 80, "tcp", 0).labels == ("d",)


def test_deep_merge_objects_merge_arrays_and_scalars_replace():
    merged = deep_merge(
        {"defaults": {"allow": True, "labels": ["a", "b"], "bandwidthLimit": {"mbps": 1}}},
        {"defaults": {"labels": ["c"], "bandwidthLimit": {"burstMbps": 2}}, "ips": {"*": {}}},
    )
    assert merged == {
        "defaults": {"allow": True, "labels": ["c"], "bandwidthLimit": {"mbps": 1, "burstMbps": 2}},
        "ips": {"*": {}},
    }


def test_deep_merge_ignores_prototype_pollution_keys():
    merged = deep_merge({}, json.loads('{"__proto__": {"allow": false}, "ips": {"constructor": {}}}'))
    assert merged == {"ips": {}}


def test_null_replaces_an_object_in_a_merge():
    p = merge_documents(
        [
            ("a.json", '{"defaults": {"bandwidthLimit": {"mbps": 1}}}'),
            ("b.json", '{"defaults": {"bandwidthLimit": null}}'),
        ]
    )
    assert p.decide("192.0.2.1", 1, "tcp", 0).bandwidth is None


def test_merge_left_to_right_from_files_and_inline(tmp_path):
    first = tmp_path / "base.json"
    first.write_text(json.dumps(README_EXAMPLE))
    p = load_policy([str(first), '{"ips": {"10.0.0.0/8": {"labels": ["override"]}}}'])
    decision = p.decide("10.0.0.1", 80, "tcp", 0)
    assert decision.labels == ("override",)
    assert decision.bandwidth is None  # kept from the file: objects merge


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ('{"ips": {"10.0.0.0/33": {}}}', "test.json: $.ips['10.0.0.0/33']: CIDR prefix /33 out of range"),
        ('{"ips": {"10.0.0.0/x": {}}}', "test.json: $.ips['10.0.0.0/x']: CIDR prefix must be a number"),
        ('{"ips": {"300.1.1.1": {}}}', "test.json: $.ips['300.1.1.1']: not an IP address, CIDR or '*'"),
        ('{"defaults": {"bandwidthLimit": {"mbps": -1}}}', "mbps must be a positive number of Mbit/s, got -1 @ $.defaults.bandwidthLimit"),
        ('{"defaults": {"bandwidthLimit": {"mbps": 1, "burstMbps": 0}}}', "burstMbps must be a positive number"),
        ('{"defaults": {"alow": true}}', "test.json: unknown field(s) alow @ $.defaults"),
        ('{"policy": {}}', "test.json: unknown field(s) policy @ $"),
        ('{"defaults": {"allow": "yes"}}', "expected true or false, got 'yes' @ $.defaults.allow"),
        ('{"ips": {"*": {"onlyPorts": [90, 80]}}}', "onlyPorts must be [low, high] with low <= high"),
        ('{"ips": {"*": {"excludePorts": [1, 70000]}}}', "excludePorts ports must be 0-65535"),
        ('{"ips": {"*": {"onlyPorts": [80]}}}', "expected [low, high] port numbers, got [80] @ $.ips['*'].onlyPorts"),
        ('{"ips": {"*": {"labels": "trusted"}}}', "expected an array of strings, got 'trusted' @ $.ips['*'].labels"),
        ('{"ips": {"*": {"onlyProtocols": ["icmp"]}}}', "expected an array of \"tcp\"/\"udp\""),
        ('{"ips": {"*": {"expireAt": "soon"}}}', "expected a number, got 'soon' @ $.ips['*'].expireAt"),
        ('{"ips": {"*": {"bandwidthLimit": {}}}}', "required field missing @ $.ips['*'].bandwidthLimit.mbps"),
        ('[1, 2]', 'test.json: expected an object'),
        ('{"defaults": ', "test.json: invalid JSON at line 1"),
    ],
)
def test_malformed_policy_is_one_line_naming_source_key_and_problem(doc, expected):
    with pytest.raises(ConfigError) as info:
        merge_documents([("test.json", doc)])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith("test.json: ")


def test_merge_error_names_the_source_at_fault():
    with pytest.raises(ConfigError, match=r"^second.json: unknown field\(s\) nope"):
        merge_documents([("first.json", '{"defaults": {}}'), ("second.json", '{"defaults": {"nope": 1}}')])


def test_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy([str(tmp_path / "absent.json")])


def test_wire_round_trip_preserves_meaning():
    p = policy(README_EXAMPLE)
    wire = json.loads(json.dumps(p.to_wire()))
    assert wire["ips"]["10.0.0.0/8"] == {"bandwidthLimit": None, "labels": ["trusted"]}
    assert IngressPolicy.from_wire(wire) == p


def test_from_wire_none_is_empty_and_garbage_is_protocol_error():
    assert IngressPolicy.from_wire(None) == IngressPolicy.empty()
    with pytest.raises(ProtocolError, match="ingress policy from peer"):
        IngressPolicy.from_wire({"ips": {"nonsense": {}}})


rule_strategy = st.fixed_dictionaries(
    {},
    optional={
        "allow": st.booleans(),
        "bandwidthLimit": st.none()
        | st.fixed_dictionaries(
            {"mbps": st.floats(0.001, 1e5)}, optional={"burstMbps": st.floats(0.001, 1e5)}
        ),
        "labels": st.lists(st.text(max_size=5), max_size=3),
        "expireAt": st.integers(0, 2**50),
        "onlyPorts": st.tuples(st.integers(0, 100), st.integers(100, 65535)).map(list),
        "onlyProtocols": st.lists(st.sampled_from(["tcp", "udp"]), max_size=2),
    },
)
key_strategy = st.sampled_from(["*", "10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "::ffff:1.2.3.4"])


# The machine is shared; the first draws can be slow for reasons that are not ours.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    defaults=st.none() | rule_strategy,
    ips=st.dictionaries(key_strategy, rule_strategy, max_size=4),
    client=st.sampled_from(["10.1.2.3", "192.0.2.1", "2001:db8::5", "1.2.3.4", "::1"]),
    port=st.integers(1, 65535),
    protocol=st.sampled_from(["tcp", "udp"]),
    now=st.integers(0, 2**51),
)
def test_wire_round_trip_decides_the_same(defaults, ips, client, port, protocol, now):
    doc = {"ips": ips} if defaults is None else {"defaults": defaults, "ips": ips}
    p = policy(doc)
    again = IngressPolicy.from_wire(json.loads(json.dumps(p.to_wire())))
    assert again.decide(client, port, protocol, now) == p.decide(client, port, protocol, now)


def test_example_policy_files_load_and_mean_what_they_say():
    from pathlib import Path

    services = Path(__file__).resolve().parents[2] / "services"
    example = load_policy([str(services / "policy-example.json")])
    assert example.decide("10.9.9.9", 443, "tcp", 0).bandwidth is None
    assert example.decide("10.9.9.9", 443, "tcp", 0).labels == ("trusted",)
    assert example.decide("192.168.1.50", 8080, "tcp", 0).labels == ("partner",)
    assert example.decide("192.168.1.50", 22, "tcp", 0).labels == ("public",)
    assert not example.decide("203.0.113.9", 443, "tcp", 0).allowed
    assert example.decide("198.51.100.7", 443, "tcp", 0).bandwidth == BandwidthLimit(100)
    assert example.decide("198.51.100.7", 443, "tcp", 1893456000000).bandwidth == BandwidthLimit(10, 20)

    deny = load_policy([str(services / "policy-deny-by-default.json")])
    assert deny.decide("::ffff:127.0.0.1", 80, "tcp", 0).allowed
    assert deny.decide("::1", 80, "udp", 0).labels == ("local",)
    assert not deny.decide("192.0.2.1", 80, "tcp", 0).allowed
