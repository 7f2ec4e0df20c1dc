"""The relay behind a real nginx that terminates TLS, as in a deployment: clients dial wss://."""

import os
import shutil
import socket
import ssl
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme

from hypergate.transport.relay import RelayError, RelayServer, open_relay_stream

from .test_relay import CAP, exchange, open_pair, read_to_eof

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (scripts/test installs it as root: apt-get install nginx)"
)

CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
        location /hypergate {{
            proxy_pass http://127.0.0.1:{relay_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for_port(port: int, proc: trio.Process, error_log: Path) -> None:
    with trio.fail_after(10):
        while True:
            if proc.returncode is not None:
                log = error_log.read_text() if error_log.exists() else ""
                pytest.fail(f"nginx exited with {proc.returncode}:\n{log}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)  # nginx is a separate process: poll until it listens
                continue
            await stream.aclose()
            return


@asynccontextmanager
async def nginx_in_front_of_relay(tmp_path: Path, relay_port: int):
    """nginx terminating TLS for the relay; yields (wss URL, client SSL context)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(CONF.format(tmp=tmp_path, port=port, relay_port=relay_port))
    error_log = tmp_path / "error.log"
    with open(tmp_path / "nginx.out", "wb") as output:
        proc = await trio.lowlevel.open_process(
            [NGINX, "-c", str(conf), "-p", str(tmp_path), "-e", str(error_log)],
            stdout=output,
            stderr=output,
        )
    try:
        await wait_for_port(port, proc, error_log)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        yield f"wss://127.0.0.1:{port}/hypergate", context
    finally:
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_relay_behind_nginx_with_tls(tmp_path):
    seen = []
    relay = RelayServer(path="/hypergate", on_forward=seen.append)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            relay_port = await nursery.start(relay.serve, "127.0.0.1", 0)
            async with nginx_in_front_of_relay(tmp_path, relay_port) as (url, context):
                a, b = await open_pair(url, ssl_context=context)
                assert isinstance(a.transport, trio.SSLStream)
                await exchange(a, b, 2 * 1024 * 1024 + 7)
                await a.aclose()
                await b.aclose()

                # A normal close through nginx still reads as EOF on the other side.
                a, b = await open_pair(url, ssl_context=context)
                await b.send_all(b"bye")
                await b.aclose()
                assert await read_to_eof(a) == b"bye"
                await a.aclose()

                # The relay's close reasons come through nginx too.
                with pytest.raises(RelayError, match="4001 no peer arrived within 1s"):
                    relay.join_timeout = 1.0
                    await open_relay_stream(url, CAP, os.urandom(16), "join", ssl_context=context)

                # Without the test CA the certificate is refused, with a clear message.
                with pytest.raises(RelayError, match="CERTIFICATE_VERIFY_FAILED"):
                    await open_relay_stream(url, CAP, os.urandom(16), "join")
            assert relay.active_pairs == 0
            assert seen
            nursery.cancel_scope.cancel()
    # The traffic really went through nginx: upgraded (101) requests in its access log.
    assert '"GET /hypergate HTTP/1.1" 101' in (tmp_path / "access.log").read_text()
