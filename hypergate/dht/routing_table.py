"""Sans-IO Kademlia routing table as `kademlia-routing-table` 1.0.6 and dht-rpc keep it.

256 rows, one per shared-prefix length with our id; a row holds at most k nodes sorted
by id. A full row does not take a newcomer outright: the caller pings the eviction
candidate `full_row_candidate()` names and swaps only if it stays silent (dht-rpc
`_onfullrow`). Time is a tick counter the driver advances, as in dht-rpc.
"""

from __future__ import annotations

import bisect
import random
from collections import OrderedDict
from collections.abc import Iterator

import attrs

from hypergate.dht.encoding import Address

K = 20
ID_BITS = 256
# dht-rpc: a node we heard from within 12 ticks (1 min) is "recent"; one added more than
# 360 ticks (30 min) ago is "old". A recent, old node is kept without a re-ping.
RECENT_NODE_TICKS = 12
OLD_NODE_TICKS = 360


@attrs.define(eq=False)
class TableNode:
    """One contact. `to` is how this node saw us (a NAT sample), if it told us."""

    id: bytes
    address: Address
    added: int = 0
    pinged: int = 0
    seen: int = 0
    sampled: int = 0
    down_hints: int = 0
    to: Address | None = None


def row_index(local_id: bytes, other_id: bytes) -> int:
    """Index of the first differing bit; equal ids land in the last row."""
    for i, (a, b) in enumerate(zip(local_id, other_id)):
        if a != b:
            return i * 8 + (8 - (a ^ b).bit_length())
    return ID_BITS - 1


def xor_distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class RoutingTable:
    def __init__(self, local_id: bytes, k: int = K) -> None:
        if len(local_id) != 32:
            raise ValueError("node id must be 32 bytes")
        self.id = local_id
        self.k = k
        self._rows: list[list[TableNode]] = [[] for _ in range(ID_BITS)]
        # Least recently seen first: dht-rpc's time-ordered set of nodes, for pings.
        self._by_seen: OrderedDict[bytes, TableNode] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_seen)

    def __iter__(self) -> Iterator[TableNode]:
        return iter(list(self._by_seen.values()))

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self._by_seen

    def get(self, node_id: bytes) -> TableNode | None:
        return self._by_seen.get(node_id)

    def add(self, node: TableNode) -> bool:
        """Insert or replace; False if the row is full (then see full_row_candidate)."""
        if node.id == self.id:
            return False
        row = self._rows[row_index(self.id, node.id)]
        keys = [n.id for n in row]
        i = bisect.bisect_left(keys, node.id)
        if i < len(row) and row[i].id == node.id:
            row[i] = node
            self._by_seen[node.id] = node
            self._by_seen.move_to_end(node.id)
            return True
        if len(row) >= self.k:
            return False
        row.insert(i, node)
        self._by_seen[node.id] = node
        return True

    def remove(self, node_id: bytes) -> bool:
        row = self._rows[row_index(self.id, node_id)]
        for i, n in enumerate(row):
            if n.id == node_id:
                del row[i]
                del self._by_seen[node_id]
                return True
        return False

    def mark_seen(self, node: TableNode, tick: int) -> None:
        node.seen = node.pinged = tick
        if node.id in self._by_seen:
            self._by_seen.move_to_end(node.id)

    def row_of(self, node_id: bytes) -> list[TableNode]:
        return list(self._rows[row_index(self.id, node_id)])

    def closest(self, target: bytes, k: int | None = None) -> list[TableNode]:
        """Rows from the target's row down, then up: Node's order, not a strict XOR sort."""
        limit = self.k if k is None else k
        result: list[TableNode] = []
        d = row_index(self.id, target)
        for i in list(range(d, -1, -1)) + list(range(d + 1, ID_BITS)):
            if len(result) >= limit:
                break
            result.extend(self._rows[i][: limit - len(result)])
        return result

    def random_node(self, rng: random.Random) -> TableNode | None:
        if not self._by_seen:
            return None
        return rng.choice(list(self._by_seen.values()))

    def least_recently_seen(self, count: int) -> list[TableNode]:
        out = []
        for node in self._by_seen.values():
            if len(out) >= count:
                break
            out.append(node)
        return out

    def latest(self, count: int) -> list[TableNode]:
        """Most recently seen first."""
        out = []
        for node in reversed(self._by_seen.values()):
            if len(out) >= count:
                break
            out.append(node)
        return out

    def full_row_candidate(self, newcomer_id: bytes, tick: int) -> TableNode | None:
        """The node to re-ping before `newcomer` may replace it, or None to keep the row.

        Least recently pinged (ties: oldest added), skipping nodes pinged this tick; a
        node pinged within RECENT_NODE_TICKS that has been around for more than
        OLD_NODE_TICKS is trusted without a ping.
        """
        oldest: TableNode | None = None
        for node in self._rows[row_index(self.id, newcomer_id)]:
            if node.pinged == tick:
                continue
            if oldest is None or oldest.pinged > node.pinged or (
                oldest.pinged == node.pinged and oldest.added > node.added
            ):
                oldest = node
        if oldest is None:
            return None
        if tick - oldest.pinged < RECENT_NODE_TICKS and tick - oldest.added > OLD_NODE_TICKS:
            return None
        return oldest
