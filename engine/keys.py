"""Every Redis key and stream name the gateway uses, in one place."""

from __future__ import annotations

PREFIX = "mpush:"

STREAM = PREFIX + "stream:tasks"
GROUP = "mpush-workers"
DEAD_LETTER = PREFIX + "stream:dead"
DELAYED = PREFIX + "delayed"  # zset: member "<kind>:<id>", score = due unix time
EPOCH = PREFIX + "epoch"  # set once per Redis data set: its absence means Redis lost (or never had) our data


def nonce(app_id: str, value: str) -> str:
    return f"{PREFIX}nonce:{app_id}:{value}"


def quota(key: str, bucket: int) -> str:
    return f"{PREFIX}quota:{key}:{bucket}"


def rate(app_id: str, second: int) -> str:
    return f"{PREFIX}rate:{app_id}:{second}"


def provider_rate(provider: str, bucket: int) -> str:
    return f"{PREFIX}prate:{provider}:{bucket}"


def breaker(provider: str) -> str:
    return f"{PREFIX}breaker:{provider}"


def swrr(scope: str) -> str:
    return f"{PREFIX}swrr:{scope}"


def token(provider: str, digest: str) -> str:
    return f"{PREFIX}token:{provider}:{digest}"


def idempotency(app_id: str, key: str) -> str:
    return f"{PREFIX}idem:{app_id}:{key}"


def refused_callbacks(provider: str, minute: int) -> str:
    return f"{PREFIX}cbrefused:{provider}:{minute}"
