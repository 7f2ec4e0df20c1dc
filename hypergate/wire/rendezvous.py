"""What our peers put in the opaque `noise` field of relayed PEER_HANDSHAKE messages (sans-IO).

The link's Noise XX handshake has three messages; a DHT relay carries one
request/response pair at a time, so a connection takes two relayed exchanges:

    client -> server   OPEN     session id, XX message 1
    server -> client   REPLY    session id, XX message 2
    client -> server   FINISH   session id, XX message 3, the client's punch addresses (JSON)
    server -> client   READY    session id, where to reach the server (JSON)

Relays see these bytes only as an opaque buffer. The server answers FINISH only once
message 3 has proven the router secret, so its addresses reach authenticated peers only.
The client then opens a TCP connection to one of them and sends `RESUME_MAGIC || session
id`; both ends continue with the transport keys of the relayed handshake.

When both sides report a punch address (public IP as the DHT sees it, and the local port
of a TCP socket bound for the purpose), both also connect from that port to the other's:
through NATs that keep source ports (consistent), the crossing SYNs open one TCP
connection (simultaneous open), and the client sends the same resume header on it.

For UDP hole punching each side also sends `UdpPunchInfo`: how DHT nodes classified a
UDP socket it opened for the punch (open / consistent / random), the addresses it
advertises for it, and the UDX stream id it will use; the link then runs over UDX on
the punched socket (hypergate.transport.udp_punch).
"""

from __future__ import annotations

import enum
import json
import struct

import attrs

from ..errors import ProtocolError

MAGIC = b"HGR1"
RESUME_MAGIC = b"HGS1"
SESSION_ID_SIZE = 16
_HEAD = struct.Struct(">4sB16s")
# Each relayed datagram must stay under ~1.2 KB (Node relays drop > 2048 bytes).
MAX_BODY = 1024


class RendezvousError(ProtocolError):
    """A relayed handshake message that is not ours or not well formed."""


class Step(enum.IntEnum):
    OPEN = 1
    REPLY = 2
    FINISH = 3
    READY = 4


@attrs.frozen
class RendezvousMessage:
    step: Step
    session_id: bytes
    body: bytes

    def encode(self) -> bytes:
        if len(self.body) > MAX_BODY:
            raise ValueError(f"rendezvous body of {len(self.body)} bytes is too large")
        return _HEAD.pack(MAGIC, self.step, self.session_id) + self.body


def decode(data: bytes) -> RendezvousMessage:
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        raise RendezvousError("not a hypergate rendezvous message")
    _, raw_step, session_id = _HEAD.unpack_from(data)
    try:
        step = Step(raw_step)
    except ValueError:
        raise RendezvousError(f"unknown rendezvous step {raw_step}") from None
    body = data[_HEAD.size :]
    if len(body) > MAX_BODY:
        raise RendezvousError("rendezvous body too large")
    return RendezvousMessage(step, session_id, body)


Endpoint = tuple[str, int]
_LEN = struct.Struct(">H")


FIREWALLS = ("open", "consistent", "random", "unknown")
# Addresses one side advertises for its UDP punch socket (hyperdht advertises 2-3).
MAX_UDP_ADDRESSES = 4


@attrs.frozen
class UdpPunchInfo:
    """One side's UDP punch socket: its firewall class as DHT nodes saw it, the addresses
    to aim probes at (port 0: a random NAT, only the host is known), its UDX stream id."""

    firewall: str
    addresses: tuple[Endpoint, ...]
    stream_id: int

    def to_json(self) -> dict:
        return {"fw": self.firewall, "addrs": [[h, p] for h, p in self.addresses], "id": self.stream_id}

    @classmethod
    def from_json(cls, value) -> UdpPunchInfo | None:
        """Raises ValueError/TypeError/KeyError on a malformed value."""
        if value is None:
            return None
        firewall = value["fw"]
        if firewall not in FIREWALLS:
            raise ValueError(f"unknown firewall class {firewall!r}")
        addresses = []
        for host, port in value["addrs"][:MAX_UDP_ADDRESSES]:
            if not isinstance(host, str) or not host or not 0 <= int(port) < 65536:
                raise ValueError(f"bad UDP address {host!r}:{port!r}")
            addresses.append((host, int(port)))
        stream_id = value["id"]
        if not isinstance(stream_id, int) or not 0 < stream_id < 2**32:
            raise ValueError(f"bad UDX stream id {stream_id!r}")
        return cls(firewall, tuple(addresses), stream_id)


@attrs.frozen
class ReadyInfo:
    """What a server tells an authenticated client in READY: its direct addresses, its
    punch address (if it punches), a relay URL where it will also wait (if it has one),
    and its UDP punch socket (if it punches over UDP)."""

    addresses: list[Endpoint] = attrs.Factory(list)
    punch: Endpoint | None = None
    relay: str | None = None
    udp: UdpPunchInfo | None = None

    def encode(self) -> bytes:
        data: dict = {"tcp": [[host, port] for host, port in self.addresses]}
        if self.punch is not None:
            data["punch"] = list(self.punch)
        if self.relay is not None:
            data["relay"] = self.relay
        if self.udp is not None:
            data["udp"] = self.udp.to_json()
        return json.dumps(data, separators=(",", ":")).encode()


@attrs.frozen
class FinishInfo:
    """FINISH: XX message 3, the client's TCP punch address and its UDP punch socket."""

    message3: bytes
    punch: Endpoint | None = None
    udp: UdpPunchInfo | None = None


def encode_addresses(addresses: list[Endpoint], punch: Endpoint | None = None) -> bytes:
    return ReadyInfo(addresses, punch).encode()


def decode_addresses(body: bytes) -> list[Endpoint]:
    return decode_ready(body).addresses


def decode_ready(body: bytes) -> ReadyInfo:
    try:
        data = json.loads(body)
        addresses = [(str(host), int(port)) for host, port in data["tcp"]]
        punch = _endpoint(data.get("punch"))
        relay = data.get("relay")
        udp = UdpPunchInfo.from_json(data.get("udp"))
        if relay is not None and not (isinstance(relay, str) and relay.startswith(("ws://", "wss://"))):
            raise ValueError(f"relay must be a ws:// or wss:// URL, got {relay!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise RendezvousError(f"bad address list: {exc}") from None
    return ReadyInfo([(h, p) for h, p in addresses if 0 < p < 65536][:16], punch, relay, udp)


def encode_finish(message3: bytes, punch: Endpoint | None, udp: UdpPunchInfo | None = None) -> bytes:
    data: dict = {"punch": list(punch)} if punch else {}
    if udp is not None:
        data["udp"] = udp.to_json()
    info = json.dumps(data, separators=(",", ":")).encode() if data else b""
    return _LEN.pack(len(message3)) + message3 + info


def decode_finish(body: bytes) -> FinishInfo:
    """XX message 3 and the client's punch addresses (TCP, UDP; None if absent) from a FINISH body."""
    if len(body) < _LEN.size:
        raise RendezvousError("truncated FINISH")
    (length,) = _LEN.unpack_from(body)
    message3 = body[_LEN.size : _LEN.size + length]
    if len(message3) != length:
        raise RendezvousError("truncated FINISH")
    info = body[_LEN.size + length :]
    try:
        data = json.loads(info) if info else {}
        punch = _endpoint(data.get("punch"))
        udp = UdpPunchInfo.from_json(data.get("udp"))
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise RendezvousError(f"bad punch address: {exc}") from None
    return FinishInfo(message3, punch, udp)


def _endpoint(value) -> Endpoint | None:
    if not value:
        return None
    host, port = value
    port = int(port)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return str(host), port
