"""Relay wire pieces without sockets: capability, hello codec, URL parsing."""

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypergate import limits
from hypergate.crypto.keys import RouterKeys
from hypergate.transport.relay import RelayError, decode_hello, encode_hello, relay_capability
from hypergate.transport.relay_client import _parse_url


def test_capability_is_per_topic_and_hides_it():
    topic_a = RouterKeys.from_secret(b"a" * 32).topic
    topic_b = RouterKeys.from_secret(b"b" * 32).topic
    cap_a = relay_capability(topic_a)
    assert len(cap_a) == 32
    assert cap_a == relay_capability(topic_a)
    assert cap_a != relay_capability(topic_b)
    assert topic_a.hex()[:16] not in cap_a.hex()
    with pytest.raises(ValueError):
        relay_capability(b"short")


def test_hello_round_trip_and_size():
    cap, pair = os.urandom(32), os.urandom(16)
    raw = encode_hello(cap, pair, "join")
    assert len(raw) < limits.MAX_RELAY_HELLO
    assert decode_hello(raw) == (cap, pair, "join")
    assert json.loads(raw)["v"] == 1


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"v":2}', "v=1"),
        (b'{"v":1,"cap":"zz","pair":"00","role":"wait"}', "hex"),
        (json.dumps({"v": 1, "cap": "00" * 31, "pair": "00" * 16, "role": "wait"}).encode(), "32 bytes"),
        (json.dumps({"v": 1, "cap": "00" * 32, "pair": "00" * 16, "role": "boss"}).encode(), "role"),
        (json.dumps({"v": 1, "cap": 5, "pair": "00" * 16, "role": "wait"}).encode(), "hex"),
        (b"{" + b" " * limits.MAX_RELAY_HELLO + b"}", "too long"),
    ],
)
def test_bad_hellos_are_refused_with_a_reason(raw, reason):
    with pytest.raises(ValueError, match=reason):
        decode_hello(raw)


@given(st.binary(max_size=600))
def test_hostile_hello_bytes_raise_value_error_only(raw):
    try:
        decode_hello(raw)
    except ValueError:
        pass


def test_encode_hello_checks_its_inputs():
    with pytest.raises(ValueError):
        encode_hello(b"x" * 31, b"p" * 16, "wait")
    with pytest.raises(ValueError):
        encode_hello(b"x" * 32, b"p" * 15, "wait")
    with pytest.raises(ValueError):
        encode_hello(b"x" * 32, b"p" * 16, "listen")


def test_urls():
    assert _parse_url("ws://127.0.0.1:8080") == (False, "127.0.0.1", 8080, "/", "127.0.0.1:8080")
    assert _parse_url("wss://relay.example/hypergate?x=1") == (
        True, "relay.example", 443, "/hypergate?x=1", "relay.example",
    )
    assert _parse_url("ws://[::1]:9/r") == (False, "::1", 9, "/r", "[::1]:9")
    for bad in ("http://x/", "ws://", "ws://host:99999/", "relay.example:80"):
        with pytest.raises(RelayError):
            _parse_url(bad)
