"""Every Redis key and stream name the gateway uses, in one place.

Keys one Lua script touches together share a hash tag (the part in braces), so that on a Redis Cluster they
live in one slot: each stream shard with its delayed set (`{mpush:q<n>}`), every quota, rate and nonce
counter (`{mpush:limits}`: a receiver's quota is counted with any app's), and every breaker, provider rate
and round-robin position (`{mpush:route}`: one choice reads them all). Keys used alone carry no tag.
"""

from __future__ import annotations

PREFIX = "mpush:"
PATTERNS = (PREFIX + "*", "{" + PREFIX + "*")  # match every gateway key (SCAN), tagged or not

QUEUE_BASE = PREFIX + "q"
GROUP = "mpush-workers"
DEAD_LETTER = PREFIX + "stream:dead"
WORKERS = PREFIX + "workers"  # hash: worker name -> until when its last heartbeat vouches for it (unix time)
EPOCH = PREFIX + "epoch"  # set once per Redis data set: its absence means Redis lost (or never had) our data
LAYOUT = PREFIX + "layout"  # "2" once counters of the untagged layout were moved to their tagged names

LIMITS_TAG = "{" + PREFIX + "limits}:"
ROUTE_TAG = "{" + PREFIX + "route}:"

# The layout before hash tags (one stream, one delayed set); upgrade.py moves what it finds there.
OLD_STREAM = PREFIX + "stream:tasks"
OLD_DELAYED = PREFIX + "delayed"


def restarted(run_id: str) -> str:
    """Claimed by the one process that recovers what the restart of the Redis server `run_id` may have lost."""
    return f"{PREFIX}restarted:{run_id}"


def stream(shard: int, base: str = QUEUE_BASE) -> str:
    return f"{{{base}{shard}}}:stream"


def delayed(shard: int, base: str = QUEUE_BASE) -> str:
    """zset of the shard's delayed jobs: member "<kind>:<ref>", score = due unix time."""
    return f"{{{base}{shard}}}:delayed"


def nonce(app_id: str, value: str) -> str:
    return f"{LIMITS_TAG}nonce:{app_id}:{value}"


def quota(key: str, bucket: int) -> str:
    return f"{LIMITS_TAG}quota:{key}:{bucket}"


def rate(app_id: str, second: int) -> str:
    return f"{LIMITS_TAG}rate:{app_id}:{second}"


def provider_rate(provider: str, bucket: int) -> str:
    return f"{ROUTE_TAG}prate:{provider}:{bucket}"


def breaker(provider: str) -> str:
    return f"{ROUTE_TAG}breaker:{provider}"


def swrr(scope: str) -> str:
    return f"{ROUTE_TAG}swrr:{scope}"


def token(provider: str, digest: str) -> str:
    return f"{PREFIX}token:{provider}:{digest}"


def idempotency(app_id: str, key: str) -> str:
    return f"{PREFIX}idem:{app_id}:{key}"


def refused_callbacks(provider: str, minute: int) -> str:
    return f"{PREFIX}cbrefused:{provider}:{minute}"


# The untagged names of the counters above, old prefix -> new prefix (for the one-time move on upgrade).
OLD_COUNTER_PREFIXES = {
    PREFIX + "nonce:": LIMITS_TAG + "nonce:",
    PREFIX + "quota:": LIMITS_TAG + "quota:",
    PREFIX + "rate:": LIMITS_TAG + "rate:",
    PREFIX + "prate:": ROUTE_TAG + "prate:",
    PREFIX + "breaker:": ROUTE_TAG + "breaker:",
    PREFIX + "swrr:": ROUTE_TAG + "swrr:",
}
