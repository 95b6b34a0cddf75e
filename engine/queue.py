"""Redis Streams work queue: enqueue, consumer group reads, reclaim of stale entries, delayed jobs.

Jobs are `kind:ref` strings ("send:<task_id>", "webhook:<app id>:<delivery id>",
"webhook_event:<app id>:<task id>:<event>:<body>", "timeout:<task_id>").
Delayed jobs wait in a sorted set scored by due time; `release_due` moves them to the stream
in one Lua script, so several schedulers can run without enqueuing a job twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from engine import keys, metrics

log = logging.getLogger("mpush.queue")

_RELEASE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(due) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('XADD', KEYS[2], '*', 'job', job)
end
return #due
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its id and the job it carries."""

    id: str
    job: str

    @property
    def kind(self) -> str:
        return self.job.partition(":")[0]

    @property
    def ref(self) -> str:
        return self.job.partition(":")[2]


def job(kind: str, ref: str) -> str:
    return f"{kind}:{ref}"


class Queue:
    """The task stream and its consumer group, plus the delayed-job set."""

    def __init__(self, client: redis.Redis, *, stream: str = keys.STREAM, group: str = keys.GROUP) -> None:
        self.redis = client
        self.stream = stream
        self.group = group
        self.delayed = keys.DELAYED if stream == keys.STREAM else stream + ":delayed"
        self._release_due = client.register_script(_RELEASE_DUE)

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def enqueue(self, jobs: Sequence[str]) -> None:
        """Append jobs to the stream in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for item in jobs:
            pipe.xadd(self.stream, {"job": item})
        pipe.execute()

    def defer(self, item: str, due: float, *, earlier_only: bool = False) -> None:
        """Keep a job in the delayed set until `due` (unix seconds); with `earlier_only`, a job already kept
        for an earlier time stays at that time."""
        self.redis.zadd(self.delayed, {item: due}, lt=earlier_only)

    def defer_many(self, items: Iterable[tuple[str, float]]) -> None:
        mapping = dict(items)
        if mapping:
            self.redis.zadd(self.delayed, mapping)

    def release_due(self, now: float, limit: int = 500) -> int:
        """Move jobs due by `now` to the stream; returns how many moved."""
        return int(self._release_due(keys=[self.delayed, self.stream], args=[now, limit]))

    def read(self, consumer: str, *, count: int = 10, block_ms: int = 1000, ack: Sequence[str] = ()) -> list[Entry]:
        """New entries for `consumer`, after acknowledging the `ack` ids of its previous read in the same
        round trip (Redis runs the acknowledgement before the read starts waiting)."""
        pipe = self.redis.pipeline(transaction=False)
        if ack:
            self._ack(pipe, ack)
        pipe.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        try:
            response = pipe.execute()[-1]
        except redis.ResponseError as exc:
            self._recreate_group(exc)
            return []
        return [_entry(eid, data) for _, messages in response or () for eid, data in messages if data]

    def reclaim(self, consumer: str, *, min_idle_ms: int, count: int = 100) -> list[Entry]:
        """Take over entries another consumer read but did not ack within `min_idle_ms`."""
        try:
            result = self.redis.xautoclaim(self.stream, self.group, consumer, min_idle_ms, "0-0", count=count)
        except redis.ResponseError as exc:
            self._recreate_group(exc)
            return []
        return [_entry(eid, data) for eid, data in result[1] if data]

    def _recreate_group(self, exc: redis.ResponseError) -> None:
        """Redis lost the stream or its group (a restart without persistence, a flush): make them again at
        once, so workers go on without a restart; the sweep brings back the jobs that went with them."""
        if "NOGROUP" not in str(exc):
            raise exc
        log.warning("queue.group_lost %s: %s; creating it again", self.stream, exc)
        metrics.GROUP_RECREATED.inc()
        self.ensure_group()

    def ack(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            pipe = self.redis.pipeline(transaction=False)
            self._ack(pipe, entry_ids)
            pipe.execute()

    def _ack(self, pipe: redis.client.Pipeline, entry_ids: Sequence[str]) -> None:
        pipe.xack(self.stream, self.group, *entry_ids)
        pipe.xdel(self.stream, *entry_ids)

    def dead_letter(self, entry: Entry, reason: str) -> None:
        self.redis.xadd(keys.DEAD_LETTER, {"job": entry.job, "reason": reason[:500]})

    def pending(self) -> int:
        info = self.redis.xpending(self.stream, self.group)
        return int(info["pending"])

    def delayed_count(self) -> int:
        return int(self.redis.zcard(self.delayed))

    def backlog(self) -> int:
        return int(self.redis.xlen(self.stream))


def _entry(entry_id: bytes | str, data: dict[bytes | str, bytes | str]) -> Entry:
    raw = data.get(b"job", data.get("job", b""))
    text = raw.decode() if isinstance(raw, bytes) else raw
    return Entry(entry_id.decode() if isinstance(entry_id, bytes) else entry_id, text)
