"""Fingerprint resolver (provider): which client is behind this connection to my backend?

A backend sees connections from the provider, not from the original client. It asks
`GET /resolve?proto=tcp&remote_addr=A&remote_port=P&local_addr=B&local_port=Q` with the
connection as it sees it (remote = the provider's outbound socket, local = the service
address) and gets the fingerprint the gateway attached to that channel:

    {"key": "tcp|A|P|B|Q", "protocol": "tcp", "gatePort": 80, "channelPort": 7,
     "fingerprint": {...}, "createdAt": ms, "expiresAt": ms}

400 `missing_tuple_params`, 404 `not_found` (with the key), 401 `unauthorized` with
`WWW-Authenticate: Basic` when `--fingerprintResolverBasicAuth user:pass` is set and
the request does not carry it. `GET /health` -> `{"ok": true}`, never behind auth.
Same shapes and codes as the original. An entry lives exactly as long as its channel
(`FingerprintRegistry.registered`); `expiresAt` only tells callers how long to cache.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import trio

from .. import limits
from ..policy.ingress import normalize_ip
from .server import (
    Handler,
    Request,
    Response,
    basic_auth_ok,
    json_response,
    parse_basic_auth_setting,
    serve_http,
)

log = logging.getLogger(__name__)

TupleKey = tuple[str, str, int, str, int]


def wall_clock_ms() -> int:
    # Fingerprint timestamps are wall-clock facts shown to backends, not timers.
    return int(time.time() * 1000)


@functools.lru_cache(maxsize=4096)  # (two per key; a provider makes two keys a connection)
def _normalize_addr(addr: str) -> str:
    address = normalize_ip(addr)
    return str(address) if address is not None else addr.strip().lower()


def tuple_key(proto: str, remote_addr: str, remote_port: int, local_addr: str, local_port: int) -> str:
    """The original's key string, `proto|remote_addr|remote_port|local_addr|local_port`,
    with `::ffff:` mapped addresses written as IPv4 and IPv6 in canonical form."""
    return "|".join(
        (
            proto.strip().lower(),
            _normalize_addr(remote_addr),
            str(int(remote_port)),
            _normalize_addr(local_addr),
            str(int(local_port)),
        )
    )


def key_for_outbound_socket(
    proto: str, sock_local: tuple[Any, ...], sock_peer: tuple[Any, ...]
) -> TupleKey:
    """The tuple a backend will ask about, from the provider's own socket:
    `getsockname()` is the backend's remote end, `getpeername()` its local end."""
    return (proto, str(sock_local[0]), int(sock_local[1]), str(sock_peer[0]), int(sock_peer[1]))


def make_fingerprint(
    *,
    protocol: str,
    gate_port: int,
    channel_port: int,
    client: tuple[str, int],
    gateway: tuple[str, int],
    labels: tuple[str, ...] = (),
    opened_at_ms: int | None = None,
    fingerprint_id: str | None = None,
) -> dict[str, Any]:
    """The fingerprint a gateway sends with `open`, in the original's shape
    (`ingressLabels` only when the policy gave labels)."""
    fingerprint: dict[str, Any] = {
        "id": fingerprint_id or secrets.token_hex(16),
        "openedAt": opened_at_ms if opened_at_ms is not None else wall_clock_ms(),
        "protocol": protocol,
        "gatePort": gate_port,
        "channelPort": channel_port,
        "source": {"ip": _normalize_addr(client[0]), "ipRaw": client[0], "port": client[1]},
        "gateway": {"ip": _normalize_addr(gateway[0]), "ipRaw": gateway[0], "port": gateway[1]},
    }
    if labels:
        fingerprint["ingressLabels"] = list(labels)
    return fingerprint


@attrs.frozen
class FingerprintEntry:
    fingerprint: dict[str, Any]
    protocol: str
    gate_port: int
    channel_port: int
    created_at_ms: int


class FingerprintRegistry:
    """Open channels of a provider by the socket tuple their backend sees."""

    def __init__(self, *, max_entries: int = limits.MAX_FINGERPRINT_ENTRIES) -> None:
        self._entries: dict[str, FingerprintEntry] = {}
        self._max_entries = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: TupleKey, entry: FingerprintEntry) -> bool:
        """Register an entry; False (and not stored) when the registry is full."""
        text = tuple_key(*key)
        if text not in self._entries and len(self._entries) >= self._max_entries:
            log.warning("fingerprint_registry_full entries=%d", len(self._entries))
            return False
        self._entries[text] = entry
        return True

    def remove(self, key: TupleKey) -> None:
        self._entries.pop(tuple_key(*key), None)

    @contextlib.contextmanager
    def registered(self, key: TupleKey, entry: FingerprintEntry) -> Iterator[None]:
        """Entry present for the body of the `with` (the channel's life), gone after."""
        self.add(key, entry)
        try:
            yield
        finally:
            self.remove(key)

    def resolve(
        self, proto: str, remote_addr: str, remote_port: int, local_addr: str, local_port: int
    ) -> FingerprintEntry | None:
        return self._entries.get(tuple_key(proto, remote_addr, remote_port, local_addr, local_port))


def _first(query: dict[str, str], *names: str) -> str:
    # The original accepts these aliases; keep them so existing backends keep working.
    for name in names:
        if query.get(name):
            return query[name]
    return ""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        return 0
    return value if 0 < value <= 65535 else 0


def make_handler(
    registry: FingerprintRegistry,
    basic_auth: str | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms,
) -> Handler:
    """The resolver's HTTP handler. `basic_auth` is the `user:pass` setting or None."""
    credentials = parse_basic_auth_setting(basic_auth)

    async def handle(request: Request) -> Response:
        if request.path == "/health":
            return json_response(200, {"ok": True})
        if not basic_auth_ok(request, credentials):
            return json_response(
                401,
                {"error": "unauthorized"},
                (("WWW-Authenticate", 'Basic realm="hypergate-fingerprint-resolver"'),),
            )
        if request.path != "/resolve":
            return json_response(404, {"error": "not_found"})
        query = request.query
        proto = (_first(query, "proto", "protocol") or "tcp").lower()
        remote_addr = _first(query, "remote_addr", "remoteAddr")
        remote_port = _port(_first(query, "remote_port", "remotePort"))
        local_addr = _first(query, "server_addr", "local_addr", "localAddr")
        local_port = _port(_first(query, "server_port", "local_port", "localPort"))
        if not (remote_addr and remote_port and local_addr and local_port):
            return json_response(400, {"error": "missing_tuple_params"})
        key = tuple_key(proto, remote_addr, remote_port, local_addr, local_port)
        entry = registry.resolve(proto, remote_addr, remote_port, local_addr, local_port)
        if entry is None:
            return json_response(404, {"error": "not_found", "key": key})
        return json_response(
            200,
            {
                "key": key,
                "protocol": entry.protocol,
                "gatePort": entry.gate_port,
                "channelPort": entry.channel_port,
                "fingerprint": entry.fingerprint,
                "createdAt": entry.created_at_ms,
                "expiresAt": max(entry.created_at_ms, clock_ms()) + limits.FINGERPRINT_CACHE_HINT_MS,
            },
        )

    return handle


async def serve_fingerprint_resolver(
    registry: FingerprintRegistry,
    host: str = "127.0.0.1",
    port: int = 8080,
    basic_auth: str | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the resolver until cancelled (port 0 = any free port, reported via
    task_status; the CLI's `--fingerprintResolverPort 0` means "disabled": do not call)."""
    await serve_http(make_handler(registry, basic_auth), host, port, task_status=task_status)
