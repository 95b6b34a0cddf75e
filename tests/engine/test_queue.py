"""The task stream against real Redis: reads, acknowledgement folded into the next read, delayed jobs."""

from __future__ import annotations

import uuid

import pytest
import redis

from engine.queue import Queue, job

pytestmark = pytest.mark.redis

RUN = uuid.uuid4().hex[:12]  # every key these tests touch contains it


@pytest.fixture
def queue(client: redis.Redis) -> Queue:
    queue = Queue(client, base=f"test-stream-{RUN}-{uuid.uuid4().hex[:8]}")
    queue.ensure_group()
    return queue


def test_read_acknowledges_the_previous_read_in_the_same_call(queue: Queue) -> None:
    """Entries passed as `ack` leave the pending list and the stream; the read still returns the new ones."""
    queue.enqueue([job("send", f"t{i}") for i in range(4)])
    first = queue.read("c1", count=2, block_ms=10)
    assert [entry.ref for entry in first] == ["t0", "t1"] and queue.pending() == 2
    second = queue.read("c1", count=2, block_ms=10, ack=[entry.id for entry in first])
    assert [entry.ref for entry in second] == ["t2", "t3"]
    assert (queue.pending(), queue.backlog()) == (2, 2)
    assert queue.read("c1", count=2, block_ms=10, ack=[entry.id for entry in second]) == []
    assert (queue.pending(), queue.backlog()) == (0, 0)


def test_unacknowledged_entries_are_reclaimed_by_another_consumer(queue: Queue) -> None:
    """What a consumer read and never acknowledged goes to whoever reclaims it after the idle time."""
    queue.enqueue([job("send", "lost")])
    assert [entry.ref for entry in queue.read("dead", count=1, block_ms=10)] == ["lost"]
    assert [entry.ref for entry in queue.reclaim("alive", min_idle_ms=0)] == ["lost"]


def test_delayed_jobs_move_to_the_stream_once_due(queue: Queue) -> None:
    """A deferred job stays out of the stream until its time, then moves exactly once."""
    queue.defer(job("send", "later"), 1_000.0)
    assert queue.release_due(999.0) == 0
    assert queue.release_due(1_000.0) == 1 and queue.release_due(1_001.0) == 0
    assert [entry.ref for entry in queue.read("c1", count=5, block_ms=10)] == ["later"]


@pytest.fixture
def sharded(client: redis.Redis) -> Queue:
    queue = Queue(client, shards=4, base=f"test-shards-{RUN}-{uuid.uuid4().hex[:8]}:q")
    queue.ensure_group()
    return queue


def test_one_read_takes_entries_of_every_shard_with_ids_unique_across_them(sharded: Queue) -> None:
    """Entries queued to different shards in the same millisecond share a stream id, yet their queue ids
    differ, one read returns entries of every shard, and acknowledging them empties every shard."""
    jobs = [job("send", f"t{i}") for i in range(16)]
    sharded.enqueue(jobs)
    entries = sharded.read("c1", count=16, block_ms=10)
    assert sorted(entry.job for entry in entries) == sorted(jobs)
    assert len({entry.id for entry in entries}) == 16
    assert {entry.id.partition("/")[0] for entry in entries} == {"0", "1", "2", "3"}
    assert (sharded.pending(), sharded.backlog()) == (16, 16)
    sharded.ack([entry.id for entry in entries])
    assert (sharded.pending(), sharded.backlog()) == (0, 0)


def test_the_oldest_unread_entry_is_found_across_shards(sharded: Queue, client: redis.Redis) -> None:
    """oldest_unread is when the earliest entry no consumer has read yet was added, on whichever shard it
    lies, and None once every shard has been read to its end (read and unacknowledged entries included) or
    its stream is gone."""
    assert sharded.oldest_unread() is None
    sharded.enqueue([job("send", f"t{i}") for i in range(8)])
    added = [int(client.xrange(stream, count=1)[0][0].decode().split("-")[0]) / 1000
             for stream in sharded.streams if client.xlen(stream)]
    assert sharded.oldest_unread() == min(added)
    assert len(sharded.read("c1", count=32, block_ms=10)) == 8  # up to 8 from each shard
    assert sharded.oldest_unread() is None
    client.delete(sharded.streams[0])
    assert sharded.oldest_unread() is None


def test_a_task_s_jobs_and_delayed_copies_stay_in_one_shard(sharded: Queue) -> None:
    """A task's send and timeout jobs go to the shard of its id, its delayed job waits in that shard's set (an
    earlier time kept with earlier_only), and the counts add up over the shards."""
    refs = [f"task-{i}" for i in range(12)]
    sharded.defer_many([(job("send", ref), 2_000.0) for ref in refs])
    sharded.defer(job("send", refs[0]), 1_500.0, earlier_only=True)
    sharded.defer(job("send", refs[0]), 1_900.0, earlier_only=True)
    assert sharded.redis.zscore(sharded.delayed_key(job("send", refs[0])), job("send", refs[0])) == 1_500.0
    assert sharded.delayed_count() == 12 and sharded.shard(job("send", "x")) == sharded.shard(job("timeout", "x"))
    assert sharded.release_due(1_500.0) == 1 and sharded.release_due(2_000.0) == 11
    entries = sharded.read("c1", count=40, block_ms=10)
    assert all(entry.id.startswith(f"{sharded.shard(entry.job)}/") for entry in entries) and len(entries) == 12


def test_a_lost_shard_group_is_created_again_on_read(sharded: Queue) -> None:
    """When Redis loses one shard's stream, the next read recreates it and its group and goes on."""
    sharded.redis.delete(sharded.streams[2])
    assert sharded.read("c1", count=4, block_ms=10) == []
    sharded.enqueue([job("send", f"t{i}") for i in range(8)])
    assert len(sharded.read("c1", count=8, block_ms=10)) == 8


def test_a_shard_count_below_one_is_refused(client: redis.Redis) -> None:
    """A queue of no shards is a clear error, not a queue that drops every job."""
    with pytest.raises(ValueError, match="at least 1"):
        Queue(client, shards=0)
