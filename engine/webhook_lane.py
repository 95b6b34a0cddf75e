"""The webhook lane: customer webhook calls on threads of their own, at most `per_app` at once for one app.

A stream reader hands the lane its webhook jobs and goes on reading: an endpoint that never answers holds
a lane thread, never a reader, so it cannot delay deliveries; and it holds at most `per_app` of them, so it
cannot delay other customers' webhooks. A job whose app is at the cap waits for its turn in memory, up
to WAITING_PER_APP per app; beyond that it goes back to the delayed set, due when a slot of its app is
likely free, and is acknowledged only once it is there: nothing is dropped, and a hanging endpoint's
backlog comes back as fast as it can be served, no faster. Jobs in the lane stay unacknowledged in the
stream until their try is recorded, so a worker that dies leaves them for the reclaimer; `keep` tells the
stream they are being worked on, so no other worker reclaims one that is only waiting.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from engine.queue import Entry, Queue
from engine.redis_errors import REDIS_ERRORS

log = logging.getLogger("mpush.webhooks")

MIN_DEFER_SECONDS = 0.2  # the scheduler's tick: a deferred job cannot come back sooner anyway
FIRST_GUESS_SECONDS = 1.0  # how long a call of an app not yet heard from is taken to last
SMOOTHING = 0.3
WAITING_PER_APP = 1_000
MAX_HELD = 10_000  # jobs in memory at once, all apps together
KINDS = ("webhook", "webhook_event")  # the job kinds the lane runs: a try, and an event to write and try


def app_of(entry: Entry) -> str:
    """The app a job is for: its ref begins with it (`webhook:<app id>:<delivery id>`,
    `webhook_event:<app id>:<task id>:…`). A job queued before, `webhook:<delivery id>`, counts as its own app."""
    return entry.ref.partition(":")[0]


class WebhookLane:
    """Runs `handle` for webhook entries on `threads` threads, at most `per_app` at once per app, and
    acknowledges each entry `handle` says is done."""

    def __init__(self, queue: Queue, handle: Callable[[Entry, float], bool], *, threads: int, per_app: int,
                 waiting_per_app: int = WAITING_PER_APP) -> None:
        self.queue = queue
        self.handle = handle
        self.per_app = max(1, per_app)
        self.waiting_per_app = waiting_per_app
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._started: collections.Counter[str] = collections.Counter()  # per app, handed to the pool
        self._waiting: dict[str, collections.deque[Entry]] = collections.defaultdict(collections.deque)
        self._held: set[str] = set()
        self._call_seconds: dict[str, float] = {}
        self._next_slot: dict[str, float] = {}
        self._closing = False

    def take(self, entries: Sequence[Entry], now: float) -> list[str]:
        """Start or queue the entries that may run soon, defer the others; the ids of those deferred, to ack."""
        start: list[tuple[Entry, str]] = []
        deferred: list[tuple[Entry, float]] = []
        with self._lock:
            for entry in entries:
                app = app_of(entry)
                if self._started[app] < self.per_app:
                    self._started[app] += 1
                    start.append((entry, app))
                elif len(self._held) < MAX_HELD and len(self._waiting[app]) < self.waiting_per_app:
                    self._waiting[app].append(entry)
                else:
                    deferred.append((entry, self._slot(app, now)))
                    continue
                self._held.add(entry.id)
        for entry, app in start:
            self._pool.submit(self._run, entry, app)
        if not deferred:
            return []
        try:
            self.queue.defer_many((entry.job, due) for entry, due in deferred)
        except REDIS_ERRORS as exc:  # left pending: the reclaimer brings them back
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
        """Let the calls in progress finish (and be acknowledged); what has not started stays pending in the
        stream, for the reclaimer."""
        with self._lock:
            self._closing = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    def keep(self, consumer: str) -> None:
        """Reset the idle time of every entry the lane holds (XCLAIM to `consumer`), so that no worker's
        reclaimer takes one away while it waits here; called more often than the visibility timeout."""
        with self._lock:
            held = list(self._held)
        self.queue.touch(consumer, held)

    def _slot(self, app: str, now: float) -> float:
        """When a deferred job of `app` should come back: after the jobs the lane holds for it have run, one
        call's time per `per_app` after the last one deferred."""
        call = self._call_seconds.get(app, FIRST_GUESS_SECONDS)
        held = self._started[app] + len(self._waiting[app])
        due = max(self._next_slot.get(app, 0.0) + call / self.per_app,
                  now + max(MIN_DEFER_SECONDS, held / self.per_app * call))
        self._next_slot[app] = due
        return due

    def _run(self, entry: Entry, app: str) -> None:
        started = time.monotonic()
        try:
            if self.handle(entry, time.time()):
                self._ack(entry.id)
        finally:
            with self._lock:
                took, last = time.monotonic() - started, self._call_seconds.get(app)
                self._call_seconds[app] = took if last is None else last + SMOOTHING * (took - last)
                self._held.discard(entry.id)
                following = self._waiting[app].popleft() if self._waiting[app] and not self._closing else None
                if following is None:
                    self._started[app] -= 1
                    if not self._started[app]:
                        del self._started[app]
                        self._waiting.pop(app, None)
            if following is not None:
                self._pool.submit(self._run, following, app)

    def _ack(self, entry_id: str) -> None:
        try:
            self.queue.ack([entry_id])
        except REDIS_ERRORS as exc:  # reclaimed later and found done
            log.warning("queue.ack failed for webhook entry %s: %s", entry_id, exc)
