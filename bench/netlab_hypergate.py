"""Hypergate through the NAT lab: which path each pair of NATs gets, and how fast.

    sudo .venv/bin/python -m bench.netlab_hypergate            # every case once
    sudo .venv/bin/python -m bench.netlab_hypergate --json out.json

For each case a fresh lab is built (network namespaces, nftables NATs, a three-node DHT on
the lab's internet), a provider and a gateway are started behind the NATs, and the table
shows the path the link took (direct / punched-udp / punched-tcp / relayed), the time
from start to the gate opening and to the first HTTP response through it, and whether a
SHA-256-checked 8 MiB transfer (echoed: both directions at once) arrived intact, with its
rate, and each side's first UDP punch (strategy:probes/milliseconds). Cases run with the
default hole punching (udp,tcp) and some with --holepunch forced to one kind. The same scenario code runs in tests/netlab.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import trio

from hypergate.netlab import Lab, missing_requirements
from tests.netlab.test_hypergate_nat import run_case
from tests.procs import Cluster

CASE_PUBLIC = {"home": ("consistent", ["provider"]), "dc": ("none", ["gateway"])}
CASE_CONSISTENT = {"home": ("consistent", ["provider"]), "office": ("consistent", ["gateway"])}
CASE_MIXED = {"home": ("consistent", ["provider"]), "office": ("random", ["gateway"])}
CASE_RANDOM = {"home": ("random", ["provider"]), "office": ("random", ["gateway"])}
CASE_SAME_NAT = {"office": ("consistent", ["provider", "gateway"])}
# name: (lab spec, --holepunch or None for the default)
CASES = {
    "provider behind consistent NAT, gateway public": (CASE_PUBLIC, None),
    "both behind different consistent NATs": (CASE_CONSISTENT, None),
    "both consistent, --holepunch udp": (CASE_CONSISTENT, "udp"),
    "both consistent, --holepunch tcp": (CASE_CONSISTENT, "tcp"),
    "consistent + random": (CASE_MIXED, None),
    "consistent + random, --holepunch none": (CASE_MIXED, "none"),
    "both random": (CASE_RANDOM, None),
    "both behind the same NAT": (CASE_SAME_NAT, None),
}


def udp_punch_figures(provider, gateway) -> str:
    """The first successful UDP punch each side logged: strategy, probes sent, ms taken."""
    out = []
    for proc in (provider, gateway):
        lines = proc.find(r"event=udp_punch .*outcome=punched")
        if lines:
            fields = dict(re.findall(r"(\w+)=(\S+)", lines[0]))
            out.append(f"{fields['strategy']}:{fields['probes']}p/{fields['elapsed_ms']}ms")
    return " ".join(out) or "-"


async def run_one(spec, holepunch) -> dict:
    lab = Lab(spec)
    try:
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery)
            try:
                provider, gateway, result = await run_case(lab, cluster, "provider", "gateway", holepunch=holepunch)
                outcome = {"ok": True, **result, "udp_punch": udp_punch_figures(provider, gateway)}
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
        result = trio.run(run_one, *CASES[name])
        rows.append({"case": name, **result})
    print(f"{'case':<48} {'path':<20} {'gate open s':>11} {'first byte s':>12} {'8 MiB sha256':>12} {'MiB/s':>7}"
          "  udp punch (provider, gateway)")
    for row in rows:
        if row["ok"]:
            print(f"{row['case']:<48} {row['path']:<20} {row['connected_after']:>11.2f} {row['first_byte_after']:>12.2f}"
                  f" {'intact':>12} {row['bulk_mib_s']:>7.1f}  {row['udp_punch']}")
        else:
            print(f"{row['case']:<48} {'no path':<20} {'-':>11} {'-':>12} {'-':>12} {'-':>7}   ({row['error']})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"benchmark": "netlab_hypergate", "rows": rows}, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
