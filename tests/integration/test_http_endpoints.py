"""The HTTP endpoints, served in-process on loopback, driven by the real `curl` binary;
/unlimited tokens made by the real `openssl` command line as the README recipe writes it."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import trio

from hypergate.http.fingerprint_resolver import (
    FingerprintEntry,
    FingerprintRegistry,
    key_for_outbound_socket,
    make_fingerprint,
    serve_fingerprint_resolver,
)
from hypergate.http.server import Request, Response, json_response, serve_http
from hypergate.http.unlimited_endpoint import serve_unlimited
from hypergate.policy.unlimited import UnlimitedService

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("openssl") is None,
    reason="needs the curl and openssl commands (scripts/apt-packages.txt)",
)

SECRET = "s3cret with spaces"
RESOLVER_AUTH = "backend:pa:ss"  # a password may contain ':'


async def curl(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one curl request."""
    result = await trio.run_process(
        ["curl", "-s", "-S", "-i", "--noproxy", "*", "--max-time", "10", *args, url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def curl_json(url: str, *args: str) -> tuple[int, object]:
    status, headers, body = await curl(url, *args)
    assert headers["content-type"] == "application/json"
    return status, json.loads(body)


async def readme_token(payload_json: str, secret: str = SECRET) -> str:
    """The README recipe, run by bash exactly as a user would paste it."""
    pipeline = (
        f"echo -n '{payload_json}' | openssl enc -aes-256-cbc -pbkdf2 -iter 10000 -md sha256 "
        f"-salt -pass 'pass:{secret}' | base64 | tr '+/' '-_' | tr -d '=\\n'"
    )
    result = await trio.run_process(["bash", "-c", pipeline], capture_stdout=True)
    token = result.stdout.decode()
    assert token and "=" not in token and "+" not in token and "/" not in token
    return token


def now_ms() -> int:
    return int(time.time() * 1000)


# --- fingerprint resolver ---------------------------------------------------------------


async def test_fingerprint_resolver_with_curl_while_a_channel_is_open():
    registry = FingerprintRegistry()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                serve_fingerprint_resolver, registry, "127.0.0.1", 0, RESOLVER_AUTH
            )
            base = f"http://127.0.0.1:{port}"

            # A real "service" and the provider's real outbound connection to it.
            service_listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            service_port = service_listener.socket.getsockname()[1]
            outbound = await trio.open_tcp_stream("127.0.0.1", service_port)
            accepted = await service_listener.accept()
            # What the backend sees: its peer is the provider's outbound socket.
            backend_remote = accepted.socket.getpeername()
            backend_local = accepted.socket.getsockname()
            query = (
                f"/resolve?proto=tcp&remote_addr={backend_remote[0]}&remote_port={backend_remote[1]}"
                f"&local_addr={backend_local[0]}&local_port={backend_local[1]}"
            )

            fingerprint = make_fingerprint(
                protocol="tcp",
                gate_port=8443,
                channel_port=7,
                client=("::ffff:198.51.100.20", 50123),
                gateway=("127.0.0.1", 8443),
                labels=("trusted",),
                opened_at_ms=1_700_000_000_000,
            )
            key = key_for_outbound_socket("tcp", outbound.socket.getsockname(), outbound.socket.getpeername())
            entry = FingerprintEntry(fingerprint, "tcp", 8443, 7, created_at_ms=1_700_000_000_001)

            status, body = await curl_json(base + "/health")
            assert (status, body) == (200, {"ok": True})

            with registry.registered(key, entry):
                status, headers, raw = await curl(base + query)
                assert status == 401
                assert headers["www-authenticate"].startswith("Basic")
                assert json.loads(raw) == {"error": "unauthorized"}
                status, _, _ = await curl(base + query, "-u", "backend:wrong")
                assert status == 401

                auth = ("-u", RESOLVER_AUTH)
                status, body = await curl_json(base + query, *auth)
                assert status == 200
                assert body["key"] == (
                    f"tcp|127.0.0.1|{backend_remote[1]}|127.0.0.1|{backend_local[1]}"
                )
                assert body["protocol"] == "tcp" and body["gatePort"] == 8443
                assert body["channelPort"] == 7 and body["createdAt"] == 1_700_000_000_001
                assert body["expiresAt"] > body["createdAt"]
                assert body["fingerprint"]["source"] == {
                    "ip": "198.51.100.20", "ipRaw": "::ffff:198.51.100.20", "port": 50123
                }
                assert body["fingerprint"]["ingressLabels"] == ["trusted"]
                assert body["fingerprint"]["gatePort"] == 8443
                assert len(body["fingerprint"]["id"]) == 32

                status, body = await curl_json(base + "/resolve?proto=tcp&remote_addr=127.0.0.1", *auth)
                assert (status, body) == (400, {"error": "missing_tuple_params"})
                status, body = await curl_json(
                    base + query.replace(f"remote_port={backend_remote[1]}", "remote_port=1"), *auth
                )
                assert status == 404 and body["error"] == "not_found"
                assert body["key"].startswith("tcp|127.0.0.1|1|")
                status, body = await curl_json(base + "/elsewhere", *auth)
                assert (status, body) == (404, {"error": "not_found"})

            # The channel closed: its entry is gone.
            status, body = await curl_json(base + query, "-u", RESOLVER_AUTH)
            assert status == 404 and body["error"] == "not_found"
            assert len(registry) == 0

            await outbound.aclose()
            await accepted.aclose()
            await service_listener.aclose()
            nursery.cancel_scope.cancel()


async def test_fingerprint_resolver_without_auth_and_with_aliases():
    registry = FingerprintRegistry()
    entry = FingerprintEntry({"id": "x"}, "udp", 53, 9, created_at_ms=1)
    registry.add(("udp", "::ffff:127.0.0.1", 40000, "127.0.0.1", 5353), entry)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_fingerprint_resolver, registry, "127.0.0.1", 0)
            base = f"http://127.0.0.1:{port}"
            status, body = await curl_json(
                base + "/resolve?protocol=UDP&remoteAddr=127.0.0.1&remotePort=40000"
                "&server_addr=::ffff:127.0.0.1&server_port=5353"
            )
            assert status == 200 and body["fingerprint"] == {"id": "x"}
            assert body["key"] == "udp|127.0.0.1|40000|127.0.0.1|5353"
            nursery.cancel_scope.cancel()


# --- /unlimited -------------------------------------------------------------------------


async def test_unlimited_with_openssl_tokens_and_curl():
    service = UnlimitedService(SECRET)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_unlimited, service, "127.0.0.1", 0)
            url = f"http://127.0.0.1:{port}/unlimited"

            token = await readme_token(f'{{"timestamp":{now_ms()},"ip":"127.0.0.1"}}')
            status, body = await curl_json(f"{url}?payload={token}")
            assert status == 200
            assert body["ok"] is True and body["ip"] == "127.0.0.1"
            assert body["expireAt"] == pytest.approx(now_ms() + 30 * 60_000, abs=60_000)
            assert service.grant_expiry("127.0.0.1", now_ms()) == body["expireAt"]

            # The same token again, even sent another way: a replay.
            status, body = await curl_json(url, "--data-urlencode", f"payload={token}")
            assert (status, body) == (409, {"error": "replay_detected"})

            # JSON body and raw body are accepted too.
            fresh = await readme_token(f'{{"timestamp":{now_ms()},"ip":"127.0.0.1"}}')
            status, body = await curl_json(url, "-H", "Content-Type: application/json",
                                           "-d", json.dumps({"payload": fresh}))
            assert status == 200
            raw = await readme_token(f'{{"timestamp":{now_ms()},"ip":"127.0.0.1"}}')
            status, body = await curl_json(url, "--data-binary", raw)
            assert status == 200

            wrong_secret = await readme_token(f'{{"timestamp":{now_ms()},"ip":"127.0.0.1"}}', "other")
            status, body = await curl_json(f"{url}?payload={wrong_secret}")
            assert status == 403 and body["error"] == "invalid_token"

            for_other_ip = await readme_token(f'{{"timestamp":{now_ms()},"ip":"127.0.0.2"}}')
            status, body = await curl_json(f"{url}?payload={for_other_ip}")
            assert (status, body) == (403, {"error": "ip_mismatch", "callerIp": "127.0.0.1"})
            # From 127.0.0.2 itself the same token works: the caller is the TCP peer.
            status, body = await curl_json(f"{url}?payload={for_other_ip}", "--interface", "127.0.0.2")
            assert status == 200 and body["ip"] == "127.0.0.2"

            stale = await readme_token(f'{{"timestamp":{now_ms() - 6 * 60_000},"ip":"127.0.0.1"}}')
            status, body = await curl_json(f"{url}?payload={stale}")
            assert (status, body) == (403, {"error": "timestamp_out_of_window"})

            no_ip = await readme_token(f'{{"timestamp":{now_ms()}}}')
            status, body = await curl_json(f"{url}?payload={no_ip}")
            assert (status, body) == (400, {"error": "invalid_payload"})

            status, body = await curl_json(f"{url}?payload=bm90LWEtdG9rZW4")
            assert status == 403 and body["error"] == "invalid_token"
            status, body = await curl_json(url)
            assert (status, body) == (400, {"error": "missing_payload"})
            status, body = await curl_json(f"http://127.0.0.1:{port}/other")
            assert (status, body) == (404, {"error": "not_found"})

            # Nothing refused was granted.
            assert service.grant_expiry("127.0.0.3", now_ms()) is None
            nursery.cancel_scope.cancel()


# --- the tiny HTTP server itself ---------------------------------------------------------


async def raw_exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = bytearray()
        for _ in range(1000):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            received += chunk
        return bytes(received)


async def test_server_bounds_and_failures():
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return json_response(200, {"path": request.path, "query": request.query, "body": request.body.decode()})

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, handler, "127.0.0.1", 0)
            base = f"http://127.0.0.1:{port}"
            status, body = await curl_json(base + "/echo?a=1&a=2&b=", "-d", "hello")
            assert (status, body) == (200, {"path": "/echo", "query": {"a": "1", "b": ""}, "body": "hello"})
            status, body = await curl_json(base + "/boom")
            assert (status, body) == (500, {"error": "internal_error"})
            status, _, _ = await curl(base + "/big", "--data-binary", "x" * 20000)
            assert status == 413
            status, _, _ = await curl(base + "/", "-H", "X-Big: " + "y" * 20000)
            assert status == 431
            garbage = await raw_exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
            assert garbage.startswith(b"HTTP/1.1 400 ")
            # The server is still fine after all that.
            status, body = await curl_json(base + "/again")
            assert status == 200 and body["path"] == "/again"
            nursery.cancel_scope.cancel()


async def test_silent_client_is_dropped_after_the_connection_timeout(autojump_clock):
    async def handler(request: Request) -> Response:
        return json_response(200, {})

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, handler, "127.0.0.1", 0)
        start = trio.current_time()
        answer = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert answer == b""
        assert trio.current_time() - start == pytest.approx(10.0, abs=0.5)
        nursery.cancel_scope.cancel()
