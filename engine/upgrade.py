"""Moving what an older version left under the untagged key layout to the tagged one (Redis Cluster-ready).

Before hash tags the gateway kept one stream (`mpush:stream:tasks`), one delayed set (`mpush:delayed`)
and untagged counters (`mpush:quota:…`, `mpush:nonce:…`, `mpush:breaker:…`, …). On start, every process
moves them: queued and delayed jobs go to their shards (a job an old worker had read but not acknowledged
is queued again: delivery claims each attempt once, so nothing is sent twice), counters keep their value
and expiry. The scheduler moves old jobs again on every sweep, for the old-version processes still running
during a rolling upgrade. Counters are moved once per data set (the `mpush:layout` marker).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis

from engine import keys
from engine.queue import Queue

log = logging.getLogger("mpush.upgrade")

PAGE = 500
LAYOUT_VERSION = "2"


def move_old_layout(client: redis.Redis, queue: Queue) -> tuple[int, int]:
    """Move old jobs to the shards and, once per data set, old counters to their tagged names; how many of
    each were moved."""
    jobs = move_old_jobs(client, queue)
    counters = 0
    if client.get(keys.LAYOUT) is None:
        counters = move_old_counters(client)
        client.set(keys.LAYOUT, LAYOUT_VERSION)
    if jobs or counters:
        log.warning("upgrade.moved %d jobs and %d counters of the untagged key layout", jobs, counters)
    return jobs, counters


def move_old_jobs(client: redis.Redis, queue: Queue) -> int:
    """Move the old delayed set's jobs (keeping their due time, or an earlier one already kept) and the old
    stream's entries to their shards; how many moved. Costs one round trip when there is nothing to move."""
    pipe = client.pipeline(transaction=False)
    pipe.exists(keys.OLD_DELAYED)
    pipe.xlen(keys.OLD_STREAM)
    delayed, queued = pipe.execute()
    moved = 0
    while delayed and (items := client.zrange(keys.OLD_DELAYED, 0, PAGE - 1, withscores=True)):
        queue.defer_many(((_text(member), float(score)) for member, score in items), earlier_only=True)
        client.zrem(keys.OLD_DELAYED, *(member for member, _ in items))
        moved += len(items)
    while queued and (entries := client.xrange(keys.OLD_STREAM, count=PAGE)):
        jobs = [_text(data.get(b"job", data.get("job", b""))) for _, data in entries]
        queue.enqueue([item for item in jobs if item])
        client.xdel(keys.OLD_STREAM, *(entry_id for entry_id, _ in entries))
        moved += len(jobs)
    return moved  # the emptied old stream stays, with its group: an old worker may still read it


def move_old_counters(client: redis.Redis) -> int:
    """Copy every untagged counter to its tagged name with its expiry, then delete it; a tagged counter that
    already exists (a new process counted first) is kept. How many were copied."""
    batch: list[tuple[str, str]] = []
    copied = 0
    for raw in client.scan_iter(match=keys.PREFIX + "*", count=1000):
        name = _text(raw)
        renamed = _tagged_name(name)
        if renamed:
            batch.append((name, renamed))
        if len(batch) >= PAGE:
            copied += _copy(client, batch)
            batch = []
    return copied + _copy(client, batch)


def _tagged_name(name: str) -> str | None:
    for old, new in keys.OLD_COUNTER_PREFIXES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return None


def _copy(client: redis.Redis, batch: Sequence[tuple[str, str]]) -> int:
    if not batch:
        return 0
    pipe = client.pipeline(transaction=False)
    for old, _ in batch:
        pipe.dump(old)
        pipe.pttl(old)
    dumped = pipe.execute()
    pipe = client.pipeline(transaction=False)
    copied = 0
    for (old, new), value, ttl in zip(batch, dumped[::2], dumped[1::2]):
        if value is None or ttl == -2:
            continue  # expired meanwhile
        pipe.restore(new, max(int(ttl), 0), value)
        pipe.delete(old)
        copied += 1
    outcomes = pipe.execute(raise_on_error=False)
    busy = [o for o in outcomes if isinstance(o, Exception)]
    for error in busy:
        if "BUSYKEY" not in str(error):
            raise error
    return copied - len(busy)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
