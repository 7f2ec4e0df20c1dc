"""PolicySource: URL sources re-read on a timer; a failed refresh keeps the last good policy."""

from __future__ import annotations

import logging

import pytest
import trio

from hypergate.errors import ConfigError
from hypergate.policy.source import PolicySource

URL = "http://policy.invalid/policy.json"
BASE = '{"defaults": {"bandwidthLimit": {"mbps": 1}}}'


class FakeFetch:
    """Serves documents by URL from a dict; a value that is an exception is raised."""

    def __init__(self, documents: dict[str, object]) -> None:
        self.documents = documents
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, value: str) -> str:
        self.calls.append((value, trio.current_time()))
        await trio.sleep(0)
        if not value.startswith("http"):
            return value
        document = self.documents[value]
        if isinstance(document, Exception):
            raise document
        return document  # type: ignore[return-value]


def labels_of(source: PolicySource) -> tuple[str, ...]:
    return source.policy.decide("192.0.2.1", 80, "tcp", 0).labels


async def test_url_source_is_re_read_every_interval_and_changes_apply(autojump_clock):
    fetch = FakeFetch({URL: '{"ips": {"*": {"labels": ["v1"]}}}'})
    source = PolicySource([BASE, URL], refresh_interval_s=30, fetch=fetch)
    await source.load()
    assert labels_of(source) == ("v1",)
    assert source.policy.decide("192.0.2.1", 80, "tcp", 0).bandwidth.mbps == 1
    generation = source.generation
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        await trio.sleep(31)
        assert labels_of(source) == ("v1",) and source.generation == generation
        fetch.documents[URL] = '{"ips": {"*": {"labels": ["v2"]}}}'
        await trio.sleep(30)
        assert labels_of(source) == ("v2",) and source.generation == generation + 1
        nursery.cancel_scope.cancel()
    url_fetch_times = [t for value, t in fetch.calls if value == URL]
    assert url_fetch_times == [0.0, 30.0, 60.0]
    # Inline JSON is read once, at start-up.
    assert [v for v, _ in fetch.calls].count(BASE) == 1


async def test_failed_refresh_keeps_last_good_policy_and_logs_why(autojump_clock, caplog):
    caplog.set_level(logging.WARNING, logger="hypergate.policy.source")
    fetch = FakeFetch({URL: '{"ips": {"*": {"labels": ["good"]}}}'})
    source = PolicySource([URL], refresh_interval_s=10, fetch=fetch)
    await source.load()

    fetch.documents[URL] = ConfigError(f"{URL}: cannot fetch: connection refused")
    assert await source.refresh() is False
    assert labels_of(source) == ("good",)
    assert "policy_refresh_failed" in caplog.text and "connection refused" in caplog.text

    caplog.clear()
    fetch.documents[URL] = '{"ips": {"not-an-ip": {}}}'
    assert await source.refresh() is False
    assert labels_of(source) == ("good",)
    assert "policy_refresh_invalid" in caplog.text and "not-an-ip" in caplog.text

    fetch.documents[URL] = '{"ips": {"*": {"labels": ["better"]}}}'
    assert await source.refresh() is True
    assert labels_of(source) == ("better",)


async def test_start_up_failure_is_a_config_error(autojump_clock):
    fetch = FakeFetch({URL: "{not json"})
    with pytest.raises(ConfigError, match=r"^http://policy.invalid/policy.json: invalid JSON"):
        await PolicySource([URL], fetch=fetch).load()


async def test_run_without_url_sources_returns_at_once(autojump_clock):
    source = PolicySource([BASE], fetch=FakeFetch({}))
    await source.load()
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
    assert trio.current_time() == 0.0
