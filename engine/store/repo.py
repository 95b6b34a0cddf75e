"""Every query the gateway makes: plain values in, model instances or plain dicts out.

Each public function runs on the bound database (see `engine.store.db.bind`) and raises StoreUnavailable when
it cannot be reached. Datetimes go in and come out timezone-aware (UTC).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import peewee

from engine.store.crypto import SecretError, decrypt_secret, encrypt_secret, new_app_id, new_secret
from engine.store import statements
from engine.store.db import StaleConnection, StoreUnavailable, connection
from engine.store.models import (
    APP_STATUSES,
    ATTEMPT_STATUSES,
    CALLBACK_STATUSES,
    OPEN_TASK_STATUSES,
    TASK_STATUSES,
    UNFINISHED_TASK_STATUSES,
    Application,
    Attempt,
    Batch,
    Callback,
    Decision,
    Task,
    WebhookDelivery,
    WebhookTry,
    database,
    utcnow,
)

INSERT_PARAMETERS = 999  # per multi-row INSERT: SQLite's limit before 3.32, far below the others'
PG_INSERT_PARAMETERS = 32767
APP_NAME_MAX = 100
UNFINISHED_ATTEMPT = ("sending", "unknown")  # an attempt declared lost may still learn its real outcome

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=peewee.Model)


class NotFound(LookupError):
    """The application, task, attempt or webhook delivery named does not exist (or is not in a state to act on)."""


class DuplicateTask(Exception):
    """A task with that task_id, or that app's idempotency key, already exists; nothing was stored."""


def _guarded(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        db = _db()
        outermost = db.is_closed()
        try:
            with connection(db):
                return fn(*args, **kwargs)
        except StaleConnection:
            if not outermost:
                raise
        with connection(db):  # once more, on a fresh connection: the dropped one had done nothing
            return fn(*args, **kwargs)

    return run


def _db() -> peewee.Database:
    if database.obj is None:
        raise RuntimeError("the store is not bound: call engine.store.db.bind(connect(url)) first")
    return database.obj


def _write_transaction() -> peewee._atomic:
    """A transaction that writes. On SQLite it takes the write lock at BEGIN (IMMEDIATE), so two processes
    never both hold a read snapshot and then deadlock upgrading it; it waits for its writer turn first
    (`TurnTakingSqliteDatabase`), so it never meets the lock taken and sleeps in the busy handler."""
    db = _db()
    return db.atomic("IMMEDIATE") if isinstance(db, peewee.SqliteDatabase) else db.atomic()


# -- applications ---------------------------------------------------------------------------------------------


@_guarded
def create_app(
    name: str,
    key: bytes,
    *,
    webhook_url: str | None = None,
    daily_quota: int = 10000,
    rate_limit: int = 100,
) -> tuple[Application, str]:
    """A new enabled application and its plaintext secret, which is not retrievable in plain form again."""
    name = _app_name(name)
    _check_url(webhook_url)
    _check_count("daily_quota", daily_quota)
    _check_count("rate_limit", rate_limit)
    secret = new_secret()
    app = Application.create(
        app_id=new_app_id(),
        name=name,
        secret=encrypt_secret(secret, key),
        webhook_url=webhook_url,
        daily_quota=daily_quota,
        rate_limit=rate_limit,
    )
    return app, secret


@_guarded
def get_app(app_id: str) -> Application | None:
    return _first(Application, ("app_id",), [app_id])


def app_secret(app: Application, key: bytes, retired: Sequence[bytes] = ()) -> str:
    """The plaintext secret the app signs with, stored under `key` or, during a key rotation, one of the
    `retired` keys; SecretError when none of them is the one it was stored with."""
    for candidate in (key, *retired):
        try:
            return _decrypted(app.secret, candidate)
        except SecretError:
            continue
    raise SecretError("stored secret does not decrypt with the encryption key" +
                      (" or a previous one" if retired else ""))


@_guarded
def reencrypt_secrets(key: bytes, retired: Sequence[bytes]) -> tuple[int, list[str]]:
    """Store every app secret under `key`, reading those still under a `retired` key; (re-encrypted count, ids of
    apps whose secret no key opens). One transaction: a rotation is whole or not at all."""
    changed, unreadable = 0, []
    with _write_transaction():
        for app in Application.select():
            try:
                plain = app_secret(app, key, retired)
            except SecretError:
                unreadable.append(app.app_id)
                continue
            if encrypted_with(app.secret, key):
                continue
            _update(Application, {"secret": encrypt_secret(plain, key), "updated_at": utcnow()}, {"app_id": app.app_id})
            changed += 1
    return changed, unreadable


def encrypted_with(token: str, key: bytes) -> bool:
    try:
        _decrypted(token, key)
    except SecretError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _decrypted(token: str, key: bytes) -> str:
    """Remembered, as every signed request needs it: a rotated secret is a new token, so it is never stale."""
    return decrypt_secret(token, key)


@_guarded
def set_app_status(app_id: str, status: int) -> None:
    if status not in APP_STATUSES:
        raise ValueError(f"application status must be one of {APP_STATUSES} (1 enabled, 2 disabled), got {status!r}")
    _update_app(app_id, status=status)


@_guarded
def rotate_secret(app_id: str, key: bytes) -> str:
    """Replace the app's secret; returns the new plaintext. The old secret stops working at once."""
    secret = new_secret()
    _update_app(app_id, secret=encrypt_secret(secret, key))
    return secret


@_guarded
def set_webhook(app_id: str, url: str | None) -> None:
    _check_url(url)
    _update_app(app_id, webhook_url=url)


@_guarded
def list_apps() -> list[Application]:
    return list(Application.select().order_by(Application.id))


def _update_app(app_id: str, **fields: Any) -> None:
    changed = Application.update(**fields, updated_at=utcnow()).where(Application.app_id == app_id).execute()
    if not changed:
        raise NotFound(f"no application {app_id!r}")


def _app_name(name: str) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > APP_NAME_MAX:
        raise ValueError(f"application name must be 1 to {APP_NAME_MAX} characters")
    return name


def _check_url(url: str | None) -> None:
    if url is None:
        return
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 500:
        raise ValueError(f"webhook URL must be an http(s) URL of at most 500 characters, got {url!r}")


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer (0 = unlimited), got {value!r}")


# -- tasks ----------------------------------------------------------------------------------------------------

TASK_FIELDS = frozenset(Task._meta.fields) - {"id"}
MUTABLE_TASK_FIELDS = TASK_FIELDS - {"task_id", "app_id", "created_at"}
BATCH_FIELDS = frozenset(Batch._meta.fields) - {"id"}


@_guarded
def create_tasks(rows: list[dict[str, Any]], batch: dict[str, Any] | None = None) -> None:
    """Store tasks (and their batch) in one transaction: all of them or, on any error, none."""
    if batch is not None:
        _check_names("batch", batch, BATCH_FIELDS)
        rows = [{"batch_id": batch["batch_id"], **row} for row in rows]
    prepared = [_new_task_row(row) for row in rows]
    try:
        if batch is None and (len(prepared) == 1 or _postgres() and
                              len(prepared) <= _rows_per_statement(Task, len(prepared[0]))):
            _insert_rows(Task, prepared)  # one statement is its own transaction: a single round trip
            return
        with _write_transaction():
            if batch is not None:
                Batch.insert(**batch).execute()
            _insert_rows(Task, prepared)
    except peewee.IntegrityError as exc:
        raise DuplicateTask(f"task or batch already exists: {exc}") from exc


@_guarded
def get_task(task_id: str, app_id: str | None = None) -> Task | None:
    """The task; with `app_id`, only if that app created it."""
    if app_id is None:
        return _first(Task, ("task_id",), [task_id])
    return _first(Task, ("task_id", "app_id"), [task_id, app_id])


@_guarded
def find_idempotent(app_id: str, key: str) -> Task | None:
    return Task.select().where((Task.app_id == app_id) & (Task.idempotency_key == key)).first()


@_guarded
def get_tasks(task_ids: Sequence[str]) -> dict[str, Task]:
    """The tasks that exist among `task_ids`, by id, in one query."""
    unique = list(dict.fromkeys(task_ids))
    if not unique:
        return {}
    sql = statements.select_in_sql(_db(), Task, "task_id", len(unique))
    return {task.task_id: task for task in statements.fetch(_db(), Task, sql, unique)}


@_guarded
def update_task(task_id: str, **fields: Any) -> None:
    _check_task_update(fields)
    if not _update(Task, {**fields, "updated_at": utcnow()}, {"task_id": task_id}):
        raise NotFound(f"no task {task_id!r}")


@_guarded
def fail_unclaimed(task_ids: Sequence[str], error_code: str, error_message: str) -> int:
    """Mark failed those of the tasks no worker has claimed yet (pending or scheduled); how many."""
    update = Task.update(status="failed", error_code=error_code, error_message=error_message, updated_at=utcnow())
    with _write_transaction():
        return int(update.where(Task.task_id.in_(list(task_ids)) & Task.status.in_(("pending", "scheduled"))).execute())


@_guarded
def mark_status_if(task_id: str, expected: tuple[str, ...], **fields: Any) -> bool:
    """Update the task only while its status is one of `expected`; whether it did (the loser of a race gets False)."""
    _check_statuses(expected)
    _check_task_update(fields)
    return _update(Task, {**fields, "updated_at": utcnow()}, {"task_id": task_id}, status_in=expected) > 0


@_guarded
def unfinished_tasks(after: str, limit: int, touched_since: datetime | None = None) -> list[Task]:
    """Open and sent tasks with ids after `after` (and, given `touched_since`, updated since then), in id
    order: a page of what Redis must hold jobs for."""
    condition = Task.status.in_(UNFINISHED_TASK_STATUSES) & (Task.task_id > after)
    if touched_since is not None:
        condition &= Task.updated_at >= touched_since
    query = (Task.select(Task.task_id, Task.status, Task.scheduled_at, Task.not_before)
             .where(condition).order_by(Task.task_id).limit(limit))
    return list(query)


@_guarded
def stale_open_tasks(before: datetime, limit: int = 500) -> list[str]:
    """Ids of tasks still open (pending, scheduled, processing) and untouched since `before`, oldest first."""
    query = (
        Task.select(Task.task_id)
        .where(Task.status.in_(OPEN_TASK_STATUSES) & (Task.updated_at < before))
        .order_by(Task.updated_at)
        .limit(limit)
    )
    return [task_id for (task_id,) in query.tuples()]


def task_to_public(task: Task) -> dict[str, Any]:
    """GET /api/v1/messages/{task_id}: the reference's fields, then ours, then the attempts."""
    return {
        "id": task.id,
        "task_id": task.task_id,
        "app_id": task.app_id,
        "channel_id": task.channel_id,
        "message_type": task.message_type,
        "receiver": task.receiver,
        "title": task.title,
        "content": task.content,
        "template_code": task.template,
        "template_params": task.template_params,
        "signature": task.signature,
        "status": task.status,
        "callback_status": task.callback_status,
        "callback_time": rfc3339(task.callback_time),
        "retry_count": task.retry_count,
        "max_retry": task.max_retry,
        "exclude_provider_ids": task.exclude_providers,
        "scheduled_at": rfc3339(task.scheduled_at),
        "created_at": rfc3339(task.created_at),
        "updated_at": rfc3339(task.updated_at),
        "batch_id": task.batch_id,
        "channel": task.channel,
        "provider": task.provider,
        "provider_message_id": task.provider_message_id,
        "error_code": task.error_code,
        "error_message": task.error_message,
        "rule": task.rule,
        "rule_version": task.rule_version,
        "receiver_as_sent": task.receiver_as_sent or task.receiver,
        "trace_id": task.trace_id or "",
        "attempts": [attempt_to_public(attempt) for attempt in list_attempts(task.task_id)],
    }


def rfc3339(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _new_task_row(row: Mapping[str, Any]) -> dict[str, Any]:
    _check_names("task", row, TASK_FIELDS)
    for required in ("task_id", "app_id", "receiver"):
        if not row.get(required):
            raise ValueError(f"task row needs a non-empty {required}")
    _check_task_values(row)
    full = {name: _default(name) for name in TASK_FIELDS if name not in row}
    full.update(row)
    if "updated_at" not in row:
        full["updated_at"] = full["created_at"]
    if full["idempotency_key"] == "":
        full["idempotency_key"] = None
    return full


def _default(name: str) -> Any:
    default = Task._meta.fields[name].default
    return default() if callable(default) else default


def _check_task_update(fields: Mapping[str, Any]) -> None:
    if not fields:
        raise ValueError("nothing to update")
    _check_names("task update", fields, MUTABLE_TASK_FIELDS)
    _check_task_values(fields)


def _check_task_values(fields: Mapping[str, Any]) -> None:
    if "status" in fields:
        _check_statuses((fields["status"],))
    if "callback_status" in fields and fields["callback_status"] not in CALLBACK_STATUSES:
        raise ValueError(f"callback_status must be one of {CALLBACK_STATUSES}, got {fields['callback_status']!r}")


def _check_statuses(statuses: Iterable[str]) -> None:
    unknown = [status for status in statuses if status not in TASK_STATUSES]
    if unknown:
        raise ValueError(f"unknown task status {unknown[0]!r}; expected one of {TASK_STATUSES}")


def _check_names(what: str, fields: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(unknown)}")


# -- batches --------------------------------------------------------------------------------------------------


@_guarded
def batch_summary(batch_id: str, app_id: str) -> dict[str, Any] | None:
    """The batch's size and how many of its tasks are in each status; None unless `app_id` created it."""
    batch = Batch.get_or_none((Batch.batch_id == batch_id) & (Batch.app_id == app_id))
    if batch is None:
        return None
    counts = dict.fromkeys(TASK_STATUSES, 0)
    query = (
        Task.select(Task.status, peewee.fn.COUNT(Task.id).alias("n"))
        .where((Task.batch_id == batch_id) & (Task.app_id == app_id))
        .group_by(Task.status)
        .tuples()
    )
    counts.update({status: n for status, n in query})
    success, failed = counts["success"], counts["failed"]
    pending = batch.total - success - failed
    return {
        "batch_id": batch.batch_id,
        "app_id": batch.app_id,
        "total_count": batch.total,
        "status": "processing" if pending else "completed",
        "success_count": success,
        "failed_count": failed,
        "pending_count": pending,
        "status_counts": counts,
        "created_at": rfc3339(batch.created_at),
    }


# -- attempts -------------------------------------------------------------------------------------------------


@_guarded
def begin_attempt(task_id: str, number: int, provider: str, rule: str, rule_version: str, *, owner: str = "",
                  lease_until: datetime | None = None, key_number: int | None = None) -> bool:
    """Claim attempt `number` of the task; False when it was already begun (by this or another worker)."""
    row = _with_defaults(Attempt, dict(task_id=task_id, number=number, provider=provider, rule=rule,
                                       rule_version=rule_version, owner=owner, lease_until=lease_until,
                                       key_number=key_number))
    try:
        with _write_transaction():
            _insert(Attempt, row)
    except peewee.IntegrityError:
        return False
    return True


@_guarded
def expire_attempt(task_id: str, number: int, now: datetime, error_message: str) -> bool:
    """Mark a `sending` attempt whose lease has run out as `unknown`; False when it is live or already ended,
    so of two workers finding the same lost attempt only one goes on with it."""
    query = Attempt.update(status="unknown", error_code="worker_lost", error_message=error_message,
                           finished_at=utcnow()).where(
        (Attempt.task_id == task_id) & (Attempt.number == number) & (Attempt.status == "sending")
        & (Attempt.lease_until.is_null() | (Attempt.lease_until < now)))
    with _write_transaction():
        return query.execute() > 0


@_guarded
def renew_leases(owner: str, task_ids: Sequence[str], until: datetime) -> int:
    """Extend the leases `owner` holds on the `sending` attempts of these tasks; how many it still held."""
    renewed = 0
    for start in range(0, len(task_ids), 500):
        query = Attempt.update(lease_until=until).where(
            Attempt.task_id.in_(list(task_ids[start : start + 500])) & (Attempt.owner == owner)
            & (Attempt.status == "sending"))
        with _write_transaction():
            renewed += query.execute()
    return renewed


@_guarded
def finish_attempt(
    task_id: str,
    number: int,
    *,
    status: str,
    final: bool,
    provider_message_id: str = "",
    error_code: str = "",
    error_message: str = "",
    request: Any = None,
    response: Any = None,
    latency_ms: int | None = None,
) -> None:
    """Record how a begun attempt ended."""
    with _write_transaction():
        _finish_many([AttemptEnd(task_id, number, status, final, provider_message_id, error_code, error_message,
                                 request, response, latency_ms)])


@_guarded
def list_attempts(task_id: str) -> list[Attempt]:
    sql = statements.select_sql(_db(), Attempt, ("task_id",), order_by="number")
    return statements.fetch(_db(), Attempt, sql, [task_id])


# -- the worker's batch steps: a few statements and two transactions for a whole stream read -----------------


@dataclass(frozen=True, slots=True)
class AttemptClaim:
    """Attempt `number` of a task, about to be sent through `provider` as routing rule `rule` decided."""

    task_id: str
    number: int
    provider: str
    rule: str
    rule_version: str
    owner: str = ""
    lease_until: datetime | None = None
    key_number: int | None = None  # a resend under an earlier attempt's idempotency key


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How a begun attempt ended (the fields of `finish_attempt`)."""

    task_id: str
    number: int
    status: str
    final: bool
    provider_message_id: str = ""
    error_code: str = ""
    error_message: str = ""
    request: Any = None
    response: Any = None
    latency_ms: int | None = None


@dataclass(frozen=True, slots=True)
class StatusChange:
    """Set `fields` on a task only while its status is one of `expected`, as `mark_status_if` does."""

    task_id: str
    expected: tuple[str, ...]
    fields: Mapping[str, Any]


@_guarded
def load_for_delivery(task_ids: Sequence[str]) -> tuple[dict[str, Task], dict[str, list[Attempt]]]:
    """The tasks that exist among `task_ids` and each one's attempts in order: two queries for any number.

    Attempts are read first: every write that ends an attempt changes its task in the same transaction, so
    the task read after them is at least as new. Read the other way round, a task read just before its
    attempt was recorded would look open beside a finished attempt, and its next attempt would be planned."""
    unique = list(dict.fromkeys(task_ids))
    found: dict[str, list[Attempt]] = {task_id: [] for task_id in unique}
    if unique:
        sql = statements.select_in_sql(_db(), Attempt, "task_id", len(unique), ("task_id", "number"))
        for attempt in statements.fetch(_db(), Attempt, sql, unique):
            found[attempt.task_id].append(attempt)
    tasks = get_tasks(unique)
    return tasks, {task_id: found[task_id] for task_id in tasks}


@_guarded
def claim_attempts(claims: Sequence[AttemptClaim], expected: tuple[str, ...]) -> list[bool]:
    """Begin each attempt and move its task to `processing` (while its status is one of `expected`), all in one
    transaction; returns which claims were won.

    The unique (task, number) pair is the per-attempt lock: when any claim was already begun elsewhere, the
    transaction rolls back and every claim is tried on its own, so only that one is lost.
    """
    _check_statuses(expected)
    if not claims:
        return []
    try:
        if _postgres() and len(claims) <= _rows_per_statement(Attempt, len(ATTEMPT_CLAIM_FIELDS)):
            claimed = _claim_in_one_statement(claims, expected)
            return [claim.task_id in claimed for claim in claims]
        with _write_transaction():
            _insert_attempts(claims)
            if _mark_processing(claims, expected) != len({claim.task_id for claim in claims}):
                raise _NotAllApplied  # rolled back: some task is no longer open
    except (peewee.IntegrityError, _NotAllApplied):
        return [_claim_one(claim, expected) for claim in claims]
    return [True] * len(claims)


@_guarded
def release_claims(claims: Sequence[AttemptClaim]) -> list[str]:
    """Take back claims whose calls were never made, as the claimed attempts still stand (owner, lease and all);
    the ids of the tasks whose attempt was taken back. For claims whose reply the store lost: each may or may
    not have been committed, and left alone it would be found lost when its lease ran out, its outcome unknown."""
    released = []
    with _write_transaction():
        for claim in claims:
            if Attempt.delete().where((Attempt.task_id == claim.task_id) & (Attempt.number == claim.number)
                                      & (Attempt.owner == claim.owner) & (Attempt.status == "sending")
                                      & (Attempt.lease_until == claim.lease_until)).execute():
                released.append(claim.task_id)
    return released


RECORD_RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)  # 6.3 s in all: a database restart on a small server


def record_attempts(ends: Sequence[AttemptEnd], changes: Sequence[StatusChange]) -> list[bool]:
    """Finish the attempts and apply the status changes in one transaction; whether each change applied.

    The providers have already been called: were the outcomes not stored, the redelivered stream entries
    would find the attempts begun and never finished, and the failure rules would send the messages again.
    So while the database is unreachable (a restart) the transaction is tried again for a few seconds; one
    cut by the outage was rolled back by the server. Only a COMMIT whose answer was lost on the way back
    would apply twice, and then the changes read as not applied (the tasks were no longer in an expected
    status), which loses nothing.
    """
    for delay in RECORD_RETRY_DELAYS:
        try:
            return _record_attempts(ends, changes)
        except StoreUnavailable:
            time.sleep(delay)
    return _record_attempts(ends, changes)


@_guarded
def _record_attempts(ends: Sequence[AttemptEnd], changes: Sequence[StatusChange]) -> list[bool]:
    """Rows are written in task id order, so two such transactions never wait on each other in a cycle."""
    for change in changes:
        _check_statuses(change.expected)
        _check_task_update(change.fields)
    if not ends and not changes:
        return []
    ends = sorted(ends, key=lambda end: (end.task_id, end.number))
    ordered = sorted(enumerate(changes), key=lambda item: item[1].task_id)
    updated_at = utcnow()
    if _postgres():
        changed = _record_in_one_statement(ends, [change for _, change in ordered], updated_at)
        if changed is None:
            with _write_transaction():
                _finish_many(ends)
                changed = _apply_returning([change for _, change in ordered], updated_at)
        return [change.task_id in changed for change in changes]
    if len({(tuple(change.fields), change.expected) for change in changes}) == 1:
        try:
            with _write_transaction():
                _finish_many(ends)
                _apply_all([change for _, change in ordered], updated_at)
            return [True] * len(changes)
        except _NotAllApplied:
            pass  # rolled back: some task changed status meanwhile; find out which, one by one
    applied: dict[int, bool] = {}
    with _write_transaction():
        _finish_many(ends)
        for index, change in ordered:
            fields = {**change.fields, "updated_at": updated_at}
            applied[index] = _update(Task, fields, {"task_id": change.task_id}, status_in=change.expected) > 0
    return [applied[index] for index in range(len(changes))]


class _NotAllApplied(Exception):
    pass


def _apply_all(changes: Sequence[StatusChange], updated_at: datetime) -> None:
    """Status changes of one shape (the usual batch: all delivered) as one statement run per task, by the
    driver's executemany; _NotAllApplied when any task was no longer in an expected status."""
    rows = [({**change.fields, "updated_at": updated_at}, {"task_id": change.task_id}) for change in changes]
    if _update_many(Task, rows, status_in=changes[0].expected) != len(changes):
        raise _NotAllApplied


def _record_in_one_statement(ends: Sequence[AttemptEnd], changes: Sequence[StatusChange],
                             updated_at: datetime) -> set[str] | None:
    """PostgreSQL, the usual record (attempts ended, their tasks' changes of one shape): one statement where a
    transaction costs four round trips; the ids of the tasks changed. None when the record is of another kind
    or an attempt was not unfinished, for the transaction to store or refuse."""
    if not ends or not changes or len({(tuple(change.fields), change.expected) for change in changes}) > 1:
        return None
    _check_attempt_statuses(ends)
    finished_at = utcnow()
    end_rows = [{"task_id": end.task_id, "number": end.number, **_attempt_end_fields(end, finished_at)}
                for end in ends]
    change_rows = [_change_row(change, updated_at) for change in changes]
    end_fields, change_fields = tuple(end_rows[0])[2:], tuple(change_rows[0])[1:]
    expected = changes[0].expected
    sql = statements.record_sql(_db(), end_fields, len(end_rows), len(UNFINISHED_ATTEMPT), change_fields,
                                len(change_rows), len(expected))
    params = [*statements.rows_db_values(Attempt, tuple(end_rows[0]), end_rows), *UNFINISHED_ATTEMPT,
              *statements.rows_db_values(Task, tuple(change_rows[0]), change_rows), *expected, len(ends)]
    try:
        (changed, _), = _db().execute_sql(sql, params).fetchall()
    except peewee.DataError:  # the division by zero: not every attempt was unfinished
        return None
    return set(changed)


def _change_row(change: StatusChange, updated_at: datetime) -> dict[str, Any]:
    """A status change as a row of an UPDATE ... FROM (VALUES ...): its task id, then the fields it sets."""
    return {"task_id": change.task_id, **change.fields, "updated_at": updated_at}


def _apply_returning(changes: Sequence[StatusChange], updated_at: datetime) -> set[str]:
    """PostgreSQL: the status changes as one UPDATE ... FROM (VALUES ...) per shape (usually one for the whole
    batch); the ids of the tasks that were still in an expected status and so changed."""
    shapes: dict[tuple[tuple[str, ...], tuple[str, ...]], list[StatusChange]] = {}
    for change in changes:
        shapes.setdefault((tuple(change.fields), change.expected), []).append(change)
    changed: set[str] = set()
    for (fields, expected), group in shapes.items():
        sql = statements.update_from_values_sql(_db(), Task, (*fields, "updated_at"), ("task_id",), len(group),
                                                len(expected))
        rows = [_change_row(change, updated_at) for change in group]
        params = statements.rows_db_values(Task, tuple(rows[0]), rows)
        cursor = _db().execute_sql(sql, params + list(expected))
        changed.update(task_id for (task_id,) in cursor.fetchall())
    return changed


ATTEMPT_CLAIM_FIELDS = ("task_id", "number", "provider", "rule", "rule_version", "owner", "lease_until", "key_number")


def _claim_in_one_statement(claims: Sequence[AttemptClaim], expected: tuple[str, ...]) -> set[str]:
    """The ids of the tasks claimed. An attempt whose task was no longer in an expected status (a duplicate
    job read it before it ended) is inserted by the statement but not claimed: it is deleted at once."""
    rows = [_with_defaults(Attempt, dict(task_id=claim.task_id, number=claim.number, provider=claim.provider,
                                         rule=claim.rule, rule_version=claim.rule_version, owner=claim.owner,
                                         lease_until=claim.lease_until, key_number=claim.key_number))
            for claim in sorted(claims, key=lambda claim: claim.task_id)]
    fields = tuple(rows[0])
    params = statements.rows_db_values(Attempt, fields, rows)
    params += statements.db_values(Task, {"updated_at": utcnow()}) + list(expected)
    sql = statements.claim_sql(_db(), fields, len(rows), len(expected))
    claimed = {str(row[0]) for row in _db().execute_sql(sql, params).fetchall()}
    for claim in claims:
        if claim.task_id not in claimed:
            Attempt.delete().where((Attempt.task_id == claim.task_id) & (Attempt.number == claim.number)
                                   & (Attempt.status == "sending") & (Attempt.owner == claim.owner)).execute()
    return claimed


def _insert_attempts(claims: Sequence[AttemptClaim]) -> None:
    _insert_rows(Attempt, [_with_defaults(Attempt, dict(task_id=claim.task_id, number=claim.number,
                                                         provider=claim.provider, rule=claim.rule,
                                                         rule_version=claim.rule_version, owner=claim.owner,
                                                         lease_until=claim.lease_until,
                                                         key_number=claim.key_number)) for claim in claims])


def _mark_processing(claims: Sequence[AttemptClaim], expected: tuple[str, ...]) -> int:
    """One UPDATE per distinct (provider, rule, version): usually one for the whole batch; the tasks moved."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for claim in sorted(claims, key=lambda claim: claim.task_id):
        groups.setdefault((claim.provider, claim.rule, claim.rule_version), []).append(claim.task_id)
    moved = 0
    for (provider, rule, version), task_ids in groups.items():
        values = {"status": "processing", "provider": provider, "rule": rule, "rule_version": version,
                  "updated_at": utcnow()}
        sql = statements.update_in_sql(_db(), Task, tuple(values), "task_id", len(task_ids), len(expected))
        moved += statements.execute(_db(), sql, statements.db_values(Task, values) + task_ids + list(expected))
    return moved


def _claim_one(claim: AttemptClaim, expected: tuple[str, ...]) -> bool:
    """One claim in its own transaction: lost when its attempt was begun elsewhere or its task is no longer in
    an expected status (then nothing of it stays)."""
    try:
        with _write_transaction() as transaction:
            _insert_attempts([claim])
            if _mark_processing([claim], expected) == 0:
                transaction.rollback()
                return False
    except peewee.IntegrityError:
        return False
    return True


def _finish_many(ends: Sequence[AttemptEnd]) -> None:
    """Finish the attempts with one statement run for each, inside a write transaction (the driver's
    executemany passes by the database's writer turns); NotFound when any of them was never begun."""
    _check_attempt_statuses(ends)
    if not ends:
        return
    finished_at = utcnow()
    rows = [(_attempt_end_fields(end, finished_at), {"task_id": end.task_id, "number": end.number}) for end in ends]
    if _update_many(Attempt, rows, status_in=UNFINISHED_ATTEMPT) != len(ends):
        query = Attempt.select(Attempt.task_id, Attempt.number).where(Attempt.task_id.in_([e.task_id for e in ends]))
        begun = {(attempt.task_id, attempt.number) for attempt in query}
        missing = [(end.task_id, end.number) for end in ends if (end.task_id, end.number) not in begun]
        if missing:
            raise NotFound(f"attempts never begun: {missing}")


def _check_attempt_statuses(ends: Sequence[AttemptEnd]) -> None:
    for end in ends:
        if end.status not in ATTEMPT_STATUSES:
            raise ValueError(f"attempt status must be one of {ATTEMPT_STATUSES}, got {end.status!r}")


def _attempt_end_fields(end: AttemptEnd, finished_at: datetime) -> dict[str, Any]:
    return dict(status=end.status, final=end.final, provider_message_id=end.provider_message_id,
                error_code=end.error_code, error_message=end.error_message, request=end.request,
                response=end.response, latency_ms=end.latency_ms, finished_at=finished_at)


# -- prepared statements for the per-message path (see engine.store.statements) -----------------------------


def _postgres() -> bool:
    return isinstance(_db(), peewee.PostgresqlDatabase)


def _rows_per_statement(model: type[peewee.Model], fields: int) -> int:
    """Rows of `fields` parameters that one INSERT may carry: psycopg2 writes the values into the statement
    text itself, so PostgreSQL's is bounded only by sense; SQLite's and MySQL's by INSERT_PARAMETERS."""
    limit = PG_INSERT_PARAMETERS if _postgres() else INSERT_PARAMETERS
    return max(1, limit // fields)


def _first(model: type[M], where: tuple[str, ...], params: list[Any]) -> M | None:
    rows = statements.fetch(_db(), model, statements.select_sql(_db(), model, where, limit=1), params)
    return rows[0] if rows else None


def _insert(model: type[peewee.Model], row: dict[str, Any]) -> None:
    row = {name: value for name, value in row.items() if name != "id"}
    statements.execute(_db(), statements.insert_sql(_db(), model, tuple(row)), statements.db_values(model, row))


def _insert_rows(model: type[peewee.Model], rows: Sequence[dict[str, Any]]) -> None:
    """Rows with the same fields, as few multi-row INSERT statements as the parameter limit allows."""
    fields = tuple(rows[0])
    per_statement = _rows_per_statement(model, len(fields))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        params = statements.rows_db_values(model, fields, chunk)
        statements.execute(_db(), statements.insert_sql(_db(), model, fields, len(chunk)), params)


def _update(model: type[peewee.Model], values: dict[str, Any], where: dict[str, Any],
            status_in: tuple[str, ...] = ()) -> int:
    sql = statements.update_sql(_db(), model, tuple(values), tuple(where), len(status_in))
    params = statements.db_values(model, values) + statements.db_values(model, where) + list(status_in)
    return statements.execute(_db(), sql, params)


def _update_many(model: type[peewee.Model], rows: Sequence[tuple[dict[str, Any], dict[str, Any]]],
                 status_in: tuple[str, ...] = ()) -> int:
    """`_update` for rows of one shape (values, where), one statement run for each by the driver's
    executemany; the rows matched in all."""
    values, where = rows[0]
    if _postgres():
        sql = statements.update_from_values_sql(_db(), model, tuple(values), tuple(where), len(rows), len(status_in))
        merged = [{**where, **values} for values, where in rows]
        params = statements.rows_db_values(model, tuple(merged[0]), merged)
        return len(_db().execute_sql(sql, params + list(status_in)).fetchall())
    sql = statements.update_sql(_db(), model, tuple(values), tuple(where), len(status_in))
    params = [statements.db_values(model, values) + statements.db_values(model, where) + list(status_in)
              for values, where in rows]
    return statements.execute_many(_db(), sql, params)


def _with_defaults(model: type[peewee.Model], row: dict[str, Any]) -> dict[str, Any]:
    full: dict[str, Any] = {}
    for name, field in model._meta.fields.items():
        if name != "id" and name not in row and field.default is not None:
            full[name] = field.default() if callable(field.default) else field.default
    full.update(row)
    return full


@_guarded
def find_attempt(provider: str, *provider_message_ids: str) -> Attempt | None:
    """The latest attempt through `provider` that the vendor knows by one of `provider_message_ids`."""
    ids = [message_id for message_id in provider_message_ids if message_id]
    if not ids:
        return None
    return (
        Attempt.select()
        .where(Attempt.provider_message_id.in_(ids) & (Attempt.provider == provider))
        .order_by(Attempt.id.desc())
        .first()
    )


def attempt_to_public(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "provider": attempt.provider,
        "status": attempt.status,
        "final": attempt.final,
        "provider_message_id": attempt.provider_message_id,
        "error_code": attempt.error_code,
        "error_message": attempt.error_message,
        "latency_ms": attempt.latency_ms,
        "rule": attempt.rule,
        "rule_version": attempt.rule_version,
        "created_at": rfc3339(attempt.created_at),
        "finished_at": rfc3339(attempt.finished_at),
    }


# -- failure decisions ----------------------------------------------------------------------------------------


@_guarded
def record_decision(task_id: str, number: int, scene: str, action: str, *, rule: str, rule_version: str,
                    delay_seconds: float = 0.0, provider: str = "", error_class: str = "", error_code: str = "",
                    error_message: str = "") -> None:
    """Keep a failure decision with its task, so the task's history shows which rule decided what."""
    row = dict(task_id=task_id, number=number, scene=scene, action=action, rule=rule, rule_version=rule_version,
               delay_seconds=delay_seconds, provider=provider, error_class=error_class, error_code=error_code,
               error_message=error_message, created_at=utcnow())
    with _write_transaction():
        _insert(Decision, row)


@_guarded
def count_decisions(task_id: str) -> int:
    """How many failure decisions the task has had."""
    return Decision.select().where(Decision.task_id == task_id).count()


@_guarded
def decision_counts(task_id: str) -> dict[str, int]:
    """How many failure decisions the task has had, per action."""
    query = (Decision.select(Decision.action, peewee.fn.COUNT(Decision.id).alias("n"))
             .where(Decision.task_id == task_id).group_by(Decision.action))
    return {row.action: int(row.n) for row in query}


@_guarded
def list_decisions(task_id: str) -> list[Decision]:
    """A task's failure decisions, oldest first."""
    sql = statements.select_sql(_db(), Decision, ("task_id",), order_by="id")
    return statements.fetch(_db(), Decision, sql, [task_id])


def decision_to_public(decision: Decision) -> dict[str, Any]:
    return {
        "number": decision.number,
        "scene": decision.scene,
        "action": decision.action,
        "rule": decision.rule,
        "rule_version": decision.rule_version,
        "delay_seconds": decision.delay_seconds,
        "provider": decision.provider,
        "error_class": decision.error_class,
        "error_code": decision.error_code,
        "error_message": decision.error_message,
        "created_at": rfc3339(decision.created_at),
    }


# -- callbacks ------------------------------------------------------------------------------------------------

CALLBACK_FIELDS = frozenset(Callback._meta.fields) - {"id"}


@_guarded
def record_callback(**fields: Any) -> Callback:
    _check_names("callback", fields, CALLBACK_FIELDS)
    if "provider" not in fields:
        raise ValueError("a callback needs the provider account it came through")
    if fields.get("status", "") not in CALLBACK_STATUSES:
        raise ValueError(f"callback status must be one of {CALLBACK_STATUSES}, got {fields['status']!r}")
    return Callback.create(**fields)


@_guarded
def callback_seen(provider: str, provider_message_id: str, status: str) -> bool:
    """Whether a report with this (provider, message id, status) was already applied: a replay."""
    return (
        Callback.select()
        .where(
            (Callback.provider == provider)
            & (Callback.provider_message_id == provider_message_id)
            & (Callback.status == status)
            & (Callback.applied == True)  # noqa: E712 — peewee builds SQL from ==
        )
        .exists()
    )


# -- customer webhooks ----------------------------------------------------------------------------------------


@_guarded
def create_webhook_delivery(task_id: str, app_id: str, event: str, url: str, body: str) -> WebhookDelivery:
    """A pending delivery holding the exact body to send, so every retry sends the same bytes."""
    _check_url(url)
    return WebhookDelivery.create(task_id=task_id, app_id=app_id, event=event, url=url, body=body, next_at=utcnow())


@_guarded
def get_webhook_delivery(delivery_id: int) -> WebhookDelivery | None:
    return WebhookDelivery.get_or_none(WebhookDelivery.id == delivery_id)


@_guarded
def record_webhook_try(
    delivery_id: int,
    *,
    status_code: int | None,
    error: str,
    latency_ms: int | None,
    delivered: bool,
    next_at: datetime | None,
    give_up: bool,
) -> WebhookDelivery:
    """Log one try of a pending delivery and move it on: delivered, failed for good, or due again at `next_at`."""
    if not delivered and not give_up and next_at is None:
        raise ValueError("a try that neither delivered nor gave up needs next_at")
    status = "delivered" if delivered else "failed" if give_up else "pending"
    with _write_transaction():
        # Incrementing in SQL first takes the row lock, so concurrent tries get distinct numbers.
        changed = (
            WebhookDelivery.update(
                tries=WebhookDelivery.tries + 1,
                status=status,
                next_at=next_at if status == "pending" else None,
                last_status=status_code,
                last_error=error,
                updated_at=utcnow(),
            )
            .where((WebhookDelivery.id == delivery_id) & (WebhookDelivery.status == "pending"))
            .execute()
        )
        if not changed:
            raise NotFound(f"no pending webhook delivery {delivery_id!r}")
        delivery = WebhookDelivery.get_by_id(delivery_id)
        WebhookTry.create(
            delivery=delivery, number=delivery.tries, status_code=status_code, error=error, latency_ms=latency_ms
        )
    return delivery


@_guarded
def list_webhook_tries(delivery_id: int) -> list[WebhookTry]:
    return list(WebhookTry.select().where(WebhookTry.delivery == delivery_id).order_by(WebhookTry.number))


# -- statistics -----------------------------------------------------------------------------------------------


@_guarded
def task_counts(app_id: str | None = None, since: datetime | None = None) -> dict[str, int]:
    """How many tasks are in each status (every status present, zero included)."""
    query = Task.select(Task.status, peewee.fn.COUNT(Task.id)).group_by(Task.status)
    if app_id is not None:
        query = query.where(Task.app_id == app_id)
    if since is not None:
        query = query.where(Task.created_at >= since)
    counts = dict.fromkeys(TASK_STATUSES, 0)
    counts.update({status: n for status, n in query.tuples()})
    return counts



# -- admin read views -----------------------------------------------------------------------------------------

PAGE_SIZE_MAX = 100


@_guarded
def list_tasks(*, app_id: str | None = None, status: str | None = None, batch_id: str | None = None,
               page: int = 1, page_size: int = 20) -> tuple[int, list[Task]]:
    """A page of tasks, newest first, and how many match in all."""
    if page < 1 or not 1 <= page_size <= PAGE_SIZE_MAX:
        raise ValueError(f"page must be >= 1 and page_size between 1 and {PAGE_SIZE_MAX}")
    if status is not None:
        _check_statuses((status,))
    query = Task.select()
    for field, value in ((Task.app_id, app_id), (Task.status, status), (Task.batch_id, batch_id)):
        if value is not None:
            query = query.where(field == value)
    total = query.count()
    return total, list(query.order_by(Task.id.desc()).paginate(page, page_size))


@_guarded
def list_callbacks(task_id: str) -> list[Callback]:
    return list(Callback.select().where(Callback.task_id == task_id).order_by(Callback.id))


@_guarded
def list_webhook_deliveries(task_id: str) -> list[WebhookDelivery]:
    return list(WebhookDelivery.select().where(WebhookDelivery.task_id == task_id).order_by(WebhookDelivery.id))


def callback_to_public(callback: Callback) -> dict[str, Any]:
    return {"provider": callback.provider, "provider_message_id": callback.provider_message_id,
            "status": callback.status, "error_code": callback.error_code, "error_message": callback.error_message,
            "verified": callback.verified, "applied": callback.applied, "note": callback.note,
            "created_at": rfc3339(callback.created_at)}


def webhook_delivery_to_public(delivery: WebhookDelivery) -> dict[str, Any]:
    return {"id": delivery.id, "event": delivery.event, "url": delivery.url, "status": delivery.status,
            "tries": [{"number": t.number, "status_code": t.status_code, "error": t.error, "latency_ms": t.latency_ms,
                       "created_at": rfc3339(t.created_at)} for t in list_webhook_tries(delivery.id)],
            "created_at": rfc3339(delivery.created_at)}
