"""hyperdht's connection handshake, `Noise_IK_Ed25519_ChaChaPoly_BLAKE2b`, sans-IO.

HYPERSWARM-WIRE.md 4.1: prologue NS_PEER_HANDSHAKE, HASHLEN 64 (BLAKE2b-512),
HMAC-BLAKE2b HKDF, ChaCha20-Poly1305 IETF, and Diffie-Hellman on Ed25519 points (the
static key is the peer's Ed25519 identity). The initiator knows the responder's public
key in advance:

    msg1 = e || enc(s) || enc(payload)      (96 + len bytes)
    msg2 = e || enc(payload)                (48 + len bytes)

No I/O, no clock: bytes in, bytes out. Ephemeral keys come from `os.urandom` unless a
test passes a seed. Key material is never put in a repr or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import attrs
import nacl.bindings as nb
import nacl.exceptions

from hypergate.dht import crypto
from hypergate.errors import ProtocolError

PROTOCOL_NAME = b"Noise_IK_Ed25519_ChaChaPoly_BLAKE2b"
HASHLEN = 64
DHLEN = 32
MACLEN = 16
MSG1_OVERHEAD = DHLEN + DHLEN + MACLEN + MACLEN  # e, enc(s), payload MAC
MSG2_OVERHEAD = DHLEN + MACLEN

# @hyperswarm/secret-stream's namespace: the stream id each side sends in its header.
NS_INITIATOR, NS_RESPONDER, NS_SEND = crypto.namespace("hyperswarm/secret-stream", [0, 1, 2])


class NoiseError(ProtocolError):
    """The handshake failed: a message was malformed or did not decrypt."""


def _hmac64(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def _hkdf(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    prk = _hmac64(ck, ikm)
    out1 = _hmac64(prk, b"\x01")
    return out1, _hmac64(prk, out1 + b"\x02")


def _scalar(seed: bytes) -> bytes:
    a = bytearray(hashlib.sha512(seed).digest()[:32])
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    return bytes(a)


def _dh(seed: bytes, public_key: bytes) -> bytes:
    """noise-curve-ed: the clamped Ed25519 secret scalar times the peer's point."""
    try:
        return nb.crypto_scalarmult_ed25519_noclamp(_scalar(seed), public_key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, ValueError) as exc:
        raise NoiseError("the peer's key is not a valid Ed25519 point") from exc


@attrs.frozen(repr=False)
class _Keys:
    seed: bytes
    public_key: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> _Keys:
        public_key, _ = nb.crypto_sign_seed_keypair(seed)
        return cls(seed, public_key)


class _SymmetricState:
    def __init__(self, prologue: bytes, responder_static: bytes) -> None:
        self.h = PROTOCOL_NAME.ljust(HASHLEN, b"\0")
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0
        self.mix_hash(prologue)
        self.mix_hash(responder_static)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.blake2b(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp = _hkdf(self.ck, ikm)
        self.k, self.n = temp[:32], 0

    def _nonce(self) -> bytes:
        return bytes(4) + self.n.to_bytes(8, "little")

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:
            ciphertext = plaintext
        else:
            ciphertext = nb.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, self.h, self._nonce(), self.k)
            self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes, what: str) -> bytes:
        if self.k is None:
            plaintext = ciphertext
        else:
            try:
                plaintext = nb.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, self.h, self._nonce(), self.k)
            except nacl.exceptions.CryptoError:
                raise NoiseError(f"{what} does not decrypt (wrong key or corrupted)") from None
            self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        a, b = _hkdf(self.ck, b"")
        return a[:32], b[:32]


@attrs.frozen(repr=False)
class HandshakeResult:
    """What the finished handshake gives the secret-stream and the hole puncher."""

    is_initiator: bool
    tx: bytes
    rx: bytes
    hash: bytes  # the final handshake hash h (64 bytes)
    remote_public_key: bytes

    @property
    def holepunch_secret(self) -> bytes:
        return crypto.keyed_hash32(self.hash, crypto.NS_PEER_HOLEPUNCH)

    def stream_id(self, initiator: bool) -> bytes:
        """@hyperswarm/secret-stream streamId(hash, isInitiator)."""
        return crypto.keyed_hash32(self.hash, NS_INITIATOR if initiator else NS_RESPONDER)

    def __repr__(self) -> str:
        return f"HandshakeResult(is_initiator={self.is_initiator}, remote={self.remote_public_key.hex()[:16]})"


def _seed_of(key_pair: crypto.KeyPair) -> bytes:
    return bytes(key_pair.signing_key)  # pynacl's SigningKey bytes are the 32-byte seed


class Initiator:
    """The client side: `write_message1(payload)`, then `read_message2(msg2)`."""

    def __init__(
        self, key_pair: crypto.KeyPair, remote_public_key: bytes, *, ephemeral_seed: bytes | None = None
    ) -> None:
        if len(remote_public_key) != 32:
            raise ValueError("the server's public key must be 32 bytes")
        self._s = _Keys(_seed_of(key_pair), key_pair.public_key)
        self._e = _Keys.from_seed(ephemeral_seed or os.urandom(32))
        self._rs = remote_public_key
        self._state = _SymmetricState(crypto.NS_PEER_HANDSHAKE, remote_public_key)
        self._step = 0
        self.result: HandshakeResult | None = None

    def write_message1(self, payload: bytes) -> bytes:
        if self._step != 0:
            raise NoiseError("message 1 was already written")
        self._step = 1
        st = self._state
        st.mix_hash(self._e.public_key)
        st.mix_key(_dh(self._e.seed, self._rs))
        encrypted_s = st.encrypt_and_hash(self._s.public_key)
        st.mix_key(_dh(self._s.seed, self._rs))
        return self._e.public_key + encrypted_s + st.encrypt_and_hash(payload)

    def read_message2(self, message: bytes) -> bytes:
        """The server's payload (plaintext); sets `result`. Raises NoiseError."""
        if self._step != 1:
            raise NoiseError("message 2 arrived before message 1 was sent")
        if len(message) < MSG2_OVERHEAD:
            raise NoiseError(f"message 2 is {len(message)} bytes, shorter than {MSG2_OVERHEAD}")
        self._step = 2
        st = self._state
        re = message[:DHLEN]
        st.mix_hash(re)
        st.mix_key(_dh(self._e.seed, re))
        st.mix_key(_dh(self._s.seed, re))
        payload = st.decrypt_and_hash(message[DHLEN:], "message 2")
        tx, rx = st.split()
        self.result = HandshakeResult(True, tx, rx, st.h, self._rs)
        return payload


class Responder:
    """The server side (used by tests): `read_message1(msg1)`, then `write_message2(payload)`."""

    def __init__(self, key_pair: crypto.KeyPair, *, ephemeral_seed: bytes | None = None) -> None:
        self._s = _Keys(_seed_of(key_pair), key_pair.public_key)
        self._e = _Keys.from_seed(ephemeral_seed or os.urandom(32))
        self._state = _SymmetricState(crypto.NS_PEER_HANDSHAKE, key_pair.public_key)
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self.result: HandshakeResult | None = None

    def read_message1(self, message: bytes) -> bytes:
        if self._re is not None:
            raise NoiseError("message 1 was already read")
        if len(message) < MSG1_OVERHEAD:
            raise NoiseError(f"message 1 is {len(message)} bytes, shorter than {MSG1_OVERHEAD}")
        st = self._state
        self._re = message[:DHLEN]
        st.mix_hash(self._re)
        st.mix_key(_dh(self._s.seed, self._re))
        self._rs = st.decrypt_and_hash(message[DHLEN : DHLEN + DHLEN + MACLEN], "message 1 (static key)")
        st.mix_key(_dh(self._s.seed, self._rs))
        return st.decrypt_and_hash(message[DHLEN + DHLEN + MACLEN :], "message 1 (payload)")

    @property
    def remote_public_key(self) -> bytes | None:
        return self._rs

    def write_message2(self, payload: bytes) -> bytes:
        if self._re is None or self._rs is None or self.result is not None:
            raise NoiseError("message 2 needs exactly one message 1 first")
        st = self._state
        st.mix_hash(self._e.public_key)
        st.mix_key(_dh(self._e.seed, self._re))
        st.mix_key(_dh(self._e.seed, self._rs))
        message = self._e.public_key + st.encrypt_and_hash(payload)
        initiator_tx, initiator_rx = st.split()
        self.result = HandshakeResult(False, initiator_rx, initiator_tx, st.h, self._rs)
        return message
