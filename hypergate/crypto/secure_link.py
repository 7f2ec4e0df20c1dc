"""Drives the Noise handshake over a trio byte stream and carries encrypted records.

The result, `SecureLink`, is what the mux runs on, whatever transport produced the
stream (direct TCP today; hole-punched or relayed streams later).
"""

from __future__ import annotations

import logging
import os

import trio

from .. import limits
from ..errors import HandshakeError, ProtocolError
from .handshake import FRAME_OVERHEAD, HandshakeResult, NoiseHandshake, parse_frame_header
from .keys import LinkIdentity, RouterKeys
from .suites import CipherSuite
from .records import LENGTH_SIZE, MAX_PLAINTEXT, RecordOpener, RecordSealer, record_length
from ..sockio import DrainAwareReader, set_notsent_lowat

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
    """An authenticated, encrypted, record-oriented duplex link to one peer.

    Sending: `send_now` seals a record and writes what the socket takes at once, without
    a trio checkpoint (so a small message costs no task switch); the rest waits in
    `pending` until `flush` (or `send_record`, which does both) sends it. Only one
    record is ever pending, and nothing new is sealed until it is gone, because the
    sealer reuses its buffer.

    Receiving: records land in one preallocated buffer by `recv_into`; once a record's
    length is known, exactly its remaining bytes are read, so a record never straddles a
    refill and is decrypted in place (no reassembly copies).
    """

    max_plaintext = MAX_PLAINTEXT

    def __init__(
        self, stream: trio.abc.Stream, result: HandshakeResult, leftover: bytes, initiator: bool
    ) -> None:
        self.stream = stream
        self.remote_static = result.remote_static
        self.handshake_hash = result.handshake_hash
        self.initiator = initiator
        self.suite = result.suite
        self._sealer = RecordSealer(result.send_key, result.suite)
        self._opener = RecordOpener(result.recv_key, result.suite)
        # Direct socket access (send without a checkpoint, recv_into) needs a socket; any
        # other stream (memory streams in tests, future relays) takes the generic path.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self.pending: memoryview | None = None
        if self._socket is not None:
            set_notsent_lowat(self._socket, limits.LINK_NOTSENT_LOWAT)
        self._reader = DrainAwareReader(self._socket) if self._socket is not None else None
        # Room for one large read plus the longest record that may start at its end.
        self._rbuf = memoryview(bytearray(RECEIVE_SIZE + 2 * LENGTH_SIZE + limits.MAX_RECORD_SIZE))
        if len(leftover) > RECEIVE_SIZE:
            raise HandshakeError("peer sent too much data before the handshake finished")
        self._rbuf[: len(leftover)] = leftover
        self._start = 0
        self._end = len(leftover)
        self.bytes_sent = 0
        self.bytes_received = len(leftover)

    # --- sending --------------------------------------------------------------------

    @property
    def writes_directly(self) -> bool:
        """Records go to a socket with `send_now` (else every send goes through trio)."""
        return self._socket is not None

    @property
    def can_send_now(self) -> bool:
        return self._socket is not None and self.pending is None

    def send_now(self, plaintext: bytes | bytearray | memoryview) -> None:
        """Seal and write without waiting (requires `can_send_now`); what the socket does
        not take stays in `pending`. Raises OSError when the link is broken or closed."""
        assert self.pending is None and self._socket is not None
        fd = self._socket.fileno()
        if fd < 0:  # closed: never write to a descriptor number that may be reused
            raise trio.ClosedResourceError("the link is closed")
        record = self._sealer.seal_into(plaintext)
        self.bytes_sent += len(record)
        try:
            written = os.write(fd, record)
        except BlockingIOError:
            written = 0
        if written < len(record):
            self.pending = record[written:]

    async def flush(self) -> None:
        """Send the rest of a partly written record, if any."""
        if self.pending is not None:
            await self.stream.send_all(self.pending)
            self.pending = None

    async def send_record(self, plaintext: bytes | bytearray | memoryview) -> None:
        await self.flush()
        if self._socket is not None:
            self.send_now(plaintext)
            await self.flush()
        else:
            record = bytes(self._sealer.seal_into(plaintext))
            self.bytes_sent += len(record)
            await self.stream.send_all(record)

    # --- receiving ------------------------------------------------------------------

    def _open_buffered(self) -> list[bytes]:
        """Decrypt every complete record in the buffer; keep a partial one."""
        buf, pos, end = self._rbuf, self._start, self._end
        records: list[bytes] = []
        while end - pos >= LENGTH_SIZE:
            stop = pos + LENGTH_SIZE + record_length(buf, pos)
            if stop > end:
                break
            records.append(self._opener.open(buf[pos : pos + LENGTH_SIZE], buf[pos + LENGTH_SIZE : stop]))
            pos = stop
        if pos == end:
            pos = end = 0
        elif end - pos < LENGTH_SIZE or pos + LENGTH_SIZE + record_length(buf, pos) > len(buf):
            # A partial length, or a record that would not fit: move it to the front
            # (at most one read's worth, and rare: reads stop at record ends).
            buf[: end - pos] = buf[pos:end]
            pos, end = 0, end - pos
        self._start, self._end = pos, end
        return records

    def _wanted(self) -> int:
        """Bytes to read next: the rest of a record whose length is known, else a big read."""
        have = self._end - self._start
        if have >= LENGTH_SIZE:
            return LENGTH_SIZE + record_length(self._rbuf, self._start) - have
        return RECEIVE_SIZE

    async def _fill(self, n: int) -> int:
        target = self._rbuf[self._end : self._end + n]
        if self._socket is not None:
            got = await self._reader.read_into(target)
        else:
            chunk = await self.stream.receive_some(n)
            got = len(chunk)
            target[:got] = chunk
        self._end += got
        self.bytes_received += got
        return got

    async def receive_records(self) -> list[bytes]:
        """The next decrypted records (at least one), or [] when the peer closed cleanly."""
        while True:
            records = self._open_buffered()
            if records:
                return records
            if not await self._fill(self._wanted()):
                if self._end != self._start:
                    raise ProtocolError("peer closed the link in the middle of a record")
                return []

    async def aclose(self) -> None:
        await self.stream.aclose()


async def establish_link(
    stream: trio.abc.Stream,
    *,
    initiator: bool,
    identity: LinkIdentity,
    router: RouterKeys,
    suite: CipherSuite | None = None,
    timeout: float = limits.HANDSHAKE_TIMEOUT_S,
) -> SecureLink:
    """Run the handshake (offering `suite` when we dial); raises HandshakeError (with a
    reason fit for a log line)."""
    handshake = NoiseHandshake(initiator=initiator, identity=identity, router=router, suite=suite)
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
