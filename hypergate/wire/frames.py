"""Mux frame codec (sans-IO): frames to bytes, and a streaming decoder for bytes to frames.

A frame is a 12-byte header followed by a payload, modelled on yamux:

    version:u8  type:u8  flags:u16  channel:u32  length:u32      (big-endian)

`length` is the payload size for types that carry one (DATA, MESSAGE, OPEN, RESET) and a
plain value otherwise (credit for WINDOW_UPDATE, an opaque token for PING, a code for
GO_AWAY), so those frames are exactly 12 bytes.
"""

from __future__ import annotations

import enum
import struct

import attrs

from .. import limits
from ..errors import ProtocolError

VERSION = 1
HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size


class FrameError(ProtocolError):
    """Bytes from the peer that are not a valid frame. The session is closed for it."""


class FrameType(enum.IntEnum):
    DATA = 0  # channel bytes; FIN flag = sender will send no more (half-close)
    WINDOW_UPDATE = 1  # length = extra bytes the receiver grants; channel 0 = session window
    PING = 2  # length = opaque token; ACK flag on the answer
    GO_AWAY = 3  # length = reason code; no new channels, existing ones may finish
    MESSAGE = 4  # channel 0; payload = session control message (JSON)
    OPEN = 5  # payload = open request (JSON); opens `channel`
    ACCEPT = 6  # the opened channel is connected; no payload
    RESET = 7  # payload = reason (JSON); the channel is gone in both directions


class Flag(enum.IntFlag):
    NONE = 0
    FIN = 1
    ACK = 2


_KNOWN_FLAGS = int(Flag.FIN | Flag.ACK)


class GoAwayCode(enum.IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


# Types whose `length` field is a value rather than a payload size.
_VALUE_TYPES = frozenset({FrameType.WINDOW_UPDATE, FrameType.PING, FrameType.GO_AWAY})

# Largest payload per type: anything above is a protocol error before we buffer it.
_MAX_PAYLOAD = {
    FrameType.DATA: limits.MAX_FRAME_PAYLOAD,
    FrameType.MESSAGE: limits.MAX_CONTROL_MESSAGE,
    FrameType.OPEN: 64 * 1024,
    FrameType.ACCEPT: 0,
    FrameType.RESET: 4096,
}


@attrs.frozen
class Frame:
    type: FrameType
    channel: int
    flags: Flag = Flag.NONE
    # Payload for payload types; empty for value types.
    payload: bytes = b""
    # The length field's value for value types (credit, ping token, go-away code).
    value: int = 0

    def encode(self) -> bytes:
        return encode_frame(self.type, self.channel, self.flags, self.payload, self.value)


def encode_header(ftype: FrameType, channel: int, flags: int, length: int) -> bytes:
    return HEADER.pack(VERSION, ftype, flags, channel, length)


def encode_frame(
    ftype: FrameType, channel: int, flags: int = 0, payload: bytes = b"", value: int = 0
) -> bytes:
    if ftype in _VALUE_TYPES:
        if payload:
            raise ValueError(f"{ftype.name} frames carry a value, not a payload")
        return HEADER.pack(VERSION, ftype, flags, channel, value)
    if len(payload) > _MAX_PAYLOAD[ftype]:
        raise ValueError(f"{ftype.name} payload of {len(payload)} bytes exceeds the limit")
    return HEADER.pack(VERSION, ftype, flags, channel, len(payload)) + payload


_TYPES = {int(t): t for t in FrameType}
_FLAGS = {f: Flag(f) for f in range(_KNOWN_FLAGS + 1) if not f & ~_KNOWN_FLAGS}


class FrameDecoder:
    """Feed it bytes as they arrive; it returns every complete frame, in order.

    Invalid input raises `FrameError` (and only that): after that the decoder is unusable,
    as the stream can no longer be trusted to be in sync.

    Fed whole `bytes` (a decrypted record) with nothing buffered, DATA payloads are
    zero-copy memoryviews into it, so a bulk record is never copied between decryption
    and the socket. A view keeps its whole record alive, so views are used only when
    DATA payloads make up at least half the record: then the memory held is at most
    twice what the flow-control window accounts for (a record of pings around one
    byte of data would otherwise pin a megabyte per byte of window).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._failed: FrameError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._failed is not None:
            raise self._failed
        frames: list[Frame] = []
        try:
            if self._pos == len(self._buf) and type(data) is bytes:
                self._buf.clear()
                self._pos = 0
                consumed = self._parse_record(data, frames)
                if consumed < len(data):
                    self._buf += memoryview(data)[consumed:]
                return frames
            if self._pos and self._pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
            self._buf += data
            buf = self._buf
            while True:
                frame, end = _next_frame(buf, self._pos, False)
                if frame is None:
                    break
                self._pos = end
                frames.append(frame)
        except FrameError as exc:
            self._failed = exc
            raise
        # Drop consumed bytes once they dominate the buffer, so it stays bounded.
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        return frames

    def _parse_record(self, data: bytes, frames: list[Frame]) -> int:
        view = memoryview(data)
        pos = 0
        viewed = 0
        while True:
            frame, end = _next_frame(view, pos, True)
            if frame is None:
                break
            if frame.type is FrameType.DATA:
                viewed += end - pos - HEADER_SIZE
            frames.append(frame)
            pos = end
        if viewed and viewed * 2 < len(data):
            for index, frame in enumerate(frames):
                if frame.type is FrameType.DATA and frame.payload:
                    frames[index] = Frame(FrameType.DATA, frame.channel, frame.flags, bytes(frame.payload))
        return pos


def _next_frame(buf, pos: int, zero_copy: bool) -> tuple[Frame | None, int]:
    """The frame at `pos` and where it ends, or (None, pos) when it is incomplete."""
    if len(buf) - pos < HEADER_SIZE:
        return None, pos
    version, raw_type, raw_flags, channel, length = HEADER.unpack_from(buf, pos)
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}")
    ftype = _TYPES.get(raw_type)
    if ftype is None:
        raise FrameError(f"unknown frame type {raw_type}")
    flags = _FLAGS.get(raw_flags)
    if flags is None:
        raise FrameError(f"unknown frame flags {raw_flags:#x}")
    if ftype in _VALUE_TYPES:
        return Frame(ftype, channel, flags, b"", length), pos + HEADER_SIZE
    if length > _MAX_PAYLOAD[ftype]:
        raise FrameError(f"{ftype.name} frame of {length} bytes exceeds the limit")
    end = pos + HEADER_SIZE + length
    if len(buf) < end:
        return None, pos
    payload = buf[pos + HEADER_SIZE : end]
    if not (zero_copy and ftype is FrameType.DATA):
        payload = bytes(payload)  # control payloads are parsed as bytes; buffers get reused
    return Frame(ftype, channel, flags, payload, 0), end
