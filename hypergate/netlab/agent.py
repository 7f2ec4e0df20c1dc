"""A socket agent for the NAT lab: run inside a namespace, driven by JSON lines on stdin.

`python -m hypergate.netlab.agent` reads one JSON object per line, `{"op": NAME, ...args}`,
runs it, and writes one JSON line back: the result object, or `{"error": "..."}`. Operations
run one at a time; the observer servers run in background threads so they keep answering
while a long operation (a punch) blocks the main loop. Standard library only, no trio: it
is the "real socket" side of the lab tests, independent of the code under test.

Operations (addresses are `[host, port]` lists; data is text):
- udp_bind(host="0.0.0.0", port=0) -> {sock, local}
- udp_send(sock, to, data="x") -> {}
- udp_recv(sock, timeout, match="") -> {data, from} | {timeout: true}; skips datagrams
  not starting with `match`
- udp_drain(sock) -> {count}: discard everything queued
- observe(sock, server, timeout=1.0, tries=3) -> {observed}: ask an observer server how
  this socket is seen
- punch(sock, to, payload="punch", interval=0.05, timeout=3.0, acks=3) -> {ok, from, sent,
  elapsed}: send `payload` to `to` every `interval` until a datagram from `to` arrives
  (then send `acks` "ack" datagrams so the other side hears us too), or `timeout`;
  datagrams queued before the punch starts are discarded first
- udp_bind_many(count) -> {socks}
- punch_many(socks, to, payload="punch", resend=1.0, timeout=10.0) -> {ok, sock, local,
  from, rounds, elapsed}: every socket sends to `to`; the first to hear from `to`'s host
  answers (birthday punch, random side)
- spray(sock, host, ports=[1024, 65536], interval=0.001, timeout=10.0) -> {ok, from, sent,
  elapsed}: random ports of `host` until it answers (birthday punch, consistent side)
- close(sock) -> {}
- serve_observer(host, port=0, tcp=true) -> {local}: UDP (and TCP on the same port)
  server answering every datagram/connection with `{"observed": [ip, port]}`
- tcp_connect(to, timeout=2.0, local_port=0) -> {ok, local, data} | {ok: false, error}:
  connect, read until EOF (an observer answers and closes)
- tcp_listen(host="0.0.0.0", port=0) -> {sock, local}
- tcp_accept(sock, timeout) -> {from, data} | {timeout: true}: accept one connection,
  send "hello", read until EOF
"""

from __future__ import annotations

import json
import random
import select
import socket
import sys
import threading
import time
from typing import Any

_socks: dict[int, socket.socket] = {}
_next = 0


def _add(sock: socket.socket) -> int:
    global _next
    _next += 1
    _socks[_next] = sock
    return _next


def _addr(value: Any) -> tuple[str, int]:
    return (str(value[0]), int(value[1]))


def udp_bind(host: str = "0.0.0.0", port: int = 0) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return {"sock": _add(sock), "local": list(sock.getsockname())}


def udp_send(sock: int, to: Any, data: str = "x") -> dict[str, Any]:
    _socks[sock].sendto(data.encode(), _addr(to))
    return {}


def udp_recv(sock: int, timeout: float, match: str = "") -> dict[str, Any]:
    s = _socks[sock]
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return {"timeout": True}
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(65535)
        except (socket.timeout, TimeoutError):
            return {"timeout": True}
        text = data.decode(errors="replace")
        if text.startswith(match):
            return {"data": text, "from": list(peer)}


def udp_drain(sock: int) -> dict[str, Any]:
    s = _socks[sock]
    s.setblocking(False)
    count = 0
    try:
        while True:
            s.recvfrom(65535)
            count += 1
    except BlockingIOError:
        pass
    finally:
        s.setblocking(True)
    return {"count": count}


def observe(sock: int, server: Any, timeout: float = 1.0, tries: int = 3) -> dict[str, Any]:
    target = _addr(server)
    for _ in range(tries):
        udp_send(sock, server, "observe")
        got = udp_recv(sock, timeout, match='{"observed"')
        if "data" in got and tuple(got["from"]) == target:
            return {"observed": json.loads(got["data"])["observed"]}
    raise TimeoutError(f"no answer from observer {target}")


def punch(sock: int, to: Any, payload: str = "punch", interval: float = 0.05,
          timeout: float = 3.0, acks: int = 3) -> dict[str, Any]:
    udp_drain(sock)  # a fresh punch: leftovers of an earlier one do not count
    s = _socks[sock]
    target = _addr(to)
    start = time.monotonic()
    deadline = start + timeout
    next_send = start
    sent = 0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return {"ok": False, "sent": sent, "elapsed": round(now - start, 6)}
        if now >= next_send:
            s.sendto(payload.encode(), target)
            sent += 1
            next_send += interval
        s.settimeout(max(0.001, min(next_send, deadline) - now))
        try:
            data, peer = s.recvfrom(65535)
        except (socket.timeout, TimeoutError):
            continue
        if peer == target:
            for _ in range(acks):
                s.sendto(b"ack", target)
            return {"ok": True, "from": list(peer), "data": data.decode(errors="replace"),
                    "sent": sent, "elapsed": round(time.monotonic() - start, 6)}


def udp_bind_many(count: int, host: str = "0.0.0.0") -> dict[str, Any]:
    """`count` UDP sockets on ephemeral ports (the RANDOM side of a birthday punch)."""
    return {"socks": [udp_bind(host)["sock"] for _ in range(count)]}


def punch_many(socks: list[int], to: Any, payload: str = "punch", resend: float = 1.0,
               timeout: float = 10.0, acks: int = 3) -> dict[str, Any]:
    """Send `payload` from every socket to `to` (each opens its own NAT mapping), again every
    `resend` seconds, until one of them receives a datagram from `to`'s host; answer from
    that socket. The RANDOM side of hyperdht's "local random, remote consistent" punch."""
    target = _addr(to)
    for sock in socks:
        udp_drain(sock)
    by_fd = {_socks[sock].fileno(): sock for sock in socks}
    start = time.monotonic()
    deadline = start + timeout
    next_send = start
    rounds = 0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return {"ok": False, "rounds": rounds, "elapsed": round(now - start, 6)}
        if now >= next_send:
            for sock in socks:
                _socks[sock].sendto(payload.encode(), target)
            rounds += 1
            next_send += resend
        readable, _, _ = select.select(list(by_fd), [], [], max(0.0, min(next_send, deadline) - now))
        for fd in readable:
            sock = by_fd[fd]
            data, peer = _socks[sock].recvfrom(65535)
            if peer[0] == target[0]:
                for _ in range(acks):
                    _socks[sock].sendto(b"ack", peer)
                return {"ok": True, "sock": sock, "local": list(_socks[sock].getsockname()),
                        "from": list(peer), "data": data.decode(errors="replace"),
                        "rounds": rounds, "elapsed": round(time.monotonic() - start, 6)}


def spray(sock: int, host: str, ports: Any = (1024, 65536), payload: str = "spray",
          interval: float = 0.001, timeout: float = 10.0, acks: int = 3,
          seed: int | None = None) -> dict[str, Any]:
    """Send `payload` to `host` at random ports in [ports[0], ports[1]) every `interval`
    until a datagram from `host` arrives; answer it. The CONSISTENT side of hyperdht's
    "local consistent, remote random" punch."""
    udp_drain(sock)
    s = _socks[sock]
    rng = random.Random(seed)
    start = time.monotonic()
    deadline = start + timeout
    next_send = start
    sent = 0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return {"ok": False, "sent": sent, "elapsed": round(now - start, 6)}
        if now >= next_send:
            s.sendto(payload.encode(), (host, rng.randrange(int(ports[0]), int(ports[1]))))
            sent += 1
            next_send += interval
        s.settimeout(max(0.0005, min(next_send, deadline) - now))
        try:
            data, peer = s.recvfrom(65535)
        except (socket.timeout, TimeoutError):
            continue
        if peer[0] == host:
            for _ in range(acks):
                s.sendto(b"ack", peer)
            return {"ok": True, "from": list(peer), "data": data.decode(errors="replace"),
                    "sent": sent, "elapsed": round(time.monotonic() - start, 6)}


def close(sock: int) -> dict[str, Any]:
    _socks.pop(sock).close()
    return {}


def _udp_observer(sock: socket.socket) -> None:
    while True:
        try:
            _, peer = sock.recvfrom(65535)
        except OSError:
            return
        sock.sendto(json.dumps({"observed": list(peer)}).encode(), peer)


def _tcp_observer(sock: socket.socket) -> None:
    while True:
        try:
            conn, peer = sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(json.dumps({"observed": list(peer)}).encode())


def serve_observer(host: str = "0.0.0.0", port: int = 0, tcp: bool = True) -> dict[str, Any]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, port))
    local = udp.getsockname()
    _add(udp)
    threading.Thread(target=_udp_observer, args=(udp,), daemon=True).start()
    if tcp:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(local)
        listener.listen(16)
        _add(listener)
        threading.Thread(target=_tcp_observer, args=(listener,), daemon=True).start()
    return {"local": list(local)}


def _read_all(conn: socket.socket, timeout: float) -> str:
    conn.settimeout(timeout)
    chunks = []
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks).decode(errors="replace")
        chunks.append(chunk)


def tcp_connect(to: Any, timeout: float = 2.0, local_port: int = 0) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        if local_port:
            sock.bind(("0.0.0.0", local_port))
        sock.settimeout(timeout)
        try:
            sock.connect(_addr(to))
        except OSError as exc:
            return {"ok": False, "reason": type(exc).__name__ + ": " + str(exc)}
        local = list(sock.getsockname())
        return {"ok": True, "local": local, "data": _read_all(sock, timeout)}
    finally:
        sock.close()


def tcp_listen(host: str = "0.0.0.0", port: int = 0) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(16)
    return {"sock": _add(sock), "local": list(sock.getsockname())}


def tcp_accept(sock: int, timeout: float) -> dict[str, Any]:
    listener = _socks[sock]
    listener.settimeout(timeout)
    try:
        conn, peer = listener.accept()
    except (socket.timeout, TimeoutError):
        return {"timeout": True}
    with conn:
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        return {"from": list(peer), "data": _read_all(conn, timeout)}


OPS = {f.__name__: f for f in (udp_bind, udp_send, udp_recv, udp_drain, observe, punch, close,
                               udp_bind_many, punch_many, spray,
                               serve_observer, tcp_connect, tcp_listen, tcp_accept)}


def main() -> None:
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = OPS[request.pop("op")]
            result = op(**request)
        except Exception as exc:  # the error goes back to the driver, the agent lives on
            result = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
