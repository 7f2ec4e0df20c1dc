"""secret-stream framing (HYPERSWARM-WIRE.md 4.2, 4.3), sans-IO."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypergate.dht.crypto import KeyPair
from hypergate.hyperswarm.noise_ik import Initiator, Responder
from hypergate.hyperswarm.secret_stream import ABYTES, ID_HEADER_BYTES, SecretStream, SecretStreamError
from hypergate.limits import HYPERSWARM_FRAME_PLAINTEXT

SERVER = KeyPair.from_seed(bytes([0x01]) * 32)
CLIENT = KeyPair.from_seed(bytes([0x02]) * 32)


def pair() -> tuple[SecretStream, SecretStream]:
    initiator = Initiator(CLIENT, SERVER.public_key)
    responder = Responder(SERVER)
    responder.read_message1(initiator.write_message1(b""))
    initiator.read_message2(responder.write_message2(b""))
    return SecretStream(initiator.result), SecretStream(responder.result)


def test_header_frame_layout_matches_the_capture():
    client, _ = pair()
    header = client.header()
    # 4.3: "380000 <streamId 32> <secretstream header 24>"
    assert header[:3] == bytes.fromhex("380000")
    assert len(header) == 3 + ID_HEADER_BYTES == 59


def test_hello_frame_length_matches_the_capture():
    client, _ = pair()
    client.header()
    frame = client.encrypt(b"hello")
    # 4.3: 'initiator "hello" 160000 ...' (5 + 17 = 22 = 0x16), 25 bytes on the wire
    assert frame[:3] == bytes.fromhex("160000")
    assert len(frame) == 3 + 5 + ABYTES


def test_round_trip_both_ways():
    client, server = pair()
    assert server.receive(client.header()) == []
    assert client.receive(server.header()) == []
    assert server.ready and client.ready
    assert server.receive(client.encrypt(b"hello")) == [b"hello"]
    assert client.receive(server.encrypt(b"world")) == [b"world"]


def test_big_write_is_split_into_frames():
    client, server = pair()
    data = os.urandom(3 * HYPERSWARM_FRAME_PLAINTEXT + 5)
    wire = client.header() + client.encrypt(data)
    out = server.receive(wire)
    assert len(out) == 4 and b"".join(out) == data


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=300), max_size=8), st.integers(1, 64))
def test_any_chunking_gives_the_same_messages(messages, chunk):
    client, server = pair()
    wire = client.header() + b"".join(client.encrypt(m) for m in messages)
    out = []
    for i in range(0, len(wire), chunk):
        out += server.receive(wire[i : i + chunk])
    assert out == [m for m in messages if m]  # empty frames are keep-alives
    assert server.buffered == 0


def test_keepalive_is_swallowed_and_counted():
    client, server = pair()
    out = server.receive(client.header() + client.keepalive() + client.encrypt(b"x"))
    assert out == [b"x"]
    assert server.keepalives_received == 1
    assert len(client.keepalive()) == 3 + ABYTES  # a 20-byte frame


def test_wrong_stream_id_is_refused():
    client, server = pair()
    header = bytearray(client.header())
    header[5] ^= 0xFF
    with pytest.raises(SecretStreamError, match="stream id does not match"):
        server.receive(bytes(header))
    with pytest.raises(SecretStreamError):  # stays failed
        server.receive(b"more")


def test_own_header_echoed_back_is_refused():
    client, _ = pair()
    header = client.header()
    with pytest.raises(SecretStreamError, match="stream id does not match"):
        client.receive(header)


def test_bad_header_length_is_refused():
    _, server = pair()
    with pytest.raises(SecretStreamError, match="invalid secret-stream header: 10 bytes"):
        server.receive(b"\x0a\x00\x00" + bytes(10))


def test_mac_failure_is_refused():
    client, server = pair()
    server.receive(client.header())
    frame = bytearray(client.encrypt(b"payload"))
    frame[-1] ^= 1
    with pytest.raises(SecretStreamError, match="failed authentication"):
        server.receive(bytes(frame))


def test_reordered_frames_are_refused():
    client, server = pair()
    server.receive(client.header())
    first, second = client.encrypt(b"one"), client.encrypt(b"two")
    with pytest.raises(SecretStreamError, match="failed authentication"):
        server.receive(second + first)


def test_short_frame_is_refused():
    client, server = pair()
    server.receive(client.header())
    with pytest.raises(SecretStreamError, match="shorter than 17"):
        server.receive(b"\x05\x00\x00" + bytes(5))


def test_data_before_header_is_not_possible():
    client, _ = pair()
    with pytest.raises(RuntimeError):
        client.encrypt(b"x")
