"""A small Docker Engine API client: HTTP/1.1 (h11) over the daemon's unix socket, on trio.

Only the calls hypergate needs. One connection per request: the daemon is local, a
request costs well under a millisecond to set up, and a daemon restart then never leaves
us holding a dead keep-alive connection.

Coded to the Docker Engine API documentation (v1.41, the version Docker 20.10 speaks and
Podman's compatible API answers to). Every failure is a `DockerError` carrying the HTTP
status and the daemon's message; a missing or dead socket is a `DockerUnavailable`.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import attrs
import h11
import trio

from .. import limits
from ..errors import HypergateError

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/docker.sock"
API_VERSION = "v1.41"
_READ_SIZE = 64 * 1024


class DockerError(HypergateError):
    """The daemon refused or failed a request (`status` is its HTTP status)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DockerUnavailable(DockerError):
    """No daemon answers on the socket: missing, refused, or it closed mid-request."""


def _socket_hint(socket_path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return (
            f"docker socket {socket_path} not found: is the daemon running, and is the "
            "socket mounted into this container (-v /var/run/docker.sock:/var/run/docker.sock)?"
        )
    if isinstance(exc, PermissionError):
        return f"docker socket {socket_path}: permission denied (run as root or in the docker group)"
    if isinstance(exc, ConnectionRefusedError):
        return f"docker socket {socket_path}: connection refused (daemon stopped or restarting?)"
    return f"docker socket {socket_path}: {exc.strerror or exc}"


@attrs.define
class DockerEngine:
    """A Docker Engine API client bound to one unix socket."""

    socket_path: str = DEFAULT_SOCKET
    api_version: str = API_VERSION
    timeout_s: float = limits.DOCKER_REQUEST_TIMEOUT_S

    # --- transport --------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        timeout_s: float | None = None,
        ok_statuses: tuple[int, ...] = (),
        decode_json: bool = True,
    ) -> Any:
        """Send one API request; return the decoded JSON body (None when empty).

        `path` is relative to the version prefix, e.g. `/containers/json`. Statuses in
        `ok_statuses` (such as 304 "already started") count as success.
        """
        target = f"/{self.api_version}{path}"
        if query:
            target += "?" + urllib.parse.urlencode(
                {k: v for k, v in query.items() if v is not None}
            )
        what = f"{method} {path}"
        try:
            with trio.fail_after(timeout_s if timeout_s is not None else self.timeout_s):
                status, data = await self._exchange(method, target, body)
        except trio.TooSlowError:
            raise DockerUnavailable(f"docker {what}: no answer from {self.socket_path} in time") from None
        if 200 <= status < 300 or status in ok_statuses:
            return _decode(data, what) if data and decode_json else None
        raise DockerError(f"docker {what}: HTTP {status}: {_error_message(data)}", status=status)

    async def _exchange(self, method: str, target: str, body: Any) -> tuple[int, bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [("Host", "docker"), ("Connection", "close"), ("Content-Length", str(len(payload)))]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        try:
            stream = await trio.open_unix_socket(self.socket_path)
        except OSError as exc:
            raise DockerUnavailable(_socket_hint(self.socket_path, exc)) from None
        conn = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=_READ_SIZE)
        async with stream:
            try:
                out = conn.send(h11.Request(method=method, target=target, headers=headers))
                out += conn.send(h11.Data(data=payload)) if payload else b""
                out += conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                return await _read_response(conn, stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise DockerUnavailable(
                    f"docker socket {self.socket_path}: connection lost: {exc}"
                ) from None
            except h11.RemoteProtocolError as exc:
                raise DockerUnavailable(
                    f"docker socket {self.socket_path}: malformed or cut-short answer: {exc}"
                ) from None

    # --- system -----------------------------------------------------------------------

    async def ping(self) -> None:
        # /_ping answers the text "OK", not JSON.
        await self.request("GET", "/_ping", decode_json=False)

    async def version(self) -> dict[str, Any]:
        return await self.request("GET", "/version")

    # --- containers -------------------------------------------------------------------

    async def list_containers(
        self, *, all: bool = False, filters: dict[str, list[str]] | None = None
    ) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"all": "true" if all else "false"}
        if filters:
            query["filters"] = json.dumps(filters)
        return await self.request("GET", "/containers/json", query=query) or []

    async def inspect_container(self, container: str) -> dict[str, Any]:
        return await self.request("GET", f"/containers/{_quote(container)}/json")

    async def create_container(self, config: dict[str, Any], *, name: str | None = None) -> str:
        answer = await self.request(
            "POST", "/containers/create", query={"name": name}, body=config
        )
        for warning in answer.get("Warnings") or []:
            log.info("docker create warning container=%s warning=%s", name, warning)
        return str(answer["Id"])

    async def start_container(self, container: str) -> None:
        await self.request(
            "POST", f"/containers/{_quote(container)}/start", ok_statuses=(304,), decode_json=False
        )

    async def stop_container(self, container: str, *, timeout_s: int = limits.DOCKER_STOP_TIMEOUT_S) -> None:
        await self.request(
            "POST",
            f"/containers/{_quote(container)}/stop",
            query={"t": str(timeout_s)},
            timeout_s=self.timeout_s + timeout_s,
            ok_statuses=(304,),
            decode_json=False,
        )

    async def remove_container(self, container: str, *, force: bool = True) -> None:
        await self.request(
            "DELETE",
            f"/containers/{_quote(container)}",
            query={"force": "true" if force else "false"},
            timeout_s=self.timeout_s + limits.DOCKER_STOP_TIMEOUT_S,
            decode_json=False,
        )

    # --- networks ---------------------------------------------------------------------

    async def list_networks(self, *, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        query = {"filters": json.dumps(filters)} if filters else None
        return await self.request("GET", "/networks", query=query) or []

    async def inspect_network(self, network: str) -> dict[str, Any]:
        return await self.request("GET", f"/networks/{_quote(network)}")

    async def create_network(
        self, name: str, *, driver: str = "bridge", labels: dict[str, str] | None = None
    ) -> str:
        answer = await self.request(
            "POST",
            "/networks/create",
            body={"Name": name, "Driver": driver, "CheckDuplicate": True, "Labels": labels or {}},
        )
        return str(answer.get("Id") or answer.get("id") or "")

    async def ensure_network(self, name: str) -> dict[str, Any]:
        """The network's inspect document, creating a bridge network of that name first
        when there is none (as the original does on every refresh)."""
        try:
            return await self.inspect_network(name)
        except DockerError as exc:
            if exc.status != 404:
                raise
        try:
            await self.create_network(name)
            log.info("docker network created network=%s", name)
        except DockerError as exc:
            if exc.status != 409:  # created meanwhile by another hypergate process
                raise
        return await self.inspect_network(name)

    async def connect_network(
        self, network: str, container: str, *, aliases: list[str] | None = None
    ) -> None:
        await self.request(
            "POST",
            f"/networks/{_quote(network)}/connect",
            body={"Container": container, "EndpointConfig": {"Aliases": aliases or []}},
            decode_json=False,  # Docker answers an empty body, Podman the text "OK"
        )


async def _read_response(conn: h11.Connection, stream: trio.abc.Stream) -> tuple[int, bytes]:
    status = 0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ_SIZE)
            conn.receive_data(data)  # b"" marks EOF; h11 then raises if the answer is cut
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limits.MAX_DOCKER_RESPONSE:
                raise DockerError(f"docker answer larger than {limits.MAX_DOCKER_RESPONSE} bytes")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, bytes(body)


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _decode(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise DockerError(f"docker {what}: answer is not JSON: {data[:200]!r}") from None


def _error_message(data: bytes) -> str:
    # The Engine API's error body is {"message": "..."}; say something useful otherwise.
    try:
        message = json.loads(data).get("message")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str) and message:
        return message
    return data[:200].decode("utf-8", "replace").strip() or "(no message)"
