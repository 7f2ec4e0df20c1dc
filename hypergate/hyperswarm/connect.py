"""`connect()`: a hyperdht client connection to a Node (or any hyperdht) server, by key.

What Node's `dht.connect(publicKey)` does (hyperdht lib/connect.js; HYPERSWARM-WIRE.md
3.7-3.9, 4.1, 4.2; UDX-WIRE.md 4):

1. FIND_PEER for hash(publicKey): the nodes that hold the server's record relay to it.
2. PEER_HANDSHAKE (FROM_CLIENT) through one of them: IK message 1 carrying our
   NoisePayload (firewall UNKNOWN, udx {version 1, id, seq 0}, secretStream {}). The
   relay forwards, the server answers with message 2 through it (or, if the relay is
   the server itself, directly).
3. The path, from a fresh UDP socket (our UDX and punch socket): to the address we
   handshook with if that was the server; else, if the server is OPEN or lists no
   hole-punch relays, to the first public address it lists, else to the address the
   relay saw it at; else hole punching (punch.py, consistent NATs), and the address
   the server's first probe came from. If punching fails, the seen address is still
   tried (it works on one host or LAN and behind full-cone NATs).
4. A UDX stream to that address; the server's UDX firewall hook connects its side on
   our first packet. Then secret-stream over it: both send a header frame, then
   encrypted frames.

Not done here: random-NAT punching strategies, the blind-relay fallback, the server role.

The result is a trio HalfCloseableStream. Its UDP socket is served by a task in
`nursery` (default: the DHT node's nursery) and closed with the connection.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections import deque

import attrs
import trio

from hypergate.dht import crypto
from hypergate.dht.encoding import Address
from hypergate.dht.messages import Firewall
from hypergate.dht.node import DHTNode
from hypergate.dht.operations import DHTError
from hypergate.dht.payloads import NoisePayload, UdxInfo
from hypergate.errors import HypergateError
from hypergate.hyperswarm.noise_ik import Initiator, NoiseError
from hypergate.hyperswarm.punch import HolepunchFailed, Puncher, punch
from hypergate.hyperswarm.secret_stream import SecretStream, SecretStreamError
from hypergate.hyperswarm.secure_payload import SecurePayload
from hypergate.limits import (
    HYPERSWARM_FIND_PEER_TIMEOUT_S,
    HYPERSWARM_KEEPALIVE_S,
    HYPERSWARM_MAX_RELAYS,
    HYPERSWARM_UDX_CONNECT_TIMEOUT_S,
)
from hypergate.udx import UdxSocket
from hypergate.udx.socket import UdxStream

log = logging.getLogger(__name__)

# hyperdht lib/constants.js ERROR
_SERVER_ERRORS = {1: "ABORTED", 2: "VERSION_MISMATCH", 3: "TRY_LATER"}


class HyperswarmConnectError(HypergateError):
    """A hyperdht connection could not be made; the message names the step that failed."""


@attrs.frozen
class ConnectInfo:
    """How the connection was made (for logs and tests); no key material."""

    remote_public_key: bytes
    relay: Address  # the DHT node the handshake went through
    relayed: bool  # False: the relay was the server itself
    server_address: Address  # where our UDX stream goes
    server_firewall: int
    holepunch_relays: int  # how many the server offered
    punched: bool  # the path was opened by hole punching (else: the address was tried directly)
    find_peer_s: float
    handshake_s: float
    punch_s: float
    udx_connect_s: float  # our header sent -> the server's header received


def is_bogon(host: str) -> bool:
    """npm `bogon` isBogon, near enough: anything not globally routable."""
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return True


def choose_udx_address(payload: NoisePayload, relay: Address, server_address: Address) -> tuple[Address, bool]:
    """hyperdht connect.js holepunch() step 1: where the UDX stream goes, and whether
    Node would have hole punched instead (the address is then only a best try)."""
    relayed = server_address != relay
    if not relayed:
        return relay, False
    holepunchable = bool(payload.holepunch and payload.holepunch.relays)
    for address in payload.addresses4:
        if payload.firewall == Firewall.OPEN or not holepunchable:
            if not is_bogon(address.host):
                return address, False
    return server_address, holepunchable and payload.firewall != Firewall.OPEN


class SecretStreamConnection(trio.abc.HalfCloseableStream):
    """Encrypted bytes over one UDX stream; trio Stream semantics (b"" at the peer's EOF)."""

    def __init__(
        self, udx: UdxSocket, stream: UdxStream | None, secret: SecretStream | None, info: ConnectInfo | None
    ) -> None:
        self.udx = udx
        self.udx_stream = stream
        self.secret = secret
        self.info = info
        self._plain: deque[bytes] = deque()
        self._send_lock = trio.Lock()
        self._receive_guard = False
        self._eof_sent = False
        self._closed = False
        self._last_send = trio.current_time()
        self._scope: trio.CancelScope | None = None
        self._header_done = trio.Event()  # set once connected: keep-alives may start
        self.bytes_sent = 0
        self.bytes_received = 0
        self.keepalives_sent = 0

    def __repr__(self) -> str:
        remote = self.info.remote_public_key.hex()[:16] if self.info else "?"
        return f"<SecretStreamConnection to {remote} via {self.udx_stream!r}>"

    async def _write(self, plain: bytes | bytearray | memoryview | None) -> None:
        """Encrypt and send under one lock: frames must leave in the order they were
        sealed (secretstream nonces). None is the header frame."""
        async with self._send_lock:
            frames = self.secret.header() if plain is None else self.secret.encrypt(plain)
            await self.udx_stream.send_all(frames)
            self._last_send = trio.current_time()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the connection is closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof was already called")
        if not data:
            await trio.lowlevel.checkpoint()
            return
        await self._write(data)
        self.bytes_sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.udx_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the connection is closed")
        if self._eof_sent:
            await trio.lowlevel.checkpoint()
            return
        async with self._send_lock:
            self._eof_sent = True
            await self.udx_stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receive_guard:
            raise trio.BusyResourceError("another task is already receiving on this connection")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._receive_guard = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the connection is closed")
            while not self._plain:
                raw = await self.udx_stream.receive_some()
                if not raw:
                    if self.secret.buffered:
                        raise trio.BrokenResourceError("the peer ended the stream inside a secret-stream frame")
                    return b""
                self._feed(raw)
            chunk = self._plain.popleft()
            if max_bytes is not None and len(chunk) > max_bytes:
                self._plain.appendleft(chunk[max_bytes:])
                chunk = chunk[:max_bytes]
            self.bytes_received += len(chunk)
            return chunk
        finally:
            self._receive_guard = False

    def _feed(self, raw: bytes) -> None:
        try:
            self._plain.extend(self.secret.receive(raw))
        except SecretStreamError as exc:
            self.udx_stream._destroy()
            raise trio.BrokenResourceError(str(exc)) from exc

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self.udx_stream is not None:
                await self.udx_stream.aclose()
            else:
                await trio.lowlevel.checkpoint()
        finally:
            if self._scope is not None:
                self._scope.cancel()

    async def _keepalive(self) -> None:
        """hyperdht connectionKeepAlive: an empty frame when nothing was sent for 5 s."""
        while not self._closed and not self._eof_sent:
            due = self._last_send + HYPERSWARM_KEEPALIVE_S
            if trio.current_time() < due or self._send_lock.locked():
                await trio.sleep_until(max(due, trio.current_time() + 0.5))
                continue
            try:
                await self._write(b"")
                self.keepalives_sent += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _serve(self, started: trio.Event) -> None:
        """The UDP socket's reader and timers, and keep-alives, until closed."""
        with trio.CancelScope() as scope:
            self._scope = scope
            if self._closed:
                scope.cancel()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.udx.run)
                started.set()
                await self._header_done.wait()
                nursery.start_soon(self._keepalive)


async def _find_relays(node: DHTNode, public_key: bytes) -> list[Address]:
    with trio.move_on_after(HYPERSWARM_FIND_PEER_TIMEOUT_S):
        results = await node.find_peer(public_key)
        relays = [r.node for r in results if any(p.public_key == public_key for p in r.peers)]
        return relays[:HYPERSWARM_MAX_RELAYS]
    raise HyperswarmConnectError(
        f"finding the server {public_key.hex()[:16]} on the DHT took more than {HYPERSWARM_FIND_PEER_TIMEOUT_S:.0f} s"
    )


async def connect(
    node: DHTNode,
    server_public_key: bytes,
    key_pair: crypto.KeyPair | None = None,
    *,
    nursery: trio.Nursery | None = None,
    relays: list[Address] | None = None,
    holepunch: bool = True,
) -> SecretStreamConnection:
    """Connect to the hyperdht server listening with `server_public_key`.

    `relays` skips the FIND_PEER walk (hyperdht opts.relayAddresses). `holepunch=False`
    skips the hole-punch rounds and tries the server's seen address directly. Raises
    HyperswarmConnectError naming the failed step.
    """
    if len(server_public_key) != 32:
        raise HyperswarmConnectError("the server's public key must be 32 bytes (64 hex characters)")
    key_pair = key_pair or crypto.KeyPair.generate()
    short = server_public_key.hex()[:16]
    started_at = trio.current_time()
    if relays is None:
        relays = await _find_relays(node, server_public_key)
        if not relays:
            raise HyperswarmConnectError(
                f"the server {short} is not announced on the DHT (no node holds a record for its key)"
            )
    found_at = trio.current_time()

    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await sock.bind((node.config.host, 0))
        puncher = Puncher(node, sock)
        udx = UdxSocket(sock, puncher.on_datagram)
    except BaseException:
        sock.close()
        raise
    conn = SecretStreamConnection(udx, None, None, None)
    started = trio.Event()
    # From here the serving task owns the socket: closing `conn` closes it.
    if nursery is not None:
        nursery.start_soon(conn._serve, started)
    else:
        node.spawn(lambda: conn._serve(started))
    try:
        await started.wait()
        return await _handshake_and_open(
            node, conn, puncher, server_public_key, key_pair, relays, holepunch, started_at, found_at
        )
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(conn)
        raise


async def _handshake_and_open(
    node: DHTNode,
    conn: SecretStreamConnection,
    puncher: Puncher,
    server_public_key: bytes,
    key_pair: crypto.KeyPair,
    relays: list[Address],
    holepunch: bool,
    started_at: float,
    found_at: float,
) -> SecretStreamConnection:
    short = server_public_key.hex()[:16]
    udx = conn.udx
    local_id = udx.new_stream_id()
    initiator = Initiator(key_pair, server_public_key)
    msg1 = initiator.write_message1(
        NoisePayload(firewall=Firewall.UNKNOWN, udx=UdxInfo(id=local_id), secret_stream_version=1).encode()
    )
    reply = None
    relay: Address | None = None
    failures: list[str] = []
    for relay in relays:
        try:
            reply = await node.peer_handshake(server_public_key, msg1, relay)
            break
        except DHTError as exc:
            failures.append(f"{relay}: {exc}")
    if reply is None:
        raise HyperswarmConnectError(
            f"no handshake reply from the server {short} through {len(relays)} relay(s) "
            f"(the server is gone or unreachable): {'; '.join(failures)}"
        )
    try:
        payload = NoisePayload.decode(initiator.read_message2(reply.noise))
    except NoiseError as exc:
        raise HyperswarmConnectError(f"server refused the handshake: {exc}") from exc
    except Exception as exc:  # CodecError: a payload we cannot read
        raise HyperswarmConnectError(f"server refused the handshake: unreadable payload ({exc})") from exc
    if payload.version != 1:
        raise HyperswarmConnectError(f"server refused the handshake: incompatible version {payload.version}")
    if payload.error:
        name = _SERVER_ERRORS.get(payload.error, str(payload.error))
        raise HyperswarmConnectError(f"server refused the handshake: error {name}")
    if payload.udx is None:
        raise HyperswarmConnectError("server refused the handshake: it sent no UDX stream id")
    handshake_at = trio.current_time()
    result = initiator.result
    address, needs_punch = choose_udx_address(payload, relay, reply.server_address)
    punched = False
    punch_failure = ""
    if needs_punch and holepunch:
        secure = SecurePayload(result.holepunch_secret)
        with trio.move_on_after(HYPERSWARM_UDX_CONNECT_TIMEOUT_S):
            try:
                address = await punch(puncher, server_public_key, payload.holepunch, secure, relay, reply.server_address)
                punched = True
            except HolepunchFailed as exc:
                punch_failure = str(exc)
                log.info("hyperswarm punch failed server=%s reason=%s; trying %s directly", short, exc, address)
        if not punched and not punch_failure:
            punch_failure = f"hole punch: no path within {HYPERSWARM_UDX_CONNECT_TIMEOUT_S:.0f} s"
    punched_at = trio.current_time()
    secret = SecretStream(result)
    stream = udx.open_stream(local_id, payload.udx.id, (address.host, address.port))
    conn.udx_stream, conn.secret = stream, secret
    try:
        with trio.move_on_after(HYPERSWARM_UDX_CONNECT_TIMEOUT_S) as timeout:
            await conn._write(None)
            while not secret.ready:
                raw = await stream.receive_some()
                if not raw:
                    raise HyperswarmConnectError("the server ended the UDX stream before its secret-stream header")
                conn._feed(raw)
    except trio.BrokenResourceError as exc:
        raise HyperswarmConnectError(f"the server's secret-stream failed: {exc}") from exc
    if timeout.cancelled_caught:
        hint = f" ({punch_failure})" if punch_failure else ""
        raise HyperswarmConnectError(
            f"no route to the peer's UDX address {address} within {HYPERSWARM_UDX_CONNECT_TIMEOUT_S:.0f} s{hint}"
        )
    conn.info = ConnectInfo(
        remote_public_key=server_public_key,
        relay=relay,
        relayed=reply.server_address != relay,
        server_address=address,
        server_firewall=payload.firewall,
        holepunch_relays=len(payload.holepunch.relays) if payload.holepunch else 0,
        punched=punched,
        find_peer_s=found_at - started_at,
        handshake_s=handshake_at - found_at,
        punch_s=punched_at - handshake_at,
        udx_connect_s=trio.current_time() - punched_at,
    )
    conn._header_done.set()
    return conn
