"""The port forwarder a gateway's helper container runs inside the Docker network.

    python -m hypergate.docker.forwarder --to 10.89.0.1 tcp:3306 udp:53 tcp:80:8080

listens on every `proto:port[:target_port]` (all addresses) and relays each TCP
connection, or each UDP client address, to `--to` on `target_port` (default: the same
port), i.e. to the gateway's listener. It knows no secret and speaks no hypergate
protocol: the helper is a plain relay, so `docker inspect` of it shows nothing to steal.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections import OrderedDict
from typing import Literal

import attrs
import trio

from .. import limits

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024


@attrs.frozen
class ForwardSpec:
    protocol: Literal["tcp", "udp"]
    listen_port: int
    target_port: int

    @classmethod
    def parse(cls, text: str) -> ForwardSpec:
        parts = text.split(":")
        if len(parts) not in (2, 3) or parts[0] not in ("tcp", "udp"):
            raise ValueError(f"expected proto:port[:target_port], got {text!r}")
        try:
            ports = [int(p) for p in parts[1:]]
        except ValueError:
            raise ValueError(f"expected proto:port[:target_port], got {text!r}") from None
        if not all(1 <= p <= 65535 for p in ports):
            raise ValueError(f"ports must be 1-65535, got {text!r}")
        return cls(parts[0], ports[0], ports[-1])  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.target_port == self.listen_port:
            return f"{self.protocol}:{self.listen_port}"
        return f"{self.protocol}:{self.listen_port}:{self.target_port}"


# --- TCP ----------------------------------------------------------------------------------


async def _pump(source: trio.abc.Stream, sink: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(_READ_SIZE):
            await sink.send_all(data)
        await sink.send_eof()  # keep half-close: the other direction may still be talking
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def _relay_tcp(client: trio.SocketStream, target_host: str, target_port: int) -> None:
    async with client:
        try:
            with trio.fail_after(limits.DOCKER_FORWARD_CONNECT_TIMEOUT_S):
                upstream = await trio.open_tcp_stream(target_host, target_port)
        except (OSError, trio.TooSlowError) as exc:
            log.warning("forward connect failed target=%s:%d error=%s", target_host, target_port, exc)
            return
        async with upstream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, upstream)
                nursery.start_soon(_pump, upstream, client)


async def serve_tcp_forward(
    spec: ForwardSpec,
    target_host: str,
    *,
    listen_host: str = "0.0.0.0",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(spec.listen_port, host=listen_host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(
        lambda stream: _relay_tcp(stream, target_host, spec.target_port), listeners
    )


# --- UDP ----------------------------------------------------------------------------------


async def serve_udp_forward(
    spec: ForwardSpec,
    target_host: str,
    *,
    listen_host: str = "0.0.0.0",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One connected socket towards the target per client address, closed after
    DOCKER_FORWARD_UDP_IDLE_S without traffic, at most DOCKER_FORWARD_MAX_UDP_FLOWS."""
    listen = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await listen.bind((listen_host, spec.listen_port))
    flows: OrderedDict[tuple, tuple[trio.socket.SocketType, trio.CancelScope, list[float]]] = OrderedDict()

    async def replies(client: tuple, upstream: trio.socket.SocketType, scope: trio.CancelScope, last: list[float]) -> None:
        with scope:
            try:
                while True:
                    with trio.move_on_at(last[0] + limits.DOCKER_FORWARD_UDP_IDLE_S) as idle:
                        data = await upstream.recv(limits.MAX_DATAGRAM)
                    if idle.cancelled_caught:
                        if trio.current_time() >= last[0] + limits.DOCKER_FORWARD_UDP_IDLE_S:
                            break
                        continue
                    last[0] = trio.current_time()
                    await listen.sendto(data, client)
            except OSError as exc:
                log.debug("forward udp flow ended client=%s error=%s", client, exc)
        upstream.close()
        if flows.get(client, (None,))[0] is upstream:
            del flows[client]

    with listen:
        task_status.started(listen.getsockname()[1])
        async with trio.open_nursery() as nursery:
            while True:
                data, client = await listen.recvfrom(limits.MAX_DATAGRAM)
                flow = flows.get(client)
                if flow is None:
                    if len(flows) >= limits.DOCKER_FORWARD_MAX_UDP_FLOWS:
                        _, (_, oldest_scope, _) = flows.popitem(last=False)
                        oldest_scope.cancel()
                    upstream = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
                    try:
                        await upstream.connect((target_host, spec.target_port))
                    except OSError as exc:
                        upstream.close()
                        log.warning("forward udp connect failed target=%s:%d error=%s", target_host, spec.target_port, exc)
                        continue
                    flow = flows[client] = (upstream, trio.CancelScope(), [trio.current_time()])
                    nursery.start_soon(replies, client, *flow)
                flows.move_to_end(client)
                flow[2][0] = trio.current_time()
                try:
                    await flow[0].send(data)
                except OSError as exc:
                    log.debug("forward udp send failed client=%s error=%s", client, exc)


# --- entry point --------------------------------------------------------------------------


async def run_forwarder(specs: list[ForwardSpec], target_host: str) -> None:
    async with trio.open_nursery() as nursery:
        for spec in specs:
            serve = serve_tcp_forward if spec.protocol == "tcp" else serve_udp_forward
            await nursery.start(serve, spec, target_host)
            log.info("forwarding listen=%s target=%s:%d", spec, target_host, spec.target_port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hypergate.docker.forwarder",
        description="Relay ports to a hypergate gateway's listeners (Docker helper).",
    )
    parser.add_argument("--to", required=True, help="address of the gateway's listener")
    parser.add_argument("forwards", nargs="+", help="proto:port[:target_port], proto tcp or udp")
    args = parser.parse_args(argv)
    try:
        specs = [ForwardSpec.parse(text) for text in args.forwards]
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    # As a container's PID 1 the default SIGTERM action is ignored; make `docker stop`
    # end us at once instead of after its kill timeout.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        trio.run(run_forwarder, specs, args.to)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"forwarder: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
