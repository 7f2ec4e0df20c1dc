"""UDP hole punching in the NAT lab, raw sockets only: the baseline for hypergate's punches.

    .venv/bin/python -m bench.netlab_punch                  # every pair, 3 tries each
    .venv/bin/python -m bench.netlab_punch --tries 5 --json out.json

Root only (network namespaces, nftables; see tests/netlab/README.md). For each pair of
site kinds it builds a fresh lab (A behind the first, B behind the second), lets both
hosts learn their public address from an observer on the bootstrap address, then tries:

- one-port: both send every 50 ms to the other's observed address:port at once;
- birthday (when exactly one side is random): 256 sockets on the random side each send to
  the other's observed address; the other side sends to random ports (1 ms apart).

It prints successes/tries and the median time to the first datagram from the other side
(the slower side's, counted from its own start). One-port is strict: a side accepts only
datagrams from the exact address:port it aims at, so "none/random" fails too although
the public host does receive the random side's packets (from another port).
Hypergate's own UDP punch (hypergate/transport/udp_punch.py, same strategies between
peers met on the lab's DHT) reports its figures in `bench.netlab_hypergate`'s "udp punch"
column (strategy:probes/ms per side).
Run time is bounded: every punch attempt has a timeout (3 s one-port, 15 s birthday).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import trio

from hypergate.netlab import Lab, missing_requirements

PAIRS = [("consistent", "consistent"), ("consistent", "random"), ("random", "consistent"),
         ("random", "random"), ("none", "consistent"), ("none", "random")]
ONE_PORT_TIMEOUT = 3.0
BIRTHDAY_TIMEOUT = 15.0
BIRTHDAY_SOCKETS = 256
OBSERVER_PORT = 4000


async def one_try(kind_a: str, kind_b: str, strategy: str) -> dict[str, object]:
    with Lab({"sa": (kind_a, ["alice"]), "sb": (kind_b, ["bob"])}) as lab:
        async with lab.agent("public") as pub, lab.agent("alice") as a, lab.agent("bob") as b:
            server = await pub.serve_observer(lab.bootstrap_address, OBSERVER_PORT)
            sa, _ = await a.udp_bind(5000)
            sb, _ = await b.udp_bind(5000)
            seen_a, seen_b = await a.observe(sa, server), await b.observe(sb, server)
            results: dict[str, dict] = {}

            async def run(name: str, agent, op: str, **kw) -> None:
                results[name] = await agent.call(op, **kw)

            async with trio.open_nursery() as nursery:
                if strategy == "one-port":
                    nursery.start_soon(lambda: run("a", a, "punch", sock=sa, to=list(seen_b),
                                                   timeout=ONE_PORT_TIMEOUT))
                    nursery.start_soon(lambda: run("b", b, "punch", sock=sb, to=list(seen_a),
                                                   timeout=ONE_PORT_TIMEOUT))
                else:
                    rnd, rnd_name, other, other_sock, other_seen, rnd_public = (
                        (a, "a", b, sb, seen_b, seen_a[0]) if kind_a == "random"
                        else (b, "b", a, sa, seen_a, seen_b[0]))
                    socks = (await rnd.call("udp_bind_many", count=BIRTHDAY_SOCKETS))["socks"]
                    nursery.start_soon(lambda: run(rnd_name, rnd, "punch_many", socks=socks,
                                                   to=list(other_seen), timeout=BIRTHDAY_TIMEOUT))
                    nursery.start_soon(lambda: run("b" if rnd_name == "a" else "a", other,
                                                   "spray", sock=other_sock, host=rnd_public,
                                                   timeout=BIRTHDAY_TIMEOUT))
            ok = results["a"]["ok"] and results["b"]["ok"]
            return {"ok": bool(ok),
                    "seconds": max(results["a"]["elapsed"], results["b"]["elapsed"]) if ok else None}


async def main_async(tries: int, pairs: list[tuple[str, str]]) -> list[dict[str, object]]:
    rows = []
    for kind_a, kind_b in pairs:
        strategies = ["one-port"]
        if (kind_a == "random") != (kind_b == "random"):
            strategies.append("birthday")
        for strategy in strategies:
            outcomes = [await one_try(kind_a, kind_b, strategy) for _ in range(tries)]
            times = [o["seconds"] for o in outcomes if o["ok"]]
            rows.append({
                "a": kind_a, "b": kind_b, "strategy": strategy,
                "ok": len(times), "tries": tries,
                "median_ms": round(statistics.median(times) * 1000, 1) if times else None,
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--pairs", default=",".join(f"{a}/{b}" for a, b in PAIRS),
                        help="comma-separated KIND/KIND pairs (consistent, random, none)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"netlab_punch: {reason}", file=sys.stderr)
        return 2
    pairs = [tuple(p.split("/", 1)) for p in args.pairs.split(",") if p]
    rows = trio.run(main_async, args.tries, pairs)
    print(f"{'A':<11} {'B':<11} {'strategy':<9} {'ok':>6} {'median ms':>10}")
    for r in rows:
        median = "-" if r["median_ms"] is None else f"{r['median_ms']:.1f}"
        print(f"{r['a']:<11} {r['b']:<11} {r['strategy']:<9} {r['ok']:>3}/{r['tries']:<2} {median:>10}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
