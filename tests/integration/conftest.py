import pytest

from ..procs import Cluster


@pytest.fixture
async def cluster(nursery):
    cluster = Cluster(nursery)
    try:
        yield cluster
    finally:
        await cluster.close()
