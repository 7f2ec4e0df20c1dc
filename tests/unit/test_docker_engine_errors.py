"""How the Engine API client reports failures, against canned answers on a real unix
socket (the happy paths run against Podman in tests/integration/test_docker_engine.py)."""

import os

import pytest
import trio

from hypergate.docker.engine import DockerEngine, DockerError, DockerUnavailable


async def serve_canned(socket_path, answer: bytes, nursery, requests):
    listener_sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener_sock.bind(socket_path)
    listener_sock.listen()
    listener = trio.SocketListener(listener_sock)

    async def handle(stream):
        async with stream:
            request = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in request:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    request += chunk
            requests.append(request)
            await stream.send_all(answer)

    nursery.start_soon(trio.serve_listeners, handle, [listener])


@pytest.fixture
def socket_path(tmp_path):
    return os.fspath(tmp_path / "docker.sock")


async def test_error_status_carries_daemon_message(socket_path):
    body = b'{"message":"No such container: nope"}'
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    requests = []
    async with trio.open_nursery() as nursery:
        await serve_canned(socket_path, answer, nursery, requests)
        with pytest.raises(DockerError) as info:
            await DockerEngine(socket_path).inspect_container("nope")
        nursery.cancel_scope.cancel()
    assert info.value.status == 404
    assert str(info.value) == "docker GET /containers/nope/json: HTTP 404: No such container: nope"
    assert requests[0].startswith(b"GET /v1.41/containers/nope/json HTTP/1.1\r\n")


async def test_chunked_json_answer_and_query(socket_path):
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\n[{\"Id\r\n8\r\n\": \"x\"}]\r\n0\r\n\r\n"
    )
    requests = []
    async with trio.open_nursery() as nursery:
        await serve_canned(socket_path, answer, nursery, requests)
        containers = await DockerEngine(socket_path).list_containers(filters={"network": ["n"]})
        nursery.cancel_scope.cancel()
    assert containers == [{"Id": "x"}]
    assert b"filters=%7B%22network%22%3A+%5B%22n%22%5D%7D" in requests[0]


async def test_cut_short_answer_is_unavailable(socket_path):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1,"
    async with trio.open_nursery() as nursery:
        await serve_canned(socket_path, answer, nursery, [])
        with pytest.raises(DockerUnavailable, match="malformed or cut-short answer"):
            await DockerEngine(socket_path).version()
        nursery.cancel_scope.cancel()


async def test_non_json_error_body_is_quoted(socket_path):
    answer = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 9\r\n\r\nit broke\n"
    async with trio.open_nursery() as nursery:
        await serve_canned(socket_path, answer, nursery, [])
        with pytest.raises(DockerError, match="HTTP 500: it broke$"):
            await DockerEngine(socket_path).version()
        nursery.cancel_scope.cancel()


async def test_missing_and_dead_socket(socket_path, tmp_path):
    with pytest.raises(DockerUnavailable, match=f"docker socket {socket_path} not found"):
        await DockerEngine(socket_path).ping()
    # A socket file nobody listens on any more (a daemon that stopped).
    dead = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await dead.bind(socket_path)
    dead.close()
    with pytest.raises(DockerUnavailable, match="connection refused"):
        await DockerEngine(socket_path).ping()


async def test_no_answer_in_time_is_unavailable(socket_path, autojump_clock):
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(socket_path)
    listener.listen()  # accepts into the backlog, never answers
    with pytest.raises(DockerUnavailable, match="no answer from"):
        await DockerEngine(socket_path, timeout_s=3).ping()
    listener.close()
