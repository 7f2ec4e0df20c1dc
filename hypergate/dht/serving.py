"""Answering requests: dht-rpc's internal commands and hyperdht's storage and relaying.

Mirrors `dht-rpc/index.js` _onrequest and hyperdht's `index.js` onrequest /
`persistent.js` / `router.js`: which commands get which reply, when a node stays silent
(as Node does for invalid stores), and where relayed handshakes go.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
import trio

from hypergate.dht import crypto
from hypergate.dht.encoding import Address
from hypergate.dht.messages import Command, Handshake, HandshakeMode, Holepunch, InternalCommand, Request, RpcError
from hypergate.dht.relay import Drop, Forward, Respond, relay_handshake, relay_holepunch
from hypergate.limits import DHT_DOWN_HINT_CHECKS, DHT_MAX_DELAYED_PINGS, DHT_MAX_PING_DELAY_S

if TYPE_CHECKING:
    from hypergate.dht.node import DHTNode

log = logging.getLogger(__name__)


@attrs.frozen
class Incoming:
    """A request as it reached us: answer it with `DHTNode.reply` / `DHTNode.relay`."""

    request: Request
    source: Address
    socket: trio.socket.SocketType = attrs.field(eq=False, repr=False)


@attrs.frozen
class PeerMessage:
    """A handshake or hole-punch message for a server on this node, as hyperdht's
    router hands it over: the opaque bytes, the client's address as the relay saw it
    (None when the client came directly), and the request it arrived in."""

    payload: bytes
    peer_address: Address | None
    incoming: Incoming
    holepunch_id: int = 0


@attrs.frozen
class PeerReply:
    """What the server answers; sent from `socket` if given (e.g. its hole-punch socket,
    so the client learns that socket's public address), else where the request arrived."""

    payload: bytes
    socket: trio.socket.SocketType | None = attrs.field(default=None, eq=False, repr=False)


# A server's handler: return the reply (noise message or hole-punch payload), or None to
# stay silent. The reply is routed back by mode below, as hyperdht's router does.
PeerHandler = Callable[[PeerMessage], Awaitable[PeerReply | None]]

_STORAGE_COMMANDS = (Command.FIND_PEER, Command.LOOKUP, Command.ANNOUNCE, Command.UNANNOUNCE)


async def serve(node: DHTNode, incoming: Incoming, token_ok: bool) -> None:
    if not token_ok:
        # Any token is checked before dispatch, as in dht-rpc: never send one unasked.
        node.stats["invalid_tokens"] += 1
        await node.reply(incoming, error=RpcError.INVALID_TOKEN, token=True, closer_nodes=True)
    elif incoming.request.internal:
        await _serve_internal(node, incoming)
    else:
        await _serve_external(node, incoming)


async def _serve_internal(node: DHTNode, incoming: Incoming) -> None:
    request, source = incoming.request, incoming.source
    command = request.command
    if command == InternalCommand.PING:
        await node.reply(incoming)
    elif command == InternalCommand.PING_NAT:
        # Answer to the port asked for: tells the asker whether unsolicited packets
        # reach that port of theirs.
        if request.value is None or len(request.value) < 2:
            return
        port = int.from_bytes(request.value[:2], "little")
        if port == 0:
            return
        await node.reply(incoming, to=Address(source.host, port))
    elif command == InternalCommand.FIND_NODE:
        if request.target is not None:
            await node.reply(incoming, closer_nodes=True)
    elif command == InternalCommand.DOWN_HINT:
        if request.value is None or len(request.value) < 6:
            return
        suspect = node.table.get(crypto.hash32(request.value[:6]))
        if (
            suspect is not None
            and node.checks < DHT_DOWN_HINT_CHECKS
            and (suspect.pinged < node.tick or suspect.down_hints == 0)
        ):
            suspect.down_hints += 1
            node.spawn(lambda: node.check(suspect))
        await node.reply(incoming)
    elif command == InternalCommand.DELAYED_PING:
        if request.value is None or len(request.value) < 4:
            return
        delay_s = int.from_bytes(request.value[:4], "little") / 1000
        if delay_s > DHT_MAX_PING_DELAY_S or node.delayed_pings >= DHT_MAX_DELAYED_PINGS:
            return
        node.delayed_pings += 1
        try:
            await trio.sleep(delay_s)
        finally:
            node.delayed_pings -= 1
        await node.reply(incoming)
    else:
        await node.reply(incoming, error=RpcError.UNKNOWN_COMMAND, closer_nodes=True)


async def _serve_external(node: DHTNode, incoming: Incoming) -> None:
    request, source = incoming.request, incoming.source
    command = request.command
    now = trio.current_time()
    if command in (Command.PEER_HANDSHAKE, Command.PEER_HOLEPUNCH):
        await _serve_peer_message(node, incoming, now)
        return
    if not node.persistent or command not in _STORAGE_COMMANDS:
        # Ephemeral nodes store nothing: Node answers UNKNOWN_COMMAND too.
        await node.reply(incoming, error=RpcError.UNKNOWN_COMMAND, closer_nodes=True)
        return
    if request.target is None:
        return
    if command == Command.FIND_PEER:
        await node.reply(incoming, value=node.store.find_peer(request.target, now), token=True, closer_nodes=True)
    elif command == Command.LOOKUP:
        found = node.store.lookup(request.target, now)
        await node.reply(incoming, value=found.encode() if found else None, token=True, closer_nodes=True)
    elif request.token is None:
        return  # storing needs a token; Node stays silent too
    elif command == Command.ANNOUNCE:
        now_ms = int(now * 1000)
        if node.store.on_announce(request.target, request.token, node.id, request.value, source, now, now_ms):
            node.stats["announces_stored"] += 1
            await node.reply(incoming)
    elif command == Command.UNANNOUNCE:
        if node.store.on_unannounce(request.target, request.token, node.id, request.value or b""):
            node.stats["unannounces_done"] += 1
            await node.reply(incoming)


async def _serve_peer_message(node: DHTNode, incoming: Incoming, now: float) -> None:
    request, source = incoming.request, incoming.source
    if request.target is None:
        return
    name = Command(request.command).name.lower()
    on_handshake, on_holepunch = node.servers.get(request.target, (None, None))
    if request.command == Command.PEER_HANDSHAKE and on_handshake is not None:
        node.stats[f"served_{name}"] += 1
        await _answer_handshake(node, incoming, on_handshake)
        return
    if request.command == Command.PEER_HOLEPUNCH and on_holepunch is not None:
        hp = Holepunch.decode(request.value or b"")  # CodecError: dropped and counted by the node
        if hp.mode == HandshakeMode.FROM_RELAY:
            node.stats[f"served_{name}"] += 1
            await _answer_holepunch(node, incoming, hp, on_holepunch)
            return
        # Other modes are relayed even by the server's own node, as in hyperdht.
    entry = node.store.router_entry(request.target, now)
    server_relay = entry.relay if entry is not None else None
    decide = relay_handshake if request.command == Command.PEER_HANDSHAKE else relay_holepunch
    action = decide(request.value, source, server_relay)
    if isinstance(action, Drop):
        node.stats["relay_dropped"] += 1
        log.debug("dht relay drop from=%s reason=%s", source, action.reason)
    elif isinstance(action, Forward):
        node.stats[f"relayed_{name}"] += 1
        await node.relay(incoming, action.to, action.value)
    elif isinstance(action, Respond):
        if action.to is not None:
            node.stats[f"replied_for_{name}"] += 1
        await node.reply(incoming, value=action.value, closer_nodes=action.closer_nodes, to=action.to)


async def _answer_handshake(node: DHTNode, incoming: Incoming, handler: PeerHandler) -> None:
    """A handshake for a server on this node (hyperdht router.js, the isServer branch)."""
    hs = Handshake.decode(incoming.request.value or b"")
    if hs.mode not in (HandshakeMode.FROM_CLIENT, HandshakeMode.FROM_RELAY, HandshakeMode.FROM_SECOND_RELAY):
        return
    if hs.mode == HandshakeMode.FROM_SECOND_RELAY and hs.relay_address is None:
        return
    answer = await handler(PeerMessage(hs.noise, hs.peer_address, incoming))
    if answer is None:
        return
    if hs.mode == HandshakeMode.FROM_CLIENT:
        # The client reached us directly: a plain response.
        value = Handshake(HandshakeMode.REPLY, answer.payload).encode()
        await node.reply(incoming, value=value, sock=answer.socket)
        return
    # Relayed: a FROM_SERVER request back through the relay, which answers the client.
    to = incoming.source if hs.mode == HandshakeMode.FROM_RELAY else hs.relay_address
    value = Handshake(HandshakeMode.FROM_SERVER, answer.payload, peer_address=hs.peer_address).encode()
    await node.relay(incoming, to, value, sock=answer.socket)


async def _answer_holepunch(node: DHTNode, incoming: Incoming, hp: Holepunch, handler: PeerHandler) -> None:
    if hp.peer_address is None:
        return
    answer = await handler(PeerMessage(hp.payload, hp.peer_address, incoming, holepunch_id=hp.id))
    if answer is None:
        return
    value = Holepunch(HandshakeMode.FROM_SERVER, 0, answer.payload, peer_address=hp.peer_address).encode()
    await node.relay(incoming, incoming.source, value, sock=answer.socket)
