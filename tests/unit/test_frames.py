"""Mux frame codec: round trips, streaming, and hostile input."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypergate import limits
from hypergate.wire.frames import (
    HEADER_SIZE,
    Flag,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    encode_frame,
    encode_header,
)

payload_types = [FrameType.DATA, FrameType.MESSAGE, FrameType.OPEN, FrameType.RESET]
value_types = [FrameType.WINDOW_UPDATE, FrameType.PING, FrameType.GO_AWAY]

frames = st.one_of(
    st.builds(
        Frame,
        type=st.sampled_from(payload_types),
        channel=st.integers(0, 2**32 - 1),
        flags=st.sampled_from([Flag.NONE, Flag.FIN]),
        payload=st.binary(max_size=3000),
    ),
    st.builds(
        Frame,
        type=st.sampled_from(value_types),
        channel=st.integers(0, 2**32 - 1),
        flags=st.sampled_from([Flag.NONE, Flag.ACK]),
        value=st.integers(0, 2**32 - 1),
    ),
    st.builds(Frame, type=st.just(FrameType.ACCEPT), channel=st.integers(0, 2**32 - 1)),
)


@given(st.lists(frames, max_size=20), st.integers(1, 97))
def test_frames_round_trip_through_any_chunking(items, chunk):
    wire = b"".join(f.encode() for f in items)
    decoder = FrameDecoder()
    out = []
    for i in range(0, len(wire), chunk):
        out.extend(decoder.feed(wire[i : i + chunk]))
    assert out == items
    assert decoder.buffered == 0


@given(st.binary(max_size=400))
@settings(max_examples=400)
def test_arbitrary_bytes_raise_only_frame_error(data):
    decoder = FrameDecoder()
    try:
        frames = decoder.feed(data)
    except FrameError:
        return
    # Whatever decoded re-encodes to a prefix of the input: nothing was invented.
    assert b"".join(f.encode() for f in frames) == data[: len(data) - decoder.buffered]


@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_truncated_input_yields_only_complete_frames(items, data):
    wire = b"".join(f.encode() for f in items)
    cut = data.draw(st.integers(0, len(wire) - 1))
    decoder = FrameDecoder()
    got = decoder.feed(wire[:cut])
    assert got == items[: len(got)]
    assert len(got) < len(items)


def test_oversized_data_frame_is_rejected_before_buffering():
    header = encode_header(FrameType.DATA, 1, 0, limits.MAX_FRAME_PAYLOAD + 1)
    with pytest.raises(FrameError, match="exceeds the limit"):
        FrameDecoder().feed(header)


def test_unknown_type_version_and_flags_are_named():
    good = bytearray(encode_frame(FrameType.PING, 0, value=7))
    for offset, value, message in [(0, 9, "version 9"), (1, 42, "type 42"), (3, 0x80, "flags 0x80")]:
        bad = bytearray(good)
        bad[offset] = value
        with pytest.raises(FrameError, match=message):
            FrameDecoder().feed(bytes(bad))


def test_decoder_stays_failed_after_error():
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(b"\xff" * HEADER_SIZE)
    with pytest.raises(FrameError):
        decoder.feed(encode_frame(FrameType.PING, 0, value=1))


def test_value_frames_cannot_carry_payload_and_payload_limits_hold_on_encode():
    with pytest.raises(ValueError):
        encode_frame(FrameType.PING, 0, payload=b"x")
    with pytest.raises(ValueError):
        encode_frame(FrameType.DATA, 1, payload=b"x" * (limits.MAX_FRAME_PAYLOAD + 1))


def test_open_requests_round_trip_and_decoded_fingerprints_share_their_short_strings():
    """A provider holds every open channel's fingerprint: two decoded fingerprints share
    their keys and addresses (one string object each), and bad ones are named."""
    import sys

    from hypergate.http.fingerprint_resolver import make_fingerprint
    from hypergate.wire.messages import MessageError, OpenRequest, decode_open, encode_open

    def request(port):
        return OpenRequest(gatePort=80, protocol="tcp", fingerprint=make_fingerprint(
            protocol="tcp", gate_port=80, channel_port=port, client=("198.51.100.7", 40000 + port),
            gateway=("10.0.0.1", 80), labels=("team-a",),
        ))

    sent = [request(1), request(3)]
    first, second = (decode_open(bytes(encode_open(r))) for r in sent)
    assert [first, second] == sent
    assert first.fingerprint["source"]["ip"] is second.fingerprint["source"]["ip"]
    assert first.fingerprint["ingressLabels"][0] is sys.intern("team-a")
    assert [k is sys.intern(k) for k in first.fingerprint["gateway"]] == [True] * 3
    with pytest.raises(MessageError, match=r"\$\.fingerprint"):
        decode_open(b'{"gatePort":80,"protocol":"tcp","fingerprint":["not", "an object"]}')
    with pytest.raises(MessageError, match="not valid JSON"):
        decode_open(b'{"gatePort":80,')
