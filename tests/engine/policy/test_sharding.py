"""Which stream shard a job goes to: stable across processes, by the job's ref, spread over the shards."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.policy.sharding import reader_shards, shard_of


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


def test_on_one_server_every_reader_reads_every_shard() -> None:
    """Where one command reads all shards, each reader reads them all and the reader count is kept."""
    assert reader_shards(4, 2, one_read=True) == [(0, 1, 2, 3), (0, 1, 2, 3)]


@pytest.mark.parametrize(("shards", "readers", "most", "expected"), [
    (3, 2, 32, [(0,), (1,), (2,)]),  # a reader per shard, more than the readers asked for
    (2, 4, 32, [(0,), (1,), (0,), (1,)]),  # more readers than shards: shards read twice
    (5, 1, 2, [(0, 2, 4), (1, 3)]),  # past the most readers: several shards per reader
])
def test_on_a_cluster_readers_wait_on_as_few_shards_as_they_can(shards: int, readers: int, most: int,
                                                               expected: list[tuple[int, ...]]) -> None:
    """On a cluster every shard gets a reader of its own up to the cap, every shard is read, and a worker never
    runs fewer readers than asked."""
    plan = reader_shards(shards, readers, one_read=False, most_readers=most)
    assert plan == expected and {shard for group in plan for shard in group} == set(range(shards))
