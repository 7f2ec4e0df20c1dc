"""Bootstrap notation and resolution; only loopback addresses and `localhost`."""

from __future__ import annotations

import pytest
import trio

from hypergate.dht.bootstrap import PUBLIC_BOOTSTRAP, BootstrapNode, parse_bootstrap, resolve_bootstrap
from hypergate.dht.encoding import Address
from hypergate.dht.node import NodeConfig, open_dht_node
from hypergate.errors import ConfigError


def test_parse_the_public_notation_and_plain_host_port():
    assert parse_bootstrap(PUBLIC_BOOTSTRAP[0]) == BootstrapNode("node1.hyperdht.org", 49737, "88.99.3.86")
    assert parse_bootstrap("127.0.0.1:49737") == BootstrapNode("127.0.0.1", 49737)
    assert str(parse_bootstrap("1.2.3.4@example.org:1")) == "1.2.3.4@example.org:1"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [("nohost", "expected"), ("h:notaport", "not a number"), ("h:0", "out of range"), ("bad@h:1", "not IPv4")],
)
def test_parse_errors_name_the_problem(text, complaint):
    with pytest.raises(ConfigError, match=complaint):
        parse_bootstrap(text)


async def test_suggested_ip_is_used_when_it_answers_else_the_hostname(autojump_clock):
    async with open_dht_node(NodeConfig(host="127.0.0.1", ephemeral=False)) as first:
        port = first.address.port
        pinged: list[Address] = []

        async def ping(address: Address) -> None:
            pinged.append(address)
            if address.host != "127.0.0.1":
                raise TimeoutError("silent")

        async def resolve(host, port, *args):
            # Only "localhost" resolves; no query ever leaves the machine.
            if host != "localhost":
                raise OSError("unresolvable")
            return await trio.socket.getaddrinfo(host, port, *args)

        nodes = (
            BootstrapNode("localhost", port, "127.0.0.1"),
            BootstrapNode("localhost", port, "127.0.0.3"),  # silent: falls back to the name
            BootstrapNode("127.0.0.1", port),
            BootstrapNode("unresolvable.example", port),  # skipped
        )
        resolved = await resolve_bootstrap(nodes, ping, resolve)
        assert resolved == [Address("127.0.0.1", port)] * 3
        assert pinged == [Address("127.0.0.1", port), Address("127.0.0.3", port)]


async def test_a_node_bootstraps_from_notation_strings():
    # Real clock: name resolution runs in a thread, which a MockClock would not wait for.
    async with open_dht_node(NodeConfig(host="127.0.0.1", ephemeral=False)) as first:
        config = NodeConfig(bootstrap=[f"localhost:{first.address.port}"], host="127.0.0.1")
        with trio.fail_after(20):
            async with open_dht_node(config) as node:
                assert node.bootstrap_addresses == [first.address]
                assert first.id in node.table
