"""Which stream shard a job goes to (a stable hash of its reference, the same in every process), and which
shards each stream reader of a worker reads."""

from __future__ import annotations

import zlib


def shard_of(job: str, shards: int) -> int:
    """The shard of a `kind:ref` job among `shards`: by its ref (a task id for sends and timeouts), so every job
    of one task, and its delayed copy, lands in the same shard whatever process queues it."""
    if shards < 1:
        raise ValueError(f"the shard count must be at least 1, got {shards}")
    if shards == 1:
        return 0
    return zlib.crc32(job.partition(":")[2].encode()) % shards


def reader_shards(shards: int, readers: int, *, one_read: bool, most_readers: int = 32) -> list[tuple[int, ...]]:
    """The shards each of a worker's stream readers reads; every shard is read by at least one.

    When one command can read every shard (`one_read`: a single server), each of `readers` reads them all.
    On a cluster a reader waiting on one shard misses the others, so a worker runs a reader per shard (up to
    `most_readers`, then several shards per reader), and never fewer than `readers`.
    """
    if shards < 1 or readers < 1:
        raise ValueError(f"shards and readers must be at least 1, got {shards} and {readers}")
    if one_read:
        return [tuple(range(shards))] * readers
    count = max(readers, min(shards, most_readers))
    return [tuple(range(i % shards, shards, count)) if i < shards else (i % shards,) for i in range(count)]
