"""The trio side of the socket agent (`hypergate.netlab.agent`) running in a lab namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from hypergate.netlab.lab import Lab

AGENT_START_TIMEOUT = 10.0
"""Seconds for the agent's interpreter to start and say it is ready (2 shared cores)."""


class AgentError(Exception):
    """The agent answered an operation with an error, or died."""


class Agent:
    """`async with lab.agent("alice") as alice: await alice.call("udp_bind")`.

    Calls are serialised (one operation at a time per agent); start two agents on the same
    host for concurrent operations. Each call returns the agent's result dict.
    """

    def __init__(self, lab: Lab, node: str) -> None:
        self.lab = lab
        self.node = node
        self.process: trio.Process | None = None
        self._buffer = b""
        self._lock = trio.Lock()
        self._broken = False

    async def __aenter__(self) -> Agent:
        self.process = await self.lab.open_process(
            self.node,
            [sys.executable, "-u", "-m", "hypergate.netlab.agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        with trio.fail_after(AGENT_START_TIMEOUT):
            ready = await self._read_line()
        if not ready.get("ready"):
            raise AgentError(f"agent on {self.node} did not start: {ready}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        proc = self.process
        if proc is None:
            return
        self.process = None
        with trio.CancelScope(shield=True):
            if proc.stdin is not None:
                await proc.stdin.aclose()
            with trio.move_on_after(2):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if proc.stdout is not None:
                await proc.stdout.aclose()

    async def _read_line(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise AgentError(f"agent on {self.node} exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Run one operation (see hypergate.netlab.agent); raises AgentError on its error."""
        if self.process is None or self.process.stdin is None:
            raise AgentError(f"agent on {self.node} is not running")
        if self._broken:
            raise AgentError(f"agent on {self.node}: an earlier call was interrupted")
        async with self._lock:
            self._broken = True  # until the answer is read: a cancelled call desynchronises
            await self.process.stdin.send_all((json.dumps({"op": op, **args}) + "\n").encode())
            result = await self._read_line()
            self._broken = False
        if "error" in result:
            raise AgentError(f"{self.node} {op}: {result['error']}")
        return result

    # Shorthands for the common operations.

    async def udp_bind(self, port: int = 0, host: str = "0.0.0.0") -> tuple[int, tuple[str, int]]:
        """A bound UDP socket: (socket id, local address)."""
        got = await self.call("udp_bind", host=host, port=port)
        return got["sock"], (got["local"][0], got["local"][1])

    async def observe(self, sock: int, server: tuple[str, int]) -> tuple[str, int]:
        """How `server` (an observer) sees this socket: (public ip, public port)."""
        got = await self.call("observe", sock=sock, server=list(server))
        return got["observed"][0], got["observed"][1]

    async def serve_observer(self, host: str, port: int = 0, tcp: bool = True) -> tuple[str, int]:
        got = await self.call("serve_observer", host=host, port=port, tcp=tcp)
        return got["local"][0], got["local"][1]

    async def punch(self, sock: int, to: tuple[str, int], **kw: Any) -> dict[str, Any]:
        return await self.call("punch", sock=sock, to=list(to), **kw)
