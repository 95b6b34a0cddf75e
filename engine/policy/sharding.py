"""Which stream shard a job goes to: a stable hash of its reference, the same in every process."""

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
