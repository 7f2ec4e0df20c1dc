"""The encrypted record layer of a peer link (sans-IO).

After the Noise handshake, each direction is a sequence of records:
`length:u32 (big-endian) || ChaCha20-Poly1305(key, nonce = counter, plaintext)`, with the
nonce laid out as Noise does (4 zero bytes, 64-bit little-endian counter). Records are
larger than Noise transport messages (1 MiB vs 64 KiB) because one AEAD call per record
is what keeps the cost per byte low; the length itself is authenticated as associated
data, so a truncated or spliced record fails to open.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .. import limits
from ..errors import ProtocolError

_LEN = struct.Struct(">I")
TAG_SIZE = 16
LENGTH_SIZE = _LEN.size
MAX_PLAINTEXT = limits.MAX_RECORD_SIZE - TAG_SIZE


class RecordError(ProtocolError):
    """A record that fails to authenticate, or an impossible length: the link is closed."""


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


class RecordSealer:
    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0

    def seal(self, plaintext: bytes) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"record plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        header = _LEN.pack(len(plaintext) + TAG_SIZE)
        sealed = self._aead.encrypt(_nonce(self._counter), plaintext, header)
        self._counter += 1
        return header + sealed


class RecordOpener:
    """Feed ciphertext as it arrives; returns the plaintext of every complete record."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0
        self._buf = bytearray()

    @property
    def pending_bytes(self) -> int:
        """How many more bytes complete the next record (at least 1 when it is partial)."""
        if len(self._buf) < LENGTH_SIZE:
            return LENGTH_SIZE - len(self._buf)
        (length,) = _LEN.unpack_from(self._buf)
        return max(1, LENGTH_SIZE + length - len(self._buf))

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= LENGTH_SIZE:
            (length,) = _LEN.unpack_from(buf, pos)
            if length < TAG_SIZE or length > limits.MAX_RECORD_SIZE:
                raise RecordError(f"record length {length} is out of bounds")
            end = pos + LENGTH_SIZE + length
            if len(buf) < end:
                break
            header = bytes(buf[pos : pos + LENGTH_SIZE])
            try:
                out.append(
                    self._aead.decrypt(
                        _nonce(self._counter), bytes(buf[pos + LENGTH_SIZE : end]), header
                    )
                )
            except InvalidTag:
                raise RecordError("record failed authentication (corrupted or forged)") from None
            self._counter += 1
            pos = end
        if pos:
            del buf[:pos]
        return out
