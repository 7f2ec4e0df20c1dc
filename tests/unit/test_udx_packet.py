"""UDX header codec: the byte vectors of UDX-WIRE §14 (captured from Node udx-native),
round trips, and malformed input."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypergate.errors import ProtocolError
from hypergate.udx import packet as wire
from hypergate.udx.packet import UdxPacketError, decode, encode, is_udx, seq_diff

A = 0x11223344
B = 0x55667788
RWND = 4194304


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


VECTORS = [
    # (description, bytes, type, id, rwnd, seq, ack, payload, sacks)
    ("DATA hello A->B", h("ff010100 88776655 00004000 00000000 00000000 68656c6c6f"), 0x01, B, RWND, 0, 0, b"hello", ()),
    ("ACK ack 1 B->A", h("ff010000 44332211 00004000 00000000 01000000"), 0x00, A, RWND, 0, 1, b"", ()),
    (
        "SACK ack 28 [30,43)[44,45)",
        h("ff010400 44332211 00004000 01000000 1c000000 1e000000 2b000000 2c000000 2d000000"),
        0x04, A, RWND, 1, 28, b"", ((30, 43), (44, 45)),
    ),
    ("MESSAGE msg", h("ff010800 88776655 00004000 01000000 00000000 6d7367"), 0x08, B, RWND, 1, 0, b"msg", ()),
    ("DATA|END onebye", h("ff010300 88776655 00004000 00000000 00000000 6f6e65627965"), 0x03, B, RWND, 0, 0, b"onebye", ()),
    ("DESTROY seq0 ack1", h("ff011000 44332211 00004000 00000000 01000000"), 0x10, A, RWND, 0, 1, b"", ()),
    ("HEARTBEAT to 1001", h("ff012000 e9030000 00004000 01000000 01000000"), 0x20, 1001, RWND, 1, 1, b"", ()),
]


@pytest.mark.parametrize("vector", VECTORS, ids=[v[0] for v in VECTORS])
def test_node_vectors_decode(vector):
    _, raw, kind, stream_id, rwnd, seq, ack, payload, sacks = vector
    assert is_udx(raw)
    p = decode(raw)
    assert (p.type, p.stream_id, p.rwnd, p.seq, p.ack) == (kind, stream_id, rwnd, seq, ack)
    assert bytes(p.payload) == payload
    assert p.sacks == sacks


@pytest.mark.parametrize("vector", VECTORS, ids=[v[0] for v in VECTORS])
def test_node_vectors_encode_byte_for_byte(vector):
    _, raw, kind, stream_id, rwnd, seq, ack, payload, sacks = vector
    assert encode(kind, stream_id, rwnd, seq, ack, payload, sacks=sacks) == raw


def test_mtu_probe_padding_is_skipped():
    raw = h("ff010120 88776655 00004000 0c000000 01000000") + bytes(32) + b"aa"
    p = decode(raw)
    assert p.type == wire.DATA and p.seq == 12 and p.ack == 1 and p.data_offset == 32
    assert bytes(p.payload) == b"aa"
    assert encode(wire.DATA, B, RWND, 12, 1, b"aa", padding=32) == raw


def test_data_offset_past_the_body_is_rejected():
    with pytest.raises(UdxPacketError, match="data_offset"):
        decode(h("ff010140 88776655 00004000 00000000 00000000") + b"short")


def test_demux_rule():
    header = h("ff010000 44332211 00004000 00000000 01000000")
    assert is_udx(header)
    assert not is_udx(header[:19])
    assert not is_udx(b"\x00")  # hole-punch probe
    assert not is_udx(b"\x03" + header[1:])  # DHT-RPC request
    assert not is_udx(b"\xff\x02" + header[2:])  # other version


def test_sack_with_payload_uses_data_offset_as_the_sack_region():
    raw = encode(wire.DATA, A, 100, 5, 7, b"payload", sacks=[(9, 12)])
    p = decode(raw)
    assert p.type == wire.DATA | wire.SACK and p.data_offset == 8
    assert p.sacks == ((9, 12),) and bytes(p.payload) == b"payload"


def test_seq_diff_wraps():
    assert seq_diff(0, 0xFFFFFFFF) == 1
    assert seq_diff(0xFFFFFFFF, 0) == -1
    assert seq_diff(5, 3) == 2


u32 = st.integers(0, 0xFFFFFFFF)


@given(
    kind=st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x08, 0x10, 0x20]),
    stream_id=u32, rwnd=u32, seq=u32, ack=u32,
    payload=st.binary(max_size=1152),
    sacks=st.lists(st.tuples(u32, u32), max_size=20),
)
def test_round_trip(kind, stream_id, rwnd, seq, ack, payload, sacks):
    carries_payload = bool(kind & (wire.DATA | wire.END | wire.MESSAGE))
    if not carries_payload:
        payload = b""
    raw = encode(kind, stream_id, rwnd, seq, ack, payload, sacks=sacks)
    assert len(raw) <= 20 + 160 + 1152
    p = decode(raw)
    assert (p.stream_id, p.rwnd, p.seq, p.ack) == (stream_id, rwnd, seq, ack)
    assert p.type == kind | (wire.SACK if sacks else 0)
    assert p.sacks == tuple(sacks)
    assert bytes(p.payload) == payload


@given(st.binary(max_size=300))
def test_malformed_input_raises_only_udx_packet_error(data):
    try:
        decode(data)
    except UdxPacketError as error:
        assert isinstance(error, ProtocolError)


@given(st.binary(min_size=0, max_size=200))
def test_arbitrary_bytes_after_a_valid_prefix(tail):
    raw = h("ff01") + tail
    try:
        p = decode(raw)
    except UdxPacketError:
        return
    assert len(raw) >= 20 and p.data_offset <= len(raw) - 20
