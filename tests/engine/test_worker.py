"""The worker's send pool: a batch's provider calls spread over its threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.settings import Settings
from engine.worker import Worker
from tests.support.service import CONSOLE_RULES, gateway, write_rules

pytestmark = pytest.mark.timeout(60)

@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    with gateway(tmp_path, write_rules(tmp_path, CONSOLE_RULES), workers=False) as gw:
        pool = Worker(gw.svc, threads=3, name="pool-test")
        yield pool
        pool._senders.shutdown()


def test_a_slow_call_holds_up_only_its_own_thread(worker: Worker) -> None:
    """While one call blocks, the other threads make every other call of the batch; results keep their order."""
    others_done, lock, done = threading.Event(), threading.Lock(), [0]
    threads: set[str] = set()

    def call(item: int) -> int:
        threads.add(threading.current_thread().name)
        if item == 0:
            assert others_done.wait(10), "the other calls waited behind the slow one"
            return 0
        with lock:
            done[0] += 1
            if done[0] == 8:
                others_done.set()
        return item * 10

    assert worker._map(call, list(range(9))) == [item * 10 for item in range(9)]
    assert 2 <= len(threads) <= 3


def test_a_failing_call_is_raised_after_every_call_ran(worker: Worker) -> None:
    """One call's exception does not cancel the others: all run, then the first failure is raised."""
    called: list[int] = []

    def call(item: int) -> int:
        called.append(item)
        if item == 2:
            raise ValueError("provider bug")
        return item

    with pytest.raises(ValueError, match="provider bug"):
        worker._map(call, list(range(6)))
    assert sorted(called) == list(range(6))


def test_stream_readers_come_from_the_settings_and_never_outnumber_the_send_threads(worker: Worker) -> None:
    """MPUSH_WORKER_READERS (2 by default) readers, or fewer when there are fewer send threads."""
    svc = worker.svc
    assert Worker(svc, threads=3).readers == 2 and Worker(svc, threads=1).readers == 1
    assert Worker(svc, threads=3, readers=1).readers == 1
    assert Settings.from_env({"MPUSH_WORKER_READERS": "1"}).worker_readers == 1
