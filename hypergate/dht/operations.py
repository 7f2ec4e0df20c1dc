"""Iterative DHT operations on a running node: FIND_NODE, LOOKUP, FIND_PEER, (UN)ANNOUNCE.

The walk itself is the sans-IO `IterativeQuery`; this module sends its visits through
`DHTNode.request` in a nursery and commits signed announces to the closest replies
(dht-rpc query.js, hyperdht index.js announce/lookup).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from hypergate.dht import crypto
from hypergate.dht.encoding import Address, CodecError, encode_ipv4_address
from hypergate.dht.messages import (
    Announce,
    Command,
    Firewall,
    Handshake,
    HandshakeMode,
    Holepunch,
    InternalCommand,
    LookupReply,
    PeerRecord,
)
from hypergate.dht.nat import FirewallClassifier, NatSampler
from hypergate.dht.query import Candidate, DownHint, IterativeQuery, QueryReply
from hypergate.dht.routing_table import K
from hypergate.errors import HypergateError
from hypergate.limits import DHT_DOWN_HINTS_PER_TICK, DHT_FIREWALL_PROBES, DHT_QUERY_TIMEOUT_S, DHT_REFRESH_TICKS

if TYPE_CHECKING:
    from hypergate.dht.node import DHTNode

log = logging.getLogger(__name__)

# dht-rpc runs background (bootstrap, refresh) queries with 2 requests in flight.
BACKGROUND_CONCURRENCY = 2


class DHTError(HypergateError):
    """A DHT operation could not complete (no answer, too few nodes)."""


class RequestTimeout(DHTError):
    pass


@attrs.frozen
class LookupResult:
    """One node's answer to LOOKUP/FIND_PEER: the records it holds for the target."""

    node: Address
    peers: tuple[PeerRecord, ...]


def _start_set(node: DHTNode, target: bytes) -> list[Candidate]:
    start = [Candidate(n.id, n.address) for n in node.table.closest(target)]
    if len(start) < K:
        known = {c.address for c in start}
        start += [Candidate(crypto.node_id(a), a) for a in node.bootstrap_addresses if a not in known]
    return start


async def run_query(
    node: DHTNode,
    target: bytes,
    command: int,
    *,
    internal: bool = False,
    value: bytes | None = None,
    background: bool = False,
    on_reply: Callable[[QueryReply], None] | None = None,
    on_query: Callable[[IterativeQuery], None] | None = None,
) -> list[QueryReply]:
    """Walk towards `target`; returns the closest replies with a valid id (the commit set).

    `on_reply` sees every successful reply as it arrives, closest or not; `on_query`
    gets the query once created, to read its statistics (visits, hops) afterwards.
    """
    node.refresh_ticks = DHT_REFRESH_TICKS  # any query counts as a refresh
    concurrency = BACKGROUND_CONCURRENCY if background else node.config.concurrency
    query = IterativeQuery(target, node.id or node.table.id, _start_set(node, target), concurrency=concurrency)
    if on_query is not None:
        on_query(query)
    send_results, receive_results = trio.open_memory_channel(float("inf"))

    async def visit(candidate: Candidate) -> None:
        slow = False

        def mark_slow() -> None:
            nonlocal slow
            slow = True
            query.on_slow(candidate.address)

        try:
            response, source = await node.request(
                candidate.address, command, internal=internal, target=target, value=value, on_retry=mark_slow
            )
        except DHTError:
            send_results.send_nowait((candidate.address, slow, None))
        else:
            reply = QueryReply(candidate.address, node.valid_id(response.id, source), response)
            send_results.send_nowait((candidate.address, slow, reply))

    with trio.move_on_after(DHT_QUERY_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            while True:
                for candidate in query.next_visits():
                    nursery.start_soon(visit, candidate)
                if query.finished:
                    # Slow stragglers do not hold up a query that has its k replies.
                    nursery.cancel_scope.cancel()
                    break
                address, slow, reply = await receive_results.receive()
                if reply is None:
                    hints = query.on_timeout(address, was_slow=slow)
                else:
                    hints = query.on_response(reply, was_slow=slow)
                    if on_reply is not None and reply.response.error == 0:
                        on_reply(reply)
                _send_down_hints(node, hints)
    return list(query.closest_replies)


def _send_down_hints(node: DHTNode, hints: list[DownHint]) -> None:
    for hint in hints:
        if node.down_hints_sent >= DHT_DOWN_HINTS_PER_TICK:
            node.stats["down_hints_suppressed"] += 1
            continue
        node.down_hints_sent += 1

        async def send(h: DownHint = hint) -> None:
            try:
                await node.request(
                    h.referrer, InternalCommand.DOWN_HINT, internal=True, value=encode_ipv4_address(h.down), retries=0
                )
            except DHTError:
                pass

        node.spawn(send)


async def _collect_records(node: DHTNode, target: bytes, command: int, decode) -> list[LookupResult]:
    """Run a storage query and gather the peer records each replying node holds;
    an undecodable value is counted and skipped, never fatal."""
    results: list[LookupResult] = []

    def collect(reply: QueryReply) -> None:
        if reply.response.value is None:
            return
        try:
            peers = decode(reply.response.value)
        except CodecError:
            node.stats["bad_lookup_values"] += 1
            return
        results.append(LookupResult(reply.address, peers))

    await run_query(node, target, command, on_reply=collect)
    return results


async def lookup(node: DHTNode, topic: bytes) -> list[LookupResult]:
    return await _collect_records(node, topic, Command.LOOKUP, lambda value: LookupReply.decode(value).peers)


async def find_peer(node: DHTNode, public_key: bytes) -> list[LookupResult]:
    return await _collect_records(
        node, crypto.hash32(public_key), Command.FIND_PEER, lambda value: (PeerRecord.decode(value),)
    )


async def commit_announce(
    node: DHTNode,
    topic: bytes,
    key_pair: crypto.KeyPair,
    relay_addresses: list[Address],
    command: Command,
    commit_nodes: int,
    closest: list[QueryReply] | None = None,
) -> list[QueryReply]:
    """Sign for each of the closest nodes (its id, its token) and send the (UN)ANNOUNCE.

    hyperdht signs `peer` with empty relay addresses for an unannounce; the announce
    carries the relay addresses given. Returns the replies whose node accepted.
    """
    peer = PeerRecord(key_pair.public_key, relay_addresses)
    if closest is None:
        # hyperdht finds the commit set with the command's read side: LOOKUP for a topic,
        # FIND_PEER for a key's own hash (both return tokens).
        read = Command.FIND_PEER if topic == crypto.hash32(key_pair.public_key) else Command.LOOKUP
        closest = await run_query(node, topic, read)
    candidates = [r for r in closest if r.response.token is not None and r.from_id is not None][:commit_nodes]
    if not candidates:
        raise DHTError("too few nodes responded")
    sign = crypto.sign_announce if command == Command.ANNOUNCE else crypto.sign_unannounce
    accepted: list[QueryReply] = []

    async def commit(reply: QueryReply) -> None:
        token = reply.response.token
        signature = sign(key_pair, topic, reply.from_id, token, peer)
        value = Announce(peer=peer, signature=signature).encode()
        try:
            await node.request(reply.address, command, target=topic, value=value, token=token)
        except DHTError as exc:
            log.debug("dht commit failed node=%s command=%s error=%s", reply.address, command.name, exc)
            return
        accepted.append(reply)

    async with trio.open_nursery() as nursery:
        for reply in candidates:
            nursery.start_soon(commit, reply)
    if not accepted:
        raise DHTError(f"no node accepted the {command.name.lower()}")
    return accepted


def probe_targets(node: DHTNode, count: int) -> list[Address]:
    """Up to `count` distinct DHT nodes to ask how they see us: the most recently seen
    table nodes first, then the bootstrap nodes."""
    targets = [n.address for n in node.table.latest(count)]
    for address in node.bootstrap_addresses:
        if len(targets) >= count:
            break
        if address not in targets:
            targets.append(address)
    return targets


@attrs.frozen
class SocketNat:
    """How DHT nodes see one of our sockets: its firewall class, the addresses a peer
    should aim at (the public address when open; the classifier's otherwise; none when
    unknown), and how many of the nodes asked answered."""

    firewall: Firewall
    addresses: tuple[Address, ...]
    answers: int
    asked: int


async def classify_socket(node: DHTNode, sock, *, nodes: int, timeout_s: float) -> SocketNat:
    """hyperdht's per-socket NAT check (holepuncher.js): PINGs from `sock` to up to
    `nodes` DHT nodes, each awaited at most half of `timeout_s`, all within it. The caller
    makes sure answers reaching `sock` are passed to `node.handle_datagram`."""
    classifier = FirewallClassifier(node.firewalled)
    samples: list[Address] = []
    targets = probe_targets(node, nodes)

    async def ping(to: Address) -> None:
        try:
            response, source = await node.request(
                to, InternalCommand.PING, internal=True, sock=sock, retries=1, timeout_s=timeout_s / 2
            )
        except DHTError:
            return
        samples.append(response.to)
        classifier.add((response.to.host, response.to.port), (source.host, source.port))

    with trio.move_on_after(timeout_s):
        async with trio.open_nursery() as nursery:
            for target in targets:
                nursery.start_soon(ping, target)
    if classifier.firewall == Firewall.OPEN:
        addresses: tuple[Address, ...] = (max(set(samples), key=samples.count),) if samples else ()
    else:
        addresses = tuple(Address(host, port) for host, port in classifier.addresses or ())
    return SocketNat(classifier.firewall, addresses, len(samples), len(targets))


async def check_reachable(node: DHTNode) -> NatSampler | None:
    """How the network sees our server socket, or None if firewalled (dht-rpc _checkIfFirewalled).

    Asks up to 5 nodes, from the client socket, to PING_NAT-answer to the server
    socket's port. Reachable needs 3 answers there (1 if fewer were asked), seeing the
    host we already sampled, at the server socket's own port. The returned samples then
    describe the server socket (the node's own samples described the client socket).
    """
    probes = probe_targets(node, DHT_FIREWALL_PROBES)
    if not probes:
        return None
    port = node.address.port
    sampler = NatSampler()
    arrived = 0

    async def probe(address: Address) -> None:
        nonlocal arrived
        try:
            pending = await node.transact(
                address, InternalCommand.PING_NAT, internal=True, value=port.to_bytes(2, "little")
            )
        except DHTError:
            return
        if node.is_server_socket(pending.socket):
            arrived += 1
            sampler.add(pending.response.to.host, pending.response.to.port)

    async with trio.open_nursery() as nursery:
        for address in probes:
            nursery.start_soon(probe, address)
    if arrived < (3 if len(probes) >= DHT_FIREWALL_PROBES else 1):
        return None
    if sampler.host is None or sampler.host != node.nat.host or sampler.port != port:
        return None
    return sampler


@attrs.frozen
class HandshakeReply:
    """The server's answer to PEER_HANDSHAKE (hyperdht router.js peerHandshake)."""

    noise: bytes
    relayed: bool  # the server answered through the relay (not directly)
    server_address: Address  # the server's address as the relay saw it, else the relay itself
    client_address: Address  # our address as the relay saw it


@attrs.frozen
class HolepunchReply:
    payload: bytes
    peer_address: Address  # the server's punch address as the relay saw it
    relay: Address
    client_address: Address


async def peer_handshake(
    node: DHTNode,
    target: bytes,
    noise: bytes,
    relay: Address,
    *,
    peer_address: Address | None = None,
    relay_address: Address | None = None,
    sock=None,
) -> HandshakeReply:
    """Send one handshake message to the server announced under `target` via `relay`.

    Checks what hyperdht's client checks: the answer comes from exactly `relay`, in mode
    REPLY, with a noise message. Raises DHTError otherwise (or on timeout).
    """
    value = Handshake(HandshakeMode.FROM_CLIENT, noise, peer_address, relay_address).encode()
    response, source = await node.request(relay, Command.PEER_HANDSHAKE, target=target, value=value, sock=sock)
    try:
        hs = Handshake.decode(response.value or b"")
    except CodecError as exc:
        raise DHTError(f"bad handshake reply from {source}: {exc}") from exc
    if source != relay or hs.mode != HandshakeMode.REPLY or response.value is None:
        raise DHTError(f"bad handshake reply from {source}: mode={hs.mode}")
    return HandshakeReply(hs.noise, hs.peer_address is not None, hs.peer_address or relay, response.to)


async def peer_holepunch(
    node: DHTNode,
    target: bytes,
    holepunch_id: int,
    payload: bytes,
    relay: Address,
    *,
    peer_address: Address | None = None,
    sock=None,
) -> HolepunchReply:
    """Send one hole-punch message to the server via `relay` (hyperdht peerHolepunch)."""
    value = Holepunch(HandshakeMode.FROM_CLIENT, holepunch_id, payload, peer_address).encode()
    response, source = await node.request(relay, Command.PEER_HOLEPUNCH, target=target, value=value, sock=sock)
    try:
        hp = Holepunch.decode(response.value or b"")
    except CodecError as exc:
        raise DHTError(f"bad holepunch reply from {source}: {exc}") from exc
    if source != relay or hp.mode != HandshakeMode.REPLY:
        raise DHTError(f"bad holepunch reply from {source}: mode={hp.mode}")
    return HolepunchReply(hp.payload, hp.peer_address or relay, relay, response.to)
