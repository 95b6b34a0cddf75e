"""Which stream shard a job goes to: stable across processes, by the job's ref, spread over the shards."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.policy.sharding import shard_of


def test_one_shard_takes_every_job() -> None:
    """With one shard every job goes to shard 0."""
    assert {shard_of(f"send:t{i}", 1) for i in range(50)} == {0}


def test_the_shard_depends_on_the_ref_only_and_never_changes() -> None:
    """A task's send and timeout jobs share a shard, and the hash is fixed (CRC-32), not Python's salted one."""
    assert shard_of("send:0194-abc", 8) == shard_of("timeout:0194-abc", 8) == 2  # crc32(b"0194-abc") % 8


def test_jobs_spread_evenly_over_the_shards() -> None:
    """Ten thousand task ids fill eight shards within 10% of an even share."""
    counts = Counter(shard_of(f"send:01a24e44-{i:08x}", 8) for i in range(10_000))
    assert set(counts) == set(range(8)) and all(abs(n - 1250) < 125 for n in counts.values())


def test_no_shards_is_refused() -> None:
    """A shard count below one is a clear error."""
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("send:t", 0)
