"""Shaping benchmark: a real loopback transfer through hypergate with an ingress policy.

    .venv/bin/python -m bench.shaping                 # 10, 50, 200 Mbit/s, 3 s each
    .venv/bin/python -m bench.shaping --seconds 5 --limits 10,50 --json out.json
    .venv/bin/python -m bench.shaping --through relay # the Shaper alone, in a trio relay
    .venv/bin/python -m bench.shaping --cost          # iperf3: no policy / policy / shaper on
    .venv/bin/python -m bench.shaping --cost --rounds 5   # the same, each case's median of 5 rounds

By default each row runs a real provider (with `--ingressPolicy` setting
`defaults.bandwidthLimit.mbps` to the row's limit) and a real gateway, and a client sends
as fast as it can through the gate to a sink that counts what arrives. The first row is
the same tunnel without a policy, as the baseline of the same run. The table shows, for
each limit, the configured rate beside the measured one, also with the initial burst
(one second's worth, as with no `burstMbps`) taken out. Run time is bounded: `seconds`
per row (plus process start-up).

`--through relay` measures the Shaper on its own: a small trio relay shapes the
client->sink direction exactly as a channel pump does (read at most `max_chunk`,
`await wait_for(n)`, forward).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import trio

from hypergate.policy.ingress import BandwidthLimit
from hypergate.policy.token_bucket import Shaper

CHUNK = 64 * 1024


async def sink(stream: trio.SocketStream, counter: list[int]) -> None:
    async with stream:
        while True:
            data = await stream.receive_some(CHUNK * 4)
            if not data:
                return
            counter[0] += len(data)


async def shaped_pump(source: trio.abc.ReceiveStream, dest: trio.abc.SendStream, shaper: Shaper) -> None:
    while True:
        data = await source.receive_some(shaper.max_chunk)
        if not data:
            return
        await shaper.wait_for(len(data))
        await dest.send_all(data)


class _Tunnel:
    """A provider (with the row's policy) and a gateway on loopback, direct mode."""

    def __init__(self, sink_port: int, limit: BandwidthLimit | None, policy: dict | None = None) -> None:
        import subprocess

        from bench.lib.hypergate_target import hypergate_command
        from bench.lib.procs import free_port

        command = hypergate_command()
        secret = subprocess.run([*command, "--new"], capture_output=True, text=True, check=True).stdout.strip()
        self.gate_port, peer_port = free_port(), free_port()
        services = json.dumps([{"gatePort": self.gate_port, "serviceHost": "127.0.0.1", "servicePort": sink_port}])
        if policy is None and limit is not None:
            policy = {"defaults": {"bandwidthLimit": {"mbps": limit.mbps}}}
        policy = ["--ingressPolicy", json.dumps(policy)] if policy else []
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.processes = [
            subprocess.Popen([*command, "--router", secret, "--provider", services, "--peerPort", str(peer_port),
                              "--peerHost", "127.0.0.1", "--fingerprintResolverPort", "0", *policy], **quiet),
            subprocess.Popen([*command, "--router", secret, "--gateway", "--peer", f"127.0.0.1:{peer_port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
        ]

    async def wait_open(self, timeout: float = 30.0) -> None:
        """Until the gateway logs the gate open (no probe connection: one would reach the
        service as a stray connection, which breaks an iperf3 server)."""
        gateway = self.processes[1]
        with trio.fail_after(timeout):
            while True:
                line = await trio.to_thread.run_sync(gateway.stderr.readline, abandon_on_cancel=True)
                if not line:
                    raise RuntimeError("the gateway exited before opening its gate")
                if f"gate={self.gate_port}/tcp event=gate_open" in line:
                    return

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except Exception:
                process.kill()


async def measure_through_tunnel(limit: BandwidthLimit | None, seconds: float) -> dict[str, float | None]:
    received = [0]
    payload = b"\0" * CHUNK
    async with trio.open_nursery() as nursery:
        sink_listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        tunnel = _Tunnel(sink_listener.socket.getsockname()[1], limit)
        try:
            await tunnel.wait_open()

            async def run_sink() -> None:
                while True:  # the readiness probe connects first: count every connection
                    nursery.start_soon(sink, await sink_listener.accept(), received)

            nursery.start_soon(run_sink)
            stream = await trio.open_tcp_stream("127.0.0.1", tunnel.gate_port)

            async def run_client() -> None:
                while True:
                    await stream.send_all(payload)

            start = trio.current_time()
            nursery.start_soon(run_client)
            await trio.sleep(seconds)
            delivered = received[0]
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        finally:
            tunnel.stop()
    return _row(limit, delivered, elapsed)


async def measure_one(limit: BandwidthLimit | None, seconds: float) -> dict[str, float | None]:
    received = [0]
    payload = b"\0" * CHUNK
    async with trio.open_nursery() as nursery:
        sink_listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        relay_listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        sink_port = sink_listener.socket.getsockname()[1]
        relay_port = relay_listener.socket.getsockname()[1]

        async def run_sink() -> None:
            await sink(await sink_listener.accept(), received)

        async def run_relay() -> None:
            client_side = await relay_listener.accept()
            service_side = await trio.open_tcp_stream("127.0.0.1", sink_port)
            shaper = Shaper.from_limit(limit)  # starts full at this moment, as a channel
            await shaped_pump(client_side, service_side, shaper)

        async def run_client() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", relay_port)
            while True:
                await stream.send_all(payload)

        nursery.start_soon(run_sink)
        nursery.start_soon(run_relay)
        await trio.sleep(0.05)  # listeners are bound already; let the accepts start
        start = trio.current_time()
        nursery.start_soon(run_client)
        await trio.sleep(seconds)
        delivered = received[0]
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    return _row(limit, delivered, elapsed)


def _row(limit: BandwidthLimit | None, delivered: int, elapsed: float) -> dict[str, float | None]:
    measured = delivered * 8 / elapsed / 1e6
    row: dict[str, float | None] = {
        "limit_mbps": limit.mbps if limit else None,
        "seconds": round(elapsed, 3),
        "bytes": delivered,
        "measured_mbps": round(measured, 2),
        "measured_excl_burst_mbps": None,
        "ratio": None,
    }
    if limit is not None:
        steady = (delivered - limit.burst_bytes) * 8 / elapsed / 1e6
        row["measured_excl_burst_mbps"] = round(steady, 2)
        row["ratio"] = round(steady / limit.mbps, 3)
    return row


def render(rows: list[dict[str, float | None]], write: Callable[[str], object]) -> None:
    write(f"{'limit Mbit/s':>12} {'measured':>10} {'excl. burst':>12} {'ratio':>7} {'seconds':>8}")
    for row in rows:
        limit = "none" if row["limit_mbps"] is None else f"{row['limit_mbps']:g}"
        steady = "-" if row["measured_excl_burst_mbps"] is None else f"{row['measured_excl_burst_mbps']:.2f}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        write(f"{limit:>12} {row['measured_mbps']:>10.2f} {steady:>12} {ratio:>7} {row['seconds']:>8.2f}")


COST_CASES = {
    "no policy": None,
    "policy, no limit": {"defaults": {"allow": True, "labels": ["bench"]}},
    "limit far above the link (shaper on)": {"defaults": {"bandwidthLimit": {"mbps": 1_000_000}}},
}


async def measure_cost(seconds: float, rounds: int = 1) -> list[dict]:
    """What enabling policies and shaping costs: iperf3 through the tunnel, same run.

    With several rounds every case runs once per round, in turn, and each case shows
    its median round (every round's figure under "rounds"): on a 2-vCPU VM one 5 s
    transfer moved by 25% between back-to-back runs of the same case."""
    import shutil

    from bench.lib.rounds import median_round

    if shutil.which("iperf3") is None:
        return [{"case": "skipped: iperf3 is not installed"}]
    measured: dict[str, list[dict]] = {case: [] for case in COST_CASES}
    for _ in range(rounds):
        for case, policy in COST_CASES.items():
            measured[case].append(await _measure_cost_case(case, policy, seconds))
    rows = [median_round("shaping_cost", runs) for runs in measured.values()]
    base = rows[0].get("gbps")
    for row in rows:
        row["ratio"] = round(row["gbps"] / base, 3) if base and row.get("gbps") else None
    return rows


async def _measure_cost_case(case: str, policy: dict | None, seconds: float) -> dict:
    import subprocess

    from bench.lib.procs import free_port

    port = free_port()
    tunnel = _Tunnel(port, None, policy)
    server = None
    try:
        # The gate's readiness probe must not reach iperf3 (a stray connection breaks
        # its test): start the server only once the gate is open.
        await tunnel.wait_open()
        server = subprocess.Popen(["iperf3", "-s", "-1", "--forceflush", "-p", str(port)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        with trio.fail_after(10):
            while "listening" not in await trio.to_thread.run_sync(server.stdout.readline, abandon_on_cancel=True):
                pass
        result = await trio.run_process(
            ["iperf3", "-c", "127.0.0.1", "-p", str(tunnel.gate_port), "-t", str(int(seconds)), "-J"],
            capture_stdout=True, check=False,
        )
        report = json.loads(result.stdout or b"{}")
        bits = report.get("end", {}).get("sum_received", {}).get("bits_per_second")
        row = {"case": case, "gbps": round(bits / 1e9, 3) if bits else None}
        if report.get("error") or not bits:
            row["error"] = report.get("error") or "iperf3 reported no throughput"
        return row
    finally:
        tunnel.stop()
        if server is not None:
            server.kill()
            server.wait()


async def main_async(limits_mbps: list[float], seconds: float, through: str = "tunnel") -> list[dict[str, float | None]]:
    measure = measure_through_tunnel if through == "tunnel" else measure_one
    rows = [await measure(None, min(seconds, 2.0))]  # unshaped baseline, same run
    for mbps in limits_mbps:
        rows.append(await measure(BandwidthLimit(mbps=mbps), seconds))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", default="10,50,200", help="Mbit/s limits, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="transfer time per limit")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--through", choices=("tunnel", "relay"), default="tunnel",
                        help="hypergate processes (default) or the Shaper in a bare relay")
    parser.add_argument("--cost", action="store_true",
                        help="instead: iperf3 through the tunnel without policy, with a policy, with a shaper")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --cost: run the cases in turn this many times, show each one's median")
    args = parser.parse_args(argv)
    if args.cost:
        rows = trio.run(measure_cost, max(args.seconds, 3.0), max(args.rounds, 1))
        for row in rows:
            error = f"  ({row['error']})" if row.get("error") else ""
            spread = f"  rounds {row['rounds']}" if row.get("rounds") else ""
            print(f"{row['case']:<40} {row.get('gbps') or '-':>8} Gbit/s  ratio {row.get('ratio') or '-'}{spread}{error}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump({"benchmark": "shaping-cost", "rows": rows}, fh, indent=2)
        return 0
    limits_mbps = [float(v) for v in args.limits.split(",") if v.strip()]
    rows = trio.run(main_async, limits_mbps, args.seconds, args.through)
    print(f"through: {args.through}")
    render(rows, lambda line: print(line, file=sys.stdout))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"benchmark": "shaping", "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
