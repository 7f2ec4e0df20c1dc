"""compact-encoding (npm `compact-encoding` 3.5.2) as a sans-IO Encoder/Decoder pair.

Every Hyperswarm DHT message is built from these primitives. The Decoder never raises
anything but `CodecError`: a datagram from the network is hostile until parsed, and the
caller drops and counts it rather than crash (see HYPERSWARM-WIRE.md section 1).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import TypeVar

import attrs

from hypergate.errors import ProtocolError

T = TypeVar("T")

# compact-encoding refuses larger numbers: JavaScript numbers are exact only to 2^53-1.
MAX_SAFE_UINT = 2**53 - 1
# compact-encoding's array decoder throws above this count ("Array is too big").
MAX_ARRAY_LENGTH = 0x100000


class CodecError(ProtocolError):
    """Bytes that are not a valid encoding, or a value that cannot be encoded."""


@attrs.frozen(order=True)
class Address:
    """An IPv4 host (dotted string) and UDP port: the 6-byte `ipv4Address` of the wire."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Encoder:
    """Appends encodings to a growing buffer; `bytes()` returns the result."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def bytes(self) -> bytes:
        return bytes(self._buffer)

    def __len__(self) -> int:
        return len(self._buffer)

    def uint(self, n: int) -> None:
        _check_uint(n, MAX_SAFE_UINT)
        if n <= 0xFC:
            self._buffer.append(n)
        elif n <= 0xFFFF:
            self._buffer.append(0xFD)
            self._buffer += n.to_bytes(2, "little")
        elif n <= 0xFFFFFFFF:
            self._buffer.append(0xFE)
            self._buffer += n.to_bytes(4, "little")
        else:
            self._buffer.append(0xFF)
            self._buffer += n.to_bytes(8, "little")

    def _fixed_uint(self, n: int, width: int) -> None:
        _check_uint(n, (1 << (8 * width)) - 1)
        self._buffer += n.to_bytes(width, "little")

    def uint8(self, n: int) -> None:
        self._fixed_uint(n, 1)

    def uint16(self, n: int) -> None:
        self._fixed_uint(n, 2)

    def uint24(self, n: int) -> None:
        self._fixed_uint(n, 3)

    def uint32(self, n: int) -> None:
        self._fixed_uint(n, 4)

    def uint64(self, n: int) -> None:
        _check_uint(n, MAX_SAFE_UINT)
        self._fixed_uint(n, 8)

    def int(self, n: int) -> None:
        """Zig-zag signed integer over `uint` (0, -1, 1, -2 -> 0, 1, 2, 3)."""
        self.uint(2 * n if n >= 0 else -2 * n - 1)

    def bool(self, value: bool) -> None:
        self._buffer.append(1 if value else 0)

    def buffer(self, data: bytes) -> None:
        """Length-prefixed bytes."""
        self.uint(len(data))
        self._buffer += data

    def raw(self, data: bytes) -> None:
        self._buffer += data

    def string(self, text: str) -> None:
        self.buffer(text.encode("utf-8"))

    def fixed(self, data: bytes, size: int) -> None:
        if len(data) != size:
            raise CodecError(f"fixed field needs {size} bytes, got {len(data)}")
        self._buffer += data

    def fixed32(self, data: bytes) -> None:
        self.fixed(data, 32)

    def fixed64(self, data: bytes) -> None:
        self.fixed(data, 64)

    def ipv4(self, host: str) -> None:
        try:
            self._buffer += ipaddress.IPv4Address(host).packed
        except ValueError as exc:
            raise CodecError(f"not an IPv4 address: host={host!r}") from exc

    def port(self, port: int) -> None:
        self.uint16(port)

    def ipv4_address(self, address: Address) -> None:
        self.ipv4(address.host)
        self.port(address.port)

    def ipv6_address(self, address: Address) -> None:
        try:
            self._buffer += ipaddress.IPv6Address(address.host).packed
        except ValueError as exc:
            raise CodecError(f"not an IPv6 address: host={address.host!r}") from exc
        self.port(address.port)

    def array(self, items: Iterable[T], encode_item: Callable[[Encoder, T], None]) -> None:
        items = list(items)
        self.uint(len(items))
        for item in items:
            encode_item(self, item)


class Decoder:
    """Reads encodings from `data` starting at `offset`; trailing bytes are allowed.

    Node's `c.decode` ignores what follows a message, which is how optional fields were
    added compatibly; callers that need the rest use `remaining`/`raw()`.
    """

    __slots__ = ("_data", "offset")

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self._data = memoryview(bytes(data))
        self.offset = offset

    @property
    def remaining(self) -> int:
        return len(self._data) - self.offset

    def at_end(self) -> bool:
        return self.offset >= len(self._data)

    def _take(self, size: int) -> bytes:
        if size < 0 or self.remaining < size:
            raise CodecError(f"out of bounds: need {size} bytes at offset {self.offset}, have {max(self.remaining, 0)}")
        start = self.offset
        self.offset += size
        return bytes(self._data[start : self.offset])

    def uint8(self) -> int:
        return self._take(1)[0]

    def uint16(self) -> int:
        return int.from_bytes(self._take(2), "little")

    def uint24(self) -> int:
        return int.from_bytes(self._take(3), "little")

    def uint32(self) -> int:
        return int.from_bytes(self._take(4), "little")

    def uint64(self) -> int:
        n = int.from_bytes(self._take(8), "little")
        if n > MAX_SAFE_UINT:
            raise CodecError(f"uint64 beyond 2^53-1: value={n}")
        return n

    def uint(self) -> int:
        first = self.uint8()
        if first <= 0xFC:
            return first
        if first == 0xFD:
            return self.uint16()
        if first == 0xFE:
            return self.uint32()
        return self.uint64()

    def int(self) -> int:
        n = self.uint()
        return (n >> 1) ^ -(n & 1)

    def bool(self) -> bool:
        return self.uint8() == 1

    def buffer(self) -> bytes:
        return self._take(self.uint())

    def raw(self) -> bytes:
        """The rest of the input."""
        return self._take(self.remaining)

    def string(self) -> str:
        data = self.buffer()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError(f"string is not UTF-8 at offset {self.offset}") from exc

    def fixed(self, size: int) -> bytes:
        return self._take(size)

    def fixed32(self) -> bytes:
        return self._take(32)

    def fixed64(self) -> bytes:
        return self._take(64)

    def ipv4(self) -> str:
        return str(ipaddress.IPv4Address(self._take(4)))

    def port(self) -> int:
        return self.uint16()

    def ipv4_address(self) -> Address:
        host = self.ipv4()
        return Address(host, self.port())

    def ipv6_address(self) -> Address:
        host = str(ipaddress.IPv6Address(self._take(16)))
        return Address(host, self.port())

    def array(self, decode_item: Callable[[Decoder], T], min_item_size: int = 1) -> list[T]:
        count = self.uint()
        if count > MAX_ARRAY_LENGTH:
            raise CodecError(f"array too big: count={count}")
        # Each item takes at least min_item_size bytes, so a count the input cannot hold
        # is rejected before any allocation proportional to it.
        if count * min_item_size > self.remaining:
            raise CodecError(f"out of bounds: array count={count} at offset {self.offset}")
        return [decode_item(self) for _ in range(count)]


def _check_uint(n: int, maximum: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n > maximum:
        raise CodecError(f"cannot encode as unsigned integer: value={n!r} max={maximum}")


def encode_ipv4_address(address: Address) -> bytes:
    encoder = Encoder()
    encoder.ipv4_address(address)
    return encoder.bytes()
