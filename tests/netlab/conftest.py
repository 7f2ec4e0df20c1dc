"""Fixtures for the network-namespace NAT lab (hypergate.netlab). Root only.

Every test here is skipped, with the reason, when the lab cannot run: not root, `ip`,
`nft` or `conntrack` missing, or namespaces not creatable.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest

from hypergate.netlab import Lab, cleanup_stale, missing_requirements
from hypergate.netlab.lab import Spec

HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in pathlib.Path(str(item.path)).parents:
            item.add_marker(pytest.mark.netlab)


@pytest.fixture(scope="session")
def netlab_unavailable() -> str | None:
    """Why the lab cannot run here, or None; removes stale lab namespaces once per session."""
    reason = missing_requirements()
    if reason is None:
        cleanup_stale()
    return reason


@pytest.fixture(autouse=True)
def _require_netlab(netlab_unavailable: str | None) -> None:
    if netlab_unavailable:
        pytest.skip(netlab_unavailable)


@pytest.fixture
def make_lab() -> Iterator[Callable[[Spec], Lab]]:
    """`lab = make_lab({"na": ("consistent", ["alice"]), ...})`; removed after the test."""
    labs: list[Lab] = []

    def make(spec: Spec) -> Lab:
        lab = Lab(spec)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        errors = []
        for lab in labs:
            try:
                lab.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
