"""The subject: a hypergate provider and gateway on loopback, linked directly by --peer.

Contract with the CLI (see the lead's hypergate/cli.py):
  hypergate --new                                       -> a 64-hex secret on stdout
  hypergate --router S --provider JSON --peerPort P     (provider)
  hypergate --router S --gateway --listen 127.0.0.1 --peer 127.0.0.1:P   (gateway)
Both run until SIGTERM; logs on stderr.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from bench.lib.procs import REPO_ROOT, BenchError, free_port
from bench.lib.targets import P2P_READY_TIMEOUT, Service, Target

HELP_TIMEOUT = 30.0
REQUIRED_FLAGS = ("--router", "--provider", "--gateway", "--peerPort", "--peer", "--new")


def hypergate_command() -> list[str]:
    override = os.environ.get("HYPERGATE_BENCH_COMMAND")
    if override:
        return override.split()
    venv_script = REPO_ROOT / ".venv" / "bin" / "hypergate"
    if venv_script.exists():
        return [str(venv_script)]
    return [sys.executable, "-m", "hypergate"]


class Hypergate(Target):
    name = "hypergate"
    description = "hypergate provider + gateway on loopback (Noise, mux)"
    # Gates open once the provider's routes reach the gateway.
    ready_timeout = P2P_READY_TIMEOUT

    def __init__(self, workdir: Path, verbose: bool = False):
        super().__init__(workdir)
        self.command = hypergate_command()
        self.verbose = verbose

    def unavailable(self) -> str | None:
        try:
            result = subprocess.run([*self.command, "--help"], capture_output=True, text=True,
                                    timeout=HELP_TIMEOUT, cwd=REPO_ROOT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(self.command)} --help` failed: {exc}"
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`hypergate --help` exited {result.returncode}: {last}"
        missing = [flag for flag in REQUIRED_FLAGS if flag not in result.stdout]
        if missing:
            return f"hypergate CLI lacks {', '.join(missing)}"
        return None

    def _start(self, services: list[Service]) -> None:
        secret = subprocess.run([*self.command, "--new"], capture_output=True, text=True,
                                timeout=HELP_TIMEOUT, cwd=REPO_ROOT).stdout.strip().splitlines()
        if not secret or len(secret[-1]) != 64:
            raise BenchError(f"`hypergate --new` printed {secret!r}, not a 64-hex secret")
        secret_hex = secret[-1]
        entries = []
        for service in services:
            kind = socket.SOCK_DGRAM if service.protocol == "udp" else socket.SOCK_STREAM
            gate_port = free_port(kind)
            entries.append({"gatePort": gate_port, "serviceHost": "127.0.0.1",
                            "servicePort": service.port, "protocol": service.protocol})
            self.ports[service.name] = gate_port
        services_file = self.workdir / "services.json"
        services_file.write_text(json.dumps(entries, indent=1))
        peer_port = free_port()
        extra = ["--verbose"] if self.verbose else []
        self.spawn("hypergate-provider",
                   [*self.command, "--router", secret_hex, "--provider", str(services_file),
                    "--peerPort", str(peer_port), *extra], cwd=REPO_ROOT, side="exit")
        self.spawn("hypergate-gateway",
                   [*self.command, "--router", secret_hex, "--gateway", "--listen", "127.0.0.1",
                    "--peer", f"127.0.0.1:{peer_port}", *extra], cwd=REPO_ROOT, side="entry")
