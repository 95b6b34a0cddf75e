"""MicroBatcher: items submitted while a batch runs are handled together, each caller gets its own outcome."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from engine.microbatch import MicroBatcher

pytestmark = pytest.mark.timeout(10)


class Recorder:
    """A handler that squares numbers, refuses negative ones, and can be held until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: Sequence[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        self.release.wait(5)
        return [ValueError(f"negative {item}") if item < 0 else item * item for item in items]


def test_items_arriving_during_a_batch_form_the_next_batch() -> None:
    """While the first item's batch is held, later submissions queue and then run together as one batch."""
    handler = Recorder()
    handler.release.clear()
    batcher = MicroBatcher(handler, runners=1)

    async def scenario() -> list[int]:
        first = asyncio.create_task(batcher.submit(1))
        while not handler.batches:
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(batcher.submit(n)) for n in (2, 3, 4)]
        await asyncio.sleep(0.01)
        handler.release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(scenario()) == [1, 4, 9, 16]
    assert handler.batches == [[1], [2, 3, 4]]


def test_batches_never_exceed_max_batch() -> None:
    """Twenty items with max_batch 8 are handled in batches of at most 8, every item exactly once."""
    handler = Recorder()
    batcher = MicroBatcher(handler, max_batch=8, runners=1)

    async def scenario() -> list[int]:
        return await asyncio.gather(*(batcher.submit(n) for n in range(20)))

    assert asyncio.run(scenario()) == [n * n for n in range(20)]
    assert max(len(batch) for batch in handler.batches) <= 8
    assert sorted(item for batch in handler.batches for item in batch) == list(range(20))


def test_an_exception_for_one_item_is_raised_to_its_caller_only() -> None:
    """The handler's exception for one item reaches that caller; the others in the batch get their results."""
    batcher = MicroBatcher(Recorder())

    async def scenario() -> list[int | BaseException]:
        return await asyncio.gather(batcher.submit(2), batcher.submit(-1), batcher.submit(3), return_exceptions=True)

    two, failed, three = asyncio.run(scenario())
    assert (two, three) == (4, 9)
    assert isinstance(failed, ValueError) and str(failed) == "negative -1"


def test_a_crashing_handler_fails_its_batch_and_the_next_batch_still_runs() -> None:
    """A handler that raises fails every caller of that batch; later submissions are handled normally."""
    calls: list[list[int]] = []

    def handler(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("database gone")
        return list(items)

    batcher = MicroBatcher(handler)

    async def scenario() -> tuple[BaseException | int, int]:
        failed = await asyncio.gather(batcher.submit(1), return_exceptions=True)
        return failed[0], await batcher.submit(2)

    failed, later = asyncio.run(scenario())
    assert isinstance(failed, RuntimeError) and later == 2


def test_a_handler_returning_the_wrong_number_of_results_fails_the_batch() -> None:
    """Results that cannot be matched to items are never handed out: every caller gets a RuntimeError."""
    batcher = MicroBatcher(lambda items: [0], runners=1)

    async def scenario() -> list[int | BaseException]:
        return await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)

    results = asyncio.run(scenario())
    assert [type(result) for result in results] == [RuntimeError, RuntimeError]


@pytest.mark.parametrize("options", [{"max_batch": 0}, {"runners": 0}])
def test_nonsense_sizes_are_refused(options: dict[str, int]) -> None:
    """A batch size or runner count below one is a ValueError at construction."""
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: list(items), **options)
