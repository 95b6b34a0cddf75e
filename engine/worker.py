"""Stream consumers: N threads reading the consumer group, a reclaimer for a dead worker's entries.

The loop only orchestrates read -> handle -> ack; what a job means lives in `delivery`,
`webhooks` and `scheduler`. Signals are wired by the CLI, which sets the stop event.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time

import peewee
import redis

from engine import delivery, webhooks
from engine.queue import Entry
from engine.services import Services
from engine.store.db import StoreUnavailable

log = logging.getLogger("mpush.worker")

HANDLERS = {
    "send": delivery.deliver,
    "webhook": webhooks.deliver_webhook,
    "timeout": delivery.check_report_timeout,
}


class Worker:
    """Consumes the task stream with `threads` consumers; `burst` returns once the stream is drained."""

    def __init__(self, svc: Services, *, threads: int | None = None, name: str | None = None) -> None:
        self.svc = svc
        self.threads = threads or svc.settings.worker_threads
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.counters: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Worker {self.name} threads={self.threads} {dict(self.counters)}>"

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then finish the entries in hand, ack them and return."""
        workers = [threading.Thread(target=self._consume, args=(f"{self.name}-{i}", stop), name=f"consumer-{i}")
                   for i in range(self.threads)]
        workers.append(threading.Thread(target=self._reclaim, args=(stop,), name="reclaimer"))
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        log.info("worker.stopped %r", self)

    def handle(self, entry: Entry, now: float) -> bool:
        """Carry out one job; True when it may be acked (done, or dead-lettered)."""
        handler = HANDLERS.get(entry.kind)
        if handler is None:
            self.svc.queue.dead_letter(entry, f"unknown job kind {entry.kind!r}")
            return True
        try:
            label = handler(self.svc, entry.ref, now)
        except (StoreUnavailable, peewee.OperationalError, peewee.InterfaceError, redis.ConnectionError) as exc:
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
        queue = self.svc.queue
        while not stop.is_set():
            try:
                entries = queue.read(consumer, count=10, block_ms=500)
            except redis.RedisError as exc:
                log.warning("queue.read failed: %s", exc)
                stop.wait(1.0)
                continue
            self._process(entries)

    def _process(self, entries: list[Entry]) -> None:
        done = [entry.id for entry in entries if self.handle(entry, time.time())]
        if done:
            self.svc.queue.ack(done)

    def _reclaim(self, stop: threading.Event) -> None:
        idle_ms = int(self.svc.settings.visibility_timeout * 1000)
        while not stop.wait(max(0.5, self.svc.settings.visibility_timeout / 4)):
            try:
                entries = self.svc.queue.reclaim(f"{self.name}-reclaimer", min_idle_ms=idle_ms)
            except redis.RedisError as exc:
                log.warning("queue.reclaim failed: %s", exc)
                continue
            if entries:
                log.info("queue.reclaimed %d entries", len(entries))
                self._process(entries)

    def drain(self, *, idle_rounds: int = 2) -> None:
        """Burst mode: handle entries until the stream and the due delayed jobs are empty."""
        quiet = 0
        while quiet < idle_rounds:
            self.svc.queue.release_due(time.time())
            entries = self.svc.queue.read(f"{self.name}-burst", count=50, block_ms=50)
            quiet = 0 if entries else quiet + 1
            self._process(entries)

    def _count(self, label: str) -> None:
        with self._lock:
            self.counters[label] += 1
