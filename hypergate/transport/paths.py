"""The race for a link's path once the relayed handshake is done (client side).

Direct TCP to the peer's addresses, the hole punches (TCP simultaneous open, UDP), and
after a head start the peer's WebSocket relay: the first path wins, the others close.
"""

from __future__ import annotations

import trio

from .. import limits
from . import tcp_punch
from .punch_plan import Strategy, plan
from .udp_punch import Punched

HOLEPUNCH_KINDS = ("udp", "tcp")


def parse_holepunch(value: str) -> tuple[str, ...]:
    """--holepunch LIST: comma-separated `udp`, `tcp`, or `none` alone."""
    items = [item.strip().lower() for item in value.split(",") if item.strip()]
    if items == ["none"]:
        return ()
    bad = [item for item in items if item not in HOLEPUNCH_KINDS]
    if bad or not items:
        raise ValueError(f"--holepunch: expected udp, tcp, both (udp,tcp) or none, got {value!r}")
    return tuple(dict.fromkeys(items))


async def open_paths(addresses, punch_sock, their_punch, relay_join=None, udp=None, their_udp=None, name="?"):
    """Race the peer's direct addresses (staggered: a NAT's public address may silently
    drop us while the LAN one works), the hole punches (TCP simultaneous open; UDP) and,
    after a short head start for those, the peer's relay; the first path wins, the
    others are closed. Returns (stream, "direct"|"punched-tcp"|"relayed"), or
    (Punched, "punched-udp") for the caller to start UDX on."""
    winner: list = []
    if punch_sock is None:
        their_punch = None
    if udp is None or udp.info is None or their_udp is None:
        udp = None
    udp_plan = plan(udp.info, their_udp) if udp is not None else None
    # A multi-port UDP punch takes seconds; the relay waits for its outcome.
    udp_slow = udp_plan is not None and udp_plan.strategy in (Strategy.SPRAY, Strategy.BIRTHDAY)
    udp_over = trio.Event()

    async def finish(stream, kind: str, nursery: trio.Nursery) -> None:
        if winner:
            await _discard(stream)
            return
        winner.append((stream, kind))
        nursery.cancel_scope.cancel()

    async def direct(host: str, port: int, delay: float, nursery: trio.Nursery) -> None:
        await trio.sleep(delay)
        try:
            with trio.fail_after(limits.RENDEZVOUS_CONNECT_TIMEOUT_S):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError):
            return
        await finish(stream, "direct", nursery)

    async def punch(nursery: trio.Nursery) -> None:
        stream = await tcp_punch.simultaneous_open(punch_sock, their_punch)
        if stream is not None:
            await finish(stream, "punched-tcp", nursery)

    async def punch_udp(nursery: trio.Nursery) -> None:
        try:
            punched = await udp.punch(their_udp, initiator=True, name=name)
        finally:
            udp_over.set()
        if punched is not None:
            await finish(punched, "punched-udp", nursery)

    async def relayed(nursery: trio.Nursery) -> None:
        # Nothing to wait for when no punch is possible and the peer gave no address.
        if their_punch is not None or addresses or (udp_plan is not None and udp_plan.punches):
            await trio.sleep(limits.RENDEZVOUS_RELAY_HEAD_START_S)
        if udp_slow:
            await udp_over.wait()
        stream = await relay_join()
        if stream is not None:
            await finish(stream, "relayed", nursery)

    async with trio.open_nursery() as nursery:
        for index, (host, port) in enumerate(addresses):
            nursery.start_soon(direct, host, port, index * limits.RENDEZVOUS_CONNECT_STAGGER_S, nursery)
        if their_punch is not None:
            nursery.start_soon(punch, nursery)
        if udp is not None:
            nursery.start_soon(punch_udp, nursery)
        if relay_join is not None:
            nursery.start_soon(relayed, nursery)
    if punch_sock is not None and (not winner or winner[0][1] != "punched-tcp"):
        punch_sock.close()
    return winner[0] if winner else (None, None)


async def _discard(path) -> None:
    """Close a path that lost the race (a stream, or a punched UDP socket)."""
    if isinstance(path, Punched):
        path.close()
    else:
        await trio.aclose_forcefully(path)


def describe_remote(stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            host, port = sock.getpeername()[:2]
            return f"{host}:{port}"
        except OSError:
            pass
    remote = getattr(stream, "remote_address", None)  # a UDX stream
    if remote is not None:
        return f"{remote[0]}:{remote[1]}"
    return getattr(stream, "url", "relay")


