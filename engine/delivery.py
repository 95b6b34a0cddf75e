"""Delivering one task: route, select, render, send, record, and carry out the failure decision.

Every stage is a short function over `Services`; the rule set is snapshotted once per task so
an evaluation in progress finishes on the version it started with.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from engine import metrics, webhooks
from engine.policy.decisions import FailureDecision, Scene
from engine.policy.model import Channel, ProviderAccount, render
from engine.queue import job
from engine.services import Services
from engine.store import repo
from engine.store.models import Task
from providers import registry
from providers.base import Account, Message, Outcome, SendContext, SendResult, with_defaults

log = logging.getLogger("mpush.delivery")

FINAL_STATUSES = ("success", "failed")
OPEN_STATUSES = ("pending", "scheduled", "processing")


def deliver(svc: Services, task_id: str, now: float) -> str:
    """Make the next attempt of a task; returns a short label of what happened."""
    task = repo.get_task(task_id)
    if task is None:
        return "missing"
    if task.status not in OPEN_STATUSES:
        return "done"
    ruleset = svc.rules.current
    attempts = repo.list_attempts(task_id)
    if attempts and attempts[-1].status == "sending":
        return _resolve_lost_attempt(svc, task, attempts[-1].number, attempts[-1].provider, now)
    channel = ruleset.channel(task.channel)
    if channel is None:
        return finish(svc, task, "failed", error_code="channel_gone",
                      error_message=f"channel {task.channel!r} is not in rule set {ruleset.version}")
    fact = ruleset.fact(now=_dt(now), app=task.app_id, channel=channel, receiver=task.receiver,
                        tags=json.loads(task.tags or "[]"), attempt=len(attempts))
    decision = ruleset.route(fact)
    if decision.action == "reject":
        return finish(svc, task, "failed", error_code="rejected_by_rule", error_message=decision.reason,
                      rule=decision.rule, rule_version=decision.version)
    if decision.action == "defer" and decision.defer_until is not None:
        return defer(svc, task, decision.defer_until.timestamp(), rule=decision.rule, rule_version=decision.version)
    excluded = set(json.loads(task.exclude_providers or "[]"))
    choice = svc.selector.choose(decision.tiers, scope=decision.rule, exclude=excluded,
                                 accounts=ruleset.providers, now=now)
    if choice.provider is None:
        return on_failure(svc, task, "send_failure", now, provider="", number=len(attempts),
                          error_code="no_provider", error_message=choice.reason)
    account = ruleset.providers[choice.provider]
    number = len(attempts) + 1
    if not repo.begin_attempt(task_id, number, account.name, decision.rule, decision.version):
        return "busy"
    repo.mark_status_if(task_id, OPEN_STATUSES, status="processing", provider=account.name,
                        rule=decision.rule, rule_version=decision.version)
    message = build_message(svc, task, channel, account, number)
    result, latency_ms = send(svc, account, message, now)
    return record_result(svc, task, account, number, result, latency_ms, now)


def build_message(svc: Services, task: Task, channel: Channel, account: ProviderAccount, number: int) -> Message:
    """The provider's view of one attempt: rendered text plus the vendor template and params."""
    template = svc.rules.current.templates.get(channel.template)
    params: dict[str, str] = json.loads(task.template_params or "{}")
    vendor = account.template_for(channel.template)
    return Message(
        task_id=task.task_id,
        attempt=number,
        receiver=task.receiver,
        channel_type=channel.type,
        text=task.content,
        subject=task.title or "",
        html=render(template.html, params) if template and template.html else None,
        template_code=vendor.code if vendor else "",
        params={name: render(value, params) for name, value in (vendor.params.items() if vendor else ())},
        sign_name=account.signatures.get(task.signature, task.signature) if task.signature
        else account.signatures.get("default", ""),
    )


def send(svc: Services, account: ProviderAccount, message: Message, now: float) -> tuple[SendResult, int]:
    """One provider call and its latency in ms; a provider bug becomes a retryable result, never a lost task."""
    provider = registry.get(account.type)
    ctx = SendContext(transport=svc.transport, now=_dt(now), tokens=svc.tokens)
    started = time.perf_counter()
    try:
        result = provider.send(message, provider_account(account), ctx)
    except Exception as exc:  # a provider bug must not strand the task
        log.exception("provider.crashed provider=%s task=%s", account.name, message.task_id)
        result = SendResult(Outcome.RETRYABLE, error_code="provider_error", error_message=type(exc).__name__)
    elapsed = time.perf_counter() - started
    metrics.SEND_SECONDS.labels(account.name).observe(elapsed)
    metrics.SENDS.labels(account.name, result.outcome.value).inc()
    return result, round(elapsed * 1000)


def provider_account(account: ProviderAccount) -> Account:
    schema = registry.get(account.type).CONFIG
    return Account(account.name, account.type, with_defaults(schema, account.config), callback=account.callback)


def record_result(svc: Services, task: Task, account: ProviderAccount, number: int,
                  result: SendResult, latency_ms: int, now: float) -> str:
    repo.finish_attempt(
        task.task_id, number, status=result.outcome.value, final=result.final,
        provider_message_id=result.provider_message_id, error_code=result.error_code,
        error_message=result.error_message, request=dict(result.request_summary),
        response=dict(result.response_summary), latency_ms=latency_ms,
    )
    svc.selector.record(account.name, result.outcome is not Outcome.RETRYABLE, account.circuit, now)
    if not result.ok:
        return on_failure(svc, task, "send_failure", now, provider=account.name, number=number,
                          error_code=result.error_code, error_message=result.error_message)
    if result.final:
        return finish(svc, task, "success", provider=account.name, retry_count=number,
                      provider_message_id=result.provider_message_id, error_code="", error_message="")
    repo.mark_status_if(task.task_id, OPEN_STATUSES, status="sent", provider=account.name, retry_count=number,
                        provider_message_id=result.provider_message_id, error_code="", error_message="")
    svc.queue.defer(job("timeout", task.task_id), now + svc.settings.callback_timeout)
    return "sent"


def _resolve_lost_attempt(svc: Services, task: Task, number: int, provider: str, now: float) -> str:
    """A worker died during this attempt's provider call: its outcome is unknown, so it is never
    resent; the failure rules decide the next attempt as for any send failure."""
    message = "worker stopped during the provider call; outcome unknown, attempt not resent"
    repo.finish_attempt(task.task_id, number, status="unknown", final=False, provider_message_id="",
                        error_code="worker_lost", error_message=message, request={}, response={}, latency_ms=0)
    return on_failure(svc, task, "send_failure", now, provider=provider, number=number,
                      error_code="worker_lost", error_message=message)


def on_failure(svc: Services, task: Task, scene: Scene, now: float, *, provider: str, number: int,
               error_code: str, error_message: str, extra: Mapping[str, Any] | None = None) -> str:
    """Ask the rule set what a failure means, then carry the decision out."""
    ruleset = svc.rules.current
    channel = ruleset.channel(task.channel)
    if channel is None:
        return finish(svc, task, "failed", error_code=error_code or "channel_gone", error_message=error_message)
    fact = ruleset.fact(now=_dt(now), app=task.app_id, channel=channel, receiver=task.receiver,
                        tags=json.loads(task.tags or "[]"), attempt=number, provider=provider,
                        error_code=error_code, error_message=error_message)
    decision = ruleset.on_failure(scene, fact)
    metrics.DECISIONS.labels(scene, decision.action, decision.rule).inc()
    fields: dict[str, Any] = dict(extra or {}, rule=decision.rule, rule_version=decision.version,
                                  error_code=error_code, error_message=error_message, retry_count=number)
    log.info("failure.decided task=%s scene=%s action=%s rule=%s provider=%s code=%s", task.task_id,
             scene, decision.action, decision.rule, provider, error_code)
    if decision.action in ("retry", "switch_provider"):
        return _retry(svc, task, decision, provider, now, fields)
    if decision.action == "ignore":
        repo.update_task(task.task_id, **fields)
        return "ignored"
    if decision.action == "alert" and decision.alert is not None:
        webhooks.send_alert(svc, decision.alert.webhook or svc.settings.alert_webhook, decision.alert.level,
                            task, provider=provider, error_code=error_code, error_message=error_message)
    return finish(svc, task, "failed", **fields)


def _retry(svc: Services, task: Task, decision: FailureDecision, provider: str, now: float,
           fields: dict[str, Any]) -> str:
    excluded = json.loads(task.exclude_providers or "[]")
    if decision.action == "switch_provider" and decision.exclude_current and provider and provider not in excluded:
        excluded.append(provider)
    if not repo.mark_status_if(task.task_id, (*OPEN_STATUSES, "sent"), status="pending",
                               exclude_providers=json.dumps(excluded), **fields):
        return "done"
    svc.queue.defer(job("send", task.task_id), now + decision.delay_seconds)
    return "retried"


def defer(svc: Services, task: Task, due: float, **fields: Any) -> str:
    if repo.mark_status_if(task.task_id, OPEN_STATUSES, status="scheduled", scheduled_at=_dt(due), **fields):
        svc.queue.defer(job("send", task.task_id), due)
    return "deferred"


def finish(svc: Services, task: Task, status: str, **fields: Any) -> str:
    """Move a task to a final status once, and tell the app's webhook about it."""
    if not repo.mark_status_if(task.task_id, (*OPEN_STATUSES, "sent"), status=status, **fields):
        return "done"
    metrics.FINAL.labels(status).inc()
    webhooks.notify(svc, task.task_id)
    return status


def check_report_timeout(svc: Services, task_id: str, now: float) -> str:
    """A sent SMS whose delivery report never came: the `callback_timeout` rules decide."""
    task = repo.get_task(task_id)
    if task is None or task.status != "sent" or task.callback_status:
        return "done"
    return on_failure(svc, task, "callback_timeout", now, provider=task.provider or "", number=task.retry_count,
                      error_code="report_timeout", error_message="no delivery report received in time",
                      extra={"callback_status": "timeout", "callback_time": _dt(now)})


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
