"""TCP hole punching by simultaneous open, for peers met on the DHT.

Both sides bind a TCP socket to a port of its own and tell the other (FINISH / READY)
their public IP as DHT nodes see it with that port; both then connect() from that
socket to the other's. Through NATs that keep source ports (consistent), the crossing
SYNs open one TCP connection. Behind a random NAT there is no port to advertise.
"""

from __future__ import annotations

import socket

import trio

from .. import limits
from ..dht.node import DHTNode


async def punch_socket(node: DHTNode, firewall: str):
    """A TCP socket bound to a port of its own, and the address the other side should
    aim at: our public IP as DHT nodes see it, with that port. None for the address
    behind a random NAT, where the port the other side would aim at does not exist."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind(("0.0.0.0", 0))
    public_host = node.nat.host
    if public_host is None or firewall == "random":
        return sock, None
    return sock, (public_host, sock.getsockname()[1])


async def simultaneous_open(sock, their_punch) -> trio.SocketStream | None:
    """connect() from our bound punch socket to the other side's punch address. The
    kernel retransmits the SYN; the other side does the same towards us, so once both
    NATs have a mapping the SYNs cross and one TCP connection results."""
    try:
        with trio.fail_after(limits.RENDEZVOUS_PUNCH_TIMEOUT_S):
            await sock.connect(their_punch)
    except (OSError, trio.TooSlowError):
        sock.close()
        return None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return trio.SocketStream(sock)
