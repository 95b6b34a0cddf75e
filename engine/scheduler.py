"""Time-driven work: due delayed jobs to the stream, and the sweeps that bring back jobs Redis never got or lost.

Retries, scheduled sends, report timeouts and webhook retries all wait in the delayed set; the
database's open tasks are the source of truth:

- the outbox sweep (every `MPUSH_SWEEP_INTERVAL` s) queues again open tasks untouched for
  `MPUSH_OUTBOX_GRACE` s with no delayed job: an API killed between commit and enqueue, a lost job;
- the epoch check (every tick) notices that Redis lost its data (the epoch key is gone), and the one
  process that sets it again re-queues every open task at once.

Queuing a task that still had a job is harmless: delivery claims each attempt once, a job for a task
in flight waits for it, and a scheduled task's early job goes back to the delayed set.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from engine import keys, metrics
from engine.queue import job
from engine.redis_errors import REDIS_ERRORS
from engine.services import Services
from engine.store import repo
from engine.store.db import StoreUnavailable
from engine.upgrade import move_old_jobs

log = logging.getLogger("mpush.scheduler")

TICK_SECONDS = 0.2
PAGE = 500


def run(svc: Services, stop: threading.Event) -> None:
    """Release due jobs and check the epoch every tick, sweep for stranded tasks every sweep interval, until
    `stop`."""
    next_sweep = time.monotonic() + svc.settings.sweep_interval
    while not stop.wait(TICK_SECONDS):
        try:
            svc.queue.release_due(time.time())
            recover_lost_data(svc, datetime.now(UTC))
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + svc.settings.sweep_interval
                move_old_jobs(svc.redis, svc.queue)  # an older version's process may still be queuing there
                requeue_stranded(svc, datetime.now(UTC))
        except (*REDIS_ERRORS, StoreUnavailable) as exc:
            log.warning("scheduler.tick failed: %s", exc)


def recover_lost_data(svc: Services, now: datetime) -> int:
    """When the epoch key is gone, Redis lost its data (or is new): the process that sets it again re-queues
    every open task and the report timeout of every sent one; how many tasks it re-queued (0 for the others)."""
    if svc.redis.exists(keys.EPOCH) or not svc.redis.set(keys.EPOCH, now.isoformat(), nx=True):
        return 0
    svc.queue.ensure_group()
    count, after = 0, ""
    while page := repo.unfinished_tasks(after, PAGE):
        open_tasks = [(task, task.due) for task in page if task.status != "sent"]
        due_now = [task.task_id for task, due in open_tasks if not _later(due, now)]
        later = [(job("send", task.task_id), due.timestamp()) for task, due in open_tasks if _later(due, now)]
        timeouts = [(job("timeout", task.task_id), now.timestamp() + svc.settings.callback_timeout)
                    for task in page if task.status == "sent"]
        if due_now:
            svc.queue.enqueue([job("send", task_id) for task_id in due_now])
        if later or timeouts:
            svc.queue.defer_many([*later, *timeouts])
        count += len(page)
        after = page[-1].task_id
    metrics.REQUEUED.labels("lost_data").inc(count)
    if count:
        log.warning("scheduler.redis_data_lost requeued %d unfinished tasks", count)
    return count


def _later(moment: datetime | None, now: datetime) -> bool:
    return moment is not None and moment > now


def requeue_stranded(svc: Services, now: datetime) -> int:
    """Queue again open tasks untouched for the outbox grace whose job is not in the delayed set."""
    candidates = repo.stale_open_tasks(now - timedelta(seconds=svc.settings.outbox_grace), limit=PAGE)
    pipe = svc.redis.pipeline(transaction=False)
    for task_id in candidates:
        pipe.zscore(svc.queue.delayed_key(job("send", task_id)), job("send", task_id))
    stranded = [task_id for task_id, score in zip(candidates, pipe.execute()) if score is None]
    if stranded:
        svc.queue.enqueue([job("send", task_id) for task_id in stranded])
        metrics.REQUEUED.labels("stranded").inc(len(stranded))
        log.warning("scheduler.requeued %d stranded tasks", len(stranded))
    return len(stranded)
