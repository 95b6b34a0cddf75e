"""The worker's batch steps on SQLite, PostgreSQL and MariaDB: load, claim attempts, record outcomes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from engine.store import repo

pytestmark = pytest.mark.usefixtures("db")

OPEN = ("pending", "scheduled", "processing")


def new_tasks(count: int, **fields: Any) -> list[str]:
    rows = [{"task_id": str(uuid.uuid4()), "app_id": "a" * 16, "receiver": f"1380000{i:04d}", **fields}
            for i in range(count)]
    repo.create_tasks(rows)
    return [row["task_id"] for row in rows]


def claims(task_ids: list[str], number: int = 1, provider: str = "vendor") -> list[repo.AttemptClaim]:
    return [repo.AttemptClaim(task_id, number, provider, "route", "v1") for task_id in task_ids]


def test_load_for_delivery_returns_existing_tasks_with_attempts_in_order() -> None:
    """Named tasks that exist come back with their attempts ordered by number; unknown ids are left out."""
    first, second = new_tasks(2)
    for number in (1, 2):
        assert repo.begin_attempt(first, number, "vendor", "route", "v1")
    tasks, attempts = repo.load_for_delivery([first, second, "no-such-task", first])
    assert set(tasks) == {first, second}
    assert [attempt.number for attempt in attempts[first]] == [1, 2]
    assert attempts[second] == []


def test_claim_attempts_begins_every_attempt_and_marks_tasks_processing() -> None:
    """A claim without conflicts wins every attempt and moves each task to processing with its provider."""
    task_ids = new_tasks(60)  # more than one insert chunk
    batch = claims(task_ids[:30]) + claims(task_ids[30:], provider="backup")
    assert repo.claim_attempts(batch, OPEN) == [True] * 60
    tasks, attempts = repo.load_for_delivery(task_ids)
    assert {task.status for task in tasks.values()} == {"processing"}
    assert {tasks[task_id].provider for task_id in task_ids[30:]} == {"backup"}
    assert all([attempt.status for attempt in attempts[task_id]] == ["sending"] for task_id in task_ids)


def test_claim_attempts_loses_only_the_attempts_begun_elsewhere() -> None:
    """An attempt another worker already began is lost (the per-attempt lock); the others are still won."""
    task_ids = new_tasks(3)
    assert repo.begin_attempt(task_ids[1], 1, "other", "route", "v1")
    assert repo.claim_attempts(claims(task_ids), OPEN) == [True, False, True]
    _, attempts = repo.load_for_delivery(task_ids)
    assert attempts[task_ids[1]][0].provider == "other"
    assert [len(attempts[task_id]) for task_id in task_ids] == [1, 1, 1]


def test_a_claim_on_a_finished_task_is_lost_and_leaves_nothing() -> None:
    """A task no longer open (a duplicate job planned it from an older read) keeps its status, its claim is
    lost and no attempt row stays, alone or beside open tasks claimed together."""
    (done,) = new_tasks(1, status="success")
    open_ids = new_tasks(2)
    assert repo.claim_attempts(claims([done]), OPEN) == [False]
    assert repo.claim_attempts(claims([open_ids[0], done, open_ids[1]]), OPEN) == [True, False, True]
    assert repo.get_task(done).status == "success" and repo.list_attempts(done) == []
    assert [len(repo.list_attempts(task_id)) for task_id in open_ids] == [1, 1]


def test_record_attempts_finishes_attempts_and_applies_changes_once() -> None:
    """Outcomes and status changes are stored together; a change whose expected status is gone does not apply."""
    task_ids = new_tasks(2)
    repo.claim_attempts(claims(task_ids), OPEN)
    repo.mark_status_if(task_ids[1], OPEN, status="failed")
    ends = [repo.AttemptEnd(task_id, 1, "ok", True, "msg-1", latency_ms=3, request={"a": 1}, response={"b": "是"})
            for task_id in task_ids]
    changes = [repo.StatusChange(task_id, OPEN, {"status": "success", "provider_message_id": "msg-1"})
               for task_id in task_ids]
    assert repo.record_attempts(ends, changes) == [True, False]
    tasks, attempts = repo.load_for_delivery(task_ids)
    assert [tasks[task_id].status for task_id in task_ids] == ["success", "failed"]
    assert [attempts[task_id][0].status for task_id in task_ids] == ["ok", "ok"]
    assert attempts[task_ids[0]][0].response == '{"b":"是"}'


def test_record_attempts_applies_a_batch_of_alike_changes_in_one_go() -> None:
    """Changes of one shape all apply together, each task getting its own values."""
    task_ids = new_tasks(5)
    repo.claim_attempts(claims(task_ids), OPEN)
    ends = [repo.AttemptEnd(task_id, 1, "ok", True, f"msg-{task_id}") for task_id in task_ids]
    changes = [repo.StatusChange(task_id, OPEN, {"status": "success", "provider_message_id": f"msg-{task_id}"})
               for task_id in reversed(task_ids)]
    assert repo.record_attempts(ends, changes) == [True] * 5
    tasks, attempts = repo.load_for_delivery(task_ids)
    assert all(tasks[task_id].provider_message_id == f"msg-{task_id}" for task_id in task_ids)
    assert {task.status for task in tasks.values()} == {"success"}
    assert all(task.updated_at > task.created_at for task in tasks.values())
    assert {attempts[task_id][0].status for task_id in task_ids} == {"ok"}


def test_record_attempts_is_all_or_nothing() -> None:
    """An outcome for an attempt that was never begun refuses the whole record: nothing is stored."""
    task_ids = new_tasks(2)
    repo.claim_attempts(claims(task_ids[:1]), OPEN)
    ends = [repo.AttemptEnd(task_id, 1, "ok", True) for task_id in task_ids]
    with pytest.raises(repo.NotFound):
        repo.record_attempts(ends, [repo.StatusChange(task_ids[0], OPEN, {"status": "success"})])
    tasks, attempts = repo.load_for_delivery(task_ids)
    assert tasks[task_ids[0]].status == "processing"
    assert attempts[task_ids[0]][0].status == "sending"


@pytest.mark.parametrize("change, message", [
    (repo.StatusChange("t", ("nowhere",), {"status": "success"}), "unknown task status"),
    (repo.StatusChange("t", OPEN, {"colour": "blue"}), "unknown task update field"),
    (repo.StatusChange("t", OPEN, {"status": "lost"}), "unknown task status"),
])
def test_bad_status_changes_are_refused_before_anything_is_stored(change: repo.StatusChange, message: str) -> None:
    """A malformed change raises ValueError and leaves the attempts untouched."""
    (task_id,) = new_tasks(1)
    repo.claim_attempts(claims([task_id]), OPEN)
    with pytest.raises(ValueError, match=message):
        repo.record_attempts([repo.AttemptEnd(task_id, 1, "ok", True)], [change])
    assert repo.list_attempts(task_id)[0].status == "sending"
