"""The Redis server unit tests use (MPUSH_TEST_REDIS_URL); whole-gateway tests get their own database."""

from __future__ import annotations

import os

import redis

REDIS_URL = os.environ.get("MPUSH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def connect_test_redis() -> redis.Redis:
    """A fresh connection to the test Redis, checked alive."""
    connection = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    connection.ping()
    return connection
