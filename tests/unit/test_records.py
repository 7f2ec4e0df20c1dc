"""Encrypted record layer: round trips, tampering, garbage."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypergate.crypto.records import MAX_PLAINTEXT, RecordError, RecordOpener, RecordSealer

KEY = bytes(range(32))


@given(st.lists(st.binary(max_size=5000), max_size=10), st.integers(1, 4096))
def test_records_round_trip_in_order_through_any_chunking(plaintexts, chunk):
    sealer, opener = RecordSealer(KEY), RecordOpener(KEY)
    wire = b"".join(sealer.seal(p) for p in plaintexts)
    out = []
    for i in range(0, len(wire), chunk):
        out.extend(opener.feed(wire[i : i + chunk]))
    assert out == plaintexts


def test_flipped_bit_fails_authentication():
    record = bytearray(RecordSealer(KEY).seal(b"hello world"))
    record[10] ^= 1
    with pytest.raises(RecordError, match="authentication"):
        RecordOpener(KEY).feed(bytes(record))


def test_replayed_record_fails_because_nonce_moved_on():
    sealer, opener = RecordSealer(KEY), RecordOpener(KEY)
    record = sealer.seal(b"once")
    assert opener.feed(record) == [b"once"]
    with pytest.raises(RecordError):
        opener.feed(record)


def test_wrong_key_cannot_open():
    with pytest.raises(RecordError):
        RecordOpener(os.urandom(32)).feed(RecordSealer(KEY).seal(b"secret"))


def test_impossible_lengths_are_rejected_without_buffering():
    with pytest.raises(RecordError, match="out of bounds"):
        RecordOpener(KEY).feed((2**31).to_bytes(4, "big"))
    with pytest.raises(RecordError, match="out of bounds"):
        RecordOpener(KEY).feed((3).to_bytes(4, "big"))


def test_largest_record_round_trips_and_larger_is_refused():
    data = os.urandom(MAX_PLAINTEXT)
    assert RecordOpener(KEY).feed(RecordSealer(KEY).seal(data)) == [data]
    with pytest.raises(ValueError):
        RecordSealer(KEY).seal(data + b"x")


@given(st.binary(max_size=300))
def test_garbage_raises_only_record_error(data):
    try:
        assert RecordOpener(KEY).feed(data) == []
    except RecordError:
        pass
