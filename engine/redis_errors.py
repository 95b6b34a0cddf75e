"""What a failing Redis raises: redis-py's errors, plus the cluster client's own that are not RedisError."""

from __future__ import annotations

import redis
from redis.exceptions import RedisClusterException

# RedisClusterException (and SlotNotCoveredError under it): no node serves a slot, the client lost its
# slot map. Wherever a Redis error is survived (left for the reclaimer, answered as 10003, retried next
# tick), these are survived the same way.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)
UNREACHABLE: tuple[type[Exception], ...] = (redis.ConnectionError, RedisClusterException)
