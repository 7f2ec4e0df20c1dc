"""Tunnel targets: given backend services, each exposes local 127.0.0.1 ports leading to them.

A target is started once per run and serves every test; `pids()` names the processes
whose CPU and memory are the tunnel's cost. A target that cannot run here says why in
`unavailable()` (the benchmark installs nothing at run time).
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.lib.procs import (
    REPO_ROOT,
    BenchError,
    Managed,
    free_port,
    python_module,
    wait_for_tcp,
    which,
)

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
# Peer-to-peer tunnels find each other through a DHT and a route refresh: allow longer.
P2P_READY_TIMEOUT = 60.0
# DHT nodes in the local hyperdht testnet. With 3, a hypertele-server's node cannot
# classify its firewall (hyperdht wants answers from more nodes than that) and many
# connections fail after ~10 s, Node's own hypertele client's as well as ours; 5 works.
TESTNET_SIZE = 5


@dataclass(frozen=True)
class Service:
    """A backend: `probe` says how to tell that a tunnel leads to it ("echo", "connect",
    "udp-ping")."""

    name: str
    port: int
    protocol: str = "tcp"
    probe: str = "connect"


class Target:
    name = "target"
    description = ""
    # protocol -> why this target cannot carry it
    unsupported: dict[str, str] = {}
    # Tests (by name prefix) before which the target is started afresh: for a tunnel whose
    # backlog from one bulk test (queued without backpressure) would be the next one's figure.
    fresh_before: tuple[str, ...] = ()
    stop_grace = 5.0
    # How long one readiness probe waits for its answer, and the pause between probes.
    probe_timeout = 2.0
    probe_interval = 0.2
    ready_timeout = READY_TIMEOUT

    def __init__(self, workdir: Path):
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Managed] = []
        self.ports: dict[str, int] = {}
        # service name -> why it is not measured although the target claims to carry it
        self.dropped: dict[str, str] = {}

    def unavailable(self) -> str | None:
        return None

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def sides(self) -> dict[str, list[int]]:
        """The tunnel's processes by role: "entry" where clients connect, "exit" where the
        backend is reached. Memory per channel is reported for each."""
        return {"entry": self.pids_named("entry"), "exit": self.pids_named("exit")}

    def pids_named(self, side: str) -> list[int]:
        return [proc.pid for proc in self.procs if proc.side == side]

    def start(self, services: list[Service]) -> dict[str, int]:
        carried = [s for s in services if s.protocol not in self.unsupported]
        self._start(carried)
        self.wait_ready(carried, self.ready_timeout)
        return self.ports

    def _start(self, services: list[Service]) -> None:
        raise NotImplementedError

    def spawn(self, name: str, argv: list[str], side: str = "", **kwargs) -> Managed:
        proc = Managed(name, argv, self.workdir, **kwargs)
        proc.side = side
        self.procs.append(proc)
        return proc

    def alive(self) -> bool:
        return all(proc.alive() for proc in self.procs)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(self.stop_grace)
        self.procs.clear()
        self.ports = {}
        self.dropped = {}

    def wait_ready(self, services: list[Service], timeout: float) -> None:
        """Each service answers through the tunnel within `timeout`. A TCP service that
        does not is fatal for the target; a UDP one is dropped (see `dropped`) so the TCP
        figures are still measured."""
        deadline = time.monotonic() + timeout
        for service in services:
            port = self.ports[service.name]
            while True:
                self._check_alive()
                error = probe(service, port, self.probe_timeout)
                if error is None:
                    break
                if time.monotonic() > deadline:
                    why = (f"{service.name} via 127.0.0.1:{port} not ready after "
                           f"{timeout:.0f}s ({error})")
                    if service.protocol != "udp":
                        raise BenchError(f"{self.name}: {why}")
                    self.dropped[service.name] = why
                    del self.ports[service.name]
                    break
                time.sleep(self.probe_interval)

    def _check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise BenchError(f"{proc.name} exited with {proc.popen.returncode}: "
                                 f"{proc.tail()}")


def probe(service: Service, port: int, timeout: float = 2.0) -> str | None:
    """None when a round trip through 127.0.0.1:port works, else what went wrong."""
    try:
        if service.probe == "udp-ping":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.5)
                sock.sendto(b"PING-ready", ("127.0.0.1", port))
                data, _ = sock.recvfrom(64)
                return None if data == b"PING-ready" else f"udp answer {data!r}"
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if service.probe == "echo":
                sock.settimeout(timeout)
                sock.sendall(b"ready?")
                data = sock.recv(16)
                return None if data == b"ready?" else f"echo answer {data!r}"
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


class Direct(Target):
    name = "direct"
    description = "no tunnel: straight to the backend"

    def _start(self, services: list[Service]) -> None:
        self.ports = {s.name: s.port for s in services}

    def sides(self) -> dict[str, list[int]]:
        return {}


class Socat(Target):
    name = "socat"
    description = "socat relay, one process per connection, unencrypted: the practical ceiling"

    def unavailable(self) -> str | None:
        return None if which("socat") else "socat not installed (apt-get install socat)"

    def sides(self) -> dict[str, list[int]]:
        # One process (and its forks) is both ends of the relay.
        return {"both": self.pids_named("both")}

    def _start(self, services: list[Service]) -> None:
        for service in services:
            udp = service.protocol == "udp"
            port = free_port(socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
            self.spawn(f"socat-{service.name}", _socat_argv(udp, port, service.port), side="both")
            self.ports[service.name] = port


class SocatChain(Target):
    """Two socat relays in series, both unencrypted: the shape of every tunnel with an
    entry and an exit process (hypergate's gateway and provider, ssh's client and sshd)
    at socat's cost per relay. What no such tunnel can beat on latency and setup."""

    name = "socat-chain"
    description = "two socat relays in series (entry -> exit -> backend), unencrypted"

    def unavailable(self) -> str | None:
        return Socat.unavailable(self)

    def _start(self, services: list[Service]) -> None:
        for service in services:
            udp = service.protocol == "udp"
            kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
            entry_port, exit_port = free_port(kind), free_port(kind)
            for side, listen_port, to_port in (("exit", exit_port, service.port),
                                               ("entry", entry_port, exit_port)):
                self.spawn(f"socat-{side}-{service.name}", _socat_argv(udp, listen_port, to_port),
                           side=side)
            self.ports[service.name] = entry_port


class TrioChain(Target):
    """Two minimal trio relays in series (`bench.lib.bare_relay`): the same shape in the
    same language as hypergate's gateway and provider, without encryption or
    multiplexing. What two Python event loops in series cost before any tunnel work."""

    name = "trio-chain"
    description = "two minimal trio relays in series, unencrypted, a connection per connection"
    unsupported = {"udp": "the minimal relay forwards TCP only"}

    def _start(self, services: list[Service]) -> None:
        for service in services:
            entry_port, exit_port = free_port(), free_port()
            for side, listen_port, to_port in (("exit", exit_port, service.port),
                                               ("entry", entry_port, exit_port)):
                self.spawn(f"relay-{side}-{service.name}", python_module(
                    "bench.lib.bare_relay", "--listen-port", str(listen_port),
                    "--to-port", str(to_port)), side=side, cwd=REPO_ROOT)
            self.ports[service.name] = entry_port


def _socat_argv(udp: bool, listen_port: int, to_port: int) -> list[str]:
    if udp:
        return ["socat", f"UDP4-LISTEN:{listen_port},bind=127.0.0.1,reuseaddr,fork",
                f"UDP4:127.0.0.1:{to_port}"]
    return ["socat", f"TCP4-LISTEN:{listen_port},bind=127.0.0.1,reuseaddr,fork,backlog=4096",
            f"TCP4:127.0.0.1:{to_port}"]


class Ssh(Target):
    """OpenSSH `ssh -N -L` through a private sshd on loopback with throwaway keys."""

    name = "ssh"
    description = "ssh -N -L, default cipher, private sshd on loopback"
    unsupported = {"udp": "ssh -L forwards TCP only"}
    cipher: str | None = None

    def unavailable(self) -> str | None:
        missing = [tool for tool in ("ssh", "ssh-keygen") if not which(tool)]
        if not Path("/usr/sbin/sshd").exists() and not which("sshd"):
            missing.append("sshd")
        if missing:
            return f"{', '.join(missing)} not installed (apt-get install openssh-server openssh-client)"
        return None

    def _start(self, services: list[Service]) -> None:
        keys = self.workdir
        for key in ("host_key", "client_key"):
            (keys / key).unlink(missing_ok=True)
            (keys / f"{key}.pub").unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key)],
                           check=True, timeout=30)
        (keys / "authorized_keys").write_text((keys / "client_key.pub").read_text())
        os.chmod(keys / "authorized_keys", 0o600)
        # sshd insists on its privilege-separation directory, even when it is unused.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        port = free_port()
        config = keys / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {keys / 'host_key'}",
            f"AuthorizedKeysFile {keys / 'authorized_keys'}",
            f"PidFile {keys / 'sshd.pid'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding yes",
            "StrictModes no",
            "UsePAM no",
            "UseDNS no",
            "LogLevel ERROR",
            "",
        ]))
        sshd = which("sshd") or "/usr/sbin/sshd"
        sshd_proc = self.spawn("sshd", [str(Path(sshd).resolve()), "-D", "-e", "-f", str(config)],
                               side="exit")
        wait_for_tcp("127.0.0.1", port, READY_TIMEOUT, sshd_proc)
        argv = ["ssh", "-N", "-F", "/dev/null", "-p", str(port), "-i", str(keys / "client_key"),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                "-o", "LogLevel=ERROR"]
        if self.cipher:
            argv += ["-c", self.cipher]
        for service in services:
            local = free_port()
            argv += ["-L", f"127.0.0.1:{local}:127.0.0.1:{service.port}"]
            self.ports[service.name] = local
        argv.append(f"{getpass.getuser()}@127.0.0.1")
        self.spawn("ssh", argv, side="entry")


class SshAesGcm(Ssh):
    name = "ssh-aes128gcm"
    description = "ssh -N -L -c aes128-gcm@openssh.com"
    cipher = "aes128-gcm@openssh.com"


class Hypertele(Target):
    """The Node.js Hyperswarm tunnel `hypertele` over a local hyperdht testnet."""

    name = "hypertele"
    description = "Node.js hypertele (Hyperswarm) over a local hyperdht testnet"
    unsupported = {"udp": "hypertele forwards TCP only"}
    # After iperf3 it holds gigabytes of queued data and drains them for minutes.
    fresh_before = ("tcp_", "scale")
    # Its SIGTERM handler leaves the DHT politely, which takes longer than we care for.
    stop_grace = 1.0
    # Each probe makes the client look the server up in the DHT; hasty probes pile up
    # lookups that slow the first real connection.
    probe_timeout = 20.0
    probe_interval = 1.0
    # Measured here: its first connection through a fresh testnet took 2 to 85 s (each
    # failed attempt ends after ~13 s), in separate processes; in one process, 20 ms.
    ready_timeout = 120.0
    node_dir = REPO_ROOT / "bench" / "node"

    def unavailable(self) -> str | None:
        if not which("node"):
            return "node not installed"
        bin_dir = self.node_dir / "node_modules" / ".bin"
        if not (bin_dir / "hypertele").exists() or not (self.node_dir / "node_modules" / "hyperdht").exists():
            return "npm packages absent: run `npm ci` in bench/node"
        return None

    def pids(self) -> list[int]:
        # The tunnel is the client and server pair; the testnet nodes are the network.
        return [proc.pid for proc in self.procs if proc.name != "hyperdht-testnet"]

    def _start(self, services: list[Service]) -> None:
        bin_dir = self.node_dir / "node_modules" / ".bin"
        testnet = self.spawn("hyperdht-testnet", ["node", str(self.node_dir / "testnet.js"), str(TESTNET_SIZE)],
                             capture_stdout=True, cwd=self.node_dir)
        bootstrap = testnet.read_line(P2P_READY_TIMEOUT, "bootstrap").split()[-1]
        for service in services:
            # Starts with letters: hypertele's argument parser turns all-digit values into numbers.
            seed = "ab" + secrets.token_hex(31)
            server = self.spawn(f"hypertele-server-{service.name}",
                                [str(bin_dir / "hypertele-server"), "-l", str(service.port),
                                 "--seed", seed, "--bootstrap", bootstrap],
                                capture_stdout=True, cwd=self.node_dir, side="exit")
            public_key = server.read_line(P2P_READY_TIMEOUT, "hypertele:").split()[-1]
            local = free_port()
            self.spawn(f"{self.name}-{service.name}", self._client_argv(public_key, local, bootstrap),
                       cwd=self.node_dir, side="entry")
            self.ports[service.name] = local

    def _client_argv(self, public_key: str, local_port: int, bootstrap_port: str) -> list[str]:
        bin_dir = self.node_dir / "node_modules" / ".bin"
        return [str(bin_dir / "hypertele"), "-p", str(local_port), "-s", public_key, "--bootstrap", bootstrap_port]


class HypergateTele(Hypertele):
    """`hypergate tele` (our hyperdht client: IK handshake, UDX, secret-stream) in place of
    the Node `hypertele` client, against the same Node `hypertele-server`: the two
    clients side by side on one path."""

    name = "hypergate-tele"
    description = "hypergate tele (Python hyperdht client) -> Node hypertele-server"

    def _client_argv(self, public_key: str, local_port: int, bootstrap_port: str) -> list[str]:
        return python_module("hypergate", "tele", "--connect", public_key, "--listen", f"127.0.0.1:{local_port}",
                             "--bootstrap", f"127.0.0.1:{bootstrap_port}")
