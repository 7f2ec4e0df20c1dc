"""Sans-IO hyperdht storage: announce records and router entries (`hyperdht/lib/persistent.js`).

A persistent node keeps, per topic, signed peer records (ANNOUNCE/UNANNOUNCE, served by
LOOKUP) and, when a peer announces its own key (`target == H32(publicKey)`), a router
entry naming the address to relay handshakes to (served by FIND_PEER). Unlike Node,
every store is bounded per topic, per announcing IP and in total, so one source cannot
fill a node's memory. Time is passed in.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict

import attrs

from hypergate.dht import crypto
from hypergate.dht.encoding import Address, CodecError
from hypergate.dht.messages import Announce, LookupReply, PeerRecord
from hypergate.limits import (
    DHT_MAX_RECORDS as MAX_RECORDS,
    DHT_MAX_RECORDS_PER_IP as MAX_RECORDS_PER_IP,
    DHT_MAX_RECORDS_PER_TOPIC as MAX_RECORDS_PER_TOPIC,
    DHT_MAX_ROUTER_ENTRIES as MAX_ROUTER_ENTRIES,
    DHT_RECORD_TTL_S as RECORD_TTL_S,
)

log = logging.getLogger(__name__)

# hyperdht trims an announce to 3 relay addresses.
MAX_RELAY_ADDRESSES = 3
# Records returned by one LOOKUP (hyperdht: records.get(k, 20)).
LOOKUP_REPLY_RECORDS = 20
# A bump is a millisecond timestamp; hyperdht accepts one at most 60 s in the future.
MAX_BUMP_DRIFT_MS = 60_000


@attrs.define
class StoredRecord:
    record: bytes  # encoded PeerRecord, served verbatim
    source_host: str
    expires_at: float


@attrs.define
class RouterEntry:
    """Where to relay PEER_HANDSHAKE/PEER_HOLEPUNCH for a public key's hash.

    `relay` is the announcer's address as we saw it; None for a server on this node
    (`local`), which never expires.
    """

    relay: Address | None
    record: bytes
    expires_at: float | None
    local: bool = False


class AnnounceStore:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._records: dict[bytes, OrderedDict[bytes, StoredRecord]] = {}
        self._record_count = 0
        self._per_ip: dict[str, int] = {}
        self._bumps: dict[bytes, int] = {}
        self._router: OrderedDict[bytes, RouterEntry] = OrderedDict()
        self.rejected = 0

    # --- queries ---------------------------------------------------------------------

    def router_entry(self, target: bytes, now: float) -> RouterEntry | None:
        entry = self._router.get(target)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
            del self._router[target]
            return None
        return entry

    def lookup(self, target: bytes, now: float) -> LookupReply | None:
        self._expire_topic(target, now)
        records = list(self._records.get(target, {}).values())
        if len(records) > LOOKUP_REPLY_RECORDS:
            records = self._rng.sample(records, LOOKUP_REPLY_RECORDS)
        peers = [PeerRecord.decode(r.record) for r in records]
        entry = self.router_entry(target, now)
        if entry is not None and len(peers) < LOOKUP_REPLY_RECORDS:
            peers.append(PeerRecord.decode(entry.record))
        if not peers:
            return None
        return LookupReply(peers, self._bumps.get(target, 0))

    def find_peer(self, target: bytes, now: float) -> bytes | None:
        entry = self.router_entry(target, now)
        return entry.record if entry is not None else None

    def record_count(self) -> int:
        return self._record_count

    # --- commands --------------------------------------------------------------------

    def on_announce(
        self, target: bytes, token: bytes, local_id: bytes, value: bytes, source: Address, now: float, now_ms: int
    ) -> bool:
        """Store a signed ANNOUNCE; False (and no reply, as Node) if it is not valid."""
        ann = _decode_announce(value)
        if ann is None or ann.peer is None or ann.signature is None:
            # refresh-only announces (hash chains) are not used by current announcers
            self.rejected += 1
            return False
        signable = crypto.announce_signable(crypto.NS_ANNOUNCE, target, local_id, token, ann.peer, ann.refresh)
        if not crypto.verify(ann.peer.public_key, signable, ann.signature):
            self.rejected += 1
            return False
        peer = PeerRecord(ann.peer.public_key, ann.peer.relay_addresses[:MAX_RELAY_ADDRESSES])
        record = peer.encode()
        if crypto.hash32(peer.public_key) == target:
            if target not in self._router and len(self._router) >= MAX_ROUTER_ENTRIES:
                self._evict_router_entry(now)
            existing = self._router.get(target)
            if existing is not None and existing.local:
                return True  # our own server stays ours
            self._router[target] = RouterEntry(source, record, now + RECORD_TTL_S)
            self._router.move_to_end(target)
            self._remove_record(target, peer.public_key)
            return True
        if not self._store_record(target, peer.public_key, record, source.host, now):
            self.rejected += 1
            return False
        if ann.bump and ann.bump > self._bumps.get(target, 0) and ann.bump <= now_ms + MAX_BUMP_DRIFT_MS:
            self._bumps[target] = ann.bump
        return True

    def on_unannounce(self, target: bytes, token: bytes, local_id: bytes, value: bytes) -> bool:
        ann = _decode_announce(value)
        if ann is None or ann.peer is None or ann.signature is None:
            return False
        signable = crypto.announce_signable(crypto.NS_UNANNOUNCE, target, local_id, token, ann.peer, ann.refresh)
        if not crypto.verify(ann.peer.public_key, signable, ann.signature):
            return False
        if crypto.hash32(ann.peer.public_key) == target:
            entry = self._router.get(target)
            if entry is not None and not entry.local:
                del self._router[target]
        self._remove_record(target, ann.peer.public_key)
        return True

    def add_local_server(self, public_key: bytes, relay_addresses: list[Address] = ()) -> bytes:
        """A server on this node: handshakes for H32(public_key) are ours. Returns the target."""
        target = crypto.hash32(public_key)
        record = PeerRecord(public_key, list(relay_addresses)[:MAX_RELAY_ADDRESSES]).encode()
        self._router[target] = RouterEntry(None, record, None, local=True)
        return target

    def remove_local_server(self, public_key: bytes) -> None:
        target = crypto.hash32(public_key)
        entry = self._router.get(target)
        if entry is not None and entry.local:
            del self._router[target]

    def expire(self, now: float) -> None:
        """Drop everything past its time; the driver calls this on its maintenance tick."""
        for target in list(self._records):
            self._expire_topic(target, now)
        for target, entry in list(self._router.items()):
            if entry.expires_at is not None and entry.expires_at <= now:
                del self._router[target]

    # --- bounded bookkeeping ---------------------------------------------------------

    def _store_record(self, target: bytes, public_key: bytes, record: bytes, host: str, now: float) -> bool:
        self._expire_topic(target, now)
        topic = self._records.get(target)
        if topic is not None and public_key in topic:
            old = topic.pop(public_key)
            self._release(old.source_host)
        elif (
            self._record_count >= MAX_RECORDS
            or self._per_ip.get(host, 0) >= MAX_RECORDS_PER_IP
            or (topic is not None and len(topic) >= MAX_RECORDS_PER_TOPIC)
        ):
            return False
        topic = self._records.setdefault(target, OrderedDict())
        topic[public_key] = StoredRecord(record, host, now + RECORD_TTL_S)
        self._record_count += 1
        self._per_ip[host] = self._per_ip.get(host, 0) + 1
        return True

    def _remove_record(self, target: bytes, public_key: bytes) -> None:
        topic = self._records.get(target)
        if topic is None or public_key not in topic:
            return
        self._release(topic.pop(public_key).source_host)
        if not topic:
            del self._records[target]
            self._bumps.pop(target, None)

    def _release(self, host: str) -> None:
        self._record_count -= 1
        left = self._per_ip.get(host, 1) - 1
        if left:
            self._per_ip[host] = left
        else:
            self._per_ip.pop(host, None)

    def _expire_topic(self, target: bytes, now: float) -> None:
        topic = self._records.get(target)
        if topic is None:
            return
        for public_key, stored in list(topic.items()):
            if stored.expires_at <= now:
                self._remove_record(target, public_key)

    def _evict_router_entry(self, now: float) -> None:
        for target, entry in self._router.items():
            if not entry.local:
                del self._router[target]
                return


def _decode_announce(value: bytes | None) -> Announce | None:
    if value is None:
        return None
    try:
        return Announce.decode(value)
    except CodecError:
        return None
