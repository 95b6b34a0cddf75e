"""Accepting messages: validate against the live rule set, admit under quotas, store, enqueue.

Accepted means stored: a task id is returned only once the task row is committed and its job is
in the stream or the delayed set. Anything refused changes nothing (quota units are refunded).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from engine import metrics
from engine.ids import uuid7
from engine.limits import Admission, Call
from engine.policy.decisions import QuotaCheck
from engine.policy.model import Channel, Template, render
from engine.policy.receivers import InvalidReceiver, normalise
from engine.policy.ruleset import RuleSet
from engine.queue import job
from engine.redis_errors import REDIS_ERRORS
from engine.services import Services
from engine.settings import Settings
from engine.store import repo
from engine.store.db import STORE_ERRORS, StoreUnavailable
from engine.store.models import Application, Task

log = logging.getLogger("mpush.intake")

MAX_BATCH = 1000
MAX_RECEIVER = 255
DAY = 86_400


class Refused(Exception):
    """A request that is not accepted; `kind` is invalid | quota | database | redis (the one that could not store
    it), or for its signed call replay | rate."""

    def __init__(self, kind: Literal["invalid", "quota", "database", "redis", "replay", "rate"], message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A validated send request (one receiver or many)."""

    channel: str | int
    receivers: tuple[str, ...]
    params: dict[str, str]
    signature: str = ""
    scheduled_at: datetime | None = None
    tags: tuple[str, ...] = ()
    idempotency_key: str = ""
    batch: bool = False
    as_sent: tuple[str, ...] = ()  # the receivers as the client wrote them, once `receivers` are normalised
    trace_id: str = ""  # the API answer's `trace-id`


@dataclass(frozen=True, slots=True)
class Accepted:
    task_ids: tuple[str, ...]
    status: str
    created_at: datetime
    batch_id: str = ""
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class FieldLimits:
    """How much a send request may carry; the two that vary by use are settings (`MPUSH_MAX_PARAM_CHARS`,
    `MPUSH_MAX_SCHEDULE_DAYS`), the rest are fixed (docs/limits.md)."""

    param_chars: int = 2000
    schedule_days: int = 90
    params: int = 64
    name_chars: int = 64  # a param name, a tag, the signature name, a channel name
    tags: int = 20
    idempotency_key_chars: int = 128

    @classmethod
    def of(cls, settings: Settings) -> FieldLimits:
        return cls(param_chars=settings.max_param_chars, schedule_days=settings.max_schedule_days)


def parse(body: dict[str, Any], *, batch: bool, now: float, idempotency_key: str = "",
          limits: FieldLimits = FieldLimits(), trace_id: str = "") -> SendRequest:
    """Validate the request body (the reference's fields, plus channel by name and tags), every field within
    `limits`: a refusal names the field, and nothing the checks let through can break a later step."""
    return SendRequest(
        channel=_channel(body.get("channel_id", body.get("channel")), limits),
        receivers=_receivers(body, batch),
        params=_params(body.get("template_params"), limits),
        signature=_short_text(body.get("signature_name"), "signature_name", limits.name_chars),
        scheduled_at=_scheduled_at(body.get("scheduled_at"), now, limits),
        tags=_tags(body.get("tags"), limits),
        idempotency_key=_idempotency_key(idempotency_key, limits),
        batch=batch,
        trace_id=trace_id,
    )


@dataclass(frozen=True, slots=True)
class Admitted:
    """A valid request whose quota units are taken (or that is deferred until its quota window resets)."""

    app: Application
    request: SendRequest
    channel: Channel
    template: Template
    now: float
    due: float | None
    checks: list[QuotaCheck]
    costs: list[int]
    counted: bool
    call: Call | None = None  # the signed call that carried it, counted with its quotas

    @property
    def moment(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)

    def refund(self, svc: Services) -> None:
        """Give the quota units and the call's nonce back (the request was not stored after all)."""
        if self.counted:
            svc.limits.refund(self.checks, now=self.now, costs=self.costs)
        if self.call is not None:
            give_back_call(svc, self.call, self.now)


def accept(svc: Services, app: Application, request: SendRequest, now: float) -> Accepted:
    """Admit, store and enqueue the request's tasks; raise `Refused` and change nothing otherwise."""
    if request.idempotency_key:
        existing = repo.find_idempotent(app.app_id, request.idempotency_key)
        if existing is not None:
            return _replayed(existing)
    admitted = admit(svc, app, request, now)
    try:
        accepted = _store_and_enqueue(svc, admitted)
    except Refused:
        admitted.refund(svc)
        raise
    if accepted.replayed:
        admitted.refund(svc)
    return accepted


def accept_many(svc: Services, requests: Sequence[tuple[Application, SendRequest]], now: float,
                calls: Sequence[Call] = ()) -> list[Accepted | Exception]:
    """`accept` for many requests at once, an outcome per request (`Refused`, or whatever else went wrong, is
    returned, not raised): the plain single-receiver ones are admitted in one round trip, stored in one
    transaction and enqueued in one round trip; batches and idempotent requests go through `accept`.

    `calls`, one per request when given, are the signed calls that carried them: each is counted (its nonce
    used, its app's rate taken) in the same round trip as its quotas, and refused as a replay or over its rate."""
    outcomes: dict[int, Accepted | Exception] = {}
    plain: dict[int, tuple[Application, SendRequest]] = {}
    special: dict[int, tuple[Application, SendRequest]] = {}
    for index, (app, request) in enumerate(requests):
        (special if request.batch or request.idempotency_key else plain)[index] = (app, request)
    special_calls = [calls[index] for index in special] if calls else []
    refusals = _calls_refused(svc, special_calls, now) if special_calls else [None] * len(special)
    for (index, (app, request)), call, refusal in zip(special.items(), special_calls or [None] * len(special),
                                                      refusals):
        outcomes[index] = refusal or _accept_alone(svc, app, request, now, call)
    admitted: dict[int, Admitted] = {}
    plain_calls = [calls[index] for index in plain] if calls else []
    for index, outcome in zip(plain, admit_many(svc, list(plain.values()), now, plain_calls)):
        if isinstance(outcome, Admitted):
            admitted[index] = outcome
        else:
            outcomes[index] = outcome
    if admitted:
        outcomes.update(zip(admitted, _store_and_enqueue_many(svc, list(admitted.values()))))
    return [outcomes[index] for index in range(len(requests))]


def _accept_alone(svc: Services, app: Application, request: SendRequest, now: float, call: Call | None
                  ) -> Accepted | Exception:
    try:
        return accept(svc, app, request, now)
    except Exception as exc:  # this request's failure is its own, as when accepted alone
        if call is not None:
            give_back_call(svc, call, now)
        return exc


def give_back_call(svc: Services, call: Call, now: float) -> None:
    """The nonce and rate unit of a signed call whose request was refused after it was counted."""
    try:
        svc.limits.refund_call(call, now)
    except REDIS_ERRORS:
        pass  # Redis is what failed: the nonce then simply stays used until it expires


def _calls_refused(svc: Services, calls: list[Call], now: float) -> list[Exception | None]:
    """Count calls on their own, in one round trip; per call None when counted, else its refusal."""
    try:
        verdicts = svc.limits.admit_calls(calls, now)
    except REDIS_ERRORS as exc:
        return [exc] * len(calls)
    return [None if verdict == "ok" else Refused(verdict, verdict) for verdict in verdicts]


def admit(svc: Services, app: Application, request: SendRequest, now: float) -> Admitted:
    """Validate the request against the live rule set and take its quota units; raise `Refused` otherwise."""
    outcome = admit_many(svc, [(app, request)], now)[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def admit_many(svc: Services, requests: Sequence[tuple[Application, SendRequest]], now: float,
               calls: Sequence[Call] = ()) -> list[Admitted | Exception]:
    """`admit` for many requests, their quota units (and their `calls`, when given) taken in one round trip
    and in order; per request its admission, or the exception that refused it."""
    ruleset = svc.rules.current
    outcomes: list[Admitted | Exception] = []
    for index, (app, request) in enumerate(requests):
        try:
            outcomes.append(_checked(ruleset, app, request, now, calls[index] if calls else None))
        except Exception as exc:  # whatever one request raises is its own refusal, never its neighbours'
            outcomes.append(exc)
    checked = [item for item in outcomes if isinstance(item, Admitted)]
    checked_calls = [item.call for item in checked]
    try:
        admissions = svc.limits.admit_many([(item.checks, item.costs) for item in checked], now=now,
                                           calls=checked_calls)
    except REDIS_ERRORS as exc:
        return [exc if isinstance(item, Admitted) else item for item in outcomes]
    decided = iter([_counted(item, admission) for item, admission in zip(checked, admissions)])
    return [next(decided) if isinstance(item, Admitted) else item for item in outcomes]


def _checked(ruleset: RuleSet, app: Application, request: SendRequest, now: float, call: Call | None = None
             ) -> Admitted:
    """The request validated against the rule set, with the quota checks it must pass (none counted yet)."""
    channel = ruleset.channel(request.channel)
    if channel is None:
        raise Refused("invalid", "invalid channel_id: record not found")
    template = ruleset.templates[channel.template]
    missing = template.missing(request.params)
    if missing:
        raise Refused("invalid", f"missing template params: [{' '.join(missing)}]")
    request = _normalised(request, channel, ruleset.settings.default_region)
    checks, costs = _quota_checks(ruleset, app, channel, request, datetime.fromtimestamp(now, UTC))
    due = request.scheduled_at.timestamp() if request.scheduled_at and request.scheduled_at.timestamp() > now else None
    return Admitted(app, request, channel, template, now, due, checks, costs, False, call)


def _normalised(request: SendRequest, channel: Channel, default_region: str) -> SendRequest:
    """The request with each receiver in its one form for the channel's type (what quotas count and routing
    sees), the receivers as sent kept beside them."""
    try:
        normal = tuple(normalise(receiver, channel.type, default_region) for receiver in request.receivers)
    except InvalidReceiver as exc:
        raise Refused("invalid", f"invalid receiver for {channel.type} channel {channel.name!r}: {exc}") from None
    return dataclasses.replace(request, receivers=normal, as_sent=request.receivers)


def _counted(item: Admitted, admission: Admission) -> Admitted | Refused:
    """What the quota counters said: counted, deferred until the exhausted window resets, or refused."""
    if admission.allowed:
        return dataclasses.replace(item, counted=True)
    if admission.call != "ok":
        return Refused(admission.call, admission.call)
    if admission.on_exceed != "defer" or admission.retry_at is None:
        return Refused("quota", f"quota exceeded: {admission.rule}")
    return dataclasses.replace(item, due=max(item.due or 0.0, admission.retry_at))


def _store_and_enqueue_many(svc: Services, admitted: list[Admitted]) -> list[Accepted | Exception]:
    """Single-receiver, key-less requests: one insert transaction, one enqueue round trip. A row the database
    refuses fails its own request alone; when the store or the queue is out of reach every request is
    refused. A refused request's quota units and nonce are given back, as `accept` does for one."""
    outcomes: list[Accepted | Exception | None] = [None] * len(admitted)
    rows: dict[int, dict[str, Any]] = {}
    for index, item in enumerate(admitted):
        try:
            rows[index] = _task_row(item.app, item.channel, item.template, item.request,
                                    item.moment, "scheduled" if item.due else "pending", item.due, "")
        except Exception as exc:
            outcomes[index] = exc
    try:
        stored = _create_each_alone_on_refusal(rows, outcomes)
        _enqueue(svc, [(rows[index]["task_id"], admitted[index].due) for index in stored])
    except Exception as exc:
        outcomes = [outcome or exc for outcome in outcomes]
    for index, item in enumerate(admitted):
        outcome = outcomes[index]
        if outcome is None:
            metrics.ACCEPTED.labels(item.channel.name).inc()
            row = rows[index]
            outcomes[index] = Accepted((row["task_id"],), row["status"], item.moment)
        else:
            item.refund(svc)
    return [outcome for outcome in outcomes if outcome is not None]


def _create_each_alone_on_refusal(rows: dict[int, dict[str, Any]], outcomes: list[Any]) -> list[int]:
    """Insert the rows in one transaction; should the database refuse it for a row's sake, insert each on its
    own so only the rows it refuses fail (their exception goes to `outcomes`). The indexes stored."""
    try:
        _create(list(rows.values()))
        return list(rows)
    except Refused:
        raise
    except Exception:
        pass
    stored = []
    for index, row in rows.items():
        try:
            _create([row])
            stored.append(index)
        except Exception as exc:
            outcomes[index] = exc
    return stored


def _create(rows: list[dict[str, Any]], batch: dict[str, Any] | None = None) -> None:
    """`repo.create_tasks`, refused when the database cannot take the rows. Rows it committed all the same (the
    reply lost with the connection) are failed once it answers again, as their request was refused; unless the
    request has an idempotency key: its retry finds them and goes on with them."""
    try:
        repo.create_tasks(rows, batch=batch)
    except StoreUnavailable as exc:
        if not any(row.get("idempotency_key") for row in rows):
            REFUSED_IN_DOUBT.add([row["task_id"] for row in rows])
        raise Refused("database", str(exc)) from None


class RefusedInDoubt:
    """Tasks of refused requests (40002) that the database may have stored before the reply was lost: a thread
    marks those it holds failed as soon as it answers again, long before the outbox sweep would find them
    untouched (`MPUSH_OUTBOX_GRACE`) and send what the client was told was not kept."""

    def __init__(self, retry_seconds: float = 1.0) -> None:
        self.retry_seconds = retry_seconds
        self._task_ids: list[str] = []
        self._lock = threading.Lock()
        self._settling = False

    def add(self, task_ids: Sequence[str]) -> None:
        with self._lock:
            self._task_ids += task_ids
            if self._settling:
                return
            self._settling = True
        threading.Thread(target=self._settle, name="refused-in-doubt", daemon=True).start()

    def _settle(self) -> None:
        while True:
            time.sleep(self.retry_seconds)
            with self._lock:
                task_ids, self._task_ids = self._task_ids, []
                if not task_ids:
                    self._settling = False
                    return
            try:
                failed = repo.fail_unclaimed(task_ids, "refused_in_doubt", REFUSED_MESSAGE)
            except STORE_ERRORS:
                with self._lock:
                    self._task_ids += task_ids
                continue
            if failed:
                log.warning("intake.refused_in_doubt %d of %d refused tasks had been stored: marked failed",
                            failed, len(task_ids))


REFUSED_MESSAGE = "stored though its request was refused (the database's reply was lost): never sent"
REFUSED_IN_DOUBT = RefusedInDoubt()


def _enqueue(svc: Services, jobs: list[tuple[str, float | None]]) -> None:
    """Due jobs to the stream, later ones to the delayed set; on a Redis failure the tasks are marked failed."""
    try:
        delayed = [(job("send", task_id), due) for task_id, due in jobs if due]
        if delayed:
            svc.queue.defer_many(delayed)
        ready = [job("send", task_id) for task_id, due in jobs if not due]
        if ready:
            svc.queue.enqueue(ready)
    except REDIS_ERRORS as exc:
        for task_id, _ in jobs:
            repo.update_task(task_id, status="failed", error_code="queue_unavailable",
                             error_message=f"failed to push to queue: {exc}")
        raise Refused("redis", f"failed to push to queue: {exc}") from None


def _replayed(existing: Task) -> Accepted:
    """The answer to a repeated idempotency key: the task its first request created."""
    return Accepted((existing.task_id,), existing.status, existing.created_at, existing.batch_id or "", True)


def _store_and_enqueue(svc: Services, admitted: Admitted) -> Accepted:
    app, channel, template, request = admitted.app, admitted.channel, admitted.template, admitted.request
    moment, due = admitted.moment, admitted.due
    batch_id = uuid7() if request.batch else ""
    status = "scheduled" if due else "pending"
    first = _task_row(app, channel, template, request, moment, status, due, batch_id)
    rows = [first, *(_next_task_row(first, request, index) for index in range(1, len(request.receivers)))]
    batch = {"batch_id": batch_id, "app_id": app.app_id, "total": len(rows), "created_at": moment} if batch_id else None
    try:
        _create(rows, batch)
    except repo.DuplicateTask:
        existing = repo.find_idempotent(app.app_id, request.idempotency_key) if request.idempotency_key else None
        if existing is None:
            raise
        return _replayed(existing)
    task_ids = tuple(row["task_id"] for row in rows)
    _enqueue(svc, [(task_id, due) for task_id in task_ids])
    metrics.ACCEPTED.labels(channel.name).inc(len(task_ids))
    return Accepted(task_ids, status, moment, batch_id)


def _task_row(app: Application, channel: Channel, template: Template, request: SendRequest,
              moment: datetime, status: str, due: float | None, batch_id: str) -> dict[str, Any]:
    """The task of the request's first receiver."""
    return {
        **_receiver_fields(request, 0),
        "app_id": app.app_id,
        "batch_id": batch_id or None,
        "channel_id": channel.id,
        "channel": channel.name,
        "message_type": channel.type,
        "trace_id": request.trace_id or None,
        "title": render(template.subject, request.params) if template.subject else "",
        "content": render(template.text, request.params),
        "template": template.name,
        "template_params": request.params,
        "signature": request.signature,
        "status": status,
        "scheduled_at": datetime.fromtimestamp(due, UTC) if due else None,
        "idempotency_key": request.idempotency_key or None,
        "tags": list(request.tags),
        "created_at": moment,
        "updated_at": moment,
    }


def _next_task_row(first: dict[str, Any], request: SendRequest, index: int) -> dict[str, Any]:
    """The task of receiver number `index` of a request whose first task is `first`: the same text, params and
    times (the very objects, stored converted once), its own id and receiver, no idempotency key (the key names
    the request: its first task stands for it)."""
    return {**first, **_receiver_fields(request, index), "idempotency_key": None}


def _receiver_fields(request: SendRequest, index: int) -> dict[str, Any]:
    """A new task id, the request's receiver number `index` and, when the client wrote it otherwise, as sent."""
    receiver = request.receivers[index]
    as_sent = request.as_sent[index] if request.as_sent else receiver
    return {"task_id": uuid7(), "receiver": receiver, "receiver_as_sent": as_sent if as_sent != receiver else None}


def _quota_checks(ruleset: RuleSet, app: Application, channel: Channel, request: SendRequest,
                  moment: datetime) -> tuple[list[QuotaCheck], list[int]]:
    """Every quota that applies, merged by counter key, with how many units each receiver costs it."""
    merged: dict[str, tuple[QuotaCheck, int]] = {}
    if app.daily_quota:
        merged["app.daily_quota"] = (app_quota_check(app), len(request.receivers))
    matches: Counter[str] = Counter()
    for receiver in request.receivers:
        fact = ruleset.fact(now=moment, app=app.app_id, channel=channel, receiver=receiver, tags=request.tags)
        for check in ruleset.quotas(fact).checks:
            matches[check.rule] += 1
            previous = merged.get(check.key)
            merged[check.key] = (check, (previous[1] if previous else 0) + 1)
    for rule, count in matches.items():
        metrics.QUOTA_MATCHES.labels(rule).inc(count)
    return [check for check, _ in merged.values()], [cost for _, cost in merged.values()]


def app_quota_check(app: Application) -> QuotaCheck:
    """The counter of the app's own daily quota (its `daily_quota` setting)."""
    return QuotaCheck("app.daily_quota", f"app-quota|app={app.app_id}", app.daily_quota, DAY)


# C0 and C1 controls and lone surrogates: never part of a receiver, name or tag (they break storage, logs and
# vendors alike); params may carry tabs and line breaks
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _invalid(message: str) -> Refused:
    return Refused("invalid", f"invalid request: {message}")


def _channel(value: Any, limits: FieldLimits) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str) or value in (0, ""):
        raise _invalid("channel_id is required (a channel id or name)")
    if isinstance(value, int) and not 0 < value < 2**31:
        raise _invalid("channel_id must be a positive 32-bit integer")
    if isinstance(value, str) and (len(value) > limits.name_chars or _CONTROL.search(value)):
        raise _invalid(f"channel_id must be a channel name of at most {limits.name_chars} printable characters")
    return value


def _receivers(body: dict[str, Any], batch: bool) -> tuple[str, ...]:
    if not batch:
        return (_receiver(body.get("receiver")),)
    value = body.get("receivers")
    if not isinstance(value, list) or not value:
        raise _invalid("receivers must be a non-empty array of strings")
    if len(value) > MAX_BATCH:
        raise _invalid(f"at most {MAX_BATCH} receivers per batch")
    return tuple(_receiver(item) for item in value)


def _receiver(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid("receiver must be a non-empty string")
    if len(value) > MAX_RECEIVER:
        raise _invalid(f"receiver longer than {MAX_RECEIVER} characters")
    if _CONTROL.search(value):
        raise _invalid("receiver holds a control character or a lone surrogate")
    return value.strip()


def _params(value: Any, limits: FieldLimits) -> dict[str, str]:
    """String map; numbers are taken as their text and the PHP SDK's `[]` as empty."""
    if value is None or value == []:
        return {}
    if not isinstance(value, dict):
        raise _invalid("template_params must be an object of strings")
    if len(value) > limits.params:
        raise _invalid(f"template_params has more than {limits.params} entries")
    params: dict[str, str] = {}
    for key, item in value.items():
        name = _short_text(key, "a template_params name", limits.name_chars) if key else ""
        if not name:
            raise _invalid("template_params names must be non-empty")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _invalid(f"template_params.{name} must be a string")
        text = item if isinstance(item, str) else format(item, "g") if isinstance(item, float) else str(item)
        if len(text) > limits.param_chars:
            raise _invalid(f"template_params.{name} longer than {limits.param_chars} characters")
        if _CONTROL_BUT_LINES.search(text):
            raise _invalid(f"template_params.{name} holds a control character or a lone surrogate")
        params[name] = text
    return params


def _short_text(value: Any, name: str, most: int) -> str:
    """An optional single-line string of at most `most` characters."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    if len(value) > most or _CONTROL.search(value):
        raise _invalid(f"{name} must be at most {most} printable characters")
    return value


def _scheduled_at(value: Any, now: float, limits: FieldLimits) -> datetime | None:
    """An RFC 3339 moment with an offset, at most `limits.schedule_days` ahead (a past one means now)."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise _invalid("scheduled_at must be an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise _invalid("scheduled_at needs a time zone offset")
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _invalid(f"scheduled_at {value[:40]!r} is not an RFC 3339 timestamp") from None
    if moment.timestamp() > now + limits.schedule_days * DAY:
        raise _invalid(f"scheduled_at is more than {limits.schedule_days} days ahead")
    return moment


def _tags(value: Any, limits: FieldLimits) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(tag, str) and tag for tag in value):
        raise _invalid("tags must be an array of non-empty strings")
    if len(value) > limits.tags:
        raise _invalid(f"at most {limits.tags} tags")
    return tuple(_short_text(tag, "a tag", limits.name_chars) for tag in value)


def _idempotency_key(value: str, limits: FieldLimits) -> str:
    if len(value) > limits.idempotency_key_chars or _CONTROL.search(value):
        raise _invalid(f"Idempotency-Key must be at most {limits.idempotency_key_chars} printable characters")
    return value
