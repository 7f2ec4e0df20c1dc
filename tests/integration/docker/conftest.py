"""A real Docker-compatible engine for the Docker-mode tests: Podman's compatible API.

Everything lives in one test-owned directory: containers.conf (runc, cgroupfs, low
ulimits: the defaults fail on these machines), storage (vfs), network definitions, a
random subnet pool, the busybox image (imported, no registry needed), and the API socket
of `podman system service`. Nothing of the host's own Podman setup is read or changed.
Root only; skipped with the reason when Podman, runc, netavark or busybox is missing.

Tests in this folder take the `podman` fixture. One Podman service serves the whole
session (a conftest fixture is defined once; one imported into several modules would
start one service per module).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

BUSYBOX = "/bin/busybox"
NETAVARK = "/usr/lib/podman/netavark"
IMAGE = "localhost/hypergate-test-busybox:latest"
SERVICE_START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 60.0


def _missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root (Podman with its own storage and networks)"
    for tool, package in (("podman", "podman"), ("runc", "runc")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {package})"
    if not os.path.exists(NETAVARK):
        return "netavark not installed (apt-get install netavark aardvark-dns)"
    if shutil.which("iptables") is None:
        # netavark programs every container network's NAT through it: without it
        # each `podman run` fails with "netavark: No such file or directory".
        return "iptables not installed (apt-get install iptables), which netavark runs"
    if not os.path.exists(BUSYBOX):
        return "busybox not installed (apt-get install busybox-static)"
    return None


def _answers_ping(socket_path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(socket_path)
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Podman:
    """One test-owned Podman: CLI with the right environment, and the API service."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket_path = str(root / "podman.sock")
        self.image = IMAGE
        self.service: subprocess.Popen | None = None
        octet = random.randint(100, 250)
        (root / "containers.conf").write_text(
            f"""
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{root}/libpod-tmp"

[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "netavark"
network_config_dir = "{root}/networks"
default_subnet = "10.{octet}.255.0/24"
default_subnet_pools = [{{"base" = "10.{octet}.0.0/17", "size" = 24}}]
"""
        )
        (root / "storage.conf").write_text(
            f"""
[storage]
driver = "vfs"
graphroot = "{root}/storage"
runroot = "{root}/run"
"""
        )
        self.env = dict(
            os.environ,
            CONTAINERS_CONF=str(root / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(root / "storage.conf"),
        )

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=COMMAND_TIMEOUT_S,
        )

    def build_busybox_image(self) -> None:
        rootfs = self.root / "image-rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
        for applet in applets.stdout.split():
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        tarball = self.root / "busybox.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        self.run("import", str(tarball), self.image)

    def start_service(self) -> None:
        log = open(self.root / "service.log", "ab")
        self.service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{self.socket_path}"],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while time.monotonic() < deadline:  # bounded: the socket answers in ~1 s here
            if self.service.poll() is not None:
                raise RuntimeError(f"podman system service exited: {self.service_log()}")
            if _answers_ping(self.socket_path):
                return
            time.sleep(0.1)
        raise RuntimeError(f"podman API did not answer in time: {self.service_log()}")

    def stop_service(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait(timeout=15)
        self.service = None

    def service_log(self) -> str:
        try:
            return (self.root / "service.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def remove_everything(self) -> None:
        """Containers and networks made by the tests (the storage is ours alone)."""
        self.run("rm", "--all", "--force", "--time", "0", check=False)
        networks = self.run("network", "ls", "--format", "{{.Name}}", check=False).stdout.split()
        for network in networks:
            if network != "podman":
                self.run("network", "rm", "--force", network, check=False)


@pytest.fixture(scope="session")
def podman_session():
    reason = _missing_requirement()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="hg-podman-", dir="/tmp"))
    engine = Podman(root)
    try:
        engine.build_busybox_image()
        engine.start_service()
        yield engine
    finally:
        engine.stop_service()
        engine.remove_everything()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def podman(podman_session):
    """The session's Podman with its API service running; each test leaves no container
    or network behind."""
    if podman_session.service is None or podman_session.service.poll() is not None:
        podman_session.start_service()
    yield podman_session
    podman_session.remove_everything()
