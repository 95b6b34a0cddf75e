"""Retention: final tasks past their time go with everything hanging off them; open and recent ones stay."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.store import repo
from engine.store.models import Attempt, Batch, Callback, Decision, Task, WebhookDelivery, WebhookTry
from engine.store.retention import purge_before



@pytest.fixture(autouse=True)
def hand_back(db: Any) -> Any:
    """These tests query the models directly; the thread's pooled connection goes back after each."""
    yield
    if not db.is_closed():
        db.close()


NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)


def make_task(status: str, changed: datetime, batch_id: str | None = None, created: datetime | None = None) -> str:
    """A task with an attempt, a decision, a report and a webhook delivery with one try, created `created` (or
    when it was last changed) and last changed `changed`."""
    task_id = str(uuid.uuid4())
    repo.create_tasks([{"task_id": task_id, "app_id": "a" * 16, "receiver": "13800138000", "batch_id": batch_id}])
    repo.claim_attempts([repo.AttemptClaim(task_id, 1, "p", "r", "v")], ("pending",))
    repo.record_decision(task_id, 1, "send_failure", "retry", rule="r", rule_version="v")
    repo.record_callback(provider="p", task_id=task_id, status="delivered")
    delivery = repo.create_webhook_delivery(task_id, "a" * 16, "task.final", "https://example.test/h", "{}")
    repo.record_webhook_try(delivery.id, status_code=200, error="", latency_ms=1, delivered=True, next_at=None,
                            give_up=False)
    Task.update(status=status, created_at=created or changed, updated_at=changed).where(
        Task.task_id == task_id).execute()
    return task_id


def rows(model: Any, task_ids: list[str]) -> int:
    return model.select().where(model.task_id.in_(task_ids)).count()


def test_old_final_tasks_go_with_their_attempts_decisions_reports_and_webhooks() -> None:
    """Success and failed tasks changed before the cutoff are deleted with every row that names them."""
    gone = [make_task("success", OLD), make_task("failed", OLD)]
    purged = purge_before(NOW - timedelta(days=30), batch=1)
    assert purged.tasks == 2
    for model in (Task, Attempt, Decision, Callback, WebhookDelivery):
        assert rows(model, gone) == 0, model
    assert WebhookTry.select().count() == 0


def test_open_and_recent_tasks_are_kept() -> None:
    """A pending or sent task is never purged however old, nor a final one changed after the cutoff, even when it
    was created long before it (a late delivery report)."""
    kept = [make_task("pending", OLD), make_task("sent", OLD), make_task("processing", OLD), make_task("success", NOW),
            make_task("failed", NOW, created=OLD)]
    assert purge_before(NOW - timedelta(days=30)).tasks == 0
    assert rows(Task, kept) == 5 and rows(Attempt, kept) == 5 and rows(Decision, kept) == 5


def test_many_batches_of_tasks_are_all_purged() -> None:
    """More tasks than one batch holds are deleted over several transactions, none left over."""
    for _ in range(7):
        make_task("success", OLD)
    assert purge_before(NOW - timedelta(days=30), batch=3).tasks == 7
    assert Task.select().count() == 0


def test_a_batch_goes_once_none_of_its_tasks_is_left() -> None:
    """A batch record is deleted when its last task is purged, and kept while any task of it remains."""
    emptied, partial = str(uuid.uuid4()), str(uuid.uuid4())
    for batch_id in (emptied, partial):
        Batch.insert(batch_id=batch_id, app_id="a" * 16, total=2, created_at=OLD).execute()
    make_task("success", OLD, emptied), make_task("failed", OLD, emptied)
    make_task("success", OLD, partial), make_task("pending", OLD, partial)
    purged = purge_before(NOW - timedelta(days=30))
    assert purged.counts["batches"] == 1
    assert [b.batch_id for b in Batch.select()] == [partial]


def test_a_dry_run_counts_and_deletes_nothing() -> None:
    """--dry-run reports how many tasks would go and leaves every row."""
    make_task("success", OLD)
    assert purge_before(NOW - timedelta(days=30), dry_run=True).tasks == 1
    assert Task.select().count() == 1 and Attempt.select().count() == 1
