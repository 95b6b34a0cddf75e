"""The webhook lane: customer webhook calls on threads of their own, at most `per_app` at once for one app.

A stream reader hands the lane its webhook jobs and goes on reading: an endpoint that never answers holds
a lane thread, never a reader, so it cannot delay deliveries; and it holds at most `per_app` of them, so it
cannot delay other customers' webhooks. A job the lane cannot start now (its app at the cap, or every lane
thread busy) goes back to the delayed set, due when a slot of its app is likely free, and is acknowledged
only once it is there: nothing is dropped. A job the lane runs stays unacknowledged in the stream until its
try is recorded, so a worker that dies mid-call leaves it for the reclaimer.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import redis

from engine.queue import Entry, Queue

log = logging.getLogger("mpush.webhooks")

MIN_DEFER_SECONDS = 0.2  # the scheduler's tick: a deferred job cannot come back sooner anyway
FIRST_GUESS_SECONDS = 1.0  # how long a call of an app not yet heard from is taken to last
SMOOTHING = 0.3


def app_of(entry: Entry) -> str:
    """The app a webhook job is for (`webhook:<delivery id>:<app id>`); empty for a job queued without it."""
    return entry.ref.partition(":")[2]


class WebhookLane:
    """Runs `handle` for webhook entries on `threads` threads, at most `per_app` at once per app, and
    acknowledges each entry `handle` says is done."""

    def __init__(self, queue: Queue, handle: Callable[[Entry, float], bool], *, threads: int, per_app: int) -> None:
        self.queue = queue
        self.handle = handle
        self.threads = max(1, threads)
        self.per_app = max(1, per_app)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._running: collections.Counter[str] = collections.Counter()
        self._held: set[str] = set()
        self._call_seconds: dict[str, float] = {}
        self._next_slot: dict[str, float] = {}

    def take(self, entries: Sequence[Entry], now: float) -> list[str]:
        """Start the entries that may start, defer the others; the ids of those deferred, to acknowledge."""
        deferred: list[tuple[Entry, float]] = []
        for entry in entries:
            app = app_of(entry)
            with self._lock:
                if len(self._held) >= self.threads or self._running[app] >= self.per_app:
                    deferred.append((entry, self._slot(app, now)))
                    continue
                self._running[app] += 1
                self._held.add(entry.id)
            self._pool.submit(self._run, entry, app)
        if not deferred:
            return []
        try:
            self.queue.defer_many((entry.job, due) for entry, due in deferred)
        except redis.RedisError as exc:  # left pending: the reclaimer brings them back
            log.warning("webhook.defer failed for %d jobs: %s", len(deferred), exc)
            return []
        return [entry.id for entry, _ in deferred]

    def holds(self, entry_id: str) -> bool:
        """Whether the lane is working on this entry (so it is not stale, only slow)."""
        with self._lock:
            return entry_id in self._held

    def busy(self) -> bool:
        with self._lock:
            return bool(self._held)

    def shutdown(self) -> None:
        """Let the calls in progress finish (and be acknowledged)."""
        self._pool.shutdown(wait=True)

    def _slot(self, app: str, now: float) -> float:
        """When a deferred job of `app` should come back: one call's time per `per_app` after the last one
        deferred, so an app whose endpoint hangs gets its jobs back as fast as it can take them, no faster."""
        step = self._call_seconds.get(app, FIRST_GUESS_SECONDS) / self.per_app
        due = max(self._next_slot.get(app, 0.0) + step, now + MIN_DEFER_SECONDS)
        self._next_slot[app] = due
        return due

    def _run(self, entry: Entry, app: str) -> None:
        started = time.monotonic()
        try:
            if self.handle(entry, time.time()):
                self._ack(entry.id)
        finally:
            took = time.monotonic() - started
            with self._lock:
                self._running[app] -= 1
                if not self._running[app]:
                    del self._running[app]
                self._held.discard(entry.id)
                last = self._call_seconds.get(app, took)
                self._call_seconds[app] = last + SMOOTHING * (took - last)

    def _ack(self, entry_id: str) -> None:
        try:
            self.queue.ack([entry_id])
        except redis.RedisError as exc:  # reclaimed later and found done
            log.warning("queue.ack failed for webhook entry %s: %s", entry_id, exc)
