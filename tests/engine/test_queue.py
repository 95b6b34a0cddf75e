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
