"""The meters: throughput (iperf3 or a Python sender), latency, connection rate, UDP.

Each function drives traffic to 127.0.0.1:port (a target's local end) and returns a
plain dict of figures; none runs longer than its duration plus a fixed grace.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field

import trio

from bench.lib.procs import BenchError, Usage, process_tree, usage_of

log = logging.getLogger(__name__)

# Beyond its own -t, iperf3 needs a moment to connect and exchange results.
IPERF_GRACE = 30.0
LATENCY_PAYLOAD = 64
CONNECT_TIMEOUT = 5.0
UDP_DRAIN = 1.0


def iperf3(port: int, seconds: float, streams: int = 1, reverse: bool = False) -> dict:
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", f"{seconds:g}", "-J",
            "-P", str(streams)]
    if reverse:
        argv.append("-R")
    try:
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=seconds + IPERF_GRACE)
    except subprocess.TimeoutExpired:
        raise BenchError(f"iperf3 gave no result within {seconds + IPERF_GRACE:.0f}s")
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 exited {result.returncode}: {result.stderr.strip()[-300:]}")
    if report.get("error"):
        raise BenchError(f"iperf3: {report['error']}")
    received = report["end"]["sum_received"]
    sent = report["end"]["sum_sent"]
    return {"bits_per_second": received["bits_per_second"], "bytes": received["bytes"],
            "seconds": received["seconds"], "retransmits": sent.get("retransmits"),
            "tool": "iperf3"}


# ------------------------------------------------------------------ Python sender

BULK_CHUNK = bytes(256 * 1024)
BULK_READ = 1024 * 1024


async def _bulk_stream(port: int, seconds: float, reverse: bool) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if reverse:
            await stream.send_all(b"R" + int(seconds * 1000).to_bytes(4, "big"))
            received = 0
            while data := await stream.receive_some(BULK_READ):
                received += len(data)
            return received
        await stream.send_all(b"S")
        with trio.move_on_after(seconds):
            while True:
                await stream.send_all(BULK_CHUNK)
        await stream.send_eof()
        answer = b""
        while len(answer) < 8:
            part = await stream.receive_some(8 - len(answer))
            if not part:
                raise BenchError("bulk sink closed without its byte count")
            answer += part
        return int.from_bytes(answer, "big")


def python_sender(port: int, seconds: float, streams: int = 1, reverse: bool = False) -> dict:
    """Throughput with the backend's bulk service, for machines without iperf3."""

    async def run() -> tuple[int, float]:
        totals: list[int] = []
        started = time.perf_counter()
        with trio.fail_after(seconds + IPERF_GRACE):
            async with trio.open_nursery() as nursery:
                async def one() -> None:
                    totals.append(await _bulk_stream(port, seconds, reverse))
                for _ in range(streams):
                    nursery.start_soon(one)
        return sum(totals), time.perf_counter() - started

    try:
        total, elapsed = trio.run(run)
    except trio.TooSlowError:
        raise BenchError(f"Python sender gave no result within {seconds + IPERF_GRACE:.0f}s")
    return {"bits_per_second": total * 8 / elapsed, "bytes": total, "seconds": elapsed,
            "tool": "python"}


# ------------------------------------------------------------------ latency


def latency(port: int, count: int, seconds: float) -> dict:
    """64-byte request/response round trips on one connection: p50 and p99 in microseconds."""
    payload = b"x" * LATENCY_PAYLOAD
    samples: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(CONNECT_TIMEOUT)
        warmup = min(200, count // 10)
        deadline = time.monotonic() + seconds
        for index in range(count + warmup):
            if time.monotonic() > deadline:
                break
            started = time.perf_counter_ns()
            sock.sendall(payload)
            received = 0
            while received < LATENCY_PAYLOAD:
                try:
                    chunk = sock.recv(LATENCY_PAYLOAD - received)
                except TimeoutError:
                    raise BenchError(f"round trip {index + 1} got no echo within "
                                     f"{CONNECT_TIMEOUT:.0f}s") from None
                if not chunk:
                    raise BenchError("echo closed during the latency test")
                received += len(chunk)
            if index >= warmup:
                samples.append((time.perf_counter_ns() - started) / 1000)
    if len(samples) < 10:
        raise BenchError(f"only {len(samples)} round trips in {seconds:.0f}s")
    quantiles = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_us": statistics.median(samples), "p99_us": quantiles[98],
            "round_trips": len(samples)}


# ------------------------------------------------------------------ connection rate


def _one_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"!")
        if sock.recv(1) != b"!":
            raise BenchError("no echo")


def connection_rate_sequential(port: int, seconds: float, max_connections: int) -> dict:
    done = errors = 0
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    last_error = ""
    while time.monotonic() < deadline and done + errors < max_connections:
        try:
            _one_connection(port)
            done += 1
        except (OSError, BenchError) as exc:
            errors += 1
            last_error = str(exc)
    elapsed = time.perf_counter() - started
    return {"per_second": done / elapsed, "connections": done, "errors": errors,
            "last_error": last_error}


def connection_rate_concurrent(port: int, seconds: float, workers: int,
                               max_connections: int) -> dict:
    counts = {"done": 0, "errors": 0, "last_error": ""}

    async def worker(deadline: float) -> None:
        while trio.current_time() < deadline and counts["done"] + counts["errors"] < max_connections:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    async with stream:
                        stream.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        await stream.send_all(b"!")
                        if await stream.receive_some(1) != b"!":
                            raise BenchError("no echo")
                counts["done"] += 1
            except (OSError, BenchError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                counts["errors"] += 1
                counts["last_error"] = str(exc) or type(exc).__name__

    async def run() -> float:
        started = time.perf_counter()
        deadline = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker, deadline)
        return time.perf_counter() - started

    elapsed = trio.run(run)
    return {"per_second": counts["done"] / elapsed, "connections": counts["done"],
            "errors": counts["errors"], "workers": workers, "last_error": counts["last_error"]}


# ------------------------------------------------------------------ UDP


def _control(control_port: int, command: str) -> dict:
    with socket.create_connection(("127.0.0.1", control_port), timeout=CONNECT_TIMEOUT) as sock:
        sock.sendall(command.encode() + b"\n")
        answer = sock.makefile("rb").readline()
    return json.loads(answer)


def udp_offered_rate(port: int, control_port: int, rate: int, size: int, seconds: float) -> dict:
    """Send `rate` datagrams/s of `size` bytes for `seconds`; the backend counts arrivals."""
    payload = b"d" * size
    _control(control_port, "reset")
    sent = 0
    send_errors = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.connect(("127.0.0.1", port))
        started = time.perf_counter()
        total = int(rate * seconds)
        while sent < total:
            # Pace by the clock: send whatever is due now, then yield the core briefly.
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                try:
                    sock.send(payload)
                except OSError:
                    send_errors += 1
                sent += 1
            time.sleep(0.0005)
            if time.perf_counter() - started > seconds + 5:
                break
        send_elapsed = time.perf_counter() - started
    time.sleep(UDP_DRAIN)
    received = _control(control_port, "stats")["udp_datagrams"]
    return {"offered_per_second": rate, "size": size, "sent": sent,
            "received": received, "received_per_second": received / send_elapsed,
            "loss": 1 - received / sent if sent else None, "send_errors": send_errors,
            "send_seconds": send_elapsed}


# ------------------------------------------------------------------ resource watch


@dataclass
class ResourceWatch:
    """Samples a target's processes during a test: peak RSS, and a memory cap.

    A tunnel without backpressure can swallow the machine (hypertele reached ~10 GB under
    iperf3), so past `cap_bytes` the watch kills the target's process groups.
    """

    pids: list[int]
    cap_bytes: int
    interval: float = 0.5
    peak_rss: int = 0
    exceeded: bool = False
    start_usage: Usage | None = None
    end_usage: Usage | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "ResourceWatch":
        self.start_usage = usage_of(self.pids)
        self.peak_rss = self.start_usage.rss_bytes
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.end_usage = usage_of(self.pids)
        self.peak_rss = max(self.peak_rss, self.end_usage.rss_bytes)

    @property
    def cpu_seconds(self) -> float:
        assert self.start_usage is not None and self.end_usage is not None
        return self.end_usage.cpu_seconds - self.start_usage.cpu_seconds

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = usage_of(self.pids).rss_bytes
            self.peak_rss = max(self.peak_rss, rss)
            if self.cap_bytes and rss > self.cap_bytes and not self.exceeded:
                self.exceeded = True
                log.warning("memory cap exceeded rss=%d cap=%d: killing the target", rss,
                            self.cap_bytes)
                for pid in process_tree(self.pids):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
