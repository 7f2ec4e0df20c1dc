"""The sans-IO parts of the DHT: announce store, iterative query, relay decisions, rate limit."""

from __future__ import annotations

import random

import pytest

from hypergate.dht import crypto
from hypergate.dht.encoding import Address
from hypergate.dht.messages import Announce, Handshake, HandshakeMode, Holepunch, LookupReply, PeerRecord, Response
from hypergate.dht.query import Candidate, IterativeQuery, QueryReply
from hypergate.dht.ratelimit import CongestionWindow, SourceRateLimiter
from hypergate.dht.routing_table import RoutingTable, TableNode
from hypergate.dht.relay import Drop, Forward, Respond, relay_handshake, relay_holepunch
from hypergate.dht.storage import AnnounceStore
from hypergate.limits import DHT_MAX_RECORDS_PER_IP, DHT_MAX_RECORDS_PER_TOPIC, DHT_RECORD_TTL_S

LOCAL_ID = crypto.node_id(Address("10.0.0.1", 49737))
TOKEN = b"\x5a" * 32
ANNOUNCER = Address("192.0.2.7", 40000)


def signed(
    key_pair: crypto.KeyPair, topic: bytes, relays=(), *, unannounce=False, token=TOKEN, node=LOCAL_ID, bump=0
) -> bytes:
    peer = PeerRecord(key_pair.public_key, list(relays))
    sign = crypto.sign_unannounce if unannounce else crypto.sign_announce
    return Announce(peer=peer, signature=sign(key_pair, topic, node, token, peer), bump=bump).encode()


def key(i: int) -> crypto.KeyPair:
    return crypto.KeyPair.from_seed(i.to_bytes(32, "big"))


def announce(store, topic, key_pair, source=ANNOUNCER, now=0.0, **kw) -> bool:
    return store.on_announce(topic, TOKEN, LOCAL_ID, signed(key_pair, topic, **kw), source, now, 0)


# --- store ------------------------------------------------------------------------------


def test_signed_announce_is_served_by_lookup_until_it_expires():
    store = AnnounceStore(random.Random(1))
    topic = crypto.hash32(b"topic")
    relays = [Address("1.1.1.1", 1), Address("2.2.2.2", 2), Address("3.3.3.3", 3), Address("4.4.4.4", 4)]
    assert announce(store, topic, key(1), relays=relays)
    reply = store.lookup(topic, now=1.0)
    assert reply == LookupReply([PeerRecord(key(1).public_key, relays[:3])], 0), "trimmed to 3 relays"
    assert store.lookup(topic, now=DHT_RECORD_TTL_S + 1) is None
    assert store.record_count() == 0


def test_announce_signed_for_another_node_or_token_is_refused():
    store = AnnounceStore()
    topic = crypto.hash32(b"topic")
    other_node = crypto.node_id(Address("10.0.0.2", 49737))
    assert not store.on_announce(topic, TOKEN, LOCAL_ID, signed(key(1), topic, node=other_node), ANNOUNCER, 0, 0)
    assert not store.on_announce(topic, TOKEN, LOCAL_ID, signed(key(1), topic, token=b"\x01" * 32), ANNOUNCER, 0, 0)
    assert not store.on_announce(topic, TOKEN, LOCAL_ID, b"\x05garbage", ANNOUNCER, 0, 0)
    assert not store.on_announce(topic, TOKEN, LOCAL_ID, signed(key(1), topic, unannounce=True), ANNOUNCER, 0, 0)
    assert store.rejected == 4 and store.lookup(topic, 0) is None


def test_unannounce_needs_its_own_signature():
    store = AnnounceStore()
    topic = crypto.hash32(b"topic")
    assert announce(store, topic, key(1))
    assert not store.on_unannounce(topic, TOKEN, LOCAL_ID, signed(key(1), topic))  # announce signature
    assert store.lookup(topic, 0) is not None
    assert store.on_unannounce(topic, TOKEN, LOCAL_ID, signed(key(1), topic, unannounce=True))
    assert store.lookup(topic, 0) is None


def test_announcing_your_own_key_makes_a_router_entry_for_find_peer():
    store = AnnounceStore()
    kp = key(2)
    target = crypto.hash32(kp.public_key)
    assert announce(store, target, kp)
    entry = store.router_entry(target, now=1.0)
    assert entry.relay == ANNOUNCER
    assert store.find_peer(target, 1.0) == PeerRecord(kp.public_key, []).encode()
    assert store.lookup(target, 1.0).peers == (PeerRecord(kp.public_key, []),)
    assert store.router_entry(target, now=DHT_RECORD_TTL_S + 1) is None


def test_a_local_server_entry_is_not_taken_over_by_an_announce():
    store = AnnounceStore()
    kp = key(3)
    target = store.add_local_server(kp.public_key)
    assert announce(store, target, kp, source=Address("203.0.113.9", 1))
    assert store.router_entry(target, 10**9).local
    store.remove_local_server(kp.public_key)
    assert store.router_entry(target, 0) is None


def test_records_are_bounded_per_ip_and_per_topic():
    store = AnnounceStore()
    for i in range(DHT_MAX_RECORDS_PER_IP + 5):
        accepted = announce(store, crypto.hash32(b"t%d" % i), key(100 + i))
        assert accepted == (i < DHT_MAX_RECORDS_PER_IP)
    assert store.record_count() == DHT_MAX_RECORDS_PER_IP
    # Re-announcing an existing record is always allowed (it replaces itself).
    assert announce(store, crypto.hash32(b"t0"), key(100))
    topic = crypto.hash32(b"crowded")
    for i in range(DHT_MAX_RECORDS_PER_TOPIC + 3):
        source = Address(f"198.51.{i // 200}.{i % 200}", 1)
        assert announce(store, topic, key(1000 + i), source=source) == (i < DHT_MAX_RECORDS_PER_TOPIC)
    assert len(store.lookup(topic, 0).peers) == 20, "a lookup answers with at most 20 records"


def test_bump_is_kept_only_if_newer_and_not_too_far_ahead():
    store = AnnounceStore()
    topic = crypto.hash32(b"bumped")
    assert store.on_announce(topic, TOKEN, LOCAL_ID, signed(key(1), topic, bump=5000), ANNOUNCER, 0, 0)
    assert store.lookup(topic, 0).bump == 5000
    assert store.on_announce(topic, TOKEN, LOCAL_ID, signed(key(1), topic, bump=10**9), ANNOUNCER, 0, 0)
    assert store.lookup(topic, 0).bump == 5000


# --- iterative query ----------------------------------------------------------------------


class FakeNetwork:
    """Nodes with real Kademlia tables (k=20) of each other, answering FIND_NODE-style."""

    def __init__(self, count: int) -> None:
        self.addresses = [Address(f"10.{i // 250}.{i % 250}.1", 1000 + i) for i in range(count)]
        self.ids = {a: crypto.node_id(a) for a in self.addresses}
        self.dead: set[Address] = set()
        self.tables = {}
        for a in self.addresses:
            table = RoutingTable(self.ids[a], k=20)
            for b in self.addresses:
                table.add(TableNode(self.ids[b], b))
            self.tables[a] = table

    def answer(self, at: Address, target: bytes) -> Response:
        near = [n.address for n in self.tables[at].closest(target, 20)]
        near.sort(key=lambda a: int.from_bytes(self.ids[a], "big") ^ int.from_bytes(target, "big"))
        return Response(tid=0, to=Address("10.255.0.1", 1), id=self.ids[at], closer_nodes=near)


def run(net: FakeNetwork, query: IterativeQuery, limit: int = 10_000) -> list:
    hints = []
    for _ in range(limit):
        visits = query.next_visits()
        if query.finished:
            return hints
        assert visits or query.inflight, "a query that is not finished has work"
        for candidate in visits:
            if candidate.address in net.dead:
                hints += query.on_timeout(candidate.address)
            else:
                reply = QueryReply(candidate.address, net.ids[candidate.address], net.answer(candidate.address, query.target))
                hints += query.on_response(reply)
    raise AssertionError("query did not finish")


def test_query_converges_on_the_true_k_closest():
    net = FakeNetwork(200)
    target = crypto.hash32(b"target")
    start = [Candidate(net.ids[a], a) for a in net.addresses[:3]]
    query = IterativeQuery(target, None, start, k=20)
    run(net, query)
    truth = sorted(net.ids.values(), key=lambda i: int.from_bytes(i, "big") ^ int.from_bytes(target, "big"))[:20]
    assert [r.from_id for r in query.closest_replies] == truth


def test_dead_nodes_produce_down_hints_to_whoever_referred_them():
    target = crypto.hash32(b"target")
    net = FakeNetwork(120)
    by_distance = sorted(range(120), key=lambda i: int.from_bytes(net.ids[net.addresses[i]], "big") ^ int.from_bytes(target, "big"))
    net.dead = {net.addresses[i] for i in by_distance[:3]}
    start = [Candidate(net.ids[a], a) for a in net.addresses[100:103]]
    query = IterativeQuery(target, None, start, k=20)
    hints = run(net, query)
    assert hints and {h.down for h in hints} <= net.dead
    assert not {r.address for r in query.closest_replies} & net.dead


def test_replies_without_a_valid_id_do_not_count_as_closest():
    target = crypto.hash32(b"t")
    a = Address("10.0.0.5", 5)
    query = IterativeQuery(target, None, [Candidate(crypto.node_id(a), a)])
    [visit] = query.next_visits()
    query.on_response(QueryReply(a, None, Response(tid=0, to=a)))
    assert query.finished and query.closest_replies == [] and query.successes == 1


def test_query_visits_are_bounded_whatever_replies_invent():
    target = crypto.hash32(b"t")
    counter = iter(range(10**6))
    query = IterativeQuery(target, None, [Candidate(b"\x00" * 32, Address("10.0.0.1", 1))], k=20, max_visits=50)
    visited = 0
    for _ in range(1000):
        visits = query.next_visits()
        if query.finished:
            break
        for c in visits:
            visited += 1
            invented = [Address(f"10.9.{next(counter) % 250}.{next(counter) % 250}", 1 + next(counter) % 60000) for _ in range(20)]
            invented.sort(key=lambda x: int.from_bytes(crypto.node_id(x), "big") ^ int.from_bytes(target, "big"))
            query.on_response(QueryReply(c.address, None, Response(tid=0, to=c.address, closer_nodes=invented)))
    assert query.finished and visited == 50


# --- relay decisions --------------------------------------------------------------------

CLIENT = Address("198.51.100.1", 1111)
SERVER = Address("203.0.113.2", 2222)
RELAY2 = Address("192.0.2.3", 3333)


def test_handshake_relay_modes():
    msg1 = Handshake(HandshakeMode.FROM_CLIENT, b"m1").encode()
    assert relay_handshake(msg1, CLIENT, None) == Respond(None, closer_nodes=True)
    assert relay_handshake(msg1, CLIENT, SERVER) == Forward(
        SERVER, Handshake(HandshakeMode.FROM_RELAY, b"m1", peer_address=CLIENT).encode()
    )
    via = Handshake(HandshakeMode.FROM_CLIENT, b"m1", relay_address=RELAY2).encode()
    assert relay_handshake(via, CLIENT, None).to == RELAY2
    from_relay = Handshake(HandshakeMode.FROM_RELAY, b"m1", peer_address=CLIENT).encode()
    assert relay_handshake(from_relay, RELAY2, SERVER) == Forward(
        SERVER, Handshake(HandshakeMode.FROM_SECOND_RELAY, b"m1", CLIENT, RELAY2).encode()
    )
    assert isinstance(relay_handshake(from_relay, RELAY2, None), Drop)
    from_server = Handshake(HandshakeMode.FROM_SERVER, b"m2", peer_address=CLIENT).encode()
    assert relay_handshake(from_server, SERVER, None) == Respond(
        Handshake(HandshakeMode.REPLY, b"m2", peer_address=SERVER).encode(), to=CLIENT
    )
    assert isinstance(relay_handshake(b"\xff", CLIENT, SERVER), Drop)
    assert isinstance(relay_handshake(None, CLIENT, SERVER), Drop)
    assert isinstance(relay_handshake(Handshake(HandshakeMode.REPLY, b"").encode(), CLIENT, SERVER), Drop)


def test_holepunch_relay_modes():
    probe = Holepunch(HandshakeMode.FROM_CLIENT, 3, b"payload").encode()
    assert relay_holepunch(probe, CLIENT, SERVER) == Forward(
        SERVER, Holepunch(HandshakeMode.FROM_RELAY, 3, b"payload", peer_address=CLIENT).encode()
    )
    assert isinstance(relay_holepunch(probe, CLIENT, None), Drop)
    answer = Holepunch(HandshakeMode.FROM_SERVER, 0, b"p2", peer_address=CLIENT).encode()
    assert relay_holepunch(answer, SERVER, None) == Respond(
        Holepunch(HandshakeMode.REPLY, 0, b"p2", peer_address=SERVER).encode(), to=CLIENT
    )


# --- rate limit -------------------------------------------------------------------------


def test_rate_limiter_refills_and_forgets_old_sources():
    limiter = SourceRateLimiter(rate_per_s=10, burst=5, max_sources=3)
    assert [limiter.allow("a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("a", 0.1)  # one token back after 0.1 s at 10/s
    assert not limiter.allow("a", 0.1)
    for host in ("b", "c", "d"):
        limiter.allow(host, 0.2)
    assert len(limiter) == 3


@pytest.mark.parametrize("count", [0, 1, 21])
def test_lookup_reply_sizes(count):
    store = AnnounceStore(random.Random(2))
    topic = crypto.hash32(b"sizes")
    for i in range(count):
        announce(store, topic, key(500 + i), source=Address(f"192.0.2.{i + 1}", 1))
    reply = store.lookup(topic, 0)
    assert (reply is None) if count == 0 else len(reply.peers) == min(count, 20)


def test_congestion_window_fills_per_bucket_and_overall_and_drains_by_rotation():
    window = CongestionWindow(max_window=3)
    for _ in range(3):
        assert not window.is_full()
        window.sent()
    assert window.is_full(), "current bucket full"
    window.settled()
    assert not window.is_full(), "an answer frees a slot"
    window.sent()
    window.rotate()
    for _ in range(2):
        window.sent()
    assert not window.is_full()
    window.sent()
    assert window.is_full(), "three in this bucket"
    window.rotate()
    assert window.is_full(), "six over the last buckets is twice the window"
    window.rotate()
    window.rotate()
    assert not window.is_full(), "old buckets rotate out"
