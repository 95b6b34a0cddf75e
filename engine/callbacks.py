"""Provider delivery reports: verify, record, match to the task, apply once.

Every verified report is recorded, matched or not; only a verified, first-seen report for a task that is
waiting for it changes anything. Refused requests are counted, and only a sample of them is kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime

from engine import delivery, keys, metrics
from engine.services import Services
from engine.store import repo
from engine.store.models import Task
from providers import registry
from providers.base import CallbackReply, CallbackRequest, DeliveryReport

log = logging.getLogger("mpush.callbacks")

MAX_RAW = 20_000
REFUSED_SAMPLE = 20  # refused requests stored (and logged) per provider account per minute; the rest are counted
REFUSED_RAW = 2_000


def handle(svc: Services, account_name: str, request: CallbackRequest, now: float) -> CallbackReply:
    """Process one inbound callback request for a provider account; returns the vendor's reply."""
    account = svc.rules.current.providers.get(account_name)
    if account is None:
        metrics.CALLBACKS_REFUSED.labels("(unknown)", "unknown_account").inc()  # the name is the caller's
        return _json_reply(404, "account not found")
    parser = registry.callback_parser(account.type)
    if parser is None:
        return _json_reply(404, f"provider type {account.type} sends no delivery reports")
    raw = request.body.decode("utf-8", "replace")[:MAX_RAW] or json.dumps(dict(request.query), ensure_ascii=False)
    result = parser(request, delivery.provider_account(account), datetime.fromtimestamp(now, UTC))
    if not result.verified or not result.reports:
        reason = "unverified" if not result.verified else "empty"
        metrics.CALLBACKS_REFUSED.labels(account_name, reason).inc()
        if _sampled(svc, account_name, now):
            record_refused(account_name, request, raw, result.verified, result.error or "no reports in the request")
        return result.reply
    for report in result.reports:
        outcome = apply_report(svc, account_name, report, raw, now)
        metrics.CALLBACKS.labels(account_name, outcome).inc()
    return result.reply


def _sampled(svc: Services, account_name: str, now: float) -> bool:
    """Whether this refused request is among the first REFUSED_SAMPLE of its account this minute, across
    processes: forged requests cost a counter increment, never an unbounded stream of rows and log lines."""
    key = keys.refused_callbacks(account_name, int(now // 60))
    pipe = svc.redis.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 120)
    return int(pipe.execute()[0]) <= REFUSED_SAMPLE


def record_refused(account_name: str, request: CallbackRequest, raw: str, verified: bool, note: str) -> None:
    repo.record_callback(provider=account_name, provider_message_id="", task_id=None, status="", error_code="",
                         error_message="", raw=raw[:REFUSED_RAW], verified=verified, applied=False,
                         note=note[:255])
    log.warning("callback.refused provider=%s from=%s: %.200r", account_name, request.client_host, note)


def apply_report(svc: Services, account_name: str, report: DeliveryReport, raw: str, now: float) -> str:
    """Record one report and, when it is new and its task awaits it, move the task on. A report that can name
    its message several ways (`DeliveryReport.message_ids`) is known from then on by the id its attempt has."""
    attempt = repo.find_attempt(account_name, *report.message_ids)
    if attempt is not None:
        report = replace(report, provider_message_id=attempt.provider_message_id, alternate_ids=())
    record = dict(provider=account_name, provider_message_id=report.provider_message_id, status=report.status,
                  error_code=report.error_code, error_message=report.error_message, raw=raw, verified=True)
    if attempt is None:
        repo.record_callback(task_id=None, applied=False, note="unknown provider message id", **record)
        return "unknown"
    if repo.callback_seen(account_name, report.provider_message_id, report.status):
        repo.record_callback(task_id=attempt.task_id, applied=False, note="duplicate report", **record)
        return "duplicate"
    task = repo.get_task(attempt.task_id)
    if task is None or not _awaits(task, report):
        state = task.status if task else "missing"
        repo.record_callback(task_id=attempt.task_id, applied=False, note=f"task is {state}, not awaiting this report",
                             **record)
        return "stale"
    outcome = _apply(svc, account_name, task, report, now)
    # Recorded as applied only once applied: were the database lost in between, the vendor's next try of the
    # report (it was answered 503) finds the task moved on, not a "duplicate" of a report never applied.
    applied = outcome != "stale"
    repo.record_callback(task_id=task.task_id, applied=applied, note="" if applied else "task moved on meanwhile",
                         **record)
    return outcome


def _apply(svc: Services, account_name: str, task: Task, report: DeliveryReport, now: float) -> str:
    when = report.reported_at or datetime.fromtimestamp(now, UTC)
    if report.status == "delivered":
        if task.status == "success":
            repo.update_task(task.task_id, callback_status="delivered", callback_time=when)
        else:
            delivery.finish(svc, task, "success", callback_status="delivered", callback_time=when)
        return "delivered"
    if task.status == "success" and not repo.mark_status_if(task.task_id, ("success",), status="sent"):
        return "stale"  # a bounce reopens an accepted email; someone else moved it meanwhile
    delivery.on_failure(svc, task, "callback_failure", now, provider=account_name, number=task.retry_count,
                        error_code=report.error_code, error_message=report.error_message,
                        extra={"callback_status": report.status, "callback_time": when})
    return report.status


def _awaits(task: Task, report: DeliveryReport) -> bool:
    """Reports apply to the task's latest attempt while it awaits one (sent), or to an accepted
    email or chat message whose later bounce says it did not arrive (success)."""
    return task.provider_message_id == report.provider_message_id and task.status in ("sent", "success")


def _json_reply(status: int, message: str) -> CallbackReply:
    body = json.dumps({"code": status, "message": message})
    return CallbackReply(body, status=status, content_type="application/json")
