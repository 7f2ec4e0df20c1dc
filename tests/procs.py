"""Real hypergate processes for integration tests, watched through their log lines."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import trio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HYPERGATE = [sys.executable, "-m", "hypergate"]


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class HypergateProcess:
    """A `hypergate ...` child process whose stderr lines are collected as they come."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, name: str = "", prefix: list[str] = ()
    ) -> None:
        self.args = args
        self.prefix = list(prefix)  # e.g. ["ip", "netns", "exec", NS] to run in a namespace
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.name = name or " ".join(args[:3])
        self.lines: list[str] = []
        self._new_line = trio.lowlevel.ParkingLot()
        self.process: trio.Process | None = None
        self.exited = trio.Event()

    async def start(self, nursery: trio.Nursery) -> HypergateProcess:
        self.process = await trio.lowlevel.open_process(
            self.prefix + HYPERGATE + self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
        )
        nursery.start_soon(self._collect)
        return self

    async def _collect(self) -> None:
        buffer = b""
        assert self.process is not None and self.process.stdout is not None
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                self.lines.append(line.decode(errors="replace"))
            self._new_line.unpark_all()
        if buffer:
            self.lines.append(buffer.decode(errors="replace"))
        await self.process.wait()
        self.exited.set()
        self._new_line.unpark_all()

    def find(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.lines if regex.search(line)]

    async def wait_for(self, pattern: str, timeout: float = 20, count: int = 1) -> str:
        """The `count`-th log line matching `pattern`; fails with the log if it never comes."""
        regex = re.compile(pattern)
        with trio.move_on_after(timeout):
            while True:
                matches = [line for line in self.lines if regex.search(line)]
                if len(matches) >= count:
                    return matches[count - 1]
                if self.exited.is_set():
                    break
                await self._new_line.park()
        raise AssertionError(
            f"{self.name}: no log line matching {pattern!r} (x{count}) within {timeout}s; log:\n"
            + "\n".join(self.lines[-40:])
        )

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        with trio.move_on_after(timeout):
            await self.exited.wait()
        if not self.exited.is_set():
            self.process.kill()
            await self.exited.wait()
        return self.process.returncode


class Cluster:
    """Starts processes in a nursery and makes sure every one is gone at the end."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.processes: list[HypergateProcess] = []

    async def start(
        self, *args: str, env: dict[str, str] | None = None, name: str = "", prefix: list[str] = ()
    ) -> HypergateProcess:
        proc = HypergateProcess(list(args), env, name, prefix)
        self.processes.append(proc)
        return await proc.start(self.nursery)

    async def provider(self, secret: str, services: str, peer_port: int, *extra: str) -> HypergateProcess:
        proc = await self.start(
            "--router", secret, "--provider", services, "--peerPort", str(peer_port), "--peerHost", "127.0.0.1",
            *(extra if "--fingerprintResolverPort" in extra else ("--fingerprintResolverPort", "0", *extra)),
            name=f"provider:{peer_port}",
        )
        await proc.wait_for("event=peer_listening")
        return proc

    async def gateway(self, secret: str, *peers: int, listen: str = "127.0.0.1", extra: tuple = ()) -> HypergateProcess:
        args = ["--router", secret, "--gateway", "--listen", listen, *extra]
        for port in peers:
            args += ["--peer", f"127.0.0.1:{port}"]
        return await self.start(*args, name="gateway")

    async def close(self) -> None:
        for proc in self.processes:
            await proc.stop()
            # Captured by pytest and shown only when the test fails.
            print(f"----- {proc.name} (exit {proc.process.returncode}) -----")
            print("\n".join(proc.lines[-60:]))


def new_secret() -> str:
    return subprocess.run(HYPERGATE + ["--new"], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
