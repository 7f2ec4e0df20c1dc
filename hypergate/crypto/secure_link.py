"""Drives the Noise handshake over a trio byte stream and carries encrypted records.

The result, `SecureLink`, is what the mux runs on, whatever transport produced the
stream (direct TCP today; hole-punched or relayed streams later).
"""

from __future__ import annotations

import logging

import trio

from .. import limits
from ..errors import HandshakeError, ProtocolError
from .handshake import FRAME_OVERHEAD, HandshakeResult, NoiseHandshake, parse_frame_header
from .keys import LinkIdentity, RouterKeys
from .records import MAX_PLAINTEXT, RecordOpener, RecordSealer

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024


class _BufferedReader:
    """Exact-size reads on top of `receive_some`, keeping what arrives early."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self.buffer = bytearray()

    async def read_exactly(self, n: int, what: str) -> bytes:
        while len(self.buffer) < n:
            chunk = await self._stream.receive_some(RECEIVE_SIZE)
            if not chunk:
                raise HandshakeError(
                    f"peer closed the connection during the handshake ({what}); "
                    "it may hold a different router secret"
                )
            self.buffer += chunk
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


class SecureLink:
    """An authenticated, encrypted, record-oriented duplex link to one peer."""

    def __init__(
        self, stream: trio.abc.Stream, result: HandshakeResult, leftover: bytes, initiator: bool
    ) -> None:
        self.stream = stream
        self.remote_static = result.remote_static
        self.handshake_hash = result.handshake_hash
        self.initiator = initiator
        self._sealer = RecordSealer(result.send_key)
        self._opener = RecordOpener(result.recv_key)
        self._leftover = leftover
        self.bytes_sent = 0
        self.bytes_received = 0

    max_plaintext = MAX_PLAINTEXT

    async def send_record(self, plaintext: bytes) -> None:
        record = self._sealer.seal(plaintext)
        self.bytes_sent += len(record)
        await self.stream.send_all(record)

    async def receive_records(self) -> list[bytes]:
        """The next decrypted records (at least one), or [] when the peer closed cleanly."""
        if self._leftover:
            data, self._leftover = self._leftover, b""
            records = self._opener.feed(data)
            if records:
                return records
        while True:
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                if self._opener.pending_bytes != 4:
                    raise ProtocolError("peer closed the link in the middle of a record")
                return []
            self.bytes_received += len(data)
            records = self._opener.feed(data)
            if records:
                return records

    async def aclose(self) -> None:
        await self.stream.aclose()


async def establish_link(
    stream: trio.abc.Stream,
    *,
    initiator: bool,
    identity: LinkIdentity,
    router: RouterKeys,
    timeout: float = limits.HANDSHAKE_TIMEOUT_S,
) -> SecureLink:
    """Run the handshake; raises HandshakeError (with a reason fit for a log line)."""
    handshake = NoiseHandshake(initiator=initiator, identity=identity, router=router)
    reader = _BufferedReader(stream)
    try:
        with trio.fail_after(timeout):
            while not handshake.done:
                if handshake.wants_write:
                    await stream.send_all(handshake.next_outgoing())
                else:
                    header = await reader.read_exactly(FRAME_OVERHEAD, "waiting for its message")
                    body = await reader.read_exactly(parse_frame_header(header), "mid-message")
                    handshake.receive(body)
    except trio.TooSlowError:
        raise HandshakeError(f"handshake timed out after {timeout:g}s") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise HandshakeError(f"connection lost during the handshake: {exc}") from None
    assert handshake.result is not None
    return SecureLink(stream, handshake.result, bytes(reader.buffer), initiator)
