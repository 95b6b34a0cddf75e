"""Retention: deleting finished tasks past their keeping time, a small batch per transaction.

Only final tasks (success, failed) go, with everything that hangs off them: attempts, failure
decisions, delivery reports and customer webhook deliveries with their tries; then batches none of
whose tasks is left. Each batch is its own short transaction, so delivery's writes interleave with a
purge instead of waiting behind one long delete.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import peewee

from engine.store.db import StoreUnavailable, connection
from engine.store.models import Attempt, Batch, Callback, Decision, Task, WebhookDelivery, WebhookTry, database

log = logging.getLogger("mpush.retention")

FINAL_STATUSES = ("success", "failed")
PURGE_EVERY_SECONDS = 3600.0
DEFAULT_BATCH = 500  # ids per IN (...): within SQLite's oldest parameter limit (999)


@dataclass
class Purged:
    """Rows deleted, by table."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, table: str, n: int) -> None:
        self.counts[table] = self.counts.get(table, 0) + n

    @property
    def tasks(self) -> int:
        return self.counts.get("tasks", 0)


def purge_before(cutoff: datetime, *, batch: int = DEFAULT_BATCH, pause: float = 0.0,
                 dry_run: bool = False) -> Purged:
    """Delete final tasks last changed before `cutoff`, `batch` at a time with `pause` seconds between batches;
    with `dry_run`, count the tasks that would go and delete nothing."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    db = _db()
    purged = Purged()
    with connection(db):
        if dry_run:
            purged.add("tasks", _old_final_tasks(cutoff).count())
            return purged
        for step in (_delete_task_batch, _delete_empty_batches):
            while True:
                with _write_transaction(db):
                    deleted = step(cutoff, batch, purged)
                if deleted < batch:
                    break
                if pause:
                    time.sleep(pause)
    return purged


def _old_final_tasks(cutoff: datetime) -> peewee.ModelSelect:
    """Final tasks last changed before `cutoff`, found by creation time (a task changes only after it is
    created, and updated_at has no index: it would cost every write of every task an entry)."""
    return (Task.select(Task.task_id)
            .where((Task.created_at < cutoff) & (Task.updated_at < cutoff) & Task.status.in_(FINAL_STATUSES))
            .order_by(Task.created_at))


def _delete_task_batch(cutoff: datetime, batch: int, purged: Purged) -> int:
    task_ids = [row.task_id for row in _old_final_tasks(cutoff).limit(batch)]
    if not task_ids:
        return 0
    deliveries = WebhookDelivery.select(WebhookDelivery.id).where(WebhookDelivery.task_id.in_(task_ids))
    purged.add("webhook_tries", WebhookTry.delete().where(WebhookTry.delivery.in_(deliveries)).execute())
    for model in (WebhookDelivery, Callback, Decision, Attempt, Task):
        purged.add(model._meta.table_name, model.delete().where(model.task_id.in_(task_ids)).execute())
    return len(task_ids)


def _delete_empty_batches(cutoff: datetime, batch: int, purged: Purged) -> int:
    """Batches created before `cutoff` with no task left."""
    has_task = Task.select(Task.id).where(Task.batch_id == Batch.batch_id)
    # MySQL refuses a DELETE whose subquery reads the same table, so the ids are read first.
    ids = [row.id for row in Batch.select(Batch.id)
           .where((Batch.created_at < cutoff) & ~peewee.fn.EXISTS(has_task)).limit(batch)]
    if ids:
        purged.add("batches", Batch.delete().where(Batch.id.in_(ids)).execute())
    return len(ids)


def _write_transaction(db: peewee.Database) -> peewee._atomic:
    """On SQLite the write lock is taken at BEGIN, as every writer of the store does (see repo)."""
    return db.atomic("IMMEDIATE") if isinstance(db, peewee.SqliteDatabase) else db.atomic()


def _db() -> peewee.Database:
    if database.obj is None:
        raise RuntimeError("the store is not bound: call engine.store.db.bind(connect(url)) first")
    return database.obj


def keep_purging(days: int, stop: threading.Event, *, every: float = PURGE_EVERY_SECONDS) -> None:
    """Purge final tasks older than `days` once every `every` seconds until `stop`; a failed round is logged and
    tried again at the next one. Several processes may run this: a row is deleted once, whoever gets there."""
    while not stop.wait(every):
        try:
            purged = purge_before(datetime.now(UTC) - timedelta(days=days), pause=0.05)
        except (StoreUnavailable, peewee.DatabaseError) as exc:
            log.warning("retention.failed: %s", exc)
            continue
        if purged.tasks:
            log.info("retention.purged %s", purged.counts)
