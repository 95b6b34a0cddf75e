"""The Redis connection the engine tests count, choose and queue against."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.redis_cluster import redis_cluster  # noqa: F401  (a fixture for the cluster tests)
from tests.support.redis_server import connect_test_redis


@pytest.fixture(scope="module")
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """One connection per test module; afterwards every key holding the module's RUN token is deleted."""
    connection = connect_test_redis()
    yield connection
    token = getattr(request.module, "RUN", None)
    stale = list(connection.scan_iter(match=f"*{token}*", count=1000)) if token else []
    if stale:
        connection.delete(*stale)
    connection.close()
