"""Properties of the DHT codecs: hostile bytes raise only CodecError; values round-trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypergate.dht import crypto
from hypergate.dht.encoding import MAX_SAFE_UINT, Address, CodecError, Decoder, Encoder
from hypergate.dht.messages import (
    Announce,
    Handshake,
    Holepunch,
    LookupReply,
    MutableGetResponse,
    MutablePutRequest,
    PeerRecord,
    PluginRequest,
    Request,
    Response,
    decode_datagram,
)
from hypergate.dht.payloads import HolepunchPayload, NoisePayload
from hypergate.dht.routing_table import OLD_NODE_TICKS, RoutingTable, TableNode, row_index

DECODABLE = [
    Request,
    Response,
    Announce,
    Handshake,
    Holepunch,
    HolepunchPayload,
    LookupReply,
    MutableGetResponse,
    MutablePutRequest,
    NoisePayload,
    PeerRecord,
    PluginRequest,
]

addresses = st.builds(
    Address,
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.integers(0, 65535),
)
ids = st.binary(min_size=32, max_size=32)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_codec_error(data):
    for cls in DECODABLE:
        try:
            cls.decode(data)
        except CodecError:
            pass
    try:
        decode_datagram(data)
    except CodecError:
        pass


requests = st.builds(
    Request,
    tid=st.integers(0, 65535),
    to=addresses,
    command=st.integers(0, 300),
    internal=st.booleans(),
    id=st.none() | ids,
    token=st.none() | ids,
    target=st.none() | ids,
    value=st.none() | st.binary(max_size=80),
)
responses = st.builds(
    Response,
    tid=st.integers(0, 65535),
    to=addresses,
    id=st.none() | ids,
    token=st.none() | ids,
    closer_nodes=st.lists(addresses, max_size=20),
    error=st.integers(0, 20),
    value=st.none() | st.binary(max_size=80),
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(requests, responses))
def test_datagrams_round_trip_and_every_truncation_is_rejected(message):
    data = message.encode()
    assert decode_datagram(data) == message
    # Every field a datagram ends with is required once its flag is set, so any
    # proper prefix is malformed.
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            decode_datagram(data[:cut])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, MAX_SAFE_UINT))
def test_uint_round_trips_in_minimal_form(n):
    e = Encoder()
    e.uint(n)
    data = e.bytes()
    assert len(data) == (1 if n <= 0xFC else 3 if n <= 0xFFFF else 5 if n <= 0xFFFFFFFF else 9)
    assert Decoder(data).uint() == n


@given(st.integers(-(2**51), 2**51))
def test_int_round_trips(n):
    e = Encoder()
    e.int(n)
    assert Decoder(e.bytes()).int() == n


def test_non_minimal_uint_is_accepted_like_node():
    assert Decoder(bytes.fromhex("fd0500")).uint() == 5


def test_uint_beyond_javascript_safe_range_is_rejected():
    with pytest.raises(CodecError):
        Decoder(b"\xff" + (2**53).to_bytes(8, "little")).uint()
    with pytest.raises(CodecError):
        Encoder().uint(2**53)
    with pytest.raises(CodecError):
        Encoder().uint(-1)


def test_huge_array_count_is_rejected_before_allocating():
    with pytest.raises(CodecError, match="array"):
        Decoder(b"\xfe\xff\xff\xff\x00").array(Decoder.uint)
    # A count the remaining bytes cannot hold is refused up front.
    with pytest.raises(CodecError):
        Decoder(b"\xfd\x00\x10" + b"\x00" * 10).array(Decoder.ipv4_address, 6)


def test_bad_values_are_codec_errors_on_encode():
    with pytest.raises(CodecError):
        Encoder().ipv4("not-an-ip")
    with pytest.raises(CodecError):
        Encoder().fixed32(b"short")
    with pytest.raises(CodecError):
        Request(tid=1, to=Address("1.2.3.4", 1), command=0, target=b"short")


def test_unknown_first_byte_and_tiny_datagrams_are_rejected():
    with pytest.raises(CodecError):
        decode_datagram(b"\x03")
    with pytest.raises(CodecError):
        decode_datagram(b"\xff\x01\x00\x00")


def test_trailing_bytes_and_unknown_flags_are_ignored_like_node():
    request = Request(tid=9, to=Address("1.2.3.4", 5), command=2, internal=True, target=b"\x01" * 32)
    data = bytearray(request.encode())
    data[1] |= 0x40  # a flag bit no version defines yet
    assert Request.decode(bytes(data) + b"future") == request


# --- tokens -----------------------------------------------------------------------------


def test_token_binds_host_not_port_and_lives_one_to_two_rotations():
    secrets = crypto.TokenSecrets(now=100.0)
    token = secrets.token("1.2.3.4")
    assert secrets.is_valid("1.2.3.4", token)
    assert not secrets.is_valid("1.2.3.5", token)
    secrets.advance(100.0 + crypto.TOKEN_ROTATE_INTERVAL_S)
    assert secrets.is_valid("1.2.3.4", token), "still valid after one rotation"
    secrets.advance(100.0 + 2 * crypto.TOKEN_ROTATE_INTERVAL_S)
    assert not secrets.is_valid("1.2.3.4", token), "expired after two rotations"


def test_token_rotation_after_a_long_pause_still_rotates_out_old_tokens():
    secrets = crypto.TokenSecrets(now=0.0)
    token = secrets.token("1.2.3.4")
    secrets.advance(3600.0)
    assert not secrets.is_valid("1.2.3.4", token)
    fresh = secrets.token("1.2.3.4")
    secrets.advance(3600.0 + 1.0)
    assert secrets.is_valid("1.2.3.4", fresh)


def test_key_pair_repr_hides_the_secret():
    key_pair = crypto.KeyPair.from_seed(b"\x07" * 32)
    assert key_pair.public_key.hex() in repr(key_pair)
    assert bytes(key_pair.signing_key).hex() not in repr(key_pair)


# --- routing table ----------------------------------------------------------------------


def _id_in_row(local: bytes, row: int, salt: int) -> bytes:
    """An id sharing exactly `row` leading bits with local."""
    n = int.from_bytes(local, "big") ^ (1 << (255 - row))
    n ^= salt & ((1 << max(0, 255 - row - 1)) - 1) if row < 255 else 0
    return n.to_bytes(32, "big")


def test_row_index_is_the_first_differing_bit():
    local = b"\x00" * 32
    assert row_index(local, b"\x80" + b"\x00" * 31) == 0
    assert row_index(local, b"\x01" + b"\x00" * 31) == 7
    assert row_index(local, b"\x00\x40" + b"\x00" * 30) == 9
    assert row_index(local, local) == 255


def test_full_row_refuses_newcomer_and_names_the_least_recently_pinged():
    local = crypto.hash32(b"me")
    table = RoutingTable(local, k=3)
    nodes = [TableNode(_id_in_row(local, 4, salt), Address("10.0.0.1", 1000 + salt)) for salt in (1, 2, 3)]
    for tick, node in enumerate(nodes):
        node.added = node.pinged = tick
        assert table.add(node)
    newcomer = TableNode(_id_in_row(local, 4, 9), Address("10.0.0.9", 9))
    assert not table.add(newcomer)
    assert table.full_row_candidate(newcomer.id, tick=10) is nodes[0]
    # A node pinged this very tick is not asked again.
    assert table.full_row_candidate(newcomer.id, tick=0) is nodes[1]
    # A long-lived node heard from recently is trusted without a ping.
    for node in nodes:
        node.added = 0
        node.pinged = OLD_NODE_TICKS + 5
    assert table.full_row_candidate(newcomer.id, tick=OLD_NODE_TICKS + 6) is None
    table.remove(nodes[0].id)
    assert table.add(newcomer) and newcomer.id in table and len(table) == 3


def test_least_recently_seen_order_follows_mark_seen():
    local = crypto.hash32(b"me")
    table = RoutingTable(local)
    nodes = [TableNode(crypto.hash32(bytes([i])), Address("10.0.0.1", i + 1)) for i in range(5)]
    for node in nodes:
        table.add(node)
    table.mark_seen(nodes[0], tick=7)
    assert table.least_recently_seen(2) == nodes[1:3]
    assert table.latest(1) == [nodes[0]]
    assert nodes[0].seen == 7
