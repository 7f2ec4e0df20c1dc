"""The whole benchmark in one command: hypergate beside its baselines, one table.

    .venv/bin/python -m bench.run              # everything, full durations (~15 min)
    .venv/bin/python -m bench.run --quick      # short runs (~3 min)
    .venv/bin/python -m bench.run --json out.json --tests throughput,latency
    .venv/bin/python -m bench.run --rounds 3   # each figure the median of 3 rounds (~40 min)

Baselines, all measured in the same run: a direct connection, socat (unencrypted relay:
the practical ceiling), ssh -N -L through a private sshd (default cipher and
aes128-gcm@openssh.com), and the Node.js hypertele tunnel over a local hyperdht testnet.
Nothing is installed at run time: a missing tool is reported as a skipped baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.lib import measure
from bench.lib.hypergate_target import Hypergate
from bench.lib.procs import (
    BenchError,
    Managed,
    free_port,
    python_module,
    raise_open_file_limit,
    stop_on_sigterm,
    wait_for_tcp,
    which,
)
from bench.lib.report import build_rows, render_table
from bench.lib.rounds import median_round
from bench.lib.scale import scale
from bench.lib.targets import (Direct, Hypertele, HypergateTele, Service, Socat, SocatChain, Ssh,
                               SshAesGcm, Target, TrioChain)

log = logging.getLogger("bench.run")

TARGET_CLASSES = {cls.name: cls for cls in (Hypergate, Direct, Socat, SocatChain, TrioChain, Ssh,
                                             SshAesGcm, Hypertele, HypergateTele)}
# Not a baseline of the tunnel but our hyperdht client beside Node's: opt in with --targets.
DEFAULT_TARGETS = [name for name in TARGET_CLASSES if name != "hypergate-tele"]
ALL_TESTS = ["latency", "connect", "udp", "throughput", "scale"]
# socat forks a process per connection: 10,000 channels would be 10,000 processes.
SCALE_DEFAULT_EXCLUDED = {name: "forks one process per connection; opt in with --scale-targets"
                          for name in ("socat", "socat-chain")}
SCALE_DEFAULT_EXCLUDED["trio-chain"] = "a floor for latency and setup, not a tunnel; opt in with --scale-targets"
THROUGHPUT_VARIANTS = [("tcp_1_up", 1, False), ("tcp_1_down", 1, True),
                       ("tcp_8_up", 8, False), ("tcp_8_down", 8, True)]
PAUSE_BETWEEN = 0.5


class Durations:
    def __init__(self, quick: bool, args: argparse.Namespace):
        self.throughput = args.seconds or (3.0 if quick else 10.0)
        self.latency_round_trips = 2_000 if quick else 20_000
        self.latency_seconds = 5.0 if quick else 20.0
        self.connect_seconds = 2.0 if quick else 5.0
        self.connect_max = 20_000 if quick else 100_000
        self.udp_seconds = 2.0 if quick else 5.0
        self.channels = args.channels or (1_000 if quick else 10_000)


class Backend:
    """The servers every target leads to: echo/bulk/UDP (our own) and iperf3 -s."""

    def __init__(self, workdir: Path, use_iperf: bool):
        self.echo_port = free_port()
        self.bulk_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.control_port = free_port()
        self.iperf_port = free_port() if use_iperf else 0
        self.procs: list[Managed] = []
        self.workdir = workdir

    def start(self) -> None:
        servers = Managed("backend", python_module(
            "bench.lib.servers", "--echo-port", str(self.echo_port), "--bulk-port",
            str(self.bulk_port), "--udp-port", str(self.udp_port), "--control-port",
            str(self.control_port)), self.workdir, cwd=Path(__file__).resolve().parents[1])
        self.procs.append(servers)
        wait_for_tcp("127.0.0.1", self.echo_port, 20, servers)
        wait_for_tcp("127.0.0.1", self.control_port, 20, servers)
        if self.iperf_port:
            iperf = Managed("iperf3-server", ["iperf3", "-s", "-p", str(self.iperf_port)],
                            self.workdir)
            self.procs.append(iperf)
            wait_for_tcp("127.0.0.1", self.iperf_port, 20, iperf)

    def services(self) -> list[Service]:
        # Echo first: its round trip proves the tunnel works before the weaker probes.
        services = [Service("echo", self.echo_port, "tcp", "echo")]
        if self.iperf_port:
            services.append(Service("iperf", self.iperf_port, "tcp", "connect"))
        else:
            services.append(Service("bulk", self.bulk_port, "tcp", "connect"))
        services.append(Service("udp", self.udp_port, "udp", "udp-ping"))
        return services

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--quick", action="store_true", help="short runs for development")
    parser.add_argument("--json", metavar="PATH", help="also write all figures as JSON ('-' = stdout)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help="comma-separated, from: " + ",".join(TARGET_CLASSES) + " (default: all but hypergate-tele)")
    parser.add_argument("--tests", default=",".join(ALL_TESTS), help="from: %(default)s")
    parser.add_argument("--subject", default="hypergate",
                        help="the target the ratios are computed for (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the latency, connect, UDP and throughput tests this many times, "
                             "all targets in turn each time, and show each target's median round "
                             "(default %(default)s)")
    parser.add_argument("--seconds", type=float, help="iperf3 duration (default 10, quick 3)")
    parser.add_argument("--channels", type=int, help="scale test channels (default 10000, quick 1000)")
    parser.add_argument("--scale-targets", help="targets for the scale test (default: all but the socats and trio-chain)")
    parser.add_argument("--udp-rate", type=int, default=20_000, help="offered datagrams/s")
    parser.add_argument("--udp-size", type=int, default=1200, help="datagram payload bytes")
    parser.add_argument("--memory-cap-mb", type=int, default=4096,
                        help="kill a target whose processes exceed this RSS (default %(default)s)")
    parser.add_argument("--budget", type=float, default=3600,
                        help="stop starting new measurements after this many seconds per round")
    parser.add_argument("--python-sender", action="store_true",
                        help="measure throughput with the Python sender even if iperf3 exists")
    parser.add_argument("--workdir", help="keep logs and keys here (default: a temp dir, removed)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def split_names(text: str, allowed) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SystemExit(f"unknown name(s): {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return names


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.durations = Durations(args.quick, args)
        self.tests = split_names(args.tests, ALL_TESTS)
        self.target_names = split_names(args.targets, TARGET_CLASSES)
        self.use_iperf = bool(which("iperf3")) and not args.python_sender
        self.notes: list[str] = []
        if not self.use_iperf:
            self.notes.append("throughput by the Python sender: "
                              + ("asked for" if args.python_sender else "iperf3 not installed"))
        self.skipped: dict[str, str] = {}
        self.targets: dict[str, Target] = {}
        self.ports: dict[str, dict[str, int]] = {}
        self.results: dict[str, dict[str, dict]] = {}
        # test -> target -> one result per round, until finish_rounds picks the median
        self.runs: dict[str, dict[str, list[dict]]] = {}
        self.started = time.monotonic()
        self.backend: Backend | None = None
        self.measured: set[str] = set()
        self.gave_up: set[str] = set()

    # -------------------------------------------------------------- lifecycle

    def start_targets(self, backend: Backend) -> None:
        self.backend = backend
        for name in self.target_names:
            cls = TARGET_CLASSES[name]
            target = cls(self.workdir, verbose=self.args.verbose) if cls is Hypergate else cls(self.workdir)
            reason = target.unavailable()
            if reason:
                self.skipped[name] = reason
                log.warning("skip target=%s reason=%s", name, reason)
                continue
            began = time.monotonic()
            try:
                self.ports[name] = target.start(backend.services())
            except (BenchError, OSError) as exc:
                target.stop()
                self.skipped[name] = f"did not start: {exc}"
                log.warning("skip target=%s reason=%s", name, exc)
                continue
            log.info("ready target=%s seconds=%.1f ports=%s", name, time.monotonic() - began,
                     self.ports[name])
            self.targets[name] = target
            for protocol, why in target.unsupported.items():
                self.notes.append(f"{name}: no {protocol.upper()} test ({why})")
            if target.fresh_before:
                self.notes.append(f"{name}: started afresh before each throughput and scale test")
            for service, why in target.dropped.items():
                self.notes.append(f"{name}: no {service} test: {why}")

    def restart(self, name: str, test: str, quiet: bool = False) -> bool:
        """A target killed by the memory cap (or crashed) gets one fresh start per test."""
        target = self.targets[name]
        target.stop()
        if name in self.gave_up:
            return False
        try:
            self.ports[name] = target.start(self.backend.services())
        except (BenchError, OSError) as exc:
            # One failed restart is enough: each costs up to the target's ready timeout.
            log.warning("restart failed target=%s: %s", name, exc)
            self.gave_up.add(name)
            self.notes.append(f"{name}: gave up before {test}: restart failed: {exc}")
            return False
        if not quiet:
            self.notes.append(f"{name}: restarted before {test} (its processes had ended)")
        return True

    def stop_targets(self) -> None:
        for target in self.targets.values():
            target.stop()

    # -------------------------------------------------------------- one measurement

    def record(self, test: str, name: str, run) -> None:
        """Run one measurement for one target, bounded, and file its result or error."""
        target = self.targets[name]
        bucket = self.runs.setdefault(test, {}).setdefault(name, [])
        if time.monotonic() - self.started > self.args.budget * max(1, self.args.rounds):
            bucket.append({"error": "run time budget exhausted"})
            return
        if name in self.measured and test.startswith(target.fresh_before or ("\0",)):
            if not self.restart(name, test, quiet=True):
                bucket.append({"error": "did not restart for this test"})
                return
        elif not target.alive() and not self.restart(name, test):
            bucket.append({"error": "target no longer running and did not restart"})
            return
        self.measured.add(name)
        log.info("measure test=%s target=%s", test, name)
        with measure.ResourceWatch(target.pids(), self.args.memory_cap_mb * 1024 * 1024) as watch:
            try:
                result = run(self.ports[name])
            except Exception as exc:  # one failed measurement must not end the run
                log.debug("measurement failed", exc_info=True)
                result = {"error": str(exc) or type(exc).__name__}
        result.update({"cpu_seconds": watch.cpu_seconds if target.pids() else None,
                       "peak_rss": watch.peak_rss if target.pids() else None,
                       "tunnel_processes": len(target.pids())})
        if watch.exceeded:
            result["error"] = f"killed: tunnel RSS passed {self.args.memory_cap_mb} MB"
        bucket.append(result)
        if "error" in result:
            log.warning("error test=%s target=%s: %s", test, name, result["error"])
        time.sleep(PAUSE_BETWEEN)

    # -------------------------------------------------------------- the tests

    def run_tests(self, backend: Backend) -> None:
        rounds = max(1, self.args.rounds)
        for number in range(1, rounds + 1):
            if rounds > 1:
                log.info("round %d of %d", number, rounds)
            self.run_round(backend)
        if "scale" in self.tests:
            self.run_scale(list(self.targets))
        self.finish_rounds(rounds)

    def finish_rounds(self, rounds: int) -> None:
        for test, per_target in self.runs.items():
            for name, runs in per_target.items():
                result = median_round(test, runs)
                self.results.setdefault(test, {})[name] = result
                failed = result.get("failed_rounds")
                if failed and "error" not in result:
                    self.notes.append(f"{name}: {test} failed in {failed} of {len(runs)} rounds "
                                      "(the median is of the others)")
        if rounds > 1:
            self.notes.append(f"latency, connect, UDP and throughput figures: the median of "
                              f"{rounds} rounds, all targets in turn in each (every round's "
                              "figure is in the JSON under 'rounds')")

    def run_round(self, backend: Backend) -> None:
        """Each test for every target in turn, once: one round."""
        d = self.durations
        names = list(self.targets)
        if "latency" in self.tests:
            for name in names:
                self.record("latency", name, lambda ports: measure.latency(
                    ports["echo"], d.latency_round_trips, d.latency_seconds))
        if "connect" in self.tests:
            for name in names:
                self.record("connect_seq", name, lambda ports: measure.connection_rate_sequential(
                    ports["echo"], d.connect_seconds, d.connect_max))
            for name in names:
                self.record("connect_50", name, lambda ports: measure.connection_rate_concurrent(
                    ports["echo"], d.connect_seconds, 50, d.connect_max))
        if "udp" in self.tests:
            for name in names:
                if "udp" not in self.ports[name]:
                    target = self.targets[name]
                    self.results.setdefault("udp", {})[name] = {
                        "skipped": target.unsupported.get("udp") or target.dropped.get("udp")}
                    continue
                self.record("udp", name, lambda ports: measure.udp_offered_rate(
                    ports["udp"], backend.control_port, self.args.udp_rate, self.args.udp_size,
                    d.udp_seconds))
        # After the small-message tests, so a tunnel's backlog from bulk transfers cannot
        # spill into them; before scale, so the memory that 10,000 channels leave behind
        # is not counted as the peak under iperf3.
        if "throughput" in self.tests:
            for test, streams, reverse in THROUGHPUT_VARIANTS:
                for name in names:
                    if self.use_iperf:
                        self.record(test, name, lambda ports, s=streams, r=reverse: measure.iperf3(
                            ports["iperf"], d.throughput, s, r))
                    else:
                        self.record(test, name, lambda ports, s=streams, r=reverse:
                                    measure.python_sender(ports["bulk"], d.throughput, s, r))

    def run_scale(self, names: list[str]) -> None:
        if self.args.scale_targets:
            chosen = split_names(self.args.scale_targets, TARGET_CLASSES)
            excluded = {n: "not in --scale-targets" for n in names if n not in chosen}
        else:
            excluded = {n: why for n, why in SCALE_DEFAULT_EXCLUDED.items() if n in names}
        for name in names:
            if name in excluded:
                self.results.setdefault("scale", {})[name] = {"skipped": excluded[name]}
                self.notes.append(f"{name}: no scale test ({excluded[name]})")
                continue
            # Sides are read when the test starts: a fresh-per-test target has new pids.
            target = self.targets[name]
            self.record("scale", name, lambda ports, t=target: scale(
                ports["echo"], self.durations.channels,
                {side: pids for side, pids in t.sides().items() if pids}))


def machine_facts() -> dict:
    facts = {"python": platform.python_version(), "kernel": platform.release(),
             "cpus": __import__("os").cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return facts


def tool_versions() -> dict[str, str]:
    """The baselines' versions, so a table can be compared with a later one."""
    probes = {"iperf3": ["iperf3", "--version"], "socat": ["socat", "-V"], "ssh": ["ssh", "-V"],
              "node": ["node", "--version"]}
    versions = {}
    for tool, argv in probes.items():
        if not which(argv[0]):
            continue
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = [l for l in (done.stdout + done.stderr).splitlines() if l.strip()]
        if tool == "socat":
            lines = [l for l in lines if "version" in l] or lines
        if lines:
            versions[tool] = lines[0].strip()
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, cwd=repo).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "hypergate"], capture_output=True,
                               text=True, timeout=10, cwd=repo).stdout.strip()
        if head:
            versions["hypergate"] = head + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    package = Path(__file__).resolve().parent / "node" / "node_modules" / "hypertele" / "package.json"
    if package.exists():
        versions["hypertele"] = json.loads(package.read_text()).get("version", "?")
    return versions


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    open_files = raise_open_file_limit()
    stop_on_sigterm()
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return run(args, workdir, open_files)
    with tempfile.TemporaryDirectory(prefix="hypergate-bench-") as tmp:
        return run(args, Path(tmp), open_files)


def run(args: argparse.Namespace, workdir: Path, open_files: int) -> int:
    bench = Bench(args, workdir)
    if open_files < bench.durations.channels + 100 and "scale" in bench.tests:
        bench.notes.append(f"open-file limit {open_files} is below the scale test's needs")
    backend = Backend(workdir, bench.use_iperf)
    began = datetime.now(timezone.utc)
    try:
        backend.start()
        bench.start_targets(backend)
        bench.run_tests(backend)
    finally:
        bench.stop_targets()
        backend.stop()
    shown = [n for n in bench.target_names if n in bench.targets]
    if args.subject not in shown:
        bench.notes.append(f"subject {args.subject} did not run: no ratios")
    rows = build_rows(bench.results, shown, args.subject)
    errors = {f"{test}/{name}": r["error"] for test, per in bench.results.items()
              for name, r in per.items() if "error" in r}
    text = [f"hypergate benchmark, {began:%Y-%m-%d %H:%M} UTC, "
            f"{'quick' if args.quick else 'full'} run, {machine_facts().get('cpus')} CPUs",
            render_table(rows, shown, args.subject)]
    for name, reason in bench.skipped.items():
        text.append(f"skipped {name}: {reason}")
    versions = tool_versions()
    text.append("tools: " + "; ".join(f"{k} {v}" for k, v in versions.items()))
    text += [f"note: {note}" for note in bench.notes]
    text += [f"error {where}: {why}" for where, why in errors.items()]
    # With --json - the JSON alone goes to stdout, so machines can read it; the table to stderr.
    print("\n".join(text), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        document = {"started": began.isoformat(), "quick": args.quick, "machine": machine_facts(),
                    "tools": versions,
                    "subject": args.subject, "options": vars(args), "targets": {
                        name: {"description": TARGET_CLASSES[name].description,
                               "skipped": bench.skipped.get(name)} for name in bench.target_names},
                    "rows": rows, "results": bench.results, "notes": bench.notes,
                    "errors": errors}
        encoded = json.dumps(document, indent=1, default=str)
        if args.json == "-":
            print(encoded)
        else:
            Path(args.json).write_text(encoded + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
