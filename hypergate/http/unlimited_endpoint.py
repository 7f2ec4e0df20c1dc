"""`/unlimited` (gateway): redeem a token over HTTP; the caller is the TCP peer address.

The token comes, as in the original, from `?payload=...`, or the body as JSON
`{"payload": "..."}`, as a form `payload=...`, or as the raw token. Answers are the
original's JSON shapes: `{"ok": true, "ip": ..., "expireAt": ...}` or
`{"error": code, ...}` with the status codes listed in `hypergate.policy.unlimited`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from urllib.parse import parse_qs

import trio

from .. import limits
from ..policy.unlimited import UnlimitedRefused, UnlimitedService
from .fingerprint_resolver import wall_clock_ms
from .server import Handler, Request, Response, json_response, serve_http

log = logging.getLogger(__name__)


def payload_from_body(body: bytes) -> str | None:
    raw = body.decode("utf-8", errors="replace").strip()
    if not raw:
        return None
    if raw.startswith("{"):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return None
        payload = parsed.get("payload") if isinstance(parsed, dict) else None
        return payload if isinstance(payload, str) else None
    # A form body (`payload=...`); anything else is taken as the raw token.
    if raw.startswith("payload="):
        values = parse_qs(raw).get("payload")
        if values:
            return values[0]
    return raw


def make_handler(service: UnlimitedService, clock_ms: Callable[[], int] = wall_clock_ms) -> Handler:
    decrypt_limiter = trio.CapacityLimiter(limits.UNLIMITED_DECRYPT_THREADS)

    async def handle(request: Request) -> Response:
        if request.path != "/unlimited":
            return json_response(404, {"error": "not_found"})
        token = request.query.get("payload") or payload_from_body(request.body)
        try:
            caller = service.check_request(token, request.peer_host)
            # PBKDF2 costs ~10 ms of CPU: off the event loop that also pumps tunnel traffic.
            opened = await trio.to_thread.run_sync(
                service.open_token, token or "", limiter=decrypt_limiter
            )
            grant = service.admit(opened, caller, clock_ms())
        except UnlimitedRefused as refusal:
            log.info("unlimited_refused caller=%s code=%s", request.peer_host, refusal.code)
            body: dict[str, object] = {"error": refusal.code, **refusal.extra}
            if refusal.code == "invalid_token" and refusal.detail:
                body["detail"] = refusal.detail
            return json_response(refusal.status, body)
        log.info("unlimited_granted ip=%s expire_at_ms=%d", grant.ip, grant.expire_at_ms)
        return json_response(200, {"ok": True, "ip": grant.ip, "expireAt": grant.expire_at_ms})

    return handle


async def serve_unlimited(
    service: UnlimitedService,
    host: str = "127.0.0.1",
    port: int = 8091,
    *,
    clock_ms: Callable[[], int] = wall_clock_ms,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/unlimited` until cancelled; reports the bound port via task_status."""
    await serve_http(make_handler(service, clock_ms), host, port, task_status=task_status)
