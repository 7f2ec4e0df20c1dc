"""@hyperswarm/secret-stream framing after hyperdht's IK handshake, sans-IO.

HYPERSWARM-WIRE.md 4.2. hyperdht hands the IK result (tx, rx, hash) to the stream, so
no further handshake runs here. Each side first writes one header frame,

    u24le(56) || streamId(own role) (32) || crypto_secretstream header (24)

and then data frames, `u24le(len + 17) || crypto_secretstream_xchacha20poly1305_push(
plain, tag=MESSAGE)`. A zero-length plaintext is a keep-alive (hyperdht sends one every
5 s when idle) and is swallowed. Frames are at most 2^24-1 bytes.

`SecretStream.receive(data)` takes raw bytes in any chunking and returns the plaintexts
that became complete; `encrypt(data)` returns the frames to send. No I/O, no clock.
"""

from __future__ import annotations

import nacl.bindings as nb
import nacl.exceptions

from hypergate.errors import ProtocolError
from hypergate.hyperswarm.noise_ik import HandshakeResult
from hypergate.limits import HYPERSWARM_FRAME_PLAINTEXT

HEADER_BYTES = nb.crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 24
ABYTES = nb.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
ID_HEADER_BYTES = 32 + HEADER_BYTES  # 56
MAX_FRAME = (1 << 24) - 1  # the u24 length prefix
MAX_PLAINTEXT = MAX_FRAME - ABYTES
_TAG_MESSAGE = nb.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE


class SecretStreamError(ProtocolError):
    """The peer's secret-stream is not what the handshake promised (bad header, bad MAC)."""


def _u24(n: int) -> bytes:
    return n.to_bytes(3, "little")


class SecretStream:
    """One direction pair of a secret-stream. Call `header()` once, first."""

    def __init__(self, handshake: HandshakeResult) -> None:
        self._is_initiator = handshake.is_initiator
        self._own_id = handshake.stream_id(handshake.is_initiator)
        self._expected_id = handshake.stream_id(not handshake.is_initiator)
        self._tx = handshake.tx
        self._rx = handshake.rx
        self._push = nb.crypto_secretstream_xchacha20poly1305_state()
        self._pull = nb.crypto_secretstream_xchacha20poly1305_state()
        self._header_sent = False
        self._header_received = False
        self._buffer = bytearray()
        self._failed: str | None = None
        self.frames_received = 0
        self.keepalives_received = 0

    @property
    def ready(self) -> bool:
        """The peer's header arrived: its frames can be decrypted."""
        return self._header_received

    def header(self) -> bytes:
        """Our header frame; must be the first bytes we send."""
        if self._header_sent:
            raise RuntimeError("the secret-stream header was already produced")
        self._header_sent = True
        header = nb.crypto_secretstream_xchacha20poly1305_init_push(self._push, self._tx)
        return _u24(ID_HEADER_BYTES) + self._own_id + header

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Frames carrying `data` (split at HYPERSWARM_FRAME_PLAINTEXT); b"" gives one
        empty frame, a keep-alive."""
        if not self._header_sent:
            raise RuntimeError("send the secret-stream header first")
        view = memoryview(data).cast("B")
        if not view:
            return self._frame(b"")
        out = bytearray()
        for offset in range(0, len(view), HYPERSWARM_FRAME_PLAINTEXT):
            out += self._frame(bytes(view[offset : offset + HYPERSWARM_FRAME_PLAINTEXT]))
        return bytes(out)

    def keepalive(self) -> bytes:
        return self.encrypt(b"")

    def _frame(self, plain: bytes) -> bytes:
        ciphertext = nb.crypto_secretstream_xchacha20poly1305_push(self._push, plain, None, _TAG_MESSAGE)
        return _u24(len(ciphertext)) + ciphertext

    def receive(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Feed raw bytes from the peer; returns the complete non-empty plaintexts.
        Raises SecretStreamError (and stays failed) on a bad header or frame."""
        if self._failed is not None:
            raise SecretStreamError(self._failed)
        self._buffer += data
        out: list[bytes] = []
        buffer = self._buffer
        offset = 0
        try:
            while len(buffer) - offset >= 3:
                length = buffer[offset] | buffer[offset + 1] << 8 | buffer[offset + 2] << 16
                if len(buffer) - offset - 3 < length:
                    break
                message = bytes(buffer[offset + 3 : offset + 3 + length])
                offset += 3 + length
                plain = self._incoming(message)
                if plain:
                    out.append(plain)
        finally:
            del buffer[:offset]
        return out

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def _fail(self, reason: str) -> SecretStreamError:
        self._failed = reason
        return SecretStreamError(reason)

    def _incoming(self, message: bytes) -> bytes:
        if not self._header_received:
            if len(message) != ID_HEADER_BYTES:
                raise self._fail(f"invalid secret-stream header: {len(message)} bytes, expected {ID_HEADER_BYTES}")
            if message[:32] != self._expected_id:
                raise self._fail("invalid secret-stream header: the stream id does not match the handshake")
            nb.crypto_secretstream_xchacha20poly1305_init_pull(self._pull, message[32:], self._rx)
            self._header_received = True
            return b""
        if len(message) < ABYTES:
            raise self._fail(f"invalid secret-stream frame: {len(message)} bytes, shorter than {ABYTES}")
        try:
            plain, _tag = nb.crypto_secretstream_xchacha20poly1305_pull(self._pull, message, None)
        except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError, RuntimeError) as exc:
            raise self._fail("secret-stream frame failed authentication (MAC mismatch or out of order)") from exc
        self.frames_received += 1
        if not plain:
            self.keepalives_received += 1
        return plain
