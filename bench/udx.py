"""Bulk throughput over loopback, same run: kernel TCP vs our UDX stream (Python to
Python) and, when Node's udx-native is installed (tests/interop), Python <-> Node and
Node <-> Node (the reference implementation on both ends).

    .venv/bin/python -m bench.udx                 # 64 MiB per case
    .venv/bin/python -m bench.udx --size 256 --json -

Each case is a sender in this process and a receiver in a child process (or Node), so
both sides have a CPU each. Gbit/s is payload over wall time from the first byte sent to
the receiver's EOF; MB per CPU-second divides the payload by both processes' CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
NODE_PEER = REPO / "tests" / "interop" / "udx_peer.js"
NODE_MODULES = REPO / "tests" / "interop" / "node_modules"
CHUNK = 256 * 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def udp_socket():
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


# ---------------------------------------------------------------- child: receiver
async def serve(kind: str) -> None:
    """Receive one stream until EOF; report bytes and this process's CPU seconds."""
    from hypergate.udx import UdxSocket

    async with trio.open_nursery() as nursery:
        if kind == "tcp":
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            print(json.dumps({"port": listeners[0].socket.getsockname()[1]}), flush=True)
            stream = await listeners[0].accept()
        else:
            udx = UdxSocket(await udp_socket())
            await nursery.start(udx.run)
            local_id = udx.new_stream_id()
            print(json.dumps({"port": udx.local_address[1], "id": local_id}), flush=True)
            peer = json.loads(await trio.to_thread.run_sync(sys.stdin.readline))
            stream = udx.open_stream(local_id, peer["id"], None)
            print(json.dumps({"ready": True}), flush=True)
        cpu_start = cpu_seconds()
        total = 0
        while True:
            data = await stream.receive_some(CHUNK)
            if not data:
                break
            total += len(data)
        print(json.dumps({"bytes": total, "cpu_s": cpu_seconds() - cpu_start}), flush=True)
        await stream.aclose()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- parent: sender
def spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)


async def send_bulk(stream, size: int) -> None:
    block = os.urandom(CHUNK)
    view = memoryview(block)
    left = size
    while left > 0:
        n = min(left, CHUNK)
        await stream.send_all(view[:n])
        left -= n
    await stream.send_eof()


async def read_json_line(child: subprocess.Popen, key: str) -> dict:
    while True:
        line = await trio.to_thread.run_sync(child.stdout.readline)
        if not line:
            raise RuntimeError(f"receiver exited (rc={child.poll()})")
        message = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"receiver failed: {message['error']}")
        if key in message:
            return message


async def case_python_sender(kind: str, size: int, node: str | None) -> dict:
    from hypergate.udx import UdxSocket

    if kind == "node":
        child = spawn([node, str(NODE_PEER), "send", "0"])
    else:
        child = spawn([sys.executable, "-m", "bench.udx", "--serve", kind])
    try:
        hello = await read_json_line(child, "port")
        async with trio.open_nursery() as nursery:
            if kind == "tcp":
                stream = await trio.open_tcp_stream("127.0.0.1", hello["port"])
            else:
                udx = UdxSocket(await udp_socket())
                await nursery.start(udx.run)
                local_id = udx.new_stream_id()
                stream = udx.open_stream(local_id, hello["id"], ("127.0.0.1", hello["port"]))
                child.stdin.write(json.dumps({"port": udx.local_address[1], "id": local_id}) + "\n")
                child.stdin.flush()
                if kind == "udx":
                    await read_json_line(child, "ready")
            node_cpu_start = (await read_json_line(child, "connected"))["cpu_s"] if kind == "node" else 0.0
            cpu_start, start = cpu_seconds(), time.perf_counter()
            await send_bulk(stream, size)
            udx_stats = dict(stream.conn.stats) if kind != "tcp" else {}
            report = await read_json_line(child, "received_sha256" if kind == "node" else "bytes")
            wall = time.perf_counter() - start
            sender_cpu = cpu_seconds() - cpu_start
            received = report["received_bytes"] if kind == "node" else report["bytes"]
            receiver_cpu = report["cpu_s"] - node_cpu_start
            await stream.aclose()
            nursery.cancel_scope.cancel()
    finally:
        child.kill()
        child.wait()
    assert received == size, f"receiver got {received} of {size} bytes"
    return figures(size, wall, sender_cpu, receiver_cpu) | {"sender_stats": udx_stats}


async def case_node_sender(size: int, node: str) -> dict:
    from hypergate.udx import UdxSocket

    child = spawn([node, str(NODE_PEER), "send", str(size)])
    try:
        hello = await read_json_line(child, "port")
        async with trio.open_nursery() as nursery:
            udx = UdxSocket(await udp_socket())
            await nursery.start(udx.run)
            local_id = udx.new_stream_id()
            stream = udx.open_stream(local_id, hello["id"], None)
            cpu_start, start = cpu_seconds(), time.perf_counter()
            child.stdin.write(json.dumps({"port": udx.local_address[1], "id": local_id}) + "\n")
            child.stdin.flush()
            node_cpu_start = (await read_json_line(child, "connected"))["cpu_s"]
            received = 0
            while True:
                data = await stream.receive_some(CHUNK)
                if not data:
                    break
                received += len(data)
            wall = time.perf_counter() - start
            receiver_cpu = cpu_seconds() - cpu_start
            await stream.send_eof()
            closed = await read_json_line(child, "closed")
            sender_cpu = closed["cpu_s"] - node_cpu_start
            await stream.aclose()
            nursery.cancel_scope.cancel()
    finally:
        child.kill()
        child.wait()
    assert received == size, f"received {received} of {size} bytes"
    return figures(size, wall, sender_cpu, receiver_cpu)


async def case_node_to_node(size: int, node: str) -> dict:
    """The reference: udx-native on both ends (C, BBR, pacing)."""
    sender = spawn([node, str(NODE_PEER), "send", str(size)])
    receiver = spawn([node, str(NODE_PEER), "send", "0"])
    try:
        sender_hello = await read_json_line(sender, "port")
        receiver_hello = await read_json_line(receiver, "port")
        receiver.stdin.write(json.dumps({"port": sender_hello["port"], "id": sender_hello["id"]}) + "\n")
        receiver.stdin.flush()
        receiver_cpu_start = (await read_json_line(receiver, "connected"))["cpu_s"]
        start = time.perf_counter()
        sender.stdin.write(json.dumps({"port": receiver_hello["port"], "id": receiver_hello["id"]}) + "\n")
        sender.stdin.flush()
        sender_cpu_start = (await read_json_line(sender, "connected"))["cpu_s"]
        report = await read_json_line(receiver, "received_sha256")
        wall = time.perf_counter() - start
        closed = await read_json_line(sender, "closed")
    finally:
        for child in (sender, receiver):
            child.kill()
            child.wait()
    assert report["received_bytes"] == size, f"receiver got {report['received_bytes']} of {size} bytes"
    return figures(size, wall, closed["cpu_s"] - sender_cpu_start, report["cpu_s"] - receiver_cpu_start)


def figures(size: int, wall: float, sender_cpu: float, receiver_cpu: float) -> dict:
    cpu = sender_cpu + receiver_cpu
    return {
        "bytes": size,
        "seconds": round(wall, 3),
        "gbit_s": round(size * 8 / wall / 1e9, 3),
        "sender_cpu_s": round(sender_cpu, 3),
        "receiver_cpu_s": round(receiver_cpu, 3),
        "mb_per_cpu_s": round(size / 1e6 / cpu, 1) if cpu > 0 else None,
    }


def node_binary() -> tuple[str | None, str]:
    node = shutil.which("node")
    if node is None:
        return None, "node is not installed"
    if not (NODE_MODULES / "udx-native").is_dir():
        return None, "udx-native missing: run `npm install` in tests/interop"
    return node, ""


async def main_async(args: argparse.Namespace) -> dict:
    size = args.size * 1024 * 1024
    node, why_not = (None, "--no-node") if args.no_node else node_binary()
    cases = {
        "tcp python->python (kernel TCP)": lambda: case_python_sender("tcp", size, None),
        "udx python->python": lambda: case_python_sender("udx", size, None),
    }
    if node:
        cases["udx python->node"] = lambda: case_python_sender("node", size, node)
        cases["udx node->python"] = lambda: case_node_sender(size, node)
        cases["udx node->node (reference)"] = lambda: case_node_to_node(size, node)
    results: dict = {}
    for name, run_case in cases.items():
        with trio.fail_after(args.timeout):
            results[name] = await run_case()
    if not node:
        results["udx python<->node"] = {"skipped": why_not}
    return results


def render(results: dict) -> str:
    lines = [f"{'case':34} {'Gbit/s':>8} {'MB/CPU-s':>9} {'sender CPU':>11} {'receiver CPU':>13}"]
    baseline = next(iter(results.values())).get("gbit_s")
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"{name:34} skipped: {r['skipped']}")
            continue
        ratio = f"  ({r['gbit_s'] / baseline:.2f}x TCP)" if baseline and not name.startswith("tcp") else ""
        lines.append(
            f"{name:34} {r['gbit_s']:8.3f} {r['mb_per_cpu_s']:9.1f} {r['sender_cpu_s']:10.2f}s "
            f"{r['receiver_cpu_s']:12.2f}s{ratio}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.udx", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="MiB per case (default 64)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-' = stdout)")
    parser.add_argument("--no-node", action="store_true", help="skip the Python <-> Node cases")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case at most")
    parser.add_argument("--serve", choices=["tcp", "udx"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        trio.run(serve, args.serve)
        return 0
    results = trio.run(main_async, args)
    table = render(results)
    print(table, file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        text = json.dumps({"size_mib": args.size, "results": results}, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
