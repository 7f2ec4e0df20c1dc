"""The scale test: many concurrent TCP channels through one tunnel, then all echoing at once.

Phases: open N connections (each confirmed by a 1-byte echo, so the channel reaches the
backend), hold them, sample the tunnel's resident memory, then every connection sends
ECHO_BYTES and waits for them back at the same moment; count every failure; close.
"""

from __future__ import annotations

import logging
import socket
import time

import trio

from bench.lib.procs import usage_of

log = logging.getLogger(__name__)

ECHO_BYTES = 1024
# Opening in bounded waves keeps SYN bursts within the listen backlogs: ssh -L and others
# listen with a backlog of 128, and an overflowed SYN is retried only after 1, 3, 7... s,
# which would count as the tunnel's failure when it is the client's haste.
OPENING_IN_FLIGHT = 100
CONNECT_TIMEOUT = 60.0
OPEN_TIMEOUT = 180.0
ECHO_TIMEOUT = 120.0
HOLD_SECONDS = 2.0


async def _open_one(port: int, limiter: trio.CapacityLimiter, streams: list,
                    errors: list[str]) -> None:
    async with limiter:
        stream = None
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                stream.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await stream.send_all(b"o")
                if await stream.receive_some(1) != b"o":
                    raise OSError("open echo mismatch")
            streams.append(stream)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            errors.append(f"open: {str(exc) or type(exc).__name__}")
            if stream is not None:
                await stream.aclose()


async def _echo_one(stream: trio.SocketStream, payload: bytes, start: trio.Event,
                    errors: list[str]) -> None:
    await start.wait()
    try:
        with trio.fail_after(ECHO_TIMEOUT):
            await stream.send_all(payload)
            received = 0
            while received < len(payload):
                data = await stream.receive_some(len(payload) - received)
                if not data:
                    raise OSError("closed before the echo came back")
                received += len(data)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        errors.append(f"echo: {str(exc) or type(exc).__name__}")


async def _run(port: int, channels: int, sides: dict[str, list[int]]) -> dict:
    before = {side: usage_of(pids).rss_bytes for side, pids in sides.items()}
    streams: list[trio.SocketStream] = []
    open_errors: list[str] = []
    echo_errors: list[str] = []
    limiter = trio.CapacityLimiter(OPENING_IN_FLIGHT)
    started = time.perf_counter()
    with trio.move_on_after(OPEN_TIMEOUT) as open_scope:
        async with trio.open_nursery() as nursery:
            for _ in range(channels):
                nursery.start_soon(_open_one, port, limiter, streams, open_errors)
    open_seconds = time.perf_counter() - started
    if open_scope.cancelled_caught:
        open_errors.append(f"open phase cut at {OPEN_TIMEOUT:.0f}s")
    await trio.sleep(HOLD_SECONDS)
    held = {side: usage_of(pids).rss_bytes for side, pids in sides.items()}

    payload = b"e" * ECHO_BYTES
    start = trio.Event()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(_echo_one, stream, payload, start, echo_errors)
        await trio.sleep(0.1)
        started = time.perf_counter()
        start.set()
    echo_seconds = time.perf_counter() - started
    after_echo = {side: usage_of(pids).rss_bytes for side, pids in sides.items()}
    with trio.move_on_after(30):
        for stream in streams:
            await stream.aclose()

    opened = len(streams)
    result = {
        "channels_wanted": channels,
        "channels_open": opened,
        "errors": len(open_errors) + len(echo_errors) + (channels - opened - len(open_errors)),
        "open_errors": len(open_errors),
        "echo_errors": len(echo_errors),
        "first_errors": (open_errors + echo_errors)[:5],
        "open_seconds": open_seconds,
        "echo_seconds": echo_seconds,
        "rss_before": before,
        "rss_held": held,
        "rss_after_echo": after_echo,
    }
    if opened:
        result["rss_per_channel"] = {
            side: (max(held[side], after_echo[side]) - before[side]) / opened for side in sides
        }
        result["rss_per_channel_total"] = sum(result["rss_per_channel"].values())
    return result


def scale(port: int, channels: int, sides: dict[str, list[int]]) -> dict:
    """`sides` names the tunnel's processes by role ("entry": where clients connect,
    "exit": where the backend is reached); memory is reported per side."""
    return trio.run(_run, port, channels, sides)
