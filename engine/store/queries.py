"""The console's reads and its operators: message search, per-task history, dashboard and rule counts.

Like `repo`, every public function runs on the bound database and raises StoreUnavailable when it cannot be
reached; datetimes go in and come out timezone-aware (UTC).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import peewee
import phonenumbers
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from engine.store.models import TASK_STATUSES, Attempt, Batch, Decision, Operator, Task, database, utcnow
from engine.store.repo import _guarded

PAGE_SIZE = 50
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
OPERATOR_NAME_MAX = 64
PASSWORD_MIN = 10
_hasher = PasswordHasher()


# -- operators ------------------------------------------------------------------------------------------------


class OperatorExists(Exception):
    """An operator of that name exists already; nothing was stored."""


@_guarded
def create_operator(name: str, password: str) -> Operator:
    """A new operator whose password is stored only as an argon2 hash."""
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > OPERATOR_NAME_MAX or not name.isprintable():
        raise ValueError(f"an operator name is 1 to {OPERATOR_NAME_MAX} printable characters")
    _check_password(password)
    try:
        return Operator.create(name=name, password_hash=_hasher.hash(password))
    except peewee.IntegrityError:
        raise OperatorExists(f"operator {name!r} exists already") from None


@_guarded
def set_operator_password(name: str, password: str) -> None:
    _check_password(password)
    if not Operator.update(password_hash=_hasher.hash(password)).where(Operator.name == name).execute():
        raise LookupError(f"no operator {name!r}")


@_guarded
def check_operator(name: str, password: str) -> Operator | None:
    """The operator when the password is theirs, else None. An unknown name costs as much as a wrong
    password, so timing does not tell which names exist."""
    operator = Operator.get_or_none(Operator.name == name)
    try:
        _hasher.verify(operator.password_hash if operator else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if operator is None:
        return None
    Operator.update(signed_in_at=utcnow()).where(Operator.id == operator.id).execute()
    return operator


def _check_password(password: str) -> None:
    if len(password) < PASSWORD_MIN:
        raise ValueError(f"a password has at least {PASSWORD_MIN} characters")


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash("no operator has this password")


@_guarded
def list_operators() -> list[Operator]:
    return list(Operator.select().order_by(Operator.name))


# -- message search -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """What the console's message search may ask; empty strings and None match anything."""

    task_id: str = ""
    receiver: str = ""
    app_id: str = ""
    channel: str = ""
    status: str = ""
    batch_id: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.status and self.status not in TASK_STATUSES:
            raise ValueError(f"status must be one of {', '.join(TASK_STATUSES)}")

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TaskFilter:
        """From query parameters of the same names; ValueError for an unknown status or an unreadable time."""
        texts = {name: params.get(name, "").strip() for name in ("task_id", "receiver", "app_id", "channel", "status",
                                                                   "batch_id")}
        return cls(**texts, since=_moment(params.get("since", "")), until=_moment(params.get("until", "")))


def _moment(text: str) -> datetime | None:
    """A time as ISO 8601 (`2024-05-01T10:00` from a datetime-local input is taken as UTC)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date and time: {text[:40]!r} (use 2024-05-01T10:00)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ends: the last task's creation time and id (newest first, so the next page is older)."""

    created_at: datetime
    id: int

    def __str__(self) -> str:
        return f"{(self.created_at - EPOCH) // MICROSECOND}_{self.id}"  # exact, as a float timestamp is not

    @classmethod
    def parse(cls, text: str) -> Cursor:
        try:
            stamp, _, ident = text.partition("_")
            return cls(EPOCH + int(stamp) * MICROSECOND, int(ident))
        except (ValueError, OverflowError):
            raise ValueError("bad page cursor") from None


@dataclass(frozen=True, slots=True)
class TaskPage:
    tasks: list[Task]
    next: Cursor | None


def receiver_forms(text: str, default_region: str = "CN") -> list[str]:
    """The receiver as typed plus, for a phone number, the forms it is commonly stored in (E.164 and national)."""
    text = text.strip()
    forms = [text]
    if "@" not in text and any(ch.isdigit() for ch in text):
        try:
            number = phonenumbers.parse(text, default_region)
        except phonenumbers.NumberParseException:
            return forms
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        forms += [e164, str(number.national_number), e164.lstrip("+")]
    return list(dict.fromkeys(forms))


@_guarded
def search_tasks(where: TaskFilter, *, after: Cursor | None = None, page_size: int = PAGE_SIZE,
                 default_region: str = "CN") -> TaskPage:
    """A page of matching tasks, newest first, and the cursor of the next page (None on the last).

    No total is counted: on a million rows a count costs more than the page. Each filter that narrows much
    (task id, receiver, app, batch) has an index that also yields the rows newest first.
    """
    query = Task.select()
    if where.task_id:
        query = query.where(Task.task_id == where.task_id)
    if where.receiver:
        query = query.where(Task.receiver.in_(receiver_forms(where.receiver, default_region)))
    for column, value in ((Task.app_id, where.app_id), (Task.channel, where.channel), (Task.status, where.status),
                          (Task.batch_id, where.batch_id)):
        if value:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(Task.created_at >= where.since)
    if where.until is not None:
        query = query.where(Task.created_at < where.until)
    if after is not None:
        query = query.where((Task.created_at < after.created_at)
                            | ((Task.created_at == after.created_at) & (Task.id < after.id)))
    rows = list(query.order_by(Task.created_at.desc(), Task.id.desc()).limit(page_size + 1))
    more = len(rows) > page_size
    rows = rows[:page_size]
    return TaskPage(rows, Cursor(rows[-1].created_at, rows[-1].id) if more else None)


# -- batches --------------------------------------------------------------------------------------------------


@_guarded
def recent_batches(limit: int = 50) -> list[Batch]:
    return list(Batch.select().order_by(Batch.id.desc()).limit(limit))


@_guarded
def get_batch(batch_id: str) -> Batch | None:
    return Batch.get_or_none(Batch.batch_id == batch_id)


@_guarded
def batch_counts(batch_id: str) -> dict[str, int]:
    counts = dict.fromkeys(TASK_STATUSES, 0)
    query = Task.select(Task.status, peewee.fn.COUNT(Task.id)).where(Task.batch_id == batch_id).group_by(Task.status)
    counts.update(dict(query.tuples()))
    return counts


# -- dashboard ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tally:
    """Tasks accepted in a period and how they stand."""

    accepted: int = 0
    delivered: int = 0
    failed: int = 0
    pending: int = 0

    @property
    def success_rate(self) -> float | None:
        """Delivered among those that ended, None before any ended."""
        ended = self.delivered + self.failed
        return self.delivered / ended if ended else None


def _tally(by_status: dict[str, int]) -> Tally:
    delivered, failed = by_status.get("success", 0), by_status.get("failed", 0)
    accepted = sum(by_status.values())
    return Tally(accepted, delivered, failed, accepted - delivered - failed)


@dataclass(frozen=True, slots=True)
class DayTallies:
    total: Tally
    by_channel: dict[str, Tally]
    by_provider: dict[str, Tally]


@_guarded
def day_tallies(since: datetime) -> DayTallies:
    """Tasks created since `since`, in all, per channel and per provider account (the last one tried)."""
    rows = list(Task.select(Task.channel, Task.provider, Task.status, peewee.fn.COUNT(Task.id))
                .where(Task.created_at >= since).group_by(Task.channel, Task.provider, Task.status).tuples())
    total: Counter[str] = Counter()
    channels: dict[str, Counter[str]] = {}
    providers: dict[str, Counter[str]] = {}
    for channel, provider, status, n in rows:
        total[status] += n
        channels.setdefault(channel, Counter())[status] += n
        providers.setdefault(provider or "(none yet)", Counter())[status] += n
    return DayTallies(_tally(total), {name: _tally(c) for name, c in sorted(channels.items())},
                      {name: _tally(c) for name, c in sorted(providers.items())})


@dataclass(frozen=True, slots=True)
class Minute:
    """Attempts begun in one minute: how many, how many failed, and their latency percentiles (ms)."""

    start: datetime
    attempts: int = 0
    failed: int = 0
    p50: int | None = None
    p95: int | None = None
    p99: int | None = None


@dataclass(frozen=True, slots=True)
class AttemptActivity:
    minutes: list[Minute]
    p50: int | None
    p95: int | None
    p99: int | None
    sampled: bool = False


def percentile(values: Sequence[int], fraction: float) -> int | None:
    """The nearest-rank percentile of sorted `values`, None when there are none."""
    if not values:
        return None
    return values[max(0, math.ceil(fraction * len(values)) - 1)]


LATENCY_SAMPLE = 20_000  # latencies read back for the percentiles, at most (about)
NOT_FAILED = ("ok", "sending")


@_guarded
def attempt_activity(now: datetime, hours: int = 1) -> AttemptActivity:
    """Per minute over the last `hours`: attempts and failures (counted by the database), and latency
    percentiles per minute and overall, from every attempt or, past LATENCY_SAMPLE, an even sample of them
    (every k-th by id). An hour at 1000 msg/s is 3.6 million attempts: they are never read row by row."""
    start = (now - timedelta(hours=hours)).replace(second=0, microsecond=0)
    recent = Attempt.created_at >= start
    bucket = _minute(Attempt.created_at)
    failed_case = peewee.Case(None, [(Attempt.status.not_in(NOT_FAILED), 1)], 0)
    count: Counter[int] = Counter()
    failed: Counter[int] = Counter()
    per_minute = (Attempt.select(bucket, peewee.fn.COUNT(Attempt.id), peewee.fn.SUM(failed_case))
                  .where(recent).group_by(bucket).tuples())
    for minute, n, bad in per_minute:
        slot = _slot(minute, start)
        count[slot], failed[slot] = n, int(bad or 0)
    every = max(1, math.ceil(sum(count.values()) / LATENCY_SAMPLE))
    sample = (Attempt.select(Attempt.created_at, Attempt.latency_ms)
              .where(recent & Attempt.latency_ms.is_null(False) & (_remainder(Attempt.id, every) == 0)).tuples())
    latencies: dict[int, list[int]] = {}
    for created_at, latency in sample:
        latencies.setdefault(int((created_at - start).total_seconds() // 60), []).append(latency)
    minutes = []
    for slot in range(hours * 60 + 1):
        values = sorted(latencies.get(slot, []))
        minutes.append(Minute(start + timedelta(minutes=slot), count[slot], failed[slot], percentile(values, .5),
                              percentile(values, .95), percentile(values, .99)))
    everything = sorted(v for values in latencies.values() for v in values)
    return AttemptActivity(minutes, percentile(everything, .5), percentile(everything, .95),
                           percentile(everything, .99), sampled=every > 1)


def _minute(column: peewee.Field) -> peewee.Node:
    """The column truncated to its minute, in the bound database's own dialect."""
    db = database.obj
    if isinstance(db, peewee.PostgresqlDatabase):
        return peewee.fn.date_trunc("minute", column)
    if isinstance(db, peewee.MySQLDatabase):
        return peewee.fn.DATE_FORMAT(column, "%Y-%m-%d %H:%i:00")
    return peewee.fn.strftime("%Y-%m-%d %H:%M:00", column)


def _remainder(column: peewee.Field, divisor: int) -> peewee.Node:
    """column modulo divisor: MOD() where the driver's parameters are %s, the % operator on SQLite (no MOD)."""
    if isinstance(database.obj, peewee.SqliteDatabase):
        return peewee.Expression(column, peewee.OP.MOD, divisor)
    return peewee.fn.MOD(column, divisor)


def _slot(minute: datetime | str, start: datetime) -> int:
    """Minutes from `start` to a truncated minute as the database returned it (a datetime, or text)."""
    moment = minute if isinstance(minute, datetime) else datetime.strptime(minute, "%Y-%m-%d %H:%M:%S")
    return int((moment.replace(tzinfo=UTC) - start).total_seconds() // 60)


@_guarded
def recent_errors(provider: str, limit: int = 10) -> list[Attempt]:
    """The provider account's latest attempts that did not go through."""
    return list(Attempt.select().where((Attempt.provider == provider) & Attempt.status.in_(("retryable", "permanent",
                                                                                             "unknown")))
                .order_by(Attempt.id.desc()).limit(limit))


# -- rules ----------------------------------------------------------------------------------------------------


@_guarded
def rule_fire_counts(since: datetime) -> dict[str, Counter[str]]:
    """How often each routing rule routed an attempt, and each failure rule decided, since `since`; by kind
    ("routing", or the failure scene), then rule name."""
    counts: dict[str, Counter[str]] = {"routing": Counter()}
    routed = (Attempt.select(Attempt.rule, peewee.fn.COUNT(Attempt.id)).where(Attempt.created_at >= since)
              .group_by(Attempt.rule).tuples())
    counts["routing"].update(dict(routed))
    decided = (Decision.select(Decision.scene, Decision.rule, peewee.fn.COUNT(Decision.id))
               .where(Decision.created_at >= since).group_by(Decision.scene, Decision.rule).tuples())
    for scene, rule, n in decided:
        counts.setdefault(scene, Counter())[rule] += n
    return counts
