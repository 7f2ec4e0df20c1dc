"""The encrypted record layer of a peer link (sans-IO).

After the Noise handshake, each direction is a sequence of records:
`length:u32 (big-endian) || AEAD(key, nonce = counter, plaintext)`, with the handshake's
cipher (ChaCha20-Poly1305 or AES-256-GCM, `suites.py`) and the nonce laid out as Noise
does for it (4 zero bytes, 64-bit counter). Records are
larger than Noise transport messages (1 MiB vs 64 KiB) because one AEAD call per record
is what keeps the cost per byte low; the length itself is authenticated as associated
data, so a truncated or spliced record fails to open.

The cost of a record is per call, not per byte (the cipher runs at GB/s), so the hot
paths avoid copies: `RecordSealer.seal_into` writes length and ciphertext straight into
one reusable buffer (no `header + ciphertext` concatenation), and `RecordOpener.open`
decrypts from any buffer (a view into the link's receive buffer).
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag

from .. import limits
from ..errors import ProtocolError
from .suites import CHACHAPOLY, CipherSuite

_LEN = struct.Struct(">I")
TAG_SIZE = 16
LENGTH_SIZE = _LEN.size
MAX_PLAINTEXT = limits.MAX_RECORD_SIZE - TAG_SIZE


class RecordError(ProtocolError):
    """A record that fails to authenticate, or an impossible length: the link is closed."""


def record_length(buf, pos: int = 0) -> int:
    """The length field at `pos` (ciphertext + tag), checked against the bounds."""
    (length,) = _LEN.unpack_from(buf, pos)
    if length < TAG_SIZE or length > limits.MAX_RECORD_SIZE:
        raise RecordError(f"record length {length} is out of bounds")
    return length


class RecordSealer:
    def __init__(self, key: bytes, suite: CipherSuite = CHACHAPOLY) -> None:
        self._aead = suite.aead(key)
        self._nonce = suite.nonce.pack
        self._counter = 0
        # One record at a time is being written to the link, so one buffer suffices.
        self._out = memoryview(bytearray(LENGTH_SIZE + limits.MAX_RECORD_SIZE))

    def seal_into(self, plaintext: bytes | bytearray | memoryview) -> memoryview:
        """The sealed record, as a view of the sealer's buffer: valid until the next call."""
        size = len(plaintext)
        if size > MAX_PLAINTEXT:
            raise ValueError(f"record plaintext of {size} bytes exceeds {MAX_PLAINTEXT}")
        out = self._out
        end = LENGTH_SIZE + size + TAG_SIZE
        _LEN.pack_into(out, 0, size + TAG_SIZE)
        self._aead.encrypt_into(
            self._nonce(self._counter), plaintext, out[:LENGTH_SIZE], out[LENGTH_SIZE:end]
        )
        self._counter += 1
        return out[:end]

    def seal(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        return bytes(self.seal_into(plaintext))


class RecordOpener:
    """Opens records in order. `feed` buffers arbitrary chunks (handy for tests and for
    streams that are not sockets); `open` takes one whole record already in a buffer."""

    def __init__(self, key: bytes, suite: CipherSuite = CHACHAPOLY) -> None:
        self._aead = suite.aead(key)
        self._nonce = suite.nonce.pack
        self._counter = 0
        self._buf = bytearray()

    def open(self, header, ciphertext) -> bytes:
        """Decrypt one record: `header` is its 4-byte length, `ciphertext` the rest."""
        try:
            plaintext = self._aead.decrypt(self._nonce(self._counter), ciphertext, header)
        except InvalidTag:
            raise RecordError("record failed authentication (corrupted or forged)") from None
        self._counter += 1
        return plaintext

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
        view = memoryview(buf)
        pos = 0
        try:
            while len(buf) - pos >= LENGTH_SIZE:
                end = pos + LENGTH_SIZE + record_length(buf, pos)
                if len(buf) < end:
                    break
                out.append(self.open(view[pos : pos + LENGTH_SIZE], view[pos + LENGTH_SIZE : end]))
                pos = end
        finally:
            view.release()  # the bytearray cannot be resized while a view exists
        if pos:
            del buf[:pos]
        return out
