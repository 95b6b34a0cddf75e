"""Stream consumers: a few threads reading the consumer group, a pool sending, a reclaimer for a dead worker's entries.

Customer webhook jobs go to the webhook lane (`engine.webhook_lane`), which has threads of its own.

The loop only orchestrates read -> handle -> ack; what a job means lives in `delivery`,
`webhooks` and `scheduler`. The send jobs of one read are planned together (`delivery.plan`),
then each planned attempt is handed to the send pool and its entry acknowledged when that call
ends: a reader never waits for a call, and a hung vendor holds only the call slots it is given.
While calls are in flight the worker renews their leases, so no other worker takes them for lost.
Signals are wired by the CLI, which sets the stop event.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from concurrent.futures import ThreadPoolExecutor

from engine import delivery, metrics, webhook_lane, webhooks
from engine.queue import Entry, job
from engine.redis_errors import REDIS_ERRORS, UNREACHABLE
from engine.services import Services
from engine.store import repo
from engine.store.db import STORE_ERRORS

log = logging.getLogger("mpush.worker")

HEARTBEAT_SECONDS = 1.0
HEARTBEAT_TTL = 5.0  # a worker silent this long is dead: its entries are taken over without waiting longer
READ_ROUNDS = 4  # stream entries read at most per send thread in one read
POSTPONE = (*STORE_ERRORS, *UNREACHABLE)
# A job the store (or Redis) could not serve comes back this much later through the delayed set; left pending
# instead, it waited for the visibility timeout (a minute) though a database restart takes a second or two.
POSTPONE_SECONDS = 2.0
RELEASE_SECONDS = 1.0  # how soon claims in doubt are given back once the store answers
BREAKER_LINGER_SECONDS = 0.25  # successes wait this long at most for a reader to count them (Selector.count_many)

def read_retry_delay(failures: int) -> float:
    """Seconds before reading again after `failures` failed reads in a row: 0.1 s doubling to 1 s, so a Redis
    restart (back within a second) costs deliveries a fraction of a second, a longer outage no busy loop."""
    return min(1.0, 0.1 * 2 ** failures)


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
        self.owner = f"{self.name}-{secrets.token_hex(3)}"  # lease holder: unique even if a pid is reused
        self._read_rounds = READ_ROUNDS * self.threads
        self._read_counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._senders = ThreadPoolExecutor(self.threads, thread_name_prefix="sender")
        self._slots = threading.Semaphore(self.threads)  # provider calls handed to the pool and not yet ended
        self._in_hand: set[str] = set()
        self._flying: dict[str, str] = {}  # entry id -> task id of each call in the pool
        self._finished: list[str] = []  # entries whose calls ended, acknowledged with the next read
        self._in_doubt: list[repo.AttemptClaim] = []  # claims maybe committed, never sent: to be given back
        svc.selector.linger = BREAKER_LINGER_SECONDS  # each read counts them (_count_calls)
        self._webhooks = webhook_lane.WebhookLane(svc.queue, self.handle, threads=svc.settings.webhook_threads,
                                     per_app=svc.settings.webhook_per_app)

    @property
    def read_count(self) -> int:
        """Entries to read at once: enough for every send thread a few times over, and for a full vendor batch
        when an account of the live rule set sends many messages a call."""
        ruleset = self.svc.rules.current
        count = self._read_counts.get(ruleset.version)
        if count is None:
            count = self._read_counts[ruleset.version] = max(self._read_rounds, delivery.largest_batch(ruleset))
        return count

    def __repr__(self) -> str:
        return f"<Worker {self.name} threads={self.threads} readers={self.readers} {dict(self.counters)}>"

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then finish the entries in hand, ack them and return."""
        workers = [threading.Thread(target=self._consume, args=(f"{self.name}-{i}", stop, shards),
                                    name=f"consumer-{i}")
                   for i, shards in enumerate(self.svc.queue.reader_shards(self.readers))]
        workers.append(threading.Thread(target=self._reclaim, args=(stop,), name="reclaimer"))
        workers.append(threading.Thread(target=self._renew_leases, args=(stop,), name="leases"))
        workers.append(threading.Thread(target=self._heartbeat, args=(stop,), name="heartbeat"))
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        self._senders.shutdown()
        self._ack(self._take_finished())
        self._count_calls()
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
            return bool(self._postpone([entry], exc))
        except Exception as exc:
            log.exception("job.crashed %s", entry.job)
            self.svc.queue.dead_letter(entry, f"{type(exc).__name__}: {exc}")
            self._count("dead_letter")
            return True
        self._count(f"{entry.kind}.{label}")
        return True

    def _consume(self, consumer: str, stop: threading.Event, shards: Sequence[int]) -> None:
        """Read `shards`, handle, and acknowledge what was done with the next read's round trip (or at the end)."""
        queue, done, failures = self.svc.queue, list[str](), 0
        while not stop.is_set():
            done += self._take_finished()
            self._count_calls()
            try:
                entries = queue.read(consumer, count=self.read_count, block_ms=500, ack=done, shards=shards)
            except REDIS_ERRORS as exc:
                log.warning("queue.read failed: %s", exc)
                stop.wait(read_retry_delay(failures))
                failures += 1
                continue  # `done` is acknowledged again with the next read; a repeated XACK is harmless
            failures = 0
            done = self._process(entries)
        self._ack(done)

    def _process(self, entries: list[Entry]) -> list[str]:
        """Handle a read's entries; the ids that may be acknowledged now (sends handed to the pool are
        acknowledged when their call ends)."""
        with self._lock:
            self._in_hand.update(entry.id for entry in entries)
        handed: set[str] = set()
        try:
            sends = [entry for entry in entries if entry.kind == "send"]
            hooks = [entry for entry in entries if entry.kind in webhook_lane.KINDS]  # the lane acks those it runs
            done = self._deliver(sends, time.time(), handed) if sends else []
            done += self._webhooks.take(hooks, time.time()) if hooks else []
            return done + [entry.id for entry in entries
                           if entry.kind not in ("send", *webhook_lane.KINDS) and self.handle(entry, time.time())]
        finally:
            with self._lock:
                self._in_hand.difference_update(entry.id for entry in entries if entry.id not in handed)

    def _count_calls(self) -> None:
        """Count for the breakers the successful calls waiting since the last read."""
        try:
            self.svc.selector.flush(time.time())
        except REDIS_ERRORS as exc:
            log.warning("breaker counts lost: %s", exc)

    def _ack(self, done: list[str]) -> None:
        try:
            self.svc.queue.ack(done)
        except REDIS_ERRORS as exc:  # the entries are reclaimed later and found done
            log.warning("queue.ack failed for %d entries: %s", len(done), exc)

    def _deliver(self, entries: list[Entry], now: float, handed: set[str]) -> list[str]:
        """Plan the send jobs of one read and hand each attempt to the send pool; the ids that may be acked now.
        A plan that fails for any other reason than an unreachable store or Redis is retried entry by entry, so
        one bad task stays alone."""
        try:
            labels, plans = delivery.plan(self.svc, [entry.ref for entry in entries], now)
        except POSTPONE as exc:
            return self._postpone(entries, exc)
        except Exception:
            log.exception("batch.crashed %d send jobs; handling them one by one", len(entries))
            return [entry.id for entry in entries if self.handle(entry, now)]
        for label in labels.values():
            self._count(f"send.{label}")
        first = {entry.ref: entry for entry in reversed(entries)}
        for group in delivery.batches(plans):
            called = [first[plan.task.task_id] for plan in group]
            handed.update(entry.id for entry in called)
            self._slots.acquire()
            with self._lock:
                self._flying.update((entry.id, entry.ref) for entry in called)
            self._senders.submit(self._call, called, group)
        return [entry.id for entry in entries if entry.id not in handed]

    def _call(self, entries: list[Entry], plans: list[delivery.Planned]) -> None:
        """One vendor call in the send pool (one attempt, or a vendor batch of several); each entry is
        acknowledged once its attempt is decided."""
        try:
            labels = delivery.carry_out_many(self.svc, plans, self.owner)
        except POSTPONE as exc:
            for entry_id in self._postpone(entries, exc):
                self._finish(entry_id)
        except Exception as exc:
            log.exception("job.crashed %s", ", ".join(entry.job for entry in entries))
            for entry in entries:
                self.svc.queue.dead_letter(entry, f"{type(exc).__name__}: {exc}")
                self._finish(entry.id)
            self._count("dead_letter", len(entries))
        else:
            for entry, label in zip(entries, labels):
                self._count(f"send.{label}")
                self._finish(entry.id)
        finally:
            with self._lock:
                for entry in entries:
                    self._flying.pop(entry.id, None)
                    self._in_hand.discard(entry.id)
            self._slots.release()

    def _postpone(self, entries: list[Entry], exc: BaseException) -> list[str]:
        """Put jobs the store or Redis could not serve back in the delayed set for POSTPONE_SECONDS; the ids
        of their entries, which may then be acknowledged (none if Redis took nothing: they stay pending for
        the reclaimer). A job kept for an earlier time stays at that time; claims left in doubt are given back
        later (`_release_in_doubt`)."""
        self._count("postponed", len(entries))
        if isinstance(exc, delivery.ClaimsInDoubt):
            with self._lock:
                self._in_doubt += exc.claims
        try:
            self.svc.queue.defer_many([(entry.job, time.time() + POSTPONE_SECONDS) for entry in entries],
                                      earlier_only=True)
        except REDIS_ERRORS as redis_exc:
            log.warning("job.postponed %d jobs: %s (left pending for reclaim: %s)", len(entries), exc, redis_exc)
            return []
        log.warning("job.postponed %d jobs by %.0f s: %s", len(entries), POSTPONE_SECONDS, exc)
        return [entry.id for entry in entries]

    def _finish(self, entry_id: str) -> None:
        with self._lock:
            self._finished.append(entry_id)

    def _take_finished(self) -> list[str]:
        with self._lock:
            finished, self._finished = self._finished, []
        return finished

    def _renew_leases(self, stop: threading.Event) -> None:
        """Keep the leases of the attempts in flight, so another worker never takes a slow call for lost; give
        back the claims in doubt between renewals."""
        lease = self.svc.settings.attempt_lease
        renew_at = time.monotonic() + lease / 4
        while not stop.wait(min(lease / 4, RELEASE_SECONDS)):
            self._release_in_doubt()
            if time.monotonic() < renew_at:
                continue
            renew_at = time.monotonic() + lease / 4
            with self._lock:
                task_ids = list(self._flying.values())
            if not task_ids:
                continue
            try:
                repo.renew_leases(self.owner, task_ids, datetime.fromtimestamp(time.time() + lease, UTC))
            except POSTPONE as exc:
                log.warning("leases.renew failed for %d attempts: %s", len(task_ids), exc)

    def _release_in_doubt(self) -> None:
        """Take back the claims whose reply the store lost (none was sent) and queue their tasks again, so they
        go on now rather than be found lost, of unknown outcome, when their leases run out."""
        with self._lock:
            claims, self._in_doubt = self._in_doubt, []
        if not claims:
            return
        try:
            released = repo.release_claims(claims)
        except POSTPONE as exc:
            now = datetime.now(UTC)  # a claim whose lease has ended is found lost by the next job: no longer ours
            with self._lock:
                self._in_doubt += [claim for claim in claims if claim.lease_until and claim.lease_until > now]
            log.warning("claims.release failed for %d claims: %s", len(claims), exc)
            return
        log.info("claims.released %d of %d claims in doubt", len(released), len(claims))
        if not released:
            return
        self._count("released", len(released))
        try:
            self.svc.queue.enqueue([job("send", task_id) for task_id in released])
        except REDIS_ERRORS as exc:  # their postponed jobs come back anyway, at the latest when the leases would end
            log.warning("claims.released but not queued again: %s", exc)

    def _heartbeat(self, stop: threading.Event) -> None:
        """Vouch for this worker every HEARTBEAT_SECONDS; once it stops vouching, others take its entries over."""
        while not stop.is_set():
            try:
                self.svc.queue.heartbeat(self.name, time.time() + HEARTBEAT_TTL)
            except REDIS_ERRORS as exc:
                log.warning("worker.heartbeat failed: %s", exc)
            stop.wait(HEARTBEAT_SECONDS)
        try:
            self.svc.queue.retire(self.name)
        except REDIS_ERRORS:
            pass  # its heartbeat runs out instead

    def _reclaim(self, stop: threading.Event) -> None:
        """Take over at once the entries of workers known dead (their heartbeat ran out), and every visibility
        timeout's quarter the entries any consumer left unacknowledged that long."""
        idle_ms = int(self.svc.settings.visibility_timeout * 1000)
        every = max(0.5, self.svc.settings.visibility_timeout / 4)
        next_reclaim = time.monotonic() + every
        while not stop.wait(min(HEARTBEAT_SECONDS, every)):
            try:
                entries = self._take_over_dead()
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + every
                    self._webhooks.keep(f"{self.name}-webhooks")
                    entries += self.svc.queue.reclaim(f"{self.name}-reclaimer", min_idle_ms=idle_ms)
            except REDIS_ERRORS as exc:
                log.warning("queue.reclaim failed: %s", exc)
                continue
            with self._lock:  # entries this process is still working on are not stale, only slow
                entries = [entry for entry in entries if entry.id not in self._in_hand]
            entries = [entry for entry in entries if not self._webhooks.holds(entry.id)]
            if entries:
                log.info("queue.reclaimed %d entries", len(entries))
            for start in range(0, len(entries), self.read_count):
                self._ack(self._process(entries[start : start + self.read_count]))

    def _take_over_dead(self) -> list[Entry]:
        dead = [worker for worker in self.svc.queue.dead_workers(time.time()) if worker != self.name]
        if not dead:
            return []
        entries, forgotten = self.svc.queue.take_over(dead, f"{self.name}-reclaimer")
        if entries:
            metrics.TAKEN_OVER.inc(len(entries))
            log.warning("queue.taken_over %d entries of dead workers %s", len(entries), ", ".join(dead))
        if forgotten:
            log.info("worker.forgotten %s", ", ".join(forgotten))
        return entries

    def drain(self, *, idle_rounds: int = 2) -> None:
        """Burst mode: handle entries until the stream and the due delayed jobs are empty."""
        quiet, done = 0, list[str]()
        while quiet < idle_rounds:
            self.svc.queue.release_due(time.time())
            done += self._take_finished()
            self._count_calls()
            entries = self.svc.queue.read(f"{self.name}-burst", count=self.read_count, block_ms=50, ack=done)
            quiet = 0 if entries or self._webhooks.busy() or self._calls_in_flight() else quiet + 1
            done = self._process(entries)
        self._wait_for_calls()
        self.svc.queue.ack(done + self._take_finished())
        self._count_calls()

    def _calls_in_flight(self) -> bool:
        with self._lock:
            return bool(self._flying)

    def _wait_for_calls(self) -> None:
        while self._calls_in_flight():
            time.sleep(0.01)

    def _count(self, label: str, n: int = 1) -> None:
        with self._lock:
            self.counters[label] += n
