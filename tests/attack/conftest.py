"""What the attack tests share: a client of the gateway's Redis, to see which nonces a request spent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.service import REDIS_URL


@pytest.fixture(scope="module")
def nonces() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()
