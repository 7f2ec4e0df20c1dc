"""The least a trio TCP relay can do, as a baseline: what one Python event loop costs
per hop before any tunnel work (no encryption, no multiplexing, no policy).

    python -m bench.lib.bare_relay --listen-port L --to-port T

Each accepted connection opens its own connection to 127.0.0.1:T and two tasks copy
bytes, passing each direction's EOF on; written the idiomatic way (serve_tcp,
open_tcp_stream, a nursery per connection). Runs until killed.
"""

from __future__ import annotations

import argparse
from functools import partial

import trio

from bench.lib.procs import raise_open_file_limit

READ_SIZE = 256 * 1024


async def _copy(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(READ_SIZE):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _relay(to_port: int, client: trio.SocketStream) -> None:
    try:
        upstream = await trio.open_tcp_stream("127.0.0.1", to_port)
    except OSError:
        await client.aclose()
        return
    async with client, upstream:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_copy, client, upstream)
            nursery.start_soon(_copy, upstream, client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--to-port", type=int, required=True)
    args = parser.parse_args()
    raise_open_file_limit()
    try:
        trio.run(partial(trio.serve_tcp, partial(_relay, args.to_port), args.listen_port,
                         host="127.0.0.1", backlog=4096))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
