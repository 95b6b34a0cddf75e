"""Time-driven work: due delayed jobs to the stream, and a sweep that re-queues stranded tasks.

Retries, scheduled sends, report timeouts and webhook retries all wait in the delayed set;
the sweep covers a Redis that lost data: open tasks in the database are the source of truth.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import redis

from engine.queue import job
from engine.services import Services
from engine.store import repo
from engine.store.db import StoreUnavailable

log = logging.getLogger("mpush.scheduler")

TICK_SECONDS = 0.2
SWEEP_EVERY_SECONDS = 60.0
STRANDED_AFTER = timedelta(minutes=10)


def run(svc: Services, stop: threading.Event) -> None:
    """Release due jobs every tick and sweep for stranded tasks every minute, until `stop`."""
    next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
    while not stop.wait(TICK_SECONDS):
        try:
            svc.queue.release_due(time.time())
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
                requeue_stranded(svc, datetime.now(UTC))
        except (redis.RedisError, StoreUnavailable) as exc:
            log.warning("scheduler.tick failed: %s", exc)


def requeue_stranded(svc: Services, now: datetime) -> int:
    """Queue again open tasks untouched for a long time whose job is neither queued nor delayed.

    Delivery is idempotent per attempt, so queuing a task that did still have a job costs one
    no-op read, never a second send.
    """
    candidates = repo.stale_open_tasks(now - STRANDED_AFTER, limit=500)
    pipe = svc.redis.pipeline(transaction=False)
    for task_id in candidates:
        pipe.zscore(svc.queue.delayed, job("send", task_id))
    stranded = [task_id for task_id, score in zip(candidates, pipe.execute()) if score is None]
    if stranded:
        svc.queue.enqueue([job("send", task_id) for task_id in stranded])
        log.warning("scheduler.requeued %d stranded tasks", len(stranded))
    return len(stranded)
