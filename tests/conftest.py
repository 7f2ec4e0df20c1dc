import logging

import pytest

from .procs import Cluster

logging.getLogger("hypergate").setLevel(logging.DEBUG)


@pytest.fixture
async def cluster(nursery):
    """Real `hypergate` processes, all stopped (and their logs printed) at the end."""
    cluster = Cluster(nursery)
    try:
        yield cluster
    finally:
        await cluster.close()
