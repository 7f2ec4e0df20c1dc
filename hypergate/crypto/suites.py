"""The link's cipher suites: which AEAD seals the Noise handshake and every record.

Two suites, as Noise names them: ChaChaPoly (fast everywhere in software) and AESGCM
(about three times faster where the CPU has AES and carry-less multiply instructions:
x86 AES-NI + PCLMULQDQ, ARMv8 AES + PMULL; very slow without them). Records are what a
bulk transfer spends its cipher time on, so the choice is measurable in throughput
(`bench/throughput.py`, see README "Performance").

Negotiation costs no round trip: the dialling side names its suite in the first
handshake message, the answering side accepts either. The suite's name is part of the
Noise protocol name, which seeds the handshake hash, so a suite byte altered on the way
makes message 1 fail to authenticate (psk modes key it): no downgrade.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import attrs
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

CPUINFO = Path("/proc/cpuinfo")


@attrs.frozen
class CipherSuite:
    id: int  # the byte in handshake message 1
    name: str  # as in --cipher and in log lines
    noise_name: bytes
    aead: type
    nonce: struct.Struct  # Noise's nonce layout for this cipher: 4 zero bytes, 64-bit counter

    def __str__(self) -> str:
        return self.name


CHACHAPOLY = CipherSuite(
    1, "chachapoly", b"Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b", ChaCha20Poly1305, struct.Struct("<4xQ")
)
AESGCM_SUITE = CipherSuite(
    2, "aesgcm", b"Noise_XXpsk3_25519_AESGCM_BLAKE2b", AESGCM, struct.Struct(">4xQ")
)
SUITES_BY_ID = {suite.id: suite for suite in (CHACHAPOLY, AESGCM_SUITE)}
SUITES_BY_NAME = {suite.name: suite for suite in (CHACHAPOLY, AESGCM_SUITE)}
CIPHER_CHOICES = ("auto", *SUITES_BY_NAME)


def has_aes_instructions(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text shows hardware AES and GHASH support (x86 or ARMv8)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return "aes" in flags and ("pclmulqdq" in flags or "pmull" in flags)
    return False


@functools.cache
def auto_suite() -> CipherSuite:
    """AESGCM on CPUs with AES instructions, else ChaChaPoly (also when we cannot tell)."""
    try:
        cpuinfo = CPUINFO.read_text(errors="replace")
    except OSError:
        return CHACHAPOLY
    return AESGCM_SUITE if has_aes_instructions(cpuinfo) else CHACHAPOLY


def parse_cipher(value: str) -> CipherSuite:
    """`--cipher auto|aesgcm|chachapoly` as the suite this process offers when it dials."""
    cleaned = value.strip().lower()
    if cleaned == "auto":
        return auto_suite()
    suite = SUITES_BY_NAME.get(cleaned)
    if suite is None:
        raise ValueError(f"--cipher: expected one of {', '.join(CIPHER_CHOICES)}, got {value!r}")
    return suite
