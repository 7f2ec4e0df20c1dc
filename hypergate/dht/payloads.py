"""Plaintexts carried inside hyperdht's connection setup (HYPERSWARM-WIRE.md 3.3, 3.8, 3.9).

`NoisePayload` rides inside the Noise handshake messages, `HolepunchPayload` (encrypted)
inside PEER_HOLEPUNCH. Relays never see these; only the two peers do. Same rules as
messages.py: `encode() -> bytes`, `decode(bytes)` raising only CodecError, trailing bytes
and unknown flag bits ignored.
"""

from __future__ import annotations

import attrs

from hypergate.dht.encoding import Address, Decoder, Encoder
from hypergate.dht.messages import Firewall, optional_fixed32


@attrs.frozen
class HolepunchPayload:
    """The plaintext inside PEER_HOLEPUNCH."""

    error: int = 0
    firewall: int = Firewall.UNKNOWN
    round: int = 0
    connected: bool = False
    punching: bool = False
    addresses: tuple[Address, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple(v)
    )
    remote_address: Address | None = None
    token: bytes | None = attrs.field(default=None, converter=optional_fixed32)
    remote_token: bytes | None = attrs.field(default=None, converter=optional_fixed32)

    def encode(self) -> bytes:
        e = Encoder()
        e.uint(
            (1 if self.connected else 0)
            | (2 if self.punching else 0)
            | (4 if self.addresses is not None else 0)
            | (8 if self.remote_address else 0)
            | (16 if self.token is not None else 0)
            | (32 if self.remote_token is not None else 0)
        )
        e.uint(self.error)
        e.uint(self.firewall)
        e.uint(self.round)
        if self.addresses is not None:
            e.array(self.addresses, Encoder.ipv4_address)
        if self.remote_address:
            e.ipv4_address(self.remote_address)
        if self.token is not None:
            e.fixed32(self.token)
        if self.remote_token is not None:
            e.fixed32(self.remote_token)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> HolepunchPayload:
        d = Decoder(data)
        flags = d.uint()
        error, firewall, round_ = d.uint(), d.uint(), d.uint()
        addresses = d.array(Decoder.ipv4_address, 6) if flags & 4 else None
        remote = d.ipv4_address() if flags & 8 else None
        token = d.fixed32() if flags & 16 else None
        remote_token = d.fixed32() if flags & 32 else None
        return cls(
            error, firewall, round_, bool(flags & 1), bool(flags & 2), addresses, remote, token, remote_token
        )


@attrs.frozen
class RelayInfo:
    relay_address: Address
    peer_address: Address


@attrs.frozen
class HolepunchInfo:
    id: int
    relays: tuple[RelayInfo, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen
class UdxInfo:
    id: int
    seq: int = 0
    reusable_socket: bool = False
    version: int = 1


@attrs.frozen
class RelayThroughInfo:
    public_key: bytes
    token: bytes
    version: int = 1


@attrs.frozen
class NoisePayload:
    """The plaintext inside the IK handshake messages (`noisePayload`)."""

    version: int = 1
    error: int = 0
    firewall: int = Firewall.UNKNOWN
    holepunch: HolepunchInfo | None = None
    addresses4: tuple[Address, ...] = attrs.field(default=(), converter=tuple)
    addresses6: tuple[Address, ...] = attrs.field(default=(), converter=tuple)
    udx: UdxInfo | None = None
    secret_stream_version: int | None = None
    relay_through: RelayThroughInfo | None = None
    relay_addresses: tuple[Address, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple(v)
    )

    def encode(self) -> bytes:
        e = Encoder()
        flags = (
            (1 if self.holepunch else 0)
            | (2 if self.addresses4 else 0)
            | (4 if self.addresses6 else 0)
            | (8 if self.udx else 0)
            | (16 if self.secret_stream_version is not None else 0)
            | (32 if self.relay_through else 0)
            | (64 if self.relay_addresses is not None else 0)
        )
        e.uint(1)  # Node always writes version 1 whatever the object says
        e.uint(flags)
        e.uint(self.error)
        e.uint(self.firewall)
        if self.holepunch:
            e.uint(self.holepunch.id)
            e.array(self.holepunch.relays, _write_relay_info)
        if self.addresses4:
            e.array(self.addresses4, Encoder.ipv4_address)
        if self.addresses6:
            e.array(self.addresses6, Encoder.ipv6_address)
        if self.udx:
            e.uint(1)
            e.uint(1 if self.udx.reusable_socket else 0)
            e.uint(self.udx.id)
            e.uint(self.udx.seq)
        if self.secret_stream_version is not None:
            e.uint(1)
        if self.relay_through:
            e.uint(1)
            e.uint(0)
            e.fixed32(self.relay_through.public_key)
            e.fixed32(self.relay_through.token)
        if self.relay_addresses is not None:
            e.array(self.relay_addresses, Encoder.ipv4_address)
        return e.bytes()

    @classmethod
    def decode(cls, data: bytes) -> NoisePayload:
        d = Decoder(data)
        version = d.uint()
        if version != 1:
            # Node returns an empty payload so the caller can answer VERSION_MISMATCH.
            return cls(version=version)
        flags = d.uint()
        error, firewall = d.uint(), d.uint()
        holepunch = None
        if flags & 1:
            holepunch = HolepunchInfo(d.uint(), d.array(_read_relay_info, 12))
        addresses4 = d.array(Decoder.ipv4_address, 6) if flags & 2 else []
        addresses6 = d.array(Decoder.ipv6_address, 18) if flags & 4 else []
        udx = None
        if flags & 8:
            udx_version, features = d.uint(), d.uint()
            udx = UdxInfo(id=d.uint(), seq=d.uint(), reusable_socket=bool(features & 1), version=udx_version)
        secret_stream_version = d.uint() if flags & 16 else None
        relay_through = None
        if flags & 32:
            rt_version = d.uint()
            d.uint()  # flags, reserved
            relay_through = RelayThroughInfo(d.fixed32(), d.fixed32(), rt_version)
        relay_addresses = d.array(Decoder.ipv4_address, 6) if flags & 64 else None
        return cls(
            version,
            error,
            firewall,
            holepunch,
            addresses4,
            addresses6,
            udx,
            secret_stream_version,
            relay_through,
            relay_addresses,
        )


def _write_relay_info(e: Encoder, info: RelayInfo) -> None:
    e.ipv4_address(info.relay_address)
    e.ipv4_address(info.peer_address)


def _read_relay_info(d: Decoder) -> RelayInfo:
    return RelayInfo(d.ipv4_address(), d.ipv4_address())
