"""A NAT lab in Linux network namespaces: a "public" internet router, NAT routers, hosts.

Root only; needs `ip` (iproute2), `nft` (nftables) and `conntrack`. See tests/netlab/README.md.

    with Lab({"na": ("consistent", ["alice"]), "nb": ("random", ["bob"]),
              "open": ("none", ["carol"])}) as lab:
        lab.host("alice").address          # 10.10.1.10 (on its LAN)
        lab.host("alice").public_address   # 10.100.1.2 (its NAT's WAN address)
        lab.exec("alice", "ip", "addr")    # run a command in alice's namespace
        async with lab.agent("alice") as a: ...   # socket agent (hypergate.netlab.agent)
        lab.flush_conntrack("na")          # forget every NAT mapping of "na"

Everything the lab creates lives inside namespaces named `hglab-<pid>-<token>-<node>`:
veths are created directly inside them (no names in the root namespace), nftables rules
are per namespace, so deleting the namespaces removes everything. `cleanup_stale()`
removes namespaces with that prefix whose creating process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "hglab"
"""Namespace name prefix; `cleanup_stale` only ever touches names starting with it."""

KINDS = ("consistent", "random", "none")

# Address plan (all private, RFC 1918; hyperdht treats these as "bogons" in some paths).
INTERNET_ADDRESSES = ("10.99.0.1", "10.99.0.2", "10.99.0.3", "10.99.0.4")
"""/32 addresses on the public router's loopback: servers on "the internet". The first is
the bootstrap address; the others are further destinations (e.g. for mapping tests)."""
BOOTSTRAP_ADDRESS = INTERNET_ADDRESSES[0]
MAX_SITES = 200
MAX_HOSTS_PER_SITE = 200

REQUIRED_COMMANDS = ("ip", "nft", "conntrack")

COMMAND_TIMEOUT = 20.0
"""Seconds any single `ip`/`nft`/`conntrack` call may take before the lab gives up."""


def _nat_ruleset(kind: str) -> str:
    """nftables rules of a NAT router with interfaces `wan` and `lan`."""
    masquerade = "masquerade" if kind == "consistent" else "masquerade random,fully-random"
    return f"""
table inet hglab {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masquerade}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
        # LAN to LAN is switched by the bridge; with br_netfilter it would pass here too.
        iifname "lan" oifname "lan" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        # Unsolicited packets from the WAN never reach the router itself: otherwise a
        # peer's first punch packet gets confirmed as a local flow and blocks the port
        # the router's own masquerade needs (see NETLAB-NOTES.md).
        iifname "wan" ct state != established,related drop
    }}
}}
"""


def missing_requirements() -> str | None:
    """Why the lab cannot run here (a sentence), or None when it can."""
    if os.geteuid() != 0:
        return "netlab needs root (network namespaces, nftables)"
    missing = [cmd for cmd in REQUIRED_COMMANDS if shutil.which(cmd) is None]
    if missing:
        return (
            f"netlab needs {', '.join(missing)} (Debian packages iproute2, nftables, conntrack;"
            " see scripts/apt-packages.txt)"
        )
    probe = f"{PREFIX}-{os.getpid()}-probe"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class LabError(Exception):
    """A lab command failed; the message carries the command and its stderr."""


@dataclass
class Host:
    """An end host: one interface `eth0`."""

    name: str
    netns: str
    site: str
    kind: str
    address: str
    """Its own address (a LAN address behind a NAT, a public one for kind "none")."""
    public_address: str
    """The address the public side sees it from: its NAT's WAN address, or `address`."""
    gateway: str


@dataclass
class Nat:
    """A site: a NAT router (kinds consistent/random) or a set of public hosts (kind none)."""

    name: str
    kind: str
    netns: str | None
    """The router namespace; None for kind "none" (hosts hang directly off the public router)."""
    public_address: str | None
    """The router's WAN address (what its hosts are seen as); None for kind "none"."""
    lan: str | None
    hosts: list[str] = field(default_factory=list)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True,
         timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _netns_pids(netns: str) -> list[int]:
    done = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _delete_netns(netns: str) -> None:
    """Kill the processes inside `netns` (all started by a lab) and delete it."""
    for pid in _netns_pids(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _run(["ip", "netns", "del", netns], check=False)


_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-")


def cleanup_stale() -> list[str]:
    """Delete lab namespaces left behind by processes that no longer exist; their names."""
    done = _run(["ip", "netns", "list"], check=False)
    removed = []
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME_RE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _delete_netns(name)
            removed.append(name)
    if removed:
        log.info("netlab removed stale namespaces count=%d", len(removed))
    return removed


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@contextlib.contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Switch the *calling thread* into `netns` for the block, then back.

    Sockets created inside the block belong to that namespace for their whole life, so
    in-process code (trio included) can use them after the block:

        with in_netns(lab.host("alice").netns):
            sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    Only this thread switches; do not await inside the block.
    """
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


Spec = Mapping[str, "tuple[str, Sequence[str]] | tuple[str, Sequence[str], Any]"]


class Lab:
    """A topology built from `{site_name: (kind, [host names])}`; a context manager.

    Node names (sites with a router, hosts, and "public") are what every method takes.
    Construction builds everything; if any step fails, what was built is removed and the
    error propagates. `close()` (or leaving the `with`) removes it all.
    """

    PUBLIC = "public"

    def __init__(self, spec: Spec) -> None:
        self.token = secrets.token_hex(3)
        self.base = f"{PREFIX}-{os.getpid()}-{self.token}"
        self.nats: dict[str, Nat] = {}
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []
        self._processes: list[Any] = []
        self._closed = False
        self._check_spec(spec)
        try:
            self._build(spec)
        except BaseException:
            self.close()
            raise

    # -- description -------------------------------------------------------------------

    @property
    def public_netns(self) -> str:
        return self._ns(self.PUBLIC)

    @property
    def bootstrap_address(self) -> str:
        """Address on the public router for a DHT bootstrap node (or any "internet" server)."""
        return BOOTSTRAP_ADDRESS

    @property
    def internet_addresses(self) -> tuple[str, ...]:
        return INTERNET_ADDRESSES

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def nat(self, name: str) -> Nat:
        return self.nats[name]

    def netns(self, node: str) -> str:
        """Namespace of a node: a host, a site with a router, or "public"."""
        if node == self.PUBLIC:
            return self.public_netns
        if node in self.hosts:
            return self.hosts[node].netns
        nat = self.nats.get(node)
        if nat is not None and nat.netns is not None:
            return nat.netns
        raise KeyError(f"no lab node named {node!r}")

    def describe(self) -> str:
        lines = [f"public {self.public_netns} internet={','.join(INTERNET_ADDRESSES)}"]
        for nat in self.nats.values():
            lines.append(f"site {nat.name} kind={nat.kind} wan={nat.public_address} lan={nat.lan}")
            for h in nat.hosts:
                host = self.hosts[h]
                lines.append(f"  host {h} {host.address} seen-as {host.public_address}")
        return "\n".join(lines)

    # -- running things in namespaces --------------------------------------------------

    def argv(self, node: str, *argv: str) -> list[str]:
        """`argv` prefixed to run in the node's namespace (`ip netns exec NS ...`)."""
        return ["ip", "netns", "exec", self.netns(node), *argv]

    def python_argv(self, node: str, *args: str) -> list[str]:
        """This interpreter, run in the node's namespace, e.g. `("-m", "hypergate", ...)`."""
        return self.argv(node, sys.executable, *args)

    def exec(self, node: str, *argv: str, input: str | None = None, check: bool = True,
             timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a command to completion in the node's namespace (text output captured)."""
        return _run(self.argv(node, *argv), input=input, check=check, timeout=timeout)

    def popen(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in the node's namespace; killed by `close()` if still running."""
        proc = subprocess.Popen(self.argv(node, *argv), **kwargs)
        self._processes.append(proc)
        return proc

    async def open_process(self, node: str, argv: Sequence[str], **kwargs: Any) -> Any:
        """`trio.lowlevel.open_process` in the node's namespace; killed by `close()` if left."""
        import trio

        proc = await trio.lowlevel.open_process(self.argv(node, *argv), **kwargs)
        self._processes.append(proc)
        return proc

    def agent(self, node: str) -> Any:
        """A socket agent in the node's namespace: `async with lab.agent("alice") as a:`."""
        from hypergate.netlab.client import Agent

        return Agent(self, node)

    def socket(self, node: str, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM,
               proto: int = 0) -> socket.socket:
        """A stdlib socket created inside the node's namespace (usable from this process)."""
        with in_netns(self.netns(node)):
            return socket.socket(family, type, proto)

    def in_netns(self, node: str) -> contextlib.AbstractContextManager[None]:
        """`in_netns(...)` for a node name."""
        return in_netns(self.netns(node))

    # -- NAT state ---------------------------------------------------------------------

    def _router(self, nat: str) -> str:
        site = self.nats[nat]
        if site.netns is None:
            raise LabError(f"site {nat!r} is kind 'none': it has no NAT router")
        return site.netns

    def flush_conntrack(self, nat: str) -> None:
        """Forget every connection (so every NAT mapping) of a NAT router: mapping expiry."""
        _run(["ip", "netns", "exec", self._router(nat), "conntrack", "-F"])

    def conntrack(self, nat: str) -> str:
        """The router's conntrack table as `conntrack -L` prints it (for diagnostics)."""
        return _run(["ip", "netns", "exec", self._router(nat), "conntrack", "-L"]).stdout

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill what the lab started and delete its namespaces (with their veths and rules)."""
        if self._closed:
            return
        self._closed = True
        for proc in self._processes:
            pid = getattr(proc, "pid", None)
            if pid is None or proc.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if isinstance(proc, subprocess.Popen):
                with contextlib.suppress(Exception):
                    proc.wait(timeout=5)
        errors = []
        for netns in reversed(self.namespaces):
            try:
                _delete_netns(netns)
            except Exception as exc:  # keep deleting the others
                errors.append(f"{netns}: {exc}")
        left = set(self.namespaces) & set(_list_netns())
        if left or errors:
            raise LabError(f"netlab could not remove {sorted(left)} {errors}")

    # -- building ----------------------------------------------------------------------

    def _ns(self, node: str) -> str:
        return f"{self.base}-{node}"

    @staticmethod
    def _check_spec(spec: Spec) -> None:
        names: set[str] = {Lab.PUBLIC}
        if len(spec) > MAX_SITES:
            raise ValueError(f"at most {MAX_SITES} sites")
        for site, entry in spec.items():
            kind, hosts = entry[0], entry[1]
            if kind not in KINDS:
                raise ValueError(f"site {site!r}: kind {kind!r} is not one of {KINDS}")
            if isinstance(hosts, str):
                raise ValueError(f"site {site!r}: hosts must be a list of names")
            if len(hosts) > MAX_HOSTS_PER_SITE:
                raise ValueError(f"site {site!r}: at most {MAX_HOSTS_PER_SITE} hosts")
            if kind != "none" and not hosts:
                raise ValueError(f"site {site!r}: a NAT without hosts")
            for name in [site, *hosts]:
                if not re.fullmatch(r"[a-z][a-z0-9]{0,15}", name):
                    raise ValueError(f"node name {name!r}: use 1-16 of [a-z0-9], letter first")
                if name in names:
                    raise ValueError(f"node name {name!r} used twice")
                names.add(name)

    def _add_netns(self, node: str) -> str:
        netns = self._ns(node)
        _run(["ip", "netns", "add", netns])
        self.namespaces.append(netns)
        ip = ["ip", "-n", netns]
        _run([*ip, "link", "set", "lo", "up"])
        return netns

    def _veth(self, ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str) -> None:
        _run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b,
              "netns", ns_b])
        for ns, dev, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            _run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])

    @staticmethod
    def _forwarding(netns: str) -> None:
        _run(["ip", "netns", "exec", netns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])

    def _build(self, spec: Spec) -> None:
        public = self._add_netns(self.PUBLIC)
        for addr in INTERNET_ADDRESSES:
            _run(["ip", "-n", public, "addr", "add", f"{addr}/32", "dev", "lo"])
        self._forwarding(public)
        nat_index = 0
        open_index = 0
        for site, entry in spec.items():
            kind, host_names = entry[0], list(entry[1])
            if kind == "none":
                nat = Nat(site, kind, None, None, None, host_names)
                self.nats[site] = nat
                for name in host_names:
                    open_index += 1
                    net = f"10.101.{open_index}"
                    netns = self._add_netns(name)
                    self._veth(public, f"p{open_index}", f"{net}.1/24", netns, "eth0", f"{net}.2/24")
                    # Replies from servers bound to 0.0.0.0 leave from the bootstrap address.
                    _run(["ip", "-n", public, "route", "replace", f"{net}.0/24", "dev",
                          f"p{open_index}", "src", BOOTSTRAP_ADDRESS])
                    _run(["ip", "-n", netns, "route", "add", "default", "via", f"{net}.1"])
                    self.hosts[name] = Host(name, netns, site, kind, f"{net}.2", f"{net}.2",
                                            f"{net}.1")
                continue
            nat_index += 1
            wan_net, lan_net = f"10.100.{nat_index}", f"10.10.{nat_index}"
            router = self._add_netns(site)
            self._veth(public, f"w{nat_index}", f"{wan_net}.1/24", router, "wan", f"{wan_net}.2/24")
            _run(["ip", "-n", public, "route", "replace", f"{wan_net}.0/24", "dev",
                  f"w{nat_index}", "src", BOOTSTRAP_ADDRESS])
            _run(["ip", "-n", router, "route", "add", "default", "via", f"{wan_net}.1"])
            self._forwarding(router)
            _run(["ip", "netns", "exec", router, "nft", "-f", "-"], input=_nat_ruleset(kind))
            nat = Nat(site, kind, router, f"{wan_net}.2", f"{lan_net}.0/24", host_names)
            self.nats[site] = nat
            # The LAN: a bridge in the router joins one veth per host (a real switch).
            _run(["ip", "-n", router, "link", "add", "lan", "type", "bridge"])
            _run(["ip", "-n", router, "addr", "add", f"{lan_net}.1/24", "dev", "lan"])
            _run(["ip", "-n", router, "link", "set", "lan", "up"])
            _run(["ip", "netns", "exec", router, "sh", "-c",
                  "f=/proc/sys/net/bridge/bridge-nf-call-iptables;"
                  " if [ -w $f ]; then echo 0 > $f; fi"], check=False)
            for k, name in enumerate(host_names):
                netns = self._add_netns(name)
                port = f"h{k}"
                _run(["ip", "-n", router, "link", "add", port, "type", "veth", "peer", "name",
                      "eth0", "netns", netns])
                _run(["ip", "-n", router, "link", "set", port, "master", "lan"])
                _run(["ip", "-n", router, "link", "set", port, "up"])
                address = f"{lan_net}.{10 + k}"
                _run(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"])
                _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
                _run(["ip", "-n", netns, "route", "add", "default", "via", f"{lan_net}.1"])
                self.hosts[name] = Host(name, netns, site, kind, address, nat.public_address,
                                        f"{lan_net}.1")
        log.debug("netlab built base=%s\n%s", self.base, self.describe())


def _list_netns() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()]


__all__ = [
    "BOOTSTRAP_ADDRESS", "INTERNET_ADDRESSES", "KINDS", "Host", "Lab", "LabError", "Nat",
    "cleanup_stale", "in_netns", "missing_requirements",
]
