"""Child processes, ports and /proc sampling for the benchmark.

Every wait here has a deadline: a benchmark that hangs tells us nothing.
"""

from __future__ import annotations

import logging
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The scale test holds 10,000 sockets in the client and as many in each tunnel process;
# each process needs a little headroom for its own files and listening sockets.
WANTED_OPEN_FILES = 20_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
REPO_ROOT = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


def raise_open_file_limit(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raise our soft RLIMIT_NOFILE toward `wanted` within the hard limit.

    Children inherit it, so tunnel processes started afterwards get it too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out; racy by nature but fine on a quiet loopback."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP (a gate may carry both on one number)."""
    for _attempt in range(50):
        port = free_port(socket.SOCK_STREAM, host)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((host, port))
        except OSError:
            continue
        return port
    raise BenchError("no port free for both TCP and UDP after 50 tries")


def wait_for_tcp(host: str, port: int, timeout: float, proc: "Managed | None" = None) -> None:
    """Poll until host:port accepts a TCP connection, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last_error = exc
            time.sleep(0.05)
    raise BenchError(f"{host}:{port} did not accept within {timeout:.0f}s ({last_error})")


def which(name: str) -> str | None:
    return shutil.which(name)


class Managed:
    """One child process with its output in a log file, stopped by SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, capture_stdout: bool = False):
        self.name = name
        self.side = ""
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        # Appended, not truncated: a restarted target keeps the log of the run that ended.
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
        self._log_file.flush()
        log.debug("start name=%s argv=%s", name, " ".join(argv))
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else self._log_file,
            stderr=self._log_file,
            cwd=cwd,
            env=env,
            # Own process group: a stop reaches the children it forked (socat, sshd).
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_line(self, timeout: float, must_contain: str = "") -> str:
        """The first stdout line containing `must_contain`, within `timeout` seconds."""
        import selectors

        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        buffered = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.popen.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                chunk = os.read(self.popen.stdout.fileno(), 4096)
                if not chunk:
                    break
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    text = line.decode(errors="replace").strip()
                    if must_contain in text:
                        return text
        raise BenchError(f"{self.name}: no line with {must_contain!r} within {timeout:.0f}s: "
                         f"{self.tail()}")

    def tail(self, limit: int = 600) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:].strip().replace("\n", " | ")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("kill name=%s reason=no exit %.0fs after SIGTERM", self.name, grace)
        # Forked children (socat per connection, sshd sessions) may outlive the leader.
        self._signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.error("stuck name=%s pid=%d", self.name, self.pid)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log_file.close()

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _die_with_parent() -> None:
    """In the child: SIGTERM when the benchmark dies, even by SIGKILL, so no tunnel or
    server outlives the run that started it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def stop_on_sigterm() -> None:
    """Turn SIGTERM (e.g. from `timeout`) into SystemExit, so cleanup code runs."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# ---------------------------------------------------------------- /proc sampling


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user+system, including reaped children) and resident bytes."""

    cpu_seconds: float
    rss_bytes: int

    def __sub__(self, other: "Usage") -> "Usage":
        return Usage(self.cpu_seconds - other.cpu_seconds, self.rss_bytes - other.rss_bytes)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(root_pids: list[int]) -> list[int]:
    """The roots and all their live descendants."""
    children = _children_map()
    seen: list[int] = []
    stack = list(root_pids)
    while stack and len(seen) < 100_000:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(children.get(pid, []))
    return seen


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def usage_of(root_pids: list[int]) -> Usage:
    """CPU and RSS summed over the process trees of `root_pids`.

    Live processes count utime+stime; the roots also count cutime+cstime, which holds the
    CPU of children already reaped (socat's per-connection forks, ended sshd sessions).
    """
    cpu_ticks = 0
    rss = 0
    roots = set(root_pids)
    for pid in process_tree(root_pids):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # After the name: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
        cpu_ticks += int(fields[11]) + int(fields[12])
        if pid in roots:
            cpu_ticks += int(fields[13]) + int(fields[14])
        rss += rss_bytes(pid)
    return Usage(cpu_ticks / CLOCK_TICKS, rss)
