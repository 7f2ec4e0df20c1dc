"""Sans-IO relaying of PEER_HANDSHAKE and PEER_HOLEPUNCH (`hyperdht/lib/router.js`).

Every DHT node relays these between a client and a server that announced itself to it,
without looking inside `noise`/`payload`. This module decides what to do with one
request; the driver carries it out (HYPERSWARM-WIRE.md 3.7, 3.9).
"""

from __future__ import annotations

import attrs

from hypergate.dht.encoding import Address, CodecError
from hypergate.dht.messages import Handshake, HandshakeMode, Holepunch


@attrs.frozen
class Respond:
    """Answer the request with a response carrying `value`, sent to `to` (None: the requester)."""

    value: bytes | None
    to: Address | None = None
    closer_nodes: bool = False


@attrs.frozen
class Forward:
    """Re-send the request (same tid, command, target; no token) with a new value to `to`."""

    to: Address
    value: bytes


@attrs.frozen
class Drop:
    reason: str


RelayAction = Respond | Forward | Drop


def relay_handshake(value: bytes | None, requester: Address, server_relay: Address | None) -> RelayAction:
    """What a relay (not the server itself) does with a PEER_HANDSHAKE.

    `server_relay` is the announcing server's address from our router entry, if any.
    """
    try:
        hs = Handshake.decode(value or b"")
    except CodecError:
        return Drop("malformed handshake")
    if hs.mode == HandshakeMode.FROM_CLIENT:
        to = hs.relay_address or server_relay
        if to is None:
            return Respond(None, closer_nodes=True)  # "not here": helps the client route closer
        return Forward(to, Handshake(HandshakeMode.FROM_RELAY, hs.noise, peer_address=requester).encode())
    if hs.mode == HandshakeMode.FROM_RELAY:
        if server_relay is None:
            return Drop("no router entry for FROM_RELAY")
        return Forward(
            server_relay,
            Handshake(HandshakeMode.FROM_SECOND_RELAY, hs.noise, hs.peer_address, relay_address=requester).encode(),
        )
    if hs.mode == HandshakeMode.FROM_SERVER:
        if hs.peer_address is None:
            return Drop("FROM_SERVER without peer address")
        return Respond(Handshake(HandshakeMode.REPLY, hs.noise, peer_address=requester).encode(), to=hs.peer_address)
    return Drop(f"handshake mode {hs.mode} is not for a relay")


def relay_holepunch(value: bytes | None, requester: Address, server_relay: Address | None) -> RelayAction:
    try:
        hp = Holepunch.decode(value or b"")
    except CodecError:
        return Drop("malformed holepunch")
    if hp.mode == HandshakeMode.FROM_CLIENT:
        to = hp.peer_address or server_relay
        if to is None:
            return Drop("no route for FROM_CLIENT holepunch")
        return Forward(to, Holepunch(HandshakeMode.FROM_RELAY, hp.id, hp.payload, peer_address=requester).encode())
    if hp.mode == HandshakeMode.FROM_SERVER:
        if hp.peer_address is None:
            return Drop("FROM_SERVER holepunch without peer address")
        return Respond(
            Holepunch(HandshakeMode.REPLY, hp.id, hp.payload, peer_address=requester).encode(), to=hp.peer_address
        )
    return Drop(f"holepunch mode {hp.mode} is not for a relay")
