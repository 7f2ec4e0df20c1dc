"""PEER_HOLEPUNCH payload encryption and address tokens (hyperdht lib/secure-payload.js), sans-IO.

HYPERSWARM-WIRE.md 3.9: the payload is `nonce(24) || crypto_secretbox_easy(holepunchPayload)`
(XSalsa20-Poly1305) under `holepunchSecret` from the IK handshake, so relays carry it
without reading it. `token(address)` = H32k(localSecret, utf8(host)) with a fresh
random local secret per handshake; a peer that echoes our token back proves it
received what we sent to that host.
"""

from __future__ import annotations

import os

import nacl.bindings as nb
import nacl.exceptions

from hypergate.dht import crypto
from hypergate.dht.encoding import Address, CodecError
from hypergate.dht.payloads import HolepunchPayload

NONCE_BYTES = nb.crypto_secretbox_NONCEBYTES  # 24
MAC_BYTES = nb.crypto_secretbox_MACBYTES  # 16


class SecurePayload:
    def __init__(self, holepunch_secret: bytes, local_secret: bytes | None = None) -> None:
        self._shared = holepunch_secret
        self._local = local_secret or os.urandom(32)

    def __repr__(self) -> str:
        return "SecurePayload(<secret>)"

    def encrypt(self, payload: HolepunchPayload, nonce: bytes | None = None) -> bytes:
        nonce = nonce or os.urandom(NONCE_BYTES)
        return nonce + nb.crypto_secretbox_easy(payload.encode(), nonce, self._shared)

    def decrypt(self, data: bytes) -> HolepunchPayload | None:
        """None when it does not authenticate or decode (hyperdht ignores such payloads)."""
        if len(data) <= NONCE_BYTES + MAC_BYTES:
            return None
        try:
            plain = nb.crypto_secretbox_open_easy(data[NONCE_BYTES:], data[:NONCE_BYTES], self._shared)
            return HolepunchPayload.decode(plain)
        except (nacl.exceptions.CryptoError, CodecError):
            return None

    def token(self, address: Address) -> bytes:
        return crypto.keyed_hash32(self._local, address.host.encode())
