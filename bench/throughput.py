"""TCP throughput through hypergate beside a direct connection (and socat), same run.

    .venv/bin/python -m bench.throughput                  # iperf3, 1 stream, 10 s each
    .venv/bin/python -m bench.throughput --streams 8 --reverse --seconds 5
    .venv/bin/python -m bench.throughput --python-sender  # no iperf3 on this machine

Prints the receiver's Gbit/s for each target and the ratio hypergate/baseline. iperf3 is
used when installed, else a Python sender through the same backend (said in the output).
The full suite is `python -m bench.run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from bench.lib import measure
from bench.lib.procs import raise_open_file_limit, stop_on_sigterm
from bench.lib.report import render_table, build_rows
from bench.run import Backend, Bench, parse_args as parse_suite_args

log = logging.getLogger("bench.throughput")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--targets", default="hypergate,direct,socat")
    parser.add_argument("--subject", default="hypergate")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--reverse", action="store_true", help="backend sends (iperf3 -R)")
    parser.add_argument("--python-sender", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-' = stdout)")
    parser.add_argument("--workdir")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, workdir: Path) -> int:
    suite_argv = ["--targets", args.targets, "--subject", args.subject, "--tests", "throughput",
                  "--seconds", str(args.seconds)]
    if args.python_sender:
        suite_argv.append("--python-sender")
    suite_args = parse_suite_args(suite_argv)
    bench = Bench(suite_args, workdir)
    backend = Backend(workdir, bench.use_iperf)
    test = f"tcp_{args.streams}_{'down' if args.reverse else 'up'}"
    try:
        backend.start()
        bench.start_targets(backend)
        for name in list(bench.targets):
            if bench.use_iperf:
                bench.record(test, name, lambda ports: measure.iperf3(
                    ports["iperf"], args.seconds, args.streams, args.reverse))
            else:
                bench.record(test, name, lambda ports: measure.python_sender(
                    ports["bulk"], args.seconds, args.streams, args.reverse))
    finally:
        bench.stop_targets()
        backend.stop()

    shown = [n for n in bench.target_names if n in bench.targets]
    tool = "iperf3" if bench.use_iperf else "Python sender"
    direction = "backend -> client (-R)" if args.reverse else "client -> backend"
    print(f"TCP throughput, {tool}, {args.streams} stream(s), {direction}, {args.seconds:g} s each")
    runs = bench.results.get(test, {})
    lines = []
    for name in shown:
        result = runs.get(name, {})
        if "error" in result:
            lines.append(f"  {name:<14} error: {result['error']}")
            continue
        figure = result["bits_per_second"] / 1e9
        line = f"  {name:<14} {figure:8.3f} Gbit/s"
        if result.get("cpu_seconds"):
            line += f"   {result['bytes'] / result['cpu_seconds'] / 1e6:8.0f} MB per tunnel CPU-s"
        lines.append(line)
    print("\n".join(lines))
    subject = runs.get(args.subject, {})
    for name in shown:
        other = runs.get(name, {})
        if name != args.subject and "bits_per_second" in subject and other.get("bits_per_second"):
            print(f"  ratio {args.subject}/{name}: "
                  f"{subject['bits_per_second'] / other['bits_per_second']:.3f}")
    for name, reason in bench.skipped.items():
        print(f"  skipped {name}: {reason}")
    for note in bench.notes:
        print(f"  note: {note}")
    if args.json:
        rows = build_rows(bench.results, shown, args.subject)
        document = {"test": test, "tool": tool, "seconds": args.seconds, "results": runs,
                    "skipped": bench.skipped, "rows": rows,
                    "table": render_table(rows, shown, args.subject)}
        encoded = json.dumps(document, indent=1, default=str)
        if args.json == "-":
            print(encoded)
        else:
            Path(args.json).write_text(encoded + "\n")
    return 0 if args.subject in runs and "error" not in runs[args.subject] else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    raise_open_file_limit()
    stop_on_sigterm()
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return run(args, workdir)
    with tempfile.TemporaryDirectory(prefix="hypergate-throughput-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
