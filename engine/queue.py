"""Redis Streams work queue: enqueue, consumer group reads, reclaim of stale entries, delayed jobs.

Jobs are `kind:ref` strings ("send:<task_id>", "webhook:<app id>:<delivery id>",
"webhook_event:<app id>:<task id>:<event>:<body>", "timeout:<task_id>").
The queue is `shards` streams (MPUSH_STREAM_SHARDS), each with its own consumer group and delayed set
under one hash tag, so a Redis Cluster spreads them over its nodes; a job's shard is a hash of its ref.
Delayed jobs wait in a sorted set scored by due time; `release_due` moves them to their stream
in one Lua script per shard, so several schedulers can run without enqueuing a job twice.
An entry's id names its shard and its stream id ("<shard>/<stream id>"), unique across shards.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from engine import keys, metrics
from engine.policy.sharding import reader_shards, shard_of
from engine.scripting import pipelined

log = logging.getLogger("mpush.queue")

_RELEASE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(due) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('XADD', KEYS[2], '*', 'job', job)
end
return #due
"""

# On a cluster one XREADGROUP cannot name streams in different slots: a reader of several shards first reads
# each without waiting, and when all are empty waits on one shard (the next in turn) at most this long (Redis
# ends a blocking read only at its next `hz` tick, 100 ms by default). Workers avoid that by running a reader
# per shard (`reader_shards`), each waiting on its own.
CLUSTER_WAIT_MS = 100
TAKE_OVER_IDLE_MS = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its queue-wide id ("<shard>/<stream id>") and the job it carries."""

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
    """The task stream shards and their consumer groups, plus each shard's delayed-job set."""

    def __init__(self, client: redis.Redis, *, shards: int = 1, base: str = keys.QUEUE_BASE,
                 group: str = keys.GROUP) -> None:
        if shards < 1:
            raise ValueError(f"the shard count must be at least 1, got {shards}")
        self.redis = client
        self.group = group
        self.streams = [keys.stream(n, base) for n in range(shards)]
        self.delayed_sets = [keys.delayed(n, base) for n in range(shards)]
        self._shard_of_stream = {name: n for n, name in enumerate(self.streams)}
        self._one_read = len(self.streams) == 1 or not isinstance(client, RedisCluster)
        self._turn = itertools.count()  # which shard a cluster reader waits on next
        self._release_due = client.register_script(_RELEASE_DUE)

    @property
    def shards(self) -> int:
        return len(self.streams)

    @property
    def stream(self) -> str:
        """The first shard's stream (with one shard, the stream)."""
        return self.streams[0]

    @property
    def delayed(self) -> str:
        """The first shard's delayed set (with one shard, the delayed set)."""
        return self.delayed_sets[0]

    def shard(self, item: str) -> int:
        return shard_of(item, self.shards)

    def delayed_key(self, item: str) -> str:
        """The delayed set a job waits in."""
        return self.delayed_sets[self.shard(item)]

    def ensure_group(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xgroup_create(stream, self.group, id="0", mkstream=True)
        for outcome in pipe.execute(raise_on_error=False):
            if isinstance(outcome, Exception) and "BUSYGROUP" not in str(outcome):
                raise outcome

    def enqueue(self, jobs: Sequence[str]) -> None:
        """Append jobs to their shards' streams in one round trip (one per node on a cluster)."""
        pipe = self.redis.pipeline(transaction=False)
        for item in jobs:
            pipe.xadd(self.streams[self.shard(item)], {"job": item})
        pipe.execute()

    def defer(self, item: str, due: float, *, earlier_only: bool = False) -> None:
        """Keep a job in the delayed set until `due` (unix seconds); with `earlier_only`, a job already kept
        for an earlier time stays at that time."""
        self.redis.zadd(self.delayed_key(item), {item: due}, lt=earlier_only)

    def defer_many(self, items: Iterable[tuple[str, float]], *, earlier_only: bool = False) -> None:
        by_set: dict[str, dict[str, float]] = defaultdict(dict)
        for item, due in items:
            by_set[self.delayed_key(item)][item] = due
        if len(by_set) == 1:
            [(name, mapping)] = by_set.items()
            self.redis.zadd(name, mapping, lt=earlier_only)
        elif by_set:
            pipe = self.redis.pipeline(transaction=False)
            for name, mapping in by_set.items():
                pipe.zadd(name, mapping, lt=earlier_only)
            pipe.execute()

    def release_due(self, now: float, limit: int = 500) -> int:
        """Move jobs due by `now` to their streams, at most `limit` per shard; returns how many moved."""
        if self.shards == 1:
            return int(self._release_due(keys=[self.delayed, self.stream], args=[now, limit]))
        calls = [([delayed, stream], [now, limit]) for delayed, stream in zip(self.delayed_sets, self.streams)]
        return sum(int(moved) for moved in pipelined(self.redis, self._release_due, calls))

    def reader_shards(self, readers: int) -> list[tuple[int, ...]]:
        """The shards each stream reader of a worker should read (see `policy.sharding.reader_shards`)."""
        return reader_shards(self.shards, readers, one_read=self._one_read)

    def read(self, consumer: str, *, count: int = 10, block_ms: int = 1000, ack: Sequence[str] = (),
             shards: Sequence[int] | None = None) -> list[Entry]:
        """New entries for `consumer` from `shards` (default: all), about `count` of them, after acknowledging
        the `ack` ids of its previous read in the same round trip (Redis runs the acknowledgement before the read
        starts waiting)."""
        streams = self.streams if shards is None else [self.streams[n] for n in shards]
        per_shard = max(1, -(-count // len(streams)))
        pipe = self.redis.pipeline(transaction=False)
        self._ack(pipe, ack)
        if self._one_read or len(streams) == 1:
            pipe.xreadgroup(self.group, consumer, dict.fromkeys(streams, ">"), count=per_shard, block=block_ms)
            return self._read_replies(pipe, 1)
        for stream in streams:
            pipe.xreadgroup(self.group, consumer, {stream: ">"}, count=per_shard)
        entries = self._read_replies(pipe, len(streams))
        if entries or block_ms <= 0:
            return entries
        waited = streams[next(self._turn) % len(streams)]
        pipe = self.redis.pipeline(transaction=False)
        pipe.xreadgroup(self.group, consumer, {waited: ">"}, count=per_shard, block=min(block_ms, CLUSTER_WAIT_MS))
        return self._read_replies(pipe, 1)

    def _read_replies(self, pipe: Any, reads: int) -> list[Entry]:
        """Run a pipeline whose last `reads` commands are XREADGROUPs; their entries, in shard order."""
        try:
            replies = pipe.execute()[-reads:]
        except redis.ResponseError as exc:
            self._recreate_group(exc)
            return []
        return [self._entry(stream, eid, data) for reply in replies for stream, messages in _streams(reply)
                for eid, data in messages if data]

    def reclaim(self, consumer: str, *, min_idle_ms: int, count: int = 100) -> list[Entry]:
        """Take over entries another consumer read but did not ack within `min_idle_ms` (up to `count` per
        shard)."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xautoclaim(stream, self.group, consumer, min_idle_ms, "0-0", count=count)
        try:
            results = pipe.execute()
        except redis.ResponseError as exc:
            self._recreate_group(exc)
            return []
        return [self._entry(stream, eid, data) for stream, result in zip(self.streams, results)
                for eid, data in result[1] if data]

    def heartbeat(self, worker: str, until: float) -> None:
        """Vouch that `worker` (the prefix of its consumers' names) is alive until `until`."""
        self.redis.hset(keys.WORKERS, worker, repr(until))

    def retire(self, worker: str) -> None:
        """A worker that stopped cleanly: no one need take its entries over."""
        self.redis.hdel(keys.WORKERS, worker)

    def dead_workers(self, now: float) -> list[str]:
        """Workers whose last heartbeat ran out before `now`: known dead."""
        return [_text(name) for name, until in self.redis.hgetall(keys.WORKERS).items() if float(until) < now]

    def take_over(self, dead: Sequence[str], consumer: str, *, count: int = 100) -> tuple[list[Entry], list[str]]:
        """Claim for `consumer`, at once, the entries pending with the consumers of `dead` workers (named
        `<worker>-<role>`), rather than wait for the visibility timeout; drop their consumers
        that hold nothing. The entries, and the dead workers that now hold nothing (forgotten)."""
        dead_set = set(dead)
        infos = self._each(lambda pipe, stream: pipe.xinfo_consumers(stream, self.group), self.streams)
        entries: list[Entry] = []
        holding: set[str] = set()
        pipe = self.redis.pipeline(transaction=False)
        for stream, consumers in zip(self.streams, infos):
            for info in consumers:
                name = _text(info["name"])
                worker = name.rpartition("-")[0]
                if worker not in dead_set:
                    continue
                if int(info["pending"]):
                    holding.add(worker)
                    entries += self._claim_pending(stream, name, consumer, count)
                else:
                    pipe.xgroup_delconsumer(stream, self.group, name)
        drained = [worker for worker in dead if worker not in holding]
        if drained:
            pipe.hdel(keys.WORKERS, *drained)
        pipe.execute()
        return entries, drained

    def _claim_pending(self, stream: str, owner: str, consumer: str, count: int) -> list[Entry]:
        pending = self.redis.xpending_range(stream, self.group, min="-", max="+", count=count, consumername=owner)
        ids = [item["message_id"] for item in pending]
        if not ids:
            return []
        # a second live worker taking over at the same moment finds them idle for less than a second: not twice
        claimed = self.redis.xclaim(stream, self.group, consumer, TAKE_OVER_IDLE_MS, ids)
        return [self._entry(stream, eid, data) for eid, data in claimed if data]

    def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries (XCLAIM to `consumer`), so that no reclaimer takes them."""
        pipe = self.redis.pipeline(transaction=False)
        for shard, ids in _by_shard(entry_ids).items():
            for start in range(0, len(ids), 1000):
                pipe.xclaim(self.streams[shard], self.group, consumer, 0, ids[start:start + 1000], justid=True)
        if entry_ids:
            pipe.execute()

    def _recreate_group(self, exc: redis.ResponseError) -> None:
        """Redis lost a stream or its group (a restart without persistence, a flush): make them again at
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

    def _ack(self, pipe: Any, entry_ids: Sequence[str]) -> None:
        for shard, ids in _by_shard(entry_ids).items():
            pipe.xack(self.streams[shard], self.group, *ids)
            pipe.xdel(self.streams[shard], *ids)

    def dead_letter(self, entry: Entry, reason: str) -> None:
        self.redis.xadd(keys.DEAD_LETTER, {"job": entry.job, "reason": reason[:500]})

    def pending(self) -> int:
        return sum(int(info["pending"]) for info in self._each(lambda pipe, stream: pipe.xpending(stream, self.group),
                                                              self.streams))

    def delayed_count(self) -> int:
        return sum(int(n) for n in self._each(lambda pipe, name: pipe.zcard(name), self.delayed_sets))

    def jobs_on_streams(self, since: float, page: int = 1000) -> tuple[set[str], set[str]]:
        """The jobs of the stream entries added since `since` (unix seconds, by Redis's clock: an entry id starts
        with the millisecond it was added) that no consumer has read yet, and those of every entry consumers
        have read and not acknowledged (in flight, or stuck with a consumer whose handling failed). Acknowledged
        entries are deleted, so these are all the entries there are."""
        waiting: set[str] = set()
        read: set[str] = set()
        for stream in self.streams:
            read_ids = [_text(item["message_id"]) for item in self._paged(
                lambda start: self.redis.xpending_range(stream, self.group, min=start, max="+", count=page),
                "-", lambda item: item["message_id"], page)]
            if read_ids:
                pipe = self.redis.pipeline(transaction=False)
                for entry_id in read_ids:
                    pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
                read.update(self._entry(stream, entry_id, data).job for entries in pipe.execute()
                            for entry_id, data in entries)
            skipped = set(read_ids)
            unread = (entry for entry in self._paged(
                lambda start: self.redis.xrange(stream, min=start, max="+", count=page),
                f"{int(since * 1000)}-0", lambda entry: entry[0], page) if _text(entry[0]) not in skipped)
            waiting.update(self._entry(stream, entry_id, data).job for entry_id, data in unread)
        return waiting, read

    def oldest_unread(self) -> float | None:
        """When the oldest entry no consumer has read yet was added (unix seconds, by Redis's clock), or None
        when consumers have read every entry of every shard (a shard whose stream is gone has none)."""
        groups = self._each(lambda pipe, stream: pipe.xinfo_groups(stream), self.streams, raise_on_error=False)
        delivered = {stream: next((_text(info["last-delivered-id"]) for info in infos
                                   if _text(info["name"]) == self.group), "0-0")
                     for stream, infos in zip(self.streams, groups) if not isinstance(infos, redis.ResponseError)}
        firsts = self._each(lambda pipe, stream: pipe.xrange(stream, min=f"({delivered[stream]}", max="+", count=1),
                            list(delivered))
        added = [int(_text(entries[0][0]).split("-")[0]) / 1000 for entries in firsts if entries]
        return min(added, default=None)

    @staticmethod
    def _paged(fetch: Any, first: str, entry_id: Any, page: int) -> Iterator[Any]:
        """Every item of a stream range read `page` at a time from id `first` on."""
        start = first
        while items := fetch(start):
            yield from items
            if len(items) < page:
                return
            start = "(" + _text(entry_id(items[-1]))

    def backlog(self) -> int:
        return sum(int(n) for n in self._each(lambda pipe, name: pipe.xlen(name), self.streams))

    def _each(self, command: Any, names: Sequence[str], *, raise_on_error: bool = True) -> list[Any]:
        """One command per key, in one round trip (with `raise_on_error` false, a failed command's reply is its
        error)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            command(pipe, name)
        return pipe.execute(raise_on_error=raise_on_error)

    def _entry(self, stream: bytes | str, entry_id: bytes | str, data: dict[bytes | str, bytes | str]) -> Entry:
        shard = self._shard_of_stream[_text(stream)]
        raw = data.get(b"job", data.get("job", b""))
        return Entry(f"{shard}/{_text(entry_id)}", _text(raw))


def _streams(reply: Any) -> list[tuple[Any, Any]]:
    """XREADGROUP's reply as (stream, messages) pairs: redis-py gives a list on RESP2, a dict on RESP3."""
    if not reply:
        return []
    return list(reply.items()) if isinstance(reply, dict) else [(stream, messages) for stream, messages in reply]


def _by_shard(entry_ids: Iterable[str]) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = defaultdict(list)
    for entry_id in entry_ids:
        shard, _, stream_id = entry_id.partition("/")
        grouped[int(shard)].append(stream_id)
    return grouped


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
