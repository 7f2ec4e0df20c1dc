"""`hypergate tele` connection attempts: a remembered relay first, a fresh FIND_PEER on failure."""

import pytest
import trio

from hypergate import limits
from hypergate.hyperswarm import tele
from hypergate.hyperswarm.connect import HyperswarmConnectError


class FakeConn:
    def __init__(self, relay):
        self.info = type("Info", (), {"relay": relay})()


def scripted_connect(monkeypatch, outcomes):
    """Replace connect(): each call pops an outcome (a relay to succeed with, or an
    exception) and records the relays it was given."""
    calls = []

    async def fake_connect(node, key, key_pair, *, relays=None):
        calls.append(relays)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return FakeConn(outcome)

    monkeypatch.setattr(tele, "connect", fake_connect)
    return calls


async def test_the_relay_that_worked_is_reused_until_it_expires(monkeypatch, autojump_clock):
    calls = scripted_connect(monkeypatch, ["relay-a", "relay-a", "relay-b"])
    memory = tele.RelayMemory()
    await tele.connect_with_retry(None, b"k" * 32, None, memory)
    await tele.connect_with_retry(None, b"k" * 32, None, memory)
    await trio.sleep(limits.TELE_RELAY_CACHE_S + 1)
    await tele.connect_with_retry(None, b"k" * 32, None, memory)
    assert calls == [None, ["relay-a"], None]


async def test_a_failure_forgets_the_relay_and_retries_from_a_fresh_lookup(monkeypatch, autojump_clock):
    calls = scripted_connect(monkeypatch, ["relay-a", HyperswarmConnectError("gone"), "relay-b"])
    memory = tele.RelayMemory()
    await tele.connect_with_retry(None, b"k" * 32, None, memory)
    conn = await tele.connect_with_retry(None, b"k" * 32, None, memory)
    assert conn.info.relay == "relay-b"
    assert calls == [None, ["relay-a"], None]
    assert memory.get() == ["relay-b"]


async def test_the_last_failure_is_raised_with_its_reason(monkeypatch, autojump_clock):
    errors = [HyperswarmConnectError(f"attempt {n}") for n in range(limits.TELE_CONNECT_ATTEMPTS)]
    scripted_connect(monkeypatch, list(errors))
    with pytest.raises(HyperswarmConnectError, match=f"attempt {limits.TELE_CONNECT_ATTEMPTS - 1}"):
        await tele.connect_with_retry(None, b"k" * 32, None, tele.RelayMemory())
