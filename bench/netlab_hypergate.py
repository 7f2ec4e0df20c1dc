"""Hypergate through the NAT lab: which path each pair of NATs gets, and how fast.

    sudo .venv/bin/python -m bench.netlab_hypergate            # every case once
    sudo .venv/bin/python -m bench.netlab_hypergate --json out.json

For each case a fresh lab is built (network namespaces, nftables NATs, a three-node DHT on
the lab's internet), a provider and a gateway are started behind the NATs, and the table
shows the path the link took (direct / punched / relayed), the time from start to the
gate opening and to the first HTTP response through it, and whether a SHA-256-checked
8 MiB transfer arrived intact. The same scenario code runs in tests/netlab.
"""

from __future__ import annotations

import argparse
import json
import sys

import trio

from hypergate.netlab import Lab, missing_requirements
from tests.netlab.test_hypergate_nat import run_case
from tests.procs import Cluster

CASES = {
    "provider behind consistent NAT, gateway public": ({"home": ("consistent", ["provider"]), "dc": ("none", ["gateway"])}),
    "both behind different consistent NATs": ({"home": ("consistent", ["provider"]), "office": ("consistent", ["gateway"])}),
    "consistent + random": ({"home": ("consistent", ["provider"]), "office": ("random", ["gateway"])}),
    "both random": ({"home": ("random", ["provider"]), "office": ("random", ["gateway"])}),
    "both behind the same NAT": ({"office": ("consistent", ["provider", "gateway"])}),
}


async def run_one(spec) -> dict:
    lab = Lab(spec)
    try:
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery)
            try:
                _, _, result = await run_case(lab, cluster, "provider", "gateway")
                outcome = {"ok": True, **result}
            except (AssertionError, trio.TooSlowError) as exc:
                outcome = {"ok": False, "error": str(exc).splitlines()[0][:120]}
            finally:
                for proc in cluster.processes:
                    await proc.stop()
            nursery.cancel_scope.cancel()
    finally:
        lab.close()
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(str(i) for i in range(len(CASES))), help="indexes, comma-separated")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"skipped: {reason}")
        return 0
    names = list(CASES)
    rows = []
    for index in (int(i) for i in args.cases.split(",")):
        name = names[index]
        result = trio.run(run_one, CASES[name])
        rows.append({"case": name, **result})
    print(f"{'case':<48} {'path':<20} {'gate open s':>11} {'first byte s':>12} {'8 MiB sha256':>12}")
    for row in rows:
        if row["ok"]:
            print(f"{row['case']:<48} {row['path']:<20} {row['connected_after']:>11.2f} {row['first_byte_after']:>12.2f} {'intact':>12}")
        else:
            print(f"{row['case']:<48} {'no path':<20} {'-':>11} {'-':>12} {'-':>12}   ({row['error']})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"benchmark": "netlab_hypergate", "rows": rows}, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
