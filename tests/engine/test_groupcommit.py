"""GroupCommit: calls from several threads at the same moment share one batch, and a lone call waits for none."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from engine.microbatch import GroupCommit


def test_a_lone_call_runs_at_once_as_a_batch_of_one() -> None:
    """With nothing else waiting, submit runs the handler with just its own item."""
    seen: list[list[int]] = []
    group = GroupCommit(lambda items: (seen.append(list(items)), [item * 2 for item in items])[1])
    assert group.submit(21) == 42
    assert seen == [[21]]


def test_calls_arriving_during_a_batch_share_the_next_one() -> None:
    """While one batch runs, every caller that arrives waits and the next batch takes them all together."""
    entered, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def handle(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if items[0] == 0:
            entered.set()
            release.wait(10)
        return [item + 100 for item in items]

    group: GroupCommit[int, int] = GroupCommit(handle)
    results: dict[int, int] = {}
    first = threading.Thread(target=lambda: results.__setitem__(0, group.submit(0)))
    first.start()
    assert entered.wait(10)
    others = [threading.Thread(target=lambda n=n: results.__setitem__(n, group.submit(n))) for n in range(1, 6)]
    for thread in others:
        thread.start()
    while sum(len(batch) for batch in batches) < 1 or len(group._waiting) < 5:
        threading.Event().wait(0.01)
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert results == {n: n + 100 for n in range(6)}
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2


def test_an_exception_for_one_item_reaches_its_caller_only() -> None:
    """A handler may answer an exception for one item; the others get their results."""
    group: GroupCommit[int, int] = GroupCommit(lambda items: [ValueError(i) if i == 2 else i for i in items])
    assert group.submit(1) == 1
    with pytest.raises(ValueError):
        group.submit(2)


def test_a_crashing_handler_fails_its_batch_and_the_next_call_still_runs() -> None:
    """A handler that raises fails every caller of that batch; the group stays usable."""
    calls = [0]

    def handle(items: Sequence[int]) -> list[int]:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("database down")
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(handle)
    with pytest.raises(RuntimeError, match="database down"):
        group.submit(1)
    assert group.submit(2) == 2


def test_many_threads_each_get_their_own_results_with_every_item_run_once() -> None:
    """Sixteen threads submitting one to three items at a time, for a while, each get exactly their own results
    back, every item runs in exactly one batch, no batch exceeds max_batch, and nobody is left waiting."""
    ran: list[int] = []

    def handle(items: Sequence[tuple[int, int]]) -> list[int]:
        assert len(items) <= 8
        ran.extend(n for _, n in items)
        threading.Event().wait(0.0005 * (len(items) % 3))
        return [thread * 1_000_000 + n for thread, n in items]

    group: GroupCommit[tuple[int, int], int] = GroupCommit(handle, max_batch=8)
    failures: list[str] = []

    def submitter(thread: int) -> None:
        n = thread * 10_000
        for round_ in range(150):
            items = [(thread, n + i) for i in range(1 + round_ % 3)]
            n += len(items)
            if group.submit_many(items) != [thread * 1_000_000 + m for _, m in items]:
                failures.append(f"thread {thread} round {round_}")

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads) and not failures
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 16 * sum(1 + r % 3 for r in range(150))
    assert not group._waiting and not group._running
