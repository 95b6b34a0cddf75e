"""The Redis server unit tests use (MPUSH_TEST_REDIS_URL), or the Redis Cluster MPUSH_TEST_REDIS_CLUSTER names;
whole-gateway tests get their own database."""

from __future__ import annotations

import os

import redis

from tests.support.redis_cluster import ADDRESS as CLUSTER_ADDRESS
from tests.support.redis_cluster import connect_cluster

REDIS_URL = os.environ.get("MPUSH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def connect_test_redis() -> redis.Redis:
    """A fresh connection to the test Redis (a cluster client when MPUSH_TEST_REDIS_CLUSTER is set), checked alive."""
    if CLUSTER_ADDRESS:
        return connect_cluster(CLUSTER_ADDRESS)  # type: ignore[return-value]
    connection = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    connection.ping()
    return connection
