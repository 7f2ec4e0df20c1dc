"""All key material in one place: the router secret, the topic, link identities.

The router secret is an Ed25519 seed, as in the Node.js original: the router topic (what
peers look up on the DHT) is that seed's public key, so it is public by design. What
proves membership on a link is a Noise pre-shared key derived from the secret, which no
log line, message or DHT record ever carries.
"""

from __future__ import annotations

import hashlib
import secrets

import attrs
import nacl.signing

from ..errors import ConfigError

ROUTER_SECRET_BYTES = 32


def new_router_secret() -> str:
    """A fresh router secret: 32 random bytes as 64 hex characters."""
    return secrets.token_bytes(ROUTER_SECRET_BYTES).hex()


def parse_router_secret(text: str) -> bytes:
    """The 32-byte secret from its hex form. The message never echoes the value."""
    cleaned = text.strip()
    try:
        secret = bytes.fromhex(cleaned)
    except ValueError:
        raise ConfigError(
            "--router: the router secret must be 64 hex characters (make one with `hypergate --new`)"
        ) from None
    if len(secret) != ROUTER_SECRET_BYTES:
        raise ConfigError(
            f"--router: the router secret must be {ROUTER_SECRET_BYTES} bytes "
            f"(64 hex characters), got {len(secret)} bytes"
        )
    return secret


@attrs.frozen(repr=False)
class RouterKeys:
    """What a process derives from the router secret. `repr` hides the secret parts."""

    topic: bytes  # Ed25519 public key of the secret: public, names the router on the DHT
    link_psk: bytes  # Noise psk: only holders of the secret can complete a link handshake
    topic_hint: bytes  # 8 bytes of the topic's hash: lets a peer say "wrong secret" early

    @classmethod
    def from_secret(cls, secret: bytes) -> RouterKeys:
        topic = bytes(nacl.signing.SigningKey(secret).verify_key)
        psk = hashlib.blake2b(b"hypergate link psk v1", key=secret, digest_size=32).digest()
        hint = hashlib.blake2b(topic, digest_size=8, person=b"hg-topic-hint").digest()
        return cls(topic=topic, link_psk=psk, topic_hint=hint)

    def __repr__(self) -> str:
        return f"RouterKeys(topic={self.topic.hex()[:16]}...)"


@attrs.frozen(repr=False)
class LinkIdentity:
    """A process's own identity on peer links: a fresh Ed25519 keypair per process.

    Noise runs on X25519, so the static key is the Curve25519 form of the same keypair;
    the Ed25519 side is what DHT records are signed with.
    """

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> LinkIdentity:
        return cls(nacl.signing.SigningKey.generate())

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def noise_private(self) -> bytes:
        return bytes(self.signing_key.to_curve25519_private_key())

    @property
    def noise_public(self) -> bytes:
        return bytes(self.signing_key.verify_key.to_curve25519_public_key())

    def __repr__(self) -> str:
        return f"LinkIdentity({self.public_key.hex()[:16]}...)"
