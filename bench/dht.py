"""DHT simulation: real DHTNodes on loopback in one process, lookup hops and time by size.

    .venv/bin/python -m bench.dht                          # grow to 50, 100, 250, 500 nodes
    .venv/bin/python -m bench.dht --sizes 50,100,250,500,1000
    .venv/bin/python -m bench.dht --topics 30 --lookups-per-topic 4 --seed 7
    .venv/bin/python -m bench.dht --json out.json          # and every figure as JSON
    .venv/bin/python -m bench.dht --json - 2>table.txt     # JSON alone on stdout

One trio.run holds every node: each is a persistent `DHTNode` (ephemeral=False,
firewalled=False) with its own two UDP sockets, bound to its own loopback address
127.0.X.Y (the per-IP rate limit and per-IP record bound then see one node per IP, as
on the real network; the node id is BLAKE2b of that address). The first node starts
alone, the next two bootstrap from it, and every later node from those three. The
network grows step by step; at each size it joins the new nodes, lets every node run
one table refresh (what dht-rpc does every 5 minutes), then measures:

- announce: `--topics` random topics, each announced by a random node with a fresh key
  pair (LOOKUP walk + ANNOUNCE to the closest 20);
- lookup: each topic looked up from `--lookups-per-topic` other random nodes, one at a
  time (so one lookup's time and datagrams are its own): a LOOKUP walk as
  `DHTNode.lookup` runs it (`operations.run_query`).

Figures per size (percentiles are nearest-rank):
- found: lookups that returned the announced key;
- hops: referral depth of the walk (query.py): a node from the looker's own table is
  depth 1, a node first named by a depth-d reply is depth d+1. `hops` is the deepest of
  the k closest replies the walk ended with (the step at which the closest set
  stabilised); `to closest` that of the single closest reply;
- contacted: nodes the walk sent its request to;
- dgrams: datagrams the looking-up node sent and received during its lookup;
  net dgrams: datagrams sent by all nodes from the lookup's start to `--settle-ms` after
  its end (the looker's own, the answers, and what it set off: re-pings of full table
  rows that now see the looker, down hints), less those sent in an idle window of the
  same length right after (background table checks and refreshes): an estimate, noisy
  per lookup, unbiased on average;
- ms: wall time per lookup; CPU ms: process CPU during the lookup (all nodes' share);
- join s: time to add this step's new nodes (16 joining at once), each bootstrapping
  (PING the bootstrap nodes, FIND_NODE on its own id);
- RSS: the process's resident memory after the step; KB/node: its growth since before
  the first node started, per node.

The simulation shares one interpreter, so every node's work is serialised on one core:
a lookup's wall time is mostly the CPU its ~50 visits cost the looker and the nodes
answering it (compare `CPU ms`), not network latency.

Every wait is bounded: per phase and the whole run (`--budget`). Traffic goes only to
127.0.0.0/8 (a send elsewhere is dropped and counted).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import trio

from bench.lib.procs import raise_open_file_limit
from hypergate.dht import crypto, operations
from hypergate.dht.encoding import Address, CodecError
from hypergate.dht.messages import Command, LookupReply
from hypergate.dht.node import DHTError, DHTNode, NodeConfig
from hypergate.dht.query import IterativeQuery, QueryReply

log = logging.getLogger("bench.dht")

DEFAULT_SIZES = "50,100,250,500"
BOOTSTRAP_NODES = 3
JOIN_CONCURRENCY = 16
REFRESH_CONCURRENCY = 16
ANNOUNCE_CONCURRENCY = 4
# A lookup on a healthy loopback network takes milliseconds; the query itself gives up
# after DHT_QUERY_TIMEOUT_S (30 s).
LOOKUP_TIMEOUT_S = 35.0
MAX_NODES = 16_000


def node_host(index: int) -> str:
    """127.0.X.Y with Y in 1..250: a distinct loopback IP per node."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


class CountingNode(DHTNode):
    """A DHTNode that counts the datagrams it sends and never sends off loopback."""

    async def send(self, data: bytes, to: Address, sock=None) -> None:
        if not to.host.startswith("127."):
            self.stats["bench_dropped_off_loopback"] += 1
            return
        self.stats["datagrams_out"] += 1
        await super().send(data, to, sock)


@dataclass
class StepResult:
    nodes: int
    join_s: float = 0.0
    join_cpu_s: float = 0.0
    refresh_s: float = 0.0
    table_mean: float = 0.0
    table_min: int = 0
    announces: int = 0
    announces_ok: int = 0
    announce_ms_p50: float = 0.0
    lookups: int = 0
    found: int = 0
    hops_p50: float = 0.0
    hops_p95: float = 0.0
    hops_max: int = 0
    hops_mean: float = 0.0
    hops_to_closest_p50: float = 0.0
    hops_to_closest_mean: float = 0.0
    contacted_mean: float = 0.0
    contacted_p95: float = 0.0
    datagrams_mean: float = 0.0
    net_datagrams_per_lookup: float = 0.0
    background_datagrams_per_s: float = 0.0
    lookup_ms_p50: float = 0.0
    lookup_ms_p95: float = 0.0
    lookup_ms_max: float = 0.0
    lookup_cpu_ms: float = 0.0
    lookup_timeouts: int = 0
    request_timeouts: int = 0
    rss_mb: float = 0.0
    rss_kb_per_node: float = 0.0  # growth since before the first node, per node
    max_rss_mb: float = 0.0
    hops_histogram: dict[int, int] = field(default_factory=dict)
    error: str | None = None


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # nearest rank, ceil(n p / 100)
    return float(ordered[int(rank) - 1])


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Simulation:
    def __init__(self, args: argparse.Namespace, nursery: trio.Nursery) -> None:
        self.args = args
        self.nursery = nursery
        self.rng = random.Random(args.seed)
        self.nodes: list[CountingNode] = []
        self.base_rss_mb = rss_mb()

    def total(self, stat: str) -> int:
        return sum(node.stats[stat] for node in self.nodes)

    async def _start(self, index: int) -> None:
        bootstrap = tuple(n.address for n in self.nodes[:BOOTSTRAP_NODES]) if index else ()
        config = NodeConfig(
            bootstrap=bootstrap, host=node_host(index), port=0, ephemeral=False, firewalled=False
        )
        node = CountingNode(config, rng=random.Random(self.rng.getrandbits(64)))
        await self.nursery.start(node.run)
        self.nodes.append(node)

    async def grow(self, size: int) -> None:
        """Join nodes until there are `size`; the first three one by one."""
        while len(self.nodes) < min(size, BOOTSTRAP_NODES):
            await self._start(len(self.nodes))
        limiter = trio.CapacityLimiter(JOIN_CONCURRENCY)
        first, last = len(self.nodes), size

        async def join(index: int) -> None:
            async with limiter:
                await self._start(index)

        async with trio.open_nursery() as joins:
            for index in range(first, last):
                joins.start_soon(join, index)

    async def refresh_all(self) -> None:
        limiter = trio.CapacityLimiter(REFRESH_CONCURRENCY)

        async def refresh(node: DHTNode) -> None:
            async with limiter:
                await node.refresh()

        async with trio.open_nursery() as refreshes:
            for node in self.nodes:
                refreshes.start_soon(refresh, node)

    async def announce(self, step: StepResult) -> list[tuple[bytes, crypto.KeyPair, DHTNode]]:
        announced: list[tuple[bytes, crypto.KeyPair, DHTNode]] = []
        times: list[float] = []
        limiter = trio.CapacityLimiter(ANNOUNCE_CONCURRENCY)

        async def one(topic: bytes, key_pair: crypto.KeyPair, node: DHTNode) -> None:
            async with limiter:
                started = time.perf_counter()
                try:
                    accepted = await node.announce(topic, key_pair, [])
                except DHTError as exc:
                    log.warning("announce failed from %s: %s", node.address, exc)
                    return
                times.append((time.perf_counter() - started) * 1000)
                if accepted:
                    announced.append((topic, key_pair, node))

        async with trio.open_nursery() as announces:
            for _ in range(self.args.topics):
                topic = self.rng.randbytes(32)
                key_pair = crypto.KeyPair.from_seed(self.rng.randbytes(32))
                announces.start_soon(one, topic, key_pair, self.rng.choice(self.nodes))
        step.announces = self.args.topics
        step.announces_ok = len(announced)
        step.announce_ms_p50 = round(percentile(times, 50), 1)
        return announced

    async def lookup_once(self, node: DHTNode, topic: bytes, public_key: bytes) -> dict:
        found = False
        queries: list[IterativeQuery] = []

        def collect(reply: QueryReply) -> None:
            # As operations.lookup collects; the bench only needs to know if the key is there.
            nonlocal found
            if reply.response.value is None:
                return
            try:
                peers = LookupReply.decode(reply.response.value).peers
            except CodecError:
                return
            found = found or any(p.public_key == public_key for p in peers)

        out_before, in_before = node.stats["datagrams_out"], node.stats["datagrams_in"]
        timeouts_before = node.stats["request_timeouts"]
        net_before, cpu_before = self.total("datagrams_out"), cpu_seconds()
        started = time.perf_counter()
        timed_out = True
        with trio.move_on_after(LOOKUP_TIMEOUT_S):
            await operations.run_query(node, topic, Command.LOOKUP, on_reply=collect, on_query=queries.append)
            timed_out = False
        elapsed_s = time.perf_counter() - started
        cpu_s = cpu_seconds() - cpu_before
        looker = node.stats["datagrams_out"] - out_before + node.stats["datagrams_in"] - in_before
        # What the lookup set off elsewhere (table re-pings, down hints) lands within the
        # settle gap; then an idle window as long as lookup + gap counts the background.
        settle_s = self.args.settle_ms / 1000
        await trio.sleep(settle_s)
        window_s = time.perf_counter() - started
        net = self.total("datagrams_out") - net_before
        idle_before = self.total("datagrams_out")
        await trio.sleep(window_s)
        background = self.total("datagrams_out") - idle_before
        query = queries[0] if queries else None
        return {
            "found": found,
            "timed_out": timed_out,
            "ms": elapsed_s * 1000,
            "cpu_ms": cpu_s * 1000,
            "hops": query.hops if query else 0,
            "hops_to_closest": query.hops_to_closest if query else 0,
            "contacted": query.visits if query else 0,
            "datagrams": looker,
            "net_datagrams": net - background,
            "background_per_s": background / window_s,
            "request_timeouts": node.stats["request_timeouts"] - timeouts_before,
        }

    async def measure_lookups(self, step: StepResult, announced: list) -> None:
        samples: list[dict] = []
        for topic, key_pair, announcer in announced:
            others = [n for n in self.nodes if n is not announcer]
            for node in self.rng.sample(others, min(self.args.lookups_per_topic, len(others))):
                samples.append(await self.lookup_once(node, topic, key_pair.public_key))

        n = len(samples)
        if not n:
            return

        def mean(key: str, digits: int = 1) -> float:
            return round(sum(s[key] for s in samples) / n, digits)

        hops = [s["hops"] for s in samples]
        step.lookups = n
        step.found = sum(s["found"] for s in samples)
        step.lookup_timeouts = sum(s["timed_out"] for s in samples)
        step.request_timeouts = sum(s["request_timeouts"] for s in samples)
        step.hops_p50 = percentile(hops, 50)
        step.hops_p95 = percentile(hops, 95)
        step.hops_max = max(hops)
        step.hops_mean = mean("hops", 2)
        step.hops_histogram = {h: hops.count(h) for h in sorted(set(hops))}
        step.hops_to_closest_p50 = percentile([s["hops_to_closest"] for s in samples], 50)
        step.hops_to_closest_mean = mean("hops_to_closest", 2)
        step.contacted_mean = mean("contacted")
        step.contacted_p95 = percentile([s["contacted"] for s in samples], 95)
        step.datagrams_mean = mean("datagrams")
        step.net_datagrams_per_lookup = mean("net_datagrams")
        step.background_datagrams_per_s = mean("background_per_s")
        step.lookup_cpu_ms = mean("cpu_ms", 2)
        times = [s["ms"] for s in samples]
        step.lookup_ms_p50 = round(percentile(times, 50), 2)
        step.lookup_ms_p95 = round(percentile(times, 95), 2)
        step.lookup_ms_max = round(max(times), 2)

    async def step(self, size: int, deadline: float) -> StepResult:
        step = StepResult(nodes=size)

        def remaining() -> float:
            return max(0.0, deadline - trio.current_time())

        try:
            started, cpu = time.perf_counter(), cpu_seconds()
            with trio.fail_after(remaining()):
                await self.grow(size)
            step.join_s = round(time.perf_counter() - started, 2)
            step.join_cpu_s = round(cpu_seconds() - cpu, 2)
            started = time.perf_counter()
            for _ in range(self.args.refresh_rounds):
                with trio.fail_after(remaining()):
                    await self.refresh_all()
            step.refresh_s = round(time.perf_counter() - started, 2)
            sizes = [len(node.table) for node in self.nodes]
            step.table_mean = round(sum(sizes) / len(sizes), 1)
            step.table_min = min(sizes)
            with trio.fail_after(remaining()):
                announced = await self.announce(step)
                await self.measure_lookups(step, announced)
        except trio.TooSlowError:
            step.error = f"--budget {self.args.budget:.0f} s ran out at {len(self.nodes)} nodes"
        step.rss_mb = round(rss_mb(), 1)
        step.rss_kb_per_node = round((step.rss_mb - self.base_rss_mb) * 1024 / max(1, len(self.nodes)), 1)
        step.max_rss_mb = round(max_rss_mb(), 1)
        return step


async def simulate(args: argparse.Namespace, report: Callable[[StepResult], None]) -> list[StepResult]:
    results: list[StepResult] = []
    deadline = trio.current_time() + args.budget
    async with trio.open_nursery() as nursery:
        sim = Simulation(args, nursery)
        for size in args.sizes:
            step = await sim.step(size, deadline)
            results.append(step)
            report(step)
            if step.error:
                break
        off_loopback = sim.total("bench_dropped_off_loopback")
        if off_loopback:
            log.warning("%d datagrams addressed off loopback were dropped", off_loopback)
        nursery.cancel_scope.cancel()
    return results


COLUMNS = [
    ("nodes", "nodes", "{}"),
    ("join s", "join_s", "{:.1f}"),
    ("table", "table_mean", "{:.0f}"),
    ("lookups", "lookups", "{}"),
    ("found", None, None),
    ("hops p50/p95/max", None, None),
    ("hops mean", "hops_mean", "{:.2f}"),
    ("to closest", "hops_to_closest_mean", "{:.2f}"),
    ("contacted", "contacted_mean", "{:.1f}"),
    ("dgrams", "datagrams_mean", "{:.0f}"),
    ("net dgrams", "net_datagrams_per_lookup", "{:.0f}"),
    ("ms p50", "lookup_ms_p50", "{:.1f}"),
    ("ms p95", "lookup_ms_p95", "{:.1f}"),
    ("CPU ms", "lookup_cpu_ms", "{:.1f}"),
    ("RSS MB", "rss_mb", "{:.0f}"),
    ("KB/node", "rss_kb_per_node", "{:.0f}"),
]


def cells(step: StepResult) -> list[str]:
    row = []
    for title, attr, fmt in COLUMNS:
        if title == "found":
            row.append(f"{100 * step.found / step.lookups:.0f}%" if step.lookups else "-")
        elif title.startswith("hops p50"):
            row.append(f"{step.hops_p50:.0f}/{step.hops_p95:.0f}/{step.hops_max}")
        else:
            row.append(fmt.format(getattr(step, attr)))
    return row


def render_table(results: list[StepResult]) -> str:
    rows = [[title for title, _, _ in COLUMNS]] + [cells(step) for step in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for step in results:
        if step.error:
            lines.append(f"{step.nodes} nodes: {step.error}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dht", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"network sizes to grow through (default {DEFAULT_SIZES})")
    parser.add_argument("--topics", type=int, default=20, help="topics announced per size (default 20)")
    parser.add_argument("--lookups-per-topic", type=int, default=3, help="lookups of each topic (default 3)")
    parser.add_argument("--refresh-rounds", type=int, default=1, help="table refreshes per node after each growth (default 1)")
    parser.add_argument("--settle-ms", type=float, default=20.0, help="wait after each lookup for its side traffic (default 20 ms)")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run (default 900)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-' = stdout, table to stderr)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: expected comma-separated integers")
    if not args.sizes or args.sizes[0] < 2 or args.sizes[-1] > MAX_NODES:
        parser.error(f"--sizes must lie in 2..{MAX_NODES}")
    if not 1 <= args.topics <= 10_000 or not 1 <= args.lookups_per_topic <= 100:
        parser.error("--topics must lie in 1..10000 and --lookups-per-topic in 1..100")
    if not 0 <= args.refresh_rounds <= 10 or not 0 <= args.settle_ms <= 10_000 or args.budget <= 0:
        parser.error("--refresh-rounds 0..10, --settle-ms 0..10000, --budget > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    if not args.verbose:
        # A node that times out a peer under load logs it; the figures count it anyway.
        logging.getLogger("hypergate").setLevel(logging.ERROR)
    out = sys.stderr if args.json == "-" else sys.stdout
    files = raise_open_file_limit(2 * args.sizes[-1] + 256)
    if files < 2 * args.sizes[-1] + 64:
        print(f"RLIMIT_NOFILE {files} is too low for {args.sizes[-1]} nodes (2 sockets each)", file=sys.stderr)
        return 2
    print(
        f"bench.dht: sizes {','.join(map(str, args.sizes))}, {args.topics} topics x "
        f"{args.lookups_per_topic} lookups per size, seed {args.seed}, pid {os.getpid()}",
        file=out, flush=True,
    )

    def report(step: StepResult) -> None:
        line = (f"  {step.nodes} nodes: joined in {step.join_s:.1f} s, found {step.found}/{step.lookups}, "
                f"hops mean {step.hops_mean}, lookup p50 {step.lookup_ms_p50} ms")
        print(line + (f" ({step.error})" if step.error else ""), file=out, flush=True)

    started = time.perf_counter()
    results = trio.run(simulate, args, report)
    total_s = time.perf_counter() - started
    print(file=out)
    print(render_table(results), file=out)
    print(
        f"\njoin s: time to add this step's nodes; table: mean routing-table size; hops: referral depth of the k closest replies (1 = from the looker's own table); to closest: of "
        f"the closest one; contacted: nodes asked; dgrams: the looker's datagrams in+out per lookup; net dgrams: "
        f"all nodes' sends per lookup less background; CPU ms: process CPU per lookup. "
        f"Total {total_s:.0f} s, CPU {cpu_seconds():.0f} s, peak RSS {max_rss_mb():.0f} MB.",
        file=out,
    )
    if args.json:
        document = {
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "total_s": round(total_s, 1),
            "cpu_s": round(cpu_seconds(), 1),
            "steps": [asdict(step) for step in results],
        }
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0 if results and not results[-1].error else 1


if __name__ == "__main__":
    sys.exit(main())
