"""Stream consumers: a few threads reading the consumer group, a pool sending, a reclaimer for a dead worker's entries.

Customer webhook jobs go to the webhook lane (`engine.webhook_lane`), which has threads of its own.

The loop only orchestrates read -> handle -> ack; what a job means lives in `delivery`,
`webhooks` and `scheduler`. The send jobs of one read go through `delivery.deliver_many`
together, their provider calls spread over the `threads` of the send pool. Signals are wired
by the CLI, which sets the stop event.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import peewee
import redis

from engine import delivery, webhook_lane, webhooks
from engine.queue import Entry
from engine.services import Services
from engine.store.db import StoreUnavailable

log = logging.getLogger("mpush.worker")

READ_ROUNDS = 4  # provider calls per send thread in one read: even if all time out (10 s), well within 60 s
POSTPONE = (StoreUnavailable, peewee.OperationalError, peewee.InterfaceError, redis.ConnectionError)

T = TypeVar("T")
U = TypeVar("U")

HANDLERS = {
    "send": delivery.deliver,
    "webhook": webhooks.deliver_webhook,
    "webhook_event": webhooks.announce,
    "timeout": delivery.check_report_timeout,
}


class Worker:
    """Consumes the task stream, making up to `threads` provider calls at once; `drain` returns once the stream
    is empty."""

    def __init__(self, svc: Services, *, threads: int | None = None, readers: int | None = None,
                 name: str | None = None) -> None:
        self.svc = svc
        self.threads = threads or svc.settings.worker_threads
        self.readers = max(1, min(readers or svc.settings.worker_readers, self.threads))
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.counters: collections.Counter[str] = collections.Counter()
        self.read_count = READ_ROUNDS * self.threads
        self._lock = threading.Lock()
        # each reader makes calls itself too (`_map`), so the pool and the readers make `threads` at once
        self._senders = ThreadPoolExecutor(max(1, self.threads - self.readers), thread_name_prefix="sender")
        self._in_hand: set[str] = set()
        self._webhooks = webhook_lane.WebhookLane(svc.queue, self.handle, threads=svc.settings.webhook_threads,
                                     per_app=svc.settings.webhook_per_app)

    def __repr__(self) -> str:
        return f"<Worker {self.name} threads={self.threads} readers={self.readers} {dict(self.counters)}>"

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then finish the entries in hand, ack them and return."""
        workers = [threading.Thread(target=self._consume, args=(f"{self.name}-{i}", stop), name=f"consumer-{i}")
                   for i in range(self.readers)]
        workers.append(threading.Thread(target=self._reclaim, args=(stop,), name="reclaimer"))
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        self._senders.shutdown()
        self._webhooks.shutdown()
        log.info("worker.stopped %r", self)

    def handle(self, entry: Entry, now: float) -> bool:
        """Carry out one job; True when it may be acked (done, or dead-lettered)."""
        handler = HANDLERS.get(entry.kind)
        if handler is None:
            self.svc.queue.dead_letter(entry, f"unknown job kind {entry.kind!r}")
            return True
        try:
            label = handler(self.svc, entry.ref, now)
        except POSTPONE as exc:
            log.warning("job.postponed %s: %s (left pending for reclaim)", entry.job, exc)
            self._count("postponed")
            return False
        except Exception as exc:
            log.exception("job.crashed %s", entry.job)
            self.svc.queue.dead_letter(entry, f"{type(exc).__name__}: {exc}")
            self._count("dead_letter")
            return True
        self._count(f"{entry.kind}.{label}")
        return True

    def _consume(self, consumer: str, stop: threading.Event) -> None:
        """Read, handle, and acknowledge what was done with the next read's round trip (or at the end)."""
        queue, done = self.svc.queue, list[str]()
        while not stop.is_set():
            try:
                entries = queue.read(consumer, count=self.read_count, block_ms=500, ack=done)
            except redis.RedisError as exc:
                log.warning("queue.read failed: %s", exc)
                stop.wait(1.0)
                continue  # `done` is acknowledged again with the next read; a repeated XACK is harmless
            done = self._process(entries)
        self._ack(done)

    def _process(self, entries: list[Entry]) -> list[str]:
        """Handle a read's entries; the ids that may be acknowledged."""
        with self._lock:
            self._in_hand.update(entry.id for entry in entries)
        try:
            sends = [entry for entry in entries if entry.kind == "send"]
            hooks = [entry for entry in entries if entry.kind in webhook_lane.KINDS]  # the lane acks those it runs
            done = self._deliver(sends, time.time()) if sends else []
            done += self._webhooks.take(hooks, time.time()) if hooks else []
            return done + [entry.id for entry in entries
                           if entry.kind not in ("send", *webhook_lane.KINDS) and self.handle(entry, time.time())]
        finally:
            with self._lock:
                self._in_hand.difference_update(entry.id for entry in entries)

    def _ack(self, done: list[str]) -> None:
        try:
            self.svc.queue.ack(done)
        except redis.RedisError as exc:  # the entries are reclaimed later and found done
            log.warning("queue.ack failed for %d entries: %s", len(done), exc)

    def _deliver(self, entries: list[Entry], now: float) -> list[str]:
        """The send jobs of one read as a batch; the ids that may be acked. A batch that fails for any other
        reason than an unreachable store or Redis is retried entry by entry, so one bad task stays alone."""
        try:
            labels = delivery.deliver_many(self.svc, [entry.ref for entry in entries], now, self._map)
        except POSTPONE as exc:
            log.warning("batch.postponed %d send jobs: %s (left pending for reclaim)", len(entries), exc)
            self._count("postponed", len(entries))
            return []
        except Exception:
            log.exception("batch.crashed %d send jobs; handling them one by one", len(entries))
            return [entry.id for entry in entries if self.handle(entry, now)]
        for label in labels:
            self._count(f"send.{label}")
        return [entry.id for entry in entries]

    def _map(self, fn: Callable[[T], U], items: Sequence[T]) -> list[U]:
        """Provider calls of a batch, made by this thread and up to `threads - 1` of the send pool, each taking
        the next call when its last one returns: a slow call holds up only its own thread, and the batch costs
        one hand-off per thread rather than one per call. The first exception is raised once all have run."""
        results: list[U | None] = [None] * len(items)
        failures: list[BaseException] = []
        pending = iter(range(len(items)))  # shared: a range iterator hands out each index once (its next() holds the GIL)

        def take_calls() -> None:
            for index in pending:
                try:
                    results[index] = fn(items[index])
                except BaseException as exc:
                    failures.append(exc)

        helpers = [self._senders.submit(take_calls) for _ in range(min(self.threads, len(items)) - 1)]
        take_calls()
        for helper in helpers:
            helper.result()
        if failures:
            raise failures[0]
        return results  # type: ignore[return-value]  # every index was filled, or a failure was raised

    def _reclaim(self, stop: threading.Event) -> None:
        idle_ms = int(self.svc.settings.visibility_timeout * 1000)
        while not stop.wait(max(0.5, self.svc.settings.visibility_timeout / 4)):
            try:
                self._webhooks.keep(f"{self.name}-webhooks")
                entries = self.svc.queue.reclaim(f"{self.name}-reclaimer", min_idle_ms=idle_ms)
            except redis.RedisError as exc:
                log.warning("queue.reclaim failed: %s", exc)
                continue
            with self._lock:  # entries this process is still working on are not stale, only slow
                entries = [entry for entry in entries if entry.id not in self._in_hand]
            entries = [entry for entry in entries if not self._webhooks.holds(entry.id)]
            if entries:
                log.info("queue.reclaimed %d entries", len(entries))
            for start in range(0, len(entries), self.read_count):
                self._ack(self._process(entries[start : start + self.read_count]))

    def drain(self, *, idle_rounds: int = 2) -> None:
        """Burst mode: handle entries until the stream and the due delayed jobs are empty."""
        quiet, done = 0, list[str]()
        while quiet < idle_rounds:
            self.svc.queue.release_due(time.time())
            entries = self.svc.queue.read(f"{self.name}-burst", count=self.read_count, block_ms=50, ack=done)
            quiet = 0 if entries or self._webhooks.busy() else quiet + 1
            done = self._process(entries)
        self.svc.queue.ack(done)

    def _count(self, label: str, n: int = 1) -> None:
        with self._lock:
            self.counters[label] += n
