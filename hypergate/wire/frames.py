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


class FrameDecoder:
    """Feed it bytes as they arrive; it returns every complete frame, in order.

    Invalid input raises `FrameError` (and only that): after that the decoder is unusable,
    as the stream can no longer be trusted to be in sync.
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
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data
        frames: list[Frame] = []
        try:
            while True:
                frame = self._next_frame()
                if frame is None:
                    break
                frames.append(frame)
        except FrameError as exc:
            self._failed = exc
            raise
        # Drop consumed bytes once they dominate the buffer, so it stays bounded.
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        return frames

    def _next_frame(self) -> Frame | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        version, raw_type, raw_flags, channel, length = HEADER.unpack_from(buf, pos)
        if version != VERSION:
            raise FrameError(f"unsupported frame version {version}")
        try:
            ftype = FrameType(raw_type)
        except ValueError:
            raise FrameError(f"unknown frame type {raw_type}") from None
        if raw_flags & ~_KNOWN_FLAGS:
            raise FrameError(f"unknown frame flags {raw_flags:#x}")
        flags = Flag(raw_flags)
        if ftype in _VALUE_TYPES:
            self._pos = pos + HEADER_SIZE
            return Frame(ftype, channel, flags, b"", length)
        if length > _MAX_PAYLOAD[ftype]:
            raise FrameError(f"{ftype.name} frame of {length} bytes exceeds the limit")
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            return None
        self._pos = end
        return Frame(ftype, channel, flags, bytes(buf[pos + HEADER_SIZE : end]), 0)
