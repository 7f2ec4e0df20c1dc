"""The backend the tunnels lead to, run as its own process.

    python -m bench.lib.servers --echo-port E --bulk-port B --udp-port U --control-port C

- TCP echo on E: every byte comes back (latency, connection rate, 10,000-channel scale).
- TCP bulk on B (the Python sender used when iperf3 is absent): the first byte chooses
  the direction. b"S": the server reads to EOF, then answers the byte count as 8 bytes
  big-endian. b"R" + 4-byte milliseconds: the server sends for that long, then closes.
- UDP on U: datagrams starting with b"PING" are echoed (a readiness probe); all others
  are counted, for datagrams/s and loss at a fixed offered rate.
- Control on C (direct, never through a tunnel): a line "stats" answers one JSON line
  with the UDP counters; "reset" zeroes them.

Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
from functools import partial

import trio

from bench.lib.procs import raise_open_file_limit

log = logging.getLogger("bench.servers")

ECHO_READ = 64 * 1024
BULK_READ = 1024 * 1024
BULK_CHUNK = bytes(256 * 1024)
# A source sends for at most this long, whatever the client asks: runs stay bounded.
LONGEST_SOURCE_MS = 120_000
CONTROL_LINE_LIMIT = 64


class UdpCounters:
    def __init__(self) -> None:
        self.datagrams = 0
        self.bytes = 0


async def serve_echo(stream: trio.SocketStream) -> None:
    try:
        async with stream:
            while data := await stream.receive_some(ECHO_READ):
                await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def serve_bulk(stream: trio.SocketStream) -> None:
    try:
        async with stream:
            mode = await stream.receive_some(1)
            if mode == b"S":
                received = 0
                while data := await stream.receive_some(BULK_READ):
                    received += len(data)
                await stream.send_all(received.to_bytes(8, "big"))
            elif mode == b"R":
                header = b""
                while len(header) < 4:
                    part = await stream.receive_some(4 - len(header))
                    if not part:
                        return
                    header += part
                duration = min(int.from_bytes(header, "big"), LONGEST_SOURCE_MS) / 1000
                with trio.move_on_after(duration):
                    while True:
                        await stream.send_all(BULK_CHUNK)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def serve_udp(port: int, counters: UdpCounters) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    await sock.bind(("127.0.0.1", port))
    with sock:
        while True:
            data, peer = await sock.recvfrom(65536)
            if data.startswith(b"PING"):
                await sock.sendto(data, peer)
            else:
                counters.datagrams += 1
                counters.bytes += len(data)


async def serve_control(stream: trio.SocketStream, counters: UdpCounters) -> None:
    try:
        async with stream:
            line = b""
            while not line.endswith(b"\n") and len(line) < CONTROL_LINE_LIMIT:
                part = await stream.receive_some(CONTROL_LINE_LIMIT)
                if not part:
                    return
                line += part
            if line.strip() == b"reset":
                counters.datagrams = counters.bytes = 0
            answer = {"udp_datagrams": counters.datagrams, "udp_bytes": counters.bytes}
            await stream.send_all(json.dumps(answer).encode() + b"\n")
    except (trio.BrokenResourceError, OSError):
        pass


async def main(args: argparse.Namespace) -> None:
    counters = UdpCounters()
    async with trio.open_nursery() as nursery:
        # A deep backlog: the concurrent-connection and scale tests open in bursts.
        nursery.start_soon(partial(trio.serve_tcp, serve_echo, args.echo_port,
                                   host="127.0.0.1", backlog=4096))
        if args.bulk_port:
            nursery.start_soon(partial(trio.serve_tcp, serve_bulk, args.bulk_port,
                                       host="127.0.0.1"))
        if args.udp_port:
            nursery.start_soon(serve_udp, args.udp_port, counters)
        if args.control_port:
            nursery.start_soon(partial(trio.serve_tcp, partial(serve_control, counters=counters),
                                       args.control_port, host="127.0.0.1"))
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _signum in signals:
                nursery.cancel_scope.cancel()
                break


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--echo-port", type=int, required=True)
    parser.add_argument("--bulk-port", type=int, default=0)
    parser.add_argument("--udp-port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise_open_file_limit()
    trio.run(main, parse_args())
