"""DHT hashes, node ids, namespaces, announce signatures and rotating tokens.

All of it is BLAKE2b (libsodium `crypto_generichash`) and Ed25519 (pynacl), as in
dht-rpc and hyperdht (HYPERSWARM-WIRE.md 2.5, 2.6, 3.2, 3.4). Sans-IO: time comes in as
a parameter, randomness from `os.urandom` unless a test passes its own secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import attrs
import nacl.exceptions
import nacl.signing

from hypergate.dht.encoding import Address, encode_ipv4_address
from hypergate.dht.messages import Command, MutableSignable, PeerRecord


def hash32(data: bytes) -> bytes:
    """BLAKE2b-256, unkeyed: libsodium's crypto_generichash default."""
    return hashlib.blake2b(data, digest_size=32).digest()


def keyed_hash32(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32, key=key).digest()


def node_id(address: Address) -> bytes:
    """A node's id: the hash of its own 6-byte public ipv4Address (dht-rpc/lib/peer.js)."""
    return hash32(encode_ipv4_address(address))


def namespace(name: str, ids: list[int]) -> list[bytes]:
    """hypercore-crypto's namespace(): H32(H32(name) || byte(id)) for each id."""
    base = hash32(name.encode())
    return [hash32(base + bytes([i])) for i in ids]


NS_ANNOUNCE, NS_UNANNOUNCE, NS_MUTABLE_PUT, NS_PEER_HANDSHAKE, NS_PEER_HOLEPUNCH, NS_PLUGIN = namespace(
    "hyperswarm/dht",
    [
        Command.ANNOUNCE,
        Command.UNANNOUNCE,
        Command.MUTABLE_PUT,
        Command.PEER_HANDSHAKE,
        Command.PEER_HOLEPUNCH,
        Command.PLUGIN,
    ],
)


# --- Ed25519 -----------------------------------------------------------------------------


@attrs.frozen(repr=False)
class KeyPair:
    """An Ed25519 identity. `repr` never shows the secret."""

    public_key: bytes
    signing_key: nacl.signing.SigningKey

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        signing_key = nacl.signing.SigningKey(seed)
        return cls(bytes(signing_key.verify_key), signing_key)

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_seed(os.urandom(32))

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"KeyPair(public_key={self.public_key.hex()})"


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False
    return True


def announce_signable(
    namespace_hash: bytes,
    target: bytes,
    receiver_id: bytes,
    token: bytes,
    peer: PeerRecord,
    refresh: bytes | None = None,
) -> bytes:
    """The 64 bytes an (un)announce signs: ns || H32(target||node id||token||peer||refresh).

    `receiver_id` is the id of the node that will store the record and `token` the
    token it gave us, so a signature is only good at that node for that token's life.
    """
    digest = hash32(target + receiver_id + token + peer.encode() + (refresh or b""))
    return namespace_hash + digest


def sign_announce(
    key_pair: KeyPair, target: bytes, receiver_id: bytes, token: bytes, peer: PeerRecord, refresh: bytes | None = None
) -> bytes:
    return key_pair.sign(announce_signable(NS_ANNOUNCE, target, receiver_id, token, peer, refresh))


def sign_unannounce(
    key_pair: KeyPair, target: bytes, receiver_id: bytes, token: bytes, peer: PeerRecord, refresh: bytes | None = None
) -> bytes:
    return key_pair.sign(announce_signable(NS_UNANNOUNCE, target, receiver_id, token, peer, refresh))


def mutable_signable(seq: int, value: bytes) -> bytes:
    return NS_MUTABLE_PUT + hash32(MutableSignable(seq, value).encode())


# --- announce tokens ----------------------------------------------------------------------

# dht-rpc rotates every 10th drain of 750 ms; a token therefore lives 7.5 to 15 s.
TOKEN_ROTATE_INTERVAL_S = 7.5


class TokenSecrets:
    """The two rotating secrets behind announce tokens (dht-rpc io.js token/_drain).

    A token binds the requester's IP (not port) to a short time window, so a store
    request proves the requester can receive at that IP. Replies carry the token of
    the newer secret; a request may present either.
    """

    def __init__(self, now: float, secrets: tuple[bytes, bytes] | None = None) -> None:
        first, second = secrets if secrets is not None else (os.urandom(32), os.urandom(32))
        self._secrets = [first, second]
        self._next_rotation = now + TOKEN_ROTATE_INTERVAL_S

    def token(self, host: str, index: int = 1) -> bytes:
        return keyed_hash32(self._secrets[index], host.encode())

    def is_valid(self, host: str, token: bytes) -> bool:
        return hmac.compare_digest(token, self.token(host, 1)) or hmac.compare_digest(token, self.token(host, 0))

    def rotate(self) -> None:
        # As Node: the old secret 0 moves to slot 1 as its own hash.
        old_first = self._secrets[0]
        self._secrets[0] = self._secrets[1]
        self._secrets[1] = hash32(old_first)

    def advance(self, now: float) -> None:
        """Rotate as many times as the time since the last call requires (at most 2 matter)."""
        rotations = 0
        while now >= self._next_rotation and rotations < 2:
            self.rotate()
            self._next_rotation += TOKEN_ROTATE_INTERVAL_S
            rotations += 1
        if now >= self._next_rotation:
            self._next_rotation = now + TOKEN_ROTATE_INTERVAL_S
