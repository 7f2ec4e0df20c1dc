"""PolicySource against a real HTTP server on loopback, with the default fetch (urllib in
a thread): the policy follows the URL, and a failing URL keeps the last good policy."""

from __future__ import annotations

import json

import trio

from hypergate.http.server import Request, Response, json_response, serve_http
from hypergate.policy.source import PolicySource


def labels_of(source: PolicySource) -> tuple[str, ...]:
    return source.policy.decide("192.0.2.1", 80, "tcp", 0).labels


async def test_refresh_from_a_real_local_http_server():
    """The default fetch (urllib in a thread) against a real server on loopback."""
    state: dict[str, object] = {"status": 200, "body": {"ips": {"*": {"labels": ["first"]}}}}

    async def handler(request: Request) -> Response:
        if state["status"] != 200:
            return json_response(int(state["status"]), {"error": "down"})
        return Response(200, json.dumps(state["body"]).encode(), (("Content-Type", "application/json"),))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, handler, "127.0.0.1", 0)
            source = PolicySource([f"http://127.0.0.1:{port}/policy.json"])
            await source.load()
            assert labels_of(source) == ("first",)

            state["body"] = {"ips": {"*": {"labels": ["second"]}}}
            assert await source.refresh()
            assert labels_of(source) == ("second",)

            state["status"] = 500
            assert not await source.refresh()
            assert labels_of(source) == ("second",)
            nursery.cancel_scope.cancel()
