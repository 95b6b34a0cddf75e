"""Vendor access tokens shared by every worker through Redis."""

from __future__ import annotations

import redis

from engine import keys


class RedisTokenCache:
    """`providers.base.TokenCache` on Redis: keys are digests chosen by the provider, never secrets."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def get(self, key: str) -> str | None:
        value = self.redis.get(keys.PREFIX + "token:" + key)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        self.redis.set(keys.PREFIX + "token:" + key, value, ex=max(1, ttl_seconds))

    def delete(self, key: str) -> None:
        self.redis.delete(keys.PREFIX + "token:" + key)
