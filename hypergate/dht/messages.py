"""dht-rpc request/response datagrams and hyperdht message bodies (HYPERSWARM-WIRE.md 2-3).

Layouts follow `dht-rpc/lib/io.js` and `hyperdht/lib/messages.js`. Every class has
`encode() -> bytes` and `decode(bytes)`; decoding raises only `CodecError`. As in Node,
trailing bytes after a message are ignored and unknown flag bits are skipped, so newer
peers that append optional fields still parse. The plaintexts inside the Noise and
hole-punch messages are in payloads.py.
"""

from __future__ import annotations

import enum

import attrs

from hypergate.dht.encoding import Address, CodecError, Decoder, Encoder

REQUEST_ID = 0x03  # (type 0 << 4) | version 0b11
RESPONSE_ID = 0x13  # (type 1 << 4) | version 0b11


class InternalCommand(enum.IntEnum):
    """dht-rpc's own commands (request flag `internal`)."""

    PING = 0
    PING_NAT = 1
    FIND_NODE = 2
    DOWN_HINT = 3
    DELAYED_PING = 4


class Command(enum.IntEnum):
    """hyperdht's application commands (request flag `internal` clear)."""

    PEER_HANDSHAKE = 0
    PEER_HOLEPUNCH = 1
    FIND_PEER = 2
    LOOKUP = 3
    ANNOUNCE = 4
    UNANNOUNCE = 5
    MUTABLE_PUT = 6
    MUTABLE_GET = 7
    IMMUTABLE_PUT = 8
    IMMUTABLE_GET = 9
    PLUGIN = 10


class RpcError(enum.IntEnum):
    """The `error` field of a response."""

    NONE = 0
    UNKNOWN_COMMAND = 1
    INVALID_TOKEN = 2
    SEQ_REUSED = 16
    SEQ_TOO_LOW = 17


# hyperdht's hole-punch probe: one zero byte on the punch socket (opens our NAT's
# mapping; the first one from the other side shows the path).
HOLEPUNCH_PROBE = b"\x00"


class Firewall(enum.IntEnum):
    UNKNOWN = 0
    OPEN = 1
    CONSISTENT = 2
    RANDOM = 3


class HandshakeMode(enum.IntEnum):
    """PEER_HANDSHAKE / PEER_HOLEPUNCH `mode` (hyperdht/lib/router.js)."""

    FROM_CLIENT = 0
    FROM_SERVER = 1
    FROM_RELAY = 2
    FROM_SECOND_RELAY = 3
    REPLY = 4


class PayloadError(enum.IntEnum):
    """`error` inside noisePayload / holepunchPayload (hyperdht constants ERROR)."""

    NONE = 0
    ABORTED = 1
    VERSION_MISMATCH = 2
    TRY_LATER = 3


def optional_fixed32(value: bytes | None) -> bytes | None:
    """attrs converter: None, or exactly 32 bytes."""
    if value is not None and len(value) != 32:
        raise CodecError(f"field needs 32 bytes, got {len(value)}")
    return value


def _decode_with(cls_decode, data: bytes):
    return cls_decode(Decoder(data))


# --- dht-rpc datagrams -----------------------------------------------------------------


@attrs.frozen
class Request:
    """A request datagram. `to` is the address the sender sends to (how it sees us)."""

    tid: int
    to: Address
    command: int
    internal: bool = False
    id: bytes | None = attrs.field(default=None, converter=optional_fixed32)
    token: bytes | None = attrs.field(default=None, converter=optional_fixed32)
    target: bytes | None = attrs.field(default=None, converter=optional_fixed32)
    value: bytes | None = None

    def encode(self) -> bytes:
        e = Encoder()
        e.uint8(REQUEST_ID)
        e.uint(
            (1 if self.id is not None else 0)
            | (2 if self.token is not None else 0)
            | (4 if self.internal else 0)
            | (8 if self.target is not None else 0)
            | (16 if self.value is not None else 0)
        )
        e.uint16(self.tid)
        e.ipv4_address(self.to)
        if self.id is not None:
            e.fixed32(self.id)
        if self.token is not None:
            e.fixed32(self.token)
        e.uint(self.command)
        if self.target is not None:
            e.fixed32(self.target)
        if self.value is not None:
            e.buffer(self.value)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Request:
        d = Decoder(data)
        if d.uint8() != REQUEST_ID:
            raise CodecError("not a request datagram")
        flags = d.uint()
        tid = d.uint16()
        to = d.ipv4_address()
        node_id = d.fixed32() if flags & 1 else None
        token = d.fixed32() if flags & 2 else None
        command = d.uint()
        target = d.fixed32() if flags & 8 else None
        value = d.buffer() if flags & 16 else None
        return cls(tid, to, command, bool(flags & 4), node_id, token, target, value)


@attrs.frozen
class Response:
    """A response datagram. `to` is the requester's address as the responder saw it."""

    tid: int
    to: Address
    id: bytes | None = attrs.field(default=None, converter=optional_fixed32)
    token: bytes | None = attrs.field(default=None, converter=optional_fixed32)
    closer_nodes: tuple[Address, ...] = attrs.field(default=(), converter=tuple)
    error: int = 0
    value: bytes | None = None

    def encode(self) -> bytes:
        e = Encoder()
        e.uint8(RESPONSE_ID)
        e.uint(
            (1 if self.id is not None else 0)
            | (2 if self.token is not None else 0)
            | (4 if self.closer_nodes else 0)
            | (8 if self.error > 0 else 0)
            | (16 if self.value is not None else 0)
        )
        e.uint16(self.tid)
        e.ipv4_address(self.to)
        if self.id is not None:
            e.fixed32(self.id)
        if self.token is not None:
            e.fixed32(self.token)
        if self.closer_nodes:
            e.array(self.closer_nodes, Encoder.ipv4_address)
        if self.error > 0:
            e.uint(self.error)
        if self.value is not None:
            e.buffer(self.value)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Response:
        d = Decoder(data)
        if d.uint8() != RESPONSE_ID:
            raise CodecError("not a response datagram")
        flags = d.uint()
        tid = d.uint16()
        to = d.ipv4_address()
        node_id = d.fixed32() if flags & 1 else None
        token = d.fixed32() if flags & 2 else None
        closer = d.array(Decoder.ipv4_address, 6) if flags & 4 else []
        error = d.uint() if flags & 8 else 0
        value = d.buffer() if flags & 16 else None
        return cls(tid, to, node_id, token, closer, error, value)


def decode_datagram(data: bytes) -> Request | Response:
    """Parse a DHT datagram by its first byte; anything else is a CodecError."""
    if len(data) < 2:
        raise CodecError(f"datagram too short: length={len(data)}")
    if data[0] == REQUEST_ID:
        return Request.decode(data)
    if data[0] == RESPONSE_ID:
        return Response.decode(data)
    raise CodecError(f"unknown datagram type: first_byte={data[0]:#04x}")


# --- hyperdht records -------------------------------------------------------------------


@attrs.frozen
class PeerRecord:
    """`peer`: who announced and which DHT nodes relay to it."""

    public_key: bytes
    relay_addresses: tuple[Address, ...] = attrs.field(default=(), converter=tuple)

    def write(self, e: Encoder) -> None:
        e.fixed32(self.public_key)
        e.array(self.relay_addresses, Encoder.ipv4_address)

    @classmethod
    def read(cls, d: Decoder) -> PeerRecord:
        return cls(d.fixed32(), d.array(Decoder.ipv4_address, 6))

    def encode(self) -> bytes:
        e = Encoder()
        self.write(e)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> PeerRecord:
        return _decode_with(cls.read, data)


@attrs.frozen
class LookupReply:
    """`lookupRawReply`: the records a node holds for a topic, and the topic's bump."""

    peers: tuple[PeerRecord, ...] = attrs.field(default=(), converter=tuple)
    bump: int = 0

    def encode(self) -> bytes:
        e = Encoder()
        e.array(self.peers, lambda enc, p: p.write(enc))
        e.uint(self.bump)  # Node always writes it; old nodes just never read it
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> LookupReply:
        d = Decoder(data)
        peers = d.array(PeerRecord.read, 33)
        bump = d.uint() if not d.at_end() else 0
        return cls(peers, bump)


@attrs.frozen
class Announce:
    """ANNOUNCE / UNANNOUNCE value. `bump` is outside the signature."""

    peer: PeerRecord | None = None
    refresh: bytes | None = attrs.field(default=None, converter=optional_fixed32)
    signature: bytes | None = None
    bump: int = 0

    def encode(self) -> bytes:
        e = Encoder()
        e.uint(
            (1 if self.peer is not None else 0)
            | (2 if self.refresh is not None else 0)
            | (4 if self.signature is not None else 0)
            | (8 if self.bump else 0)
        )
        if self.peer is not None:
            self.peer.write(e)
        if self.refresh is not None:
            e.fixed32(self.refresh)
        if self.signature is not None:
            e.fixed64(self.signature)
        if self.bump:
            e.uint(self.bump)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Announce:
        d = Decoder(data)
        flags = d.uint()
        peer = PeerRecord.read(d) if flags & 1 else None
        refresh = d.fixed32() if flags & 2 else None
        signature = d.fixed64() if flags & 4 else None
        bump = d.uint() if flags & 8 else 0
        return cls(peer, refresh, signature, bump)


@attrs.frozen
class MutableSignable:
    seq: int
    value: bytes

    def encode(self) -> bytes:
        e = Encoder()
        e.uint(self.seq)
        e.buffer(self.value)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> MutableSignable:
        d = Decoder(data)
        return cls(d.uint(), d.buffer())


@attrs.frozen
class MutablePutRequest:
    public_key: bytes
    seq: int
    value: bytes
    signature: bytes

    def encode(self) -> bytes:
        e = Encoder()
        e.fixed32(self.public_key)
        e.uint(self.seq)
        e.buffer(self.value)
        e.fixed64(self.signature)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> MutablePutRequest:
        d = Decoder(data)
        return cls(d.fixed32(), d.uint(), d.buffer(), d.fixed64())


@attrs.frozen
class MutableGetResponse:
    seq: int
    value: bytes
    signature: bytes

    def encode(self) -> bytes:
        e = Encoder()
        e.uint(self.seq)
        e.buffer(self.value)
        e.fixed64(self.signature)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> MutableGetResponse:
        d = Decoder(data)
        return cls(d.uint(), d.buffer(), d.fixed64())


@attrs.frozen
class PluginRequest:
    plugin: str
    version: int
    command: int
    value: bytes | None = None

    def encode(self) -> bytes:
        e = Encoder()
        e.string(self.plugin)
        e.uint(self.version)
        e.uint(self.command)
        e.uint(1 if self.value is not None else 0)
        if self.value is not None:
            e.buffer(self.value)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> PluginRequest:
        d = Decoder(data)
        plugin, version, command, flags = d.string(), d.uint(), d.uint(), d.uint()
        return cls(plugin, version, command, d.buffer() if flags & 1 else None)


# --- relayed connection setup -----------------------------------------------------------


@attrs.frozen
class Handshake:
    """PEER_HANDSHAKE value: an opaque Noise message plus the relay routing fields."""

    mode: int
    noise: bytes
    peer_address: Address | None = None
    relay_address: Address | None = None

    def encode(self) -> bytes:
        e = Encoder()
        e.uint((1 if self.peer_address else 0) | (2 if self.relay_address else 0))
        e.uint(self.mode)
        e.buffer(self.noise)
        if self.peer_address:
            e.ipv4_address(self.peer_address)
        if self.relay_address:
            e.ipv4_address(self.relay_address)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Handshake:
        d = Decoder(data)
        flags = d.uint()
        mode = d.uint()
        noise = d.buffer()
        peer = d.ipv4_address() if flags & 1 else None
        relay = d.ipv4_address() if flags & 2 else None
        return cls(mode, noise, peer, relay)


@attrs.frozen
class Holepunch:
    """PEER_HOLEPUNCH value: `payload` is an encrypted HolepunchPayload, opaque to relays."""

    mode: int
    id: int
    payload: bytes
    peer_address: Address | None = None

    def encode(self) -> bytes:
        e = Encoder()
        e.uint(1 if self.peer_address else 0)
        e.uint(self.mode)
        e.uint(self.id)
        e.buffer(self.payload)
        if self.peer_address:
            e.ipv4_address(self.peer_address)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Holepunch:
        d = Decoder(data)
        flags = d.uint()
        mode, hp_id, payload = d.uint(), d.uint(), d.buffer()
        return cls(mode, hp_id, payload, d.ipv4_address() if flags & 1 else None)
