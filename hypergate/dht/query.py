"""Sans-IO iterative Kademlia query as dht-rpc runs it (`dht-rpc/lib/query.js`).

The driver asks `next_visits()` whom to send the request to, and reports each outcome
with `on_response`, `on_slow` (first retransmit) or `on_timeout`. The query keeps the
k closest replies that carried a valid id; when `finished` is true the driver commits
(e.g. ANNOUNCE with each reply's token) to `closest_replies`.

Statistics for benchmarks (they change nothing): `visits` counts the nodes asked; the
referral depth of a node is 1 for the start set (our own table) and one more than the
shallowest reply that named it; `hops` is the deepest of the final closest replies (the
step at which the closest set stabilised), `hops_to_closest` that of the closest one.
"""

from __future__ import annotations

import enum

import attrs

from hypergate.dht.crypto import node_id
from hypergate.dht.encoding import Address
from hypergate.dht.messages import Response
from hypergate.dht.routing_table import K
from hypergate.limits import DHT_MAX_VISITS_PER_QUERY

# dht-rpc's default: 10 requests in flight per query.
DEFAULT_CONCURRENCY = 10


class _Seen(enum.Enum):
    DONE = "done"
    DOWN = "down"


@attrs.frozen
class Candidate:
    id: bytes
    address: Address


@attrs.frozen
class QueryReply:
    """A response to one visit; `from_id` is set only if the id matched the source."""

    address: Address
    from_id: bytes | None
    response: Response


@attrs.frozen
class DownHint:
    """Tell `referrer` that `down`, which it gave us as a closer node, did not answer."""

    referrer: Address
    down: Address


def _compare(target: bytes, a: bytes, b: bytes) -> int:
    """Negative if a is closer to target than b (XOR metric)."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(target, "big")) - (
        int.from_bytes(b, "big") ^ int.from_bytes(target, "big")
    )


class IterativeQuery:
    def __init__(
        self,
        target: bytes,
        local_id: bytes | None,
        start: list[Candidate],
        k: int = K,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_visits: int = DHT_MAX_VISITS_PER_QUERY,
    ) -> None:
        self.target = target
        self.k = k
        self.concurrency = concurrency
        self.successes = 0
        self.errors = 0
        self.closest_replies: list[QueryReply] = []
        self._local_id = local_id
        self._max_visits = max_visits
        self._visits = 0
        self._inflight = 0
        self._slow = 0
        self._depth: dict[Address, int] = {}  # referral depth, statistics only
        # address -> referrers (pending/in flight), or DONE/DOWN once visited
        self._seen: dict[Address, list[Address] | _Seen] = {}
        self._pending: list[Candidate] = []  # a LIFO stack, as in dht-rpc
        for candidate in reversed(start):
            self._add_pending(candidate, None)

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def visits(self) -> int:
        """Nodes the query sent its request to (each counted once, resends aside)."""
        return self._visits

    @property
    def hops(self) -> int:
        """Deepest referral depth among the closest replies (0 before any)."""
        return max((self._depth.get(r.address, 0) for r in self.closest_replies), default=0)

    @property
    def hops_to_closest(self) -> int:
        """Referral depth of the closest reply (0 before any)."""
        return self._depth.get(self.closest_replies[0].address, 0) if self.closest_replies else 0

    def _note_depth(self, address: Address, referrer: Address | None) -> None:
        depth = 1 if referrer is None else self._depth.get(referrer, 0) + 1
        if depth < self._depth.get(address, depth + 1):
            self._depth[address] = depth

    @property
    def finished(self) -> bool:
        if self._pending and self._visits < self._max_visits:
            return False
        return self._inflight == 0 or (self._slow == self._inflight and len(self.closest_replies) >= self.k)

    def _is_closer(self, candidate_id: bytes) -> bool:
        return len(self.closest_replies) < self.k or (
            _compare(self.target, candidate_id, self.closest_replies[-1].from_id) < 0
        )

    def _add_pending(self, candidate: Candidate, referrer: Address | None) -> tuple[bool, list[DownHint]]:
        seen = self._seen.get(candidate.address)
        closer = self._is_closer(candidate.id)
        if seen is _Seen.DONE:
            return closer, []
        if seen is _Seen.DOWN:
            return closer, ([DownHint(referrer, candidate.address)] if referrer else [])
        if seen is not None:
            if referrer is not None:
                seen.append(referrer)
            self._note_depth(candidate.address, referrer)
            return closer, []
        if not closer:
            return False, []
        self._note_depth(candidate.address, referrer)
        self._seen[candidate.address] = [referrer] if referrer else []
        self._pending.append(candidate)
        return True, []

    def next_visits(self) -> list[Candidate]:
        """Candidates to send the request to now; each becomes in flight."""
        visits = []
        while (
            self._inflight < self.concurrency + self._slow
            and self._pending
            and self._visits < self._max_visits
        ):
            candidate = self._pending.pop()
            if not self._is_closer(candidate.id):
                continue
            self._inflight += 1
            self._visits += 1
            visits.append(candidate)
        return visits

    def on_slow(self, address: Address) -> None:
        """The request to `address` timed out once and is being retried."""
        self._slow += 1

    def _done(self, was_slow: bool) -> None:
        self._inflight -= 1
        if was_slow:
            self._slow -= 1

    def on_response(self, reply: QueryReply, was_slow: bool = False) -> list[DownHint]:
        self._done(was_slow)
        self._seen[reply.address] = _Seen.DONE
        response = reply.response
        if response.error == 0:
            self.successes += 1
        else:
            self.errors += 1
        if response.error == 0 and reply.from_id is not None and self._is_closer(reply.from_id):
            self._push_closest(reply)
        hints: list[DownHint] = []
        for address in response.closer_nodes:
            candidate = Candidate(node_id(address), address)
            if candidate.id == self._local_id:
                continue
            added, new_hints = self._add_pending(candidate, reply.address)
            hints.extend(new_hints)
            if not added:
                # Nodes arrive sorted by closeness: once one is not closer, none after is.
                break
        return hints

    def on_timeout(self, address: Address, was_slow: bool = True) -> list[DownHint]:
        """No answer after every retry: hint each node that referred it."""
        self._done(was_slow)
        self.errors += 1
        referrers = self._seen.get(address)
        self._seen[address] = _Seen.DOWN
        if not isinstance(referrers, list):
            return []
        return [DownHint(referrer, address) for referrer in referrers]

    def _push_closest(self, reply: QueryReply) -> None:
        replies = [r for r in self.closest_replies if r.from_id != reply.from_id]
        replies.append(reply)
        replies.sort(key=lambda r: int.from_bytes(r.from_id, "big") ^ int.from_bytes(self.target, "big"))
        self.closest_replies = replies[: self.k]
