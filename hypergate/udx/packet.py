"""UDX packet codec (UDX-WIRE.md §2): a 20-byte little-endian header, optional SACK
blocks or padding (data_offset), then the payload. Sans-IO, no trio.
"""

from __future__ import annotations

import struct

from hypergate.errors import ProtocolError

MAGIC = 0xFF
VERSION = 0x01
HEADER_SIZE = 20

DATA = 0x01
END = 0x02
SACK = 0x04
MESSAGE = 0x08
DESTROY = 0x10
HEARTBEAT = 0x20

# magic, version, type, data_offset, id, rwnd, seq, ack
_HEADER = struct.Struct("<BBBBIIII")
_PAIR = struct.Struct("<II")
_U32 = 0xFFFFFFFF


class UdxPacketError(ProtocolError):
    """A datagram is not a well-formed UDX packet."""


def is_udx(datagram: bytes | bytearray | memoryview) -> bool:
    """The demux rule of UDX-WIRE §1 (minus the live-id check, which the socket does)."""
    return len(datagram) >= HEADER_SIZE and datagram[0] == MAGIC and datagram[1] == VERSION


class Packet:
    """One decoded UDX packet. `payload` is a memoryview into the datagram (zero copy)."""

    __slots__ = ("type", "data_offset", "stream_id", "rwnd", "seq", "ack", "payload", "sacks")

    def __init__(
        self,
        type: int,
        stream_id: int,
        rwnd: int,
        seq: int,
        ack: int,
        payload: bytes | memoryview = b"",
        sacks: tuple[tuple[int, int], ...] = (),
        data_offset: int = 0,
    ) -> None:
        self.type = type
        self.data_offset = data_offset
        self.stream_id = stream_id
        self.rwnd = rwnd
        self.seq = seq
        self.ack = ack
        self.payload = payload
        self.sacks = sacks

    def __repr__(self) -> str:
        return (
            f"Packet(type={self.type:#04x}, id={self.stream_id:#x}, rwnd={self.rwnd}, "
            f"seq={self.seq}, ack={self.ack}, payload={len(self.payload)}B, sacks={self.sacks})"
        )


def encode_header(type: int, stream_id: int, rwnd: int, seq: int, ack: int, data_offset: int = 0) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, type, data_offset, stream_id, rwnd & _U32, seq & _U32, ack & _U32)


def encode(
    type: int,
    stream_id: int,
    rwnd: int,
    seq: int,
    ack: int,
    payload: bytes | memoryview = b"",
    sacks: tuple[tuple[int, int], ...] | list[tuple[int, int]] = (),
    padding: int = 0,
) -> bytes:
    """One datagram. SACK blocks go in the extension area; Node sends SACK on a pure
    ACK with data_offset 0, so we do the same there, and set data_offset to the blocks'
    size on a packet that carries a payload."""
    if sacks:
        type |= SACK
        ext = b"".join(_PAIR.pack(start & _U32, end & _U32) for start, end in sacks)
    else:
        ext = bytes(padding)
    carries_payload = bool(payload) or bool(type & (DATA | END | MESSAGE))
    if len(ext) > 255 and carries_payload:
        raise UdxPacketError(f"extension of {len(ext)} bytes does not fit data_offset (max 255)")
    data_offset = len(ext) if carries_payload else 0
    return encode_header(type, stream_id, rwnd, seq, ack, data_offset) + ext + bytes(payload)


def decode(datagram: bytes | bytearray | memoryview) -> Packet:
    """Parse a datagram; raises only UdxPacketError."""
    if len(datagram) < HEADER_SIZE:
        raise UdxPacketError(f"datagram of {len(datagram)} bytes is shorter than the 20-byte UDX header")
    magic, version, type, data_offset, stream_id, rwnd, seq, ack = _HEADER.unpack_from(datagram, 0)
    if magic != MAGIC or version != VERSION:
        raise UdxPacketError(f"not a UDX packet (magic {magic:#04x}, version {version})")
    body = memoryview(datagram)[HEADER_SIZE:]
    sacks: tuple[tuple[int, int], ...] = ()
    if type & SACK:
        region = body[:data_offset] if 0 < data_offset < len(body) else body
        sacks = tuple(_PAIR.iter_unpack(region[: len(region) // 8 * 8]))
    if data_offset > len(body):
        raise UdxPacketError(f"data_offset {data_offset} is past the end of a {len(body)}-byte body")
    if type & (DATA | END | MESSAGE):
        payload = body[data_offset:]
    else:
        payload = b""
    return Packet(type, stream_id, rwnd, seq, ack, payload, sacks, data_offset)


def seq_diff(a: int, b: int) -> int:
    """a - b as a signed 32-bit difference (sequence arithmetic modulo 2^32)."""
    return ((a - b + 0x80000000) & _U32) - 0x80000000
