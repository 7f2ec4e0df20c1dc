"""IterativeQuery's statistics (visits, referral-depth hops) used by bench/dht.py."""

from __future__ import annotations

from hypergate.dht import crypto
from hypergate.dht.encoding import Address
from hypergate.dht.messages import Response
from hypergate.dht.query import Candidate, IterativeQuery, QueryReply


def test_query_counts_visits_and_referral_depth():
    a, b, c, d = (Address("10.0.0.1", port) for port in (1, 2, 3, 4))
    ids = {x: crypto.node_id(x) for x in (a, b, c, d)}
    # a (start set) names b; b names c; c names b again (already done) and d; d names nothing.
    refers = {a: [b], b: [c], c: [b, d], d: []}
    query = IterativeQuery(crypto.hash32(b"target"), None, [Candidate(ids[a], a)], k=20)
    assert (query.visits, query.hops, query.hops_to_closest) == (0, 0, 0)
    for _ in range(10):
        visits = query.next_visits()
        if query.finished:
            break
        for candidate in visits:
            response = Response(tid=0, to=Address("10.255.0.1", 1), id=ids[candidate.address],
                                closer_nodes=tuple(refers[candidate.address]))
            query.on_response(QueryReply(candidate.address, ids[candidate.address], response))
    assert query.finished
    assert query.visits == 4
    depth = {a: 1, b: 2, c: 3, d: 4}
    assert query.hops == 4
    assert query.hops_to_closest == depth[query.closest_replies[0].address]
