"""`hypergate tele`: what the npm `hypertele` client does, on our hyperdht client.

Each TCP connection to the listen port opens one hyperdht connection to the server's
public key (a `hypertele-server`, or any hyperdht server that pipes connections to a
TCP service) and splices bytes both ways, half-close included: EOF from the local
client becomes the UDX stream's END and back. A failure on either side resets the
local socket (TCP RST), so a cut transfer never looks complete.
"""

from __future__ import annotations

import logging
import time

import trio

from hypergate.dht import crypto
from hypergate.dht.node import NodeConfig, open_dht_node
from hypergate.errors import HypergateError
from hypergate.hyperswarm.connect import HyperswarmConnectError, SecretStreamConnection, connect
from hypergate.limits import SOCKET_READ_SIZE, TELE_CONNECT_ATTEMPTS, TELE_RELAY_CACHE_S
from hypergate.roles.forwarding import abort_socket

log = logging.getLogger(__name__)


async def _pump(source, sink, count: list[int], index: int) -> None:
    while True:
        data = await source.receive_some(SOCKET_READ_SIZE)
        if not data:
            await sink.send_eof()
            return
        count[index] += len(data)
        await sink.send_all(data)


async def splice(tcp: trio.SocketStream, conn: SecretStreamConnection) -> tuple[int, int, str | None]:
    """Both directions until both ended; (bytes up, bytes down, failure or None).
    Closes both; the TCP socket with RST on failure."""
    count = [0, 0]
    failure: str | None = None
    try:
        async with trio.open_nursery() as nursery:

            async def run(source, sink, index: int, name: str) -> None:
                nonlocal failure
                try:
                    await _pump(source, sink, count, index)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    failure = failure or f"{name}: {exc}"
                    nursery.cancel_scope.cancel()

            nursery.start_soon(run, tcp, conn, 0, "local to server")
            nursery.start_soon(run, conn, tcp, 1, "server to local")
    finally:
        if failure is None:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await tcp.aclose()
                await conn.aclose()
        else:
            abort_socket(tcp)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(conn)
    return count[0], count[1], failure


class RelayMemory:
    """The DHT node that last relayed a handshake to the server, for a while: a burst of
    local connections then skips one FIND_PEER walk each (hyperdht's `relayAddresses`)."""

    def __init__(self) -> None:
        self._relay = None
        self._until = 0.0

    def get(self) -> list | None:
        if self._relay is not None and trio.current_time() < self._until:
            return [self._relay]
        return None

    def remember(self, relay) -> None:
        self._relay, self._until = relay, trio.current_time() + TELE_RELAY_CACHE_S

    def forget(self) -> None:
        self._relay = None


async def connect_with_retry(node, server_public_key: bytes, key_pair, memory: RelayMemory) -> SecretStreamConnection:
    """A remembered relay first; on failure (the server moved, a punch lost its race),
    forget it and try again from a fresh FIND_PEER, up to TELE_CONNECT_ATTEMPTS in all."""
    for attempt in range(1, TELE_CONNECT_ATTEMPTS + 1):
        relays = memory.get()
        try:
            conn = await connect(node, server_public_key, key_pair, relays=relays)
        except HyperswarmConnectError as exc:
            memory.forget()
            if attempt == TELE_CONNECT_ATTEMPTS:
                raise
            log.info("event=tele_connect_retry attempt=%d reason=%s", attempt, exc)
            continue
        memory.remember(conn.info.relay)
        return conn
    raise AssertionError("unreachable")


async def run_tele(
    server_public_key: bytes,
    host: str,
    port: int,
    bootstrap: tuple[str, ...],
    *,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port; `started()` with the bound (host, port) once the DHT is joined."""
    key_pair = crypto.KeyPair.generate()
    short = server_public_key.hex()[:16]
    async with open_dht_node(NodeConfig(bootstrap=bootstrap)) as node:
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise HypergateError(f"tele: cannot listen on {host}:{port}: {exc}") from exc
        bound = listeners[0].socket.getsockname()[:2]
        log.info("event=tele_listening listen=%s:%d server=%s", bound[0], bound[1], short)
        task_status.started(bound)
        serial = 0
        memory = RelayMemory()

        async def handle(tcp: trio.SocketStream) -> None:
            nonlocal serial
            serial += 1
            cid = serial
            peer = tcp.socket.getpeername()
            started = time.monotonic()
            try:
                conn = await connect_with_retry(node, server_public_key, key_pair, memory)
            except (HyperswarmConnectError, HypergateError) as exc:
                log.warning("event=tele_connect_failed conn=%d client=%s:%d server=%s reason=%s", cid, *peer[:2], short, exc)
                abort_socket(tcp)
                return
            except Exception as exc:  # one connection's bug must not end the command
                log.exception("event=tele_connect_failed conn=%d server=%s reason=unexpected: %r", cid, short, exc)
                abort_socket(tcp)
                return
            info = conn.info
            log.info(
                "event=tele_connected conn=%d client=%s:%d server=%s relay=%s relayed=%s udx=%s punched=%s "
                "find_peer_ms=%.1f handshake_ms=%.1f punch_ms=%.1f udx_ms=%.1f total_ms=%.1f",
                cid, *peer[:2], short, info.relay, info.relayed, info.server_address, info.punched,
                info.find_peer_s * 1000, info.handshake_s * 1000, info.punch_s * 1000, info.udx_connect_s * 1000,
                (time.monotonic() - started) * 1000,
            )
            up, down, failure = await splice(tcp, conn)
            duration = time.monotonic() - started
            log.info(
                "event=tele_closed conn=%d bytes_up=%d bytes_down=%d seconds=%.2f failure=%s",
                cid, up, down, duration, failure or "-",
            )

        await trio.serve_listeners(handle, listeners)
