"""The live ingress policy of a provider: loaded at start-up, URL sources re-read.

`PolicySource(values)` keeps the text of every `--ingressPolicy` source. JSON text and
files are read once, at start-up (a broken one stops the start with one line). URL
sources are fetched again every `refresh_interval_s`; the merged policy is rebuilt
from the newest good texts, and when a fetch or the rebuilt policy fails, the last good
policy stays in force and the reason is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from .. import limits
from ..config import describe_source, read_source_text
from ..errors import ConfigError
from .ingress import IngressPolicy, merge_documents

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[str]]


def is_url(value: str) -> bool:
    return value.lstrip().startswith(("http://", "https://"))


async def fetch_in_thread(value: str) -> str:
    """`read_source_text` off the event loop (it blocks on the network)."""
    return await trio.to_thread.run_sync(read_source_text, value, abandon_on_cancel=True)


class PolicySource:
    """Holds the current policy; `run()` keeps URL sources fresh."""

    def __init__(
        self,
        values: Sequence[str],
        *,
        refresh_interval_s: float = limits.POLICY_REFRESH_S,
        fetch: Fetch = fetch_in_thread,
        on_change: Callable[[IngressPolicy], None] | None = None,
    ) -> None:
        self._values = list(values)
        self.on_change = on_change
        self._texts: list[str | None] = [None] * len(self._values)
        self._refresh_interval_s = refresh_interval_s
        self._fetch = fetch
        self._policy = IngressPolicy.empty()
        self.generation = 0  # bumped whenever the policy changes

    @property
    def policy(self) -> IngressPolicy:
        return self._policy

    @property
    def has_url_sources(self) -> bool:
        return any(is_url(v) for v in self._values)

    async def load(self) -> IngressPolicy:
        """Read every source once. ConfigError (one line) if any is missing or malformed."""
        for index, value in enumerate(self._values):
            self._texts[index] = await self._fetch(value)
        self._set(self._build())
        log.info(
            "policy_loaded sources=%d rules=%d defaults=%s refresh_s=%s",
            len(self._values),
            len(self._policy.entries),
            self._policy.defaults is not None,
            self._refresh_interval_s if self.has_url_sources else "never",
        )
        return self._policy

    def _build(self) -> IngressPolicy:
        pairs = [(describe_source(v), t or "{}") for v, t in zip(self._values, self._texts)]
        return merge_documents(pairs) if pairs else IngressPolicy.empty()

    def _set(self, policy: IngressPolicy) -> None:
        if policy != self._policy:
            self._policy = policy
            self.generation += 1
            if self.on_change is not None:
                self.on_change(policy)

    async def refresh(self) -> bool:
        """Re-read URL sources once; True when the policy in force is fresh."""
        previous = list(self._texts)
        ok = True
        for index, value in enumerate(self._values):
            if not is_url(value):
                continue
            try:
                self._texts[index] = await self._fetch(value)
            except ConfigError as exc:
                log.warning("policy_refresh_failed source=%s error=%r keeping=last_good", value, str(exc))
                ok = False
        try:
            policy = self._build()
        except ConfigError as exc:
            log.warning("policy_refresh_invalid error=%r keeping=last_good", str(exc))
            self._texts = previous
            return False
        if policy != self._policy:
            log.info("policy_updated rules=%d", len(policy.entries))
        self._set(policy)
        return ok

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh URL sources forever (returns at once when there are none)."""
        task_status.started()
        if not self.has_url_sources:
            return
        while True:
            await trio.sleep(self._refresh_interval_s)
            await self.refresh()
