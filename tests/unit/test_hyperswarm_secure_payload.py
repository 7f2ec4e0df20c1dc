"""PEER_HOLEPUNCH payload encryption and tokens (hyperdht secure-payload.js), sans-IO."""

from __future__ import annotations

from hypergate.dht.encoding import Address
from hypergate.dht.messages import Firewall
from hypergate.dht.payloads import HolepunchPayload
from hypergate.hyperswarm.secure_payload import MAC_BYTES, NONCE_BYTES, SecurePayload

SECRET = bytes(range(32))
PAYLOAD = HolepunchPayload(
    firewall=Firewall.CONSISTENT, round=1, punching=True, addresses=[Address("127.0.0.1", 4000)],
    token=bytes([7]) * 32,
)


def test_round_trip_and_layout():
    a, b = SecurePayload(SECRET), SecurePayload(SECRET)
    data = a.encrypt(PAYLOAD, nonce=bytes(NONCE_BYTES))
    assert len(data) == NONCE_BYTES + MAC_BYTES + len(PAYLOAD.encode())
    assert data[:NONCE_BYTES] == bytes(NONCE_BYTES)
    assert b.decrypt(data) == PAYLOAD


def test_wrong_secret_or_tampering_gives_none():
    data = SecurePayload(SECRET).encrypt(PAYLOAD)
    assert SecurePayload(bytes(32)).decrypt(data) is None
    assert SecurePayload(SECRET).decrypt(data[:-1] + bytes([data[-1] ^ 1])) is None
    assert SecurePayload(SECRET).decrypt(data[: NONCE_BYTES + MAC_BYTES]) is None


def test_token_depends_on_host_and_local_secret_only():
    p = SecurePayload(SECRET, local_secret=bytes([1]) * 32)
    assert p.token(Address("1.2.3.4", 1)) == p.token(Address("1.2.3.4", 2))
    assert p.token(Address("1.2.3.4", 1)) != p.token(Address("1.2.3.5", 1))
    assert SecurePayload(SECRET).token(Address("1.2.3.4", 1)) != p.token(Address("1.2.3.4", 1))
    assert "secret" in repr(p) and SECRET.hex() not in repr(p)
