"""Time-driven work: due delayed jobs to the stream, and the sweeps that bring back jobs Redis never got or lost.

Retries, scheduled sends, report timeouts and webhook retries all wait in the delayed set; the
database's open tasks are the source of truth:

- the outbox sweep (every `MPUSH_SWEEP_INTERVAL` s) queues again open tasks untouched for
  `MPUSH_OUTBOX_GRACE` s with no delayed job: an API killed between commit and enqueue, a lost job;
- the epoch check (every tick) notices that Redis lost its data (the epoch key is gone), and the one
  process that sets it again re-queues every open task at once;
- the restart check (every tick) notices that Redis restarted with its data (a new run id, the epoch key
  still there): an append-only file synced every second may miss the last second or two of writes, so
  the one process that claims the restart re-queues the unfinished tasks touched shortly before it.

Queuing a task that still had a job is harmless: delivery claims each attempt once, a job for a task
in flight waits for it, and a scheduled task's early job goes back to the delayed set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.cluster import RedisCluster

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
# How long before the last sight of the old server a task's last Redis write may have been lost by its restart:
# the fsync lag of an append-only file (up to 2 s), commit-to-enqueue delays under load, clocks of other machines.
# Every unfinished task touched in it is queued again (a backlog's too: harmless, but each costs a no-op job).
RESTART_LOSS_WINDOW = timedelta(seconds=5)
RESTART_CLAIM_SECONDS = 600


@dataclass
class ServerWatch:
    """The Redis server (its run id; on a cluster, every primary's) this process last saw, and when."""

    run_id: str = ""
    seen_at: datetime | None = None


def run(svc: Services, stop: threading.Event) -> None:
    """Release due jobs and check the epoch and the server every tick, sweep for stranded tasks every sweep
    interval, until `stop`."""
    next_sweep = time.monotonic() + svc.settings.sweep_interval
    watch = ServerWatch()
    while not stop.wait(TICK_SECONDS):
        try:
            svc.queue.release_due(time.time())
            recover_lost_data(svc, datetime.now(UTC))
            recover_restart(svc, watch, datetime.now(UTC))
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
    count = requeue_unfinished(svc, now)
    metrics.REQUEUED.labels("lost_data").inc(count)
    if count:
        log.warning("scheduler.redis_data_lost requeued %d unfinished tasks", count)
    return count


def recover_restart(svc: Services, watch: ServerWatch, now: datetime) -> int:
    """When the Redis server this process last saw was replaced by a restarted one that kept its data (the
    epoch key outlived it), the restart may have dropped the writes of its last moments (an append-only file
    synced every second): the one process that claims the restart re-queues the unfinished tasks touched
    from RESTART_LOSS_WINDOW before it last saw the old server, except those whose send job waits on the stream
    still, unread (a backlog's, mostly), and the send jobs consumers had read and not acknowledged (a worker
    whose handling failed with the restart leaves them pending for the visibility timeout) are queued again
    too; how many jobs (0 for the others). Without this, an accepted task whose job was lost waited for the
    outbox sweep (`MPUSH_OUTBOX_GRACE`, a minute)."""
    run_id = server_run_id(svc.redis)
    previous, seen_at = watch.run_id, watch.seen_at
    count = 0
    if previous and seen_at and run_id != previous and not _recovered_since(svc, seen_at):
        claim = keys.restarted(run_id)
        if svc.redis.set(claim, previous, nx=True, ex=RESTART_CLAIM_SECONDS):
            since, stuck = seen_at - RESTART_LOSS_WINDOW, []
            try:
                svc.queue.ensure_group()
                waiting, read = svc.queue.jobs_on_streams((since - RESTART_LOSS_WINDOW).timestamp())
                count = requeue_unfinished(svc, now, touched_since=since, keep_earlier=True, present=waiting | read)
                stuck = sorted(item for item in read if item.startswith("send:"))
                if stuck:  # read before the restart, maybe by a handling that failed with it: queued again
                    svc.queue.enqueue(stuck)
                    count += len(stuck)
            except BaseException:
                svc.redis.delete(claim)  # this process (its next tick) or another one tries again
                raise
            metrics.REQUEUED.labels("restart").inc(count)
            log.warning("scheduler.redis_restarted requeued %d jobs: unfinished tasks touched since %s, and %d "
                        "read but not acknowledged", count, since.isoformat(), len(stuck))
    watch.run_id, watch.seen_at = run_id, now
    return count


def server_run_id(client: object) -> str:
    """The run id of the Redis server (a new one at every start); on a cluster, every primary's joined."""
    if isinstance(client, RedisCluster):
        infos = client.info("server", target_nodes=RedisCluster.PRIMARIES)
        return ",".join(sorted(str(info["run_id"]) for info in infos.values()))
    return str(client.info("server")["run_id"])  # type: ignore[attr-defined]


def _recovered_since(svc: Services, seen_at: datetime) -> bool:
    """Whether the epoch was set after `seen_at`: the restarted server came back empty and the lost-data
    recovery has re-queued every unfinished task already (or will, this tick, if the key is still missing)."""
    epoch = svc.redis.get(keys.EPOCH)
    if epoch is None:
        return True
    try:
        set_at = datetime.fromisoformat(epoch.decode() if isinstance(epoch, bytes) else epoch)
    except ValueError:
        return False  # not a time (an older version's value): recover rather than guess
    return set_at.tzinfo is not None and set_at > seen_at


def requeue_unfinished(svc: Services, now: datetime, touched_since: datetime | None = None,
                       keep_earlier: bool = False, present: Collection[str] = ()) -> int:
    """Queue every unfinished task (those touched since `touched_since`, given one) again: open ones now or
    at their due time, sent ones' report timeouts; `keep_earlier` leaves a delayed job that is already due
    sooner as it is, and an open task whose send job is among the `present` ones is left to it. How many tasks."""
    count, after = 0, ""
    while page := repo.unfinished_tasks(after, PAGE, touched_since):
        after = page[-1].task_id
        page = [task for task in page if task.status == "sent" or job("send", task.task_id) not in present]
        open_tasks = [(task, task.due) for task in page if task.status != "sent"]
        due_now = [task.task_id for task, due in open_tasks if not _later(due, now)]
        later = [(job("send", task.task_id), due.timestamp()) for task, due in open_tasks if _later(due, now)]
        timeouts = [(job("timeout", task.task_id), now.timestamp() + svc.settings.callback_timeout)
                    for task in page if task.status == "sent"]
        if due_now:
            svc.queue.enqueue([job("send", task_id) for task_id in due_now])
        if later or timeouts:
            svc.queue.defer_many([*later, *timeouts], earlier_only=keep_earlier)
        count += len(page)
    return count


def _later(moment: datetime | None, now: datetime) -> bool:
    return moment is not None and moment > now


def requeue_stranded(svc: Services, now: datetime) -> int:
    """Queue again open tasks untouched for the outbox grace whose job is not in the delayed set, nor possibly
    among the entries the workers have not read yet: while they are behind, a task is only stranded if it was
    last touched a grace before the oldest unread entry was added (else every sweep of a backlog would add
    another entry for each waiting task)."""
    grace = timedelta(seconds=svc.settings.outbox_grace)
    before = now - grace
    if (unread_since := svc.queue.oldest_unread()) is not None:
        before = min(before, datetime.fromtimestamp(unread_since, UTC) - grace)
    candidates = repo.stale_open_tasks(before, limit=PAGE)
    pipe = svc.redis.pipeline(transaction=False)
    for task_id in candidates:
        pipe.zscore(svc.queue.delayed_key(job("send", task_id)), job("send", task_id))
    stranded = [task_id for task_id, score in zip(candidates, pipe.execute()) if score is None]
    if stranded:
        svc.queue.enqueue([job("send", task_id) for task_id in stranded])
        metrics.REQUEUED.labels("stranded").inc(len(stranded))
        log.warning("scheduler.requeued %d stranded tasks", len(stranded))
    return len(stranded)
