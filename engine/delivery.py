"""Delivering tasks: route, select, render, send, record, and carry out the failure decision.

`deliver_many` takes the send jobs of one stream read through the stages together, so a read
costs two queries, two transactions and concurrent provider calls however many tasks it holds:

    load (tasks + attempts) -> route each -> select (one round trip) -> claim (attempts begun + tasks
    processing, one transaction) -> send (concurrently) -> record (attempts finished + final
    statuses, one transaction) -> failure decisions, webhooks, report timeouts

Every stage is a short function over `Services`; the rule set is snapshotted once per task so
an evaluation in progress finishes on the version it started with.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from engine import metrics, webhooks
from engine.policy.decisions import FailureDecision, RoutingDecision, Scene
from engine.policy.model import Channel, ProviderAccount, render
from engine.policy.ruleset import RuleSet
from engine.queue import job
from engine.selector import ChoiceRequest
from engine.services import Services
from engine.store import repo
from engine.store.models import OPEN_TASK_STATUSES, Attempt, Task
from providers import registry
from providers.base import Account, Message, Outcome, SendContext, SendResult, with_defaults

log = logging.getLogger("mpush.delivery")

UNFINISHED = (*OPEN_TASK_STATUSES, "sent")  # a sent task still awaits its delivery report
WEBHOOK_URL_TTL = 2.0

T = TypeVar("T")
U = TypeVar("U")
Mapper = Callable[[Callable[[T], U], Sequence[T]], list[U]]


@dataclass(frozen=True, slots=True)
class Planned:
    """An attempt ready to be claimed: the task, the account chosen for it and the routing rule that decided."""

    task: Task
    ruleset: RuleSet
    channel: Channel
    account: ProviderAccount
    number: int
    rule: str
    rule_version: str

    @property
    def claim(self) -> repo.AttemptClaim:
        return repo.AttemptClaim(self.task.task_id, self.number, self.account.name, self.rule, self.rule_version)


@dataclass(frozen=True, slots=True)
class Routed:
    """A task the rule set routed: the decision, attempts made so far and the accounts it already failed on."""

    task: Task
    ruleset: RuleSet
    channel: Channel
    decision: RoutingDecision
    attempts: int
    excluded: frozenset[str]


@dataclass(frozen=True, slots=True)
class Sent:
    """A claimed attempt and what the provider made of it."""

    plan: Planned
    result: SendResult
    latency_ms: int


def deliver(svc: Services, task_id: str, now: float) -> str:
    """Make the next attempt of a task; returns a short label of what happened."""
    return deliver_many(svc, [task_id], now)[0]


def deliver_many(svc: Services, task_ids: Sequence[str], now: float, mapper: Mapper[Planned, Sent] | None = None
                 ) -> list[str]:
    """Make the next attempt of each task; a label per id, in order. `mapper` runs the provider calls (a
    thread pool's `map` sends them concurrently); a task named twice is handled once, the repeat is "done"."""
    unique = list(dict.fromkeys(task_ids))
    tasks, attempts = repo.load_for_delivery(unique)
    labels: dict[str, str] = {}
    routed: list[Routed] = []
    for task_id in unique:
        step = route(svc, tasks.get(task_id), attempts.get(task_id, []), now)
        if isinstance(step, Routed):
            routed.append(step)
        else:
            labels[task_id] = step
    plans = select(svc, routed, labels, now)
    claimed = claim(plans, labels)
    sent = (mapper or _map)(lambda plan: attempt(svc, plan, now), claimed)
    labels.update(record(svc, sent, now))
    return _per_entry(task_ids, labels)


def route(svc: Services, task: Task | None, attempts: list[Attempt], now: float) -> Routed | str:
    """Ask the rule set who may deliver the task; a label instead when nothing is to be sent now."""
    if task is None:
        return "missing"
    if task.status not in OPEN_TASK_STATUSES:
        return "done"
    ruleset = svc.rules.current
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
    excluded = frozenset(json.loads(task.exclude_providers or "[]"))
    return Routed(task, ruleset, channel, decision, len(attempts), excluded)


def select(svc: Services, routed: list[Routed], labels: dict[str, str], now: float) -> list[Planned]:
    """Choose an account for every routed task in one round trip; no account available is a send failure."""
    requests = [ChoiceRequest(r.decision.tiers, r.decision.rule, r.excluded, r.ruleset.providers) for r in routed]
    plans: list[Planned] = []
    for item, choice in zip(routed, svc.selector.choose_many(requests, now)):
        if choice.provider is None:
            labels[item.task.task_id] = on_failure(svc, item.task, "send_failure", now, provider="",
                                                   number=item.attempts, error_code="no_provider",
                                                   error_class="account", error_message=choice.reason,
                                                   ruleset=item.ruleset)
            continue
        plans.append(Planned(item.task, item.ruleset, item.channel, item.ruleset.providers[choice.provider],
                             item.attempts + 1, item.decision.rule, item.decision.version))
    return plans


def claim(plans: list[Planned], labels: dict[str, str]) -> list[Planned]:
    """Begin the planned attempts; one begun elsewhere already (the per-attempt lock) is labelled "busy"."""
    won = repo.claim_attempts([plan.claim for plan in plans], OPEN_TASK_STATUSES)
    labels.update((plan.task.task_id, "busy") for plan, ok in zip(plans, won) if not ok)
    return [plan for plan, ok in zip(plans, won) if ok]


def attempt(svc: Services, plan: Planned, now: float) -> Sent:
    """Render and send one claimed attempt."""
    message = build_message(plan)
    result, latency_ms = send(svc, plan.account, message, now)
    return Sent(plan, result, latency_ms)


def record(svc: Services, sent: list[Sent], now: float) -> dict[str, str]:
    """Store every outcome and the resulting statuses in one transaction, then count each call for the
    circuit breakers, announce final statuses, queue report timeouts and decide the failures."""
    succeeded = [item for item in sent if item.result.ok]
    applied = repo.record_attempts([_attempt_end(item) for item in sent],
                                   [_status_change(item) for item in succeeded])
    svc.selector.record_many([(item.plan.account.name, item.result.outcome is not Outcome.RETRYABLE,
                               item.plan.account.circuit) for item in sent], now)
    labels: dict[str, str] = {}
    for item, changed in zip(succeeded, applied):
        task_id = item.plan.task.task_id
        if not item.result.final:
            labels[task_id] = "sent"
        else:
            labels[task_id] = announce_final(svc, item.plan.task, "success") if changed else "done"
    timeouts = [(job("timeout", item.plan.task.task_id), now + svc.settings.callback_timeout)
                for item in succeeded if not item.result.final]
    if timeouts:
        svc.queue.defer_many(timeouts)
    for item in sent:
        if not item.result.ok:
            labels[item.plan.task.task_id] = on_failure(
                svc, item.plan.task, "send_failure", now, provider=item.plan.account.name, number=item.plan.number,
                error_code=item.result.error_code, error_class=item.result.error_class,
                error_message=item.result.error_message, ruleset=item.plan.ruleset)
    return labels


def _attempt_end(item: Sent) -> repo.AttemptEnd:
    result = item.result
    return repo.AttemptEnd(item.plan.task.task_id, item.plan.number, result.outcome.value, result.final,
                           result.provider_message_id, result.error_code, result.error_message,
                           dict(result.request_summary), dict(result.response_summary), item.latency_ms)


def _status_change(item: Sent) -> repo.StatusChange:
    """A successful call: final means delivered; otherwise sent, and the delivery report will tell."""
    fields = {"provider": item.plan.account.name, "retry_count": item.plan.number,
              "provider_message_id": item.result.provider_message_id, "error_code": "", "error_message": ""}
    if item.result.final:
        return repo.StatusChange(item.plan.task.task_id, UNFINISHED, {"status": "success", **fields})
    return repo.StatusChange(item.plan.task.task_id, OPEN_TASK_STATUSES, {"status": "sent", **fields})


def _per_entry(task_ids: Sequence[str], labels: Mapping[str, str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for task_id in task_ids:
        result.append("done" if task_id in seen else labels[task_id])
        seen.add(task_id)
    return result


def _map(fn: Callable[[T], U], items: Sequence[T]) -> list[U]:
    return [fn(item) for item in items]


def build_message(plan: Planned) -> Message:
    """The provider's view of one attempt: rendered text plus the vendor template and params."""
    task, channel, account = plan.task, plan.channel, plan.account
    template = plan.ruleset.templates.get(channel.template)
    params: dict[str, str] = json.loads(task.template_params or "{}")
    vendor = account.template_for(channel.template)
    return Message(
        task_id=task.task_id,
        attempt=plan.number,
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
    """The account as its provider takes it: the rule file's settings with the provider's defaults filled in."""
    schema = registry.get(account.type).CONFIG
    return Account(account.name, account.type, with_defaults(schema, account.config), callback=account.callback)


def _resolve_lost_attempt(svc: Services, task: Task, number: int, provider: str, now: float) -> str:
    """A worker died during this attempt's provider call: its outcome is unknown, so it is never
    resent; the failure rules decide the next attempt as for any send failure."""
    message = "worker stopped during the provider call; outcome unknown, attempt not resent"
    repo.finish_attempt(task.task_id, number, status="unknown", final=False, provider_message_id="",
                        error_code="worker_lost", error_message=message, request={}, response={}, latency_ms=0)
    return on_failure(svc, task, "send_failure", now, provider=provider, number=number,
                      error_code="worker_lost", error_class="unknown", error_message=message)


def on_failure(svc: Services, task: Task, scene: Scene, now: float, *, provider: str, number: int,
               error_code: str, error_message: str, error_class: str = "", extra: Mapping[str, Any] | None = None,
               ruleset: RuleSet | None = None) -> str:
    """Ask the rule set what a failure means, then carry the decision out.

    `ruleset` is the version that routed the attempt, so a reload in between never splits one
    attempt's decisions across versions; reports and timeouts arrive later and use the live one.
    """
    ruleset = ruleset or svc.rules.current
    channel = ruleset.channel(task.channel)
    if channel is None:
        return finish(svc, task, "failed", error_code=error_code or "channel_gone", error_message=error_message)
    fact = ruleset.fact(now=_dt(now), app=task.app_id, channel=channel, receiver=task.receiver,
                        tags=json.loads(task.tags or "[]"), attempt=number, provider=provider,
                        error_code=error_code, error_class=error_class, error_message=error_message)
    decision = ruleset.on_failure(scene, fact)
    metrics.DECISIONS.labels(scene, decision.action, decision.rule).inc()
    repo.record_decision(task.task_id, number, scene, decision.action, rule=decision.rule,
                         rule_version=decision.version, delay_seconds=decision.delay_seconds, provider=provider,
                         error_class=error_class, error_code=error_code, error_message=error_message)
    fields: dict[str, Any] = dict(extra or {}, rule=decision.rule, rule_version=decision.version,
                                  error_code=error_code, error_message=error_message, retry_count=number)
    log.info("failure.decided task=%s scene=%s action=%s rule=%s provider=%s class=%s code=%r", task.task_id,
             scene, decision.action, decision.rule, provider, error_class, error_code)
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
    if not repo.mark_status_if(task.task_id, UNFINISHED, status="pending",
                               exclude_providers=json.dumps(excluded), **fields):
        return "done"
    svc.queue.defer(job("send", task.task_id), now + decision.delay_seconds)
    return "retried"


def defer(svc: Services, task: Task, due: float, **fields: Any) -> str:
    if repo.mark_status_if(task.task_id, OPEN_TASK_STATUSES, status="scheduled", scheduled_at=_dt(due), **fields):
        svc.queue.defer(job("send", task.task_id), due)
    return "deferred"


def finish(svc: Services, task: Task, status: str, **fields: Any) -> str:
    """Move a task to a final status once, and tell the app's webhook about it."""
    if not repo.mark_status_if(task.task_id, UNFINISHED, status=status, **fields):
        return "done"
    return announce_final(svc, task, status)


def announce_final(svc: Services, task: Task, status: str) -> str:
    """Count a task that just reached a final status and queue its webhook event, if its app has a webhook."""
    metrics.FINAL.labels(status).inc()
    if _has_webhook(task.app_id):
        webhooks.notify(svc, task)
    return status


_webhook_urls: dict[str, tuple[float, bool]] = {}


def _has_webhook(app_id: str) -> bool:
    """Whether the app has a webhook URL, as this process read it at most WEBHOOK_URL_TTL seconds ago.

    Saves two lookups per final message for the apps without one; a URL set moments ago may miss
    the events of tasks finishing within that window in processes that had just looked.
    """
    checked = _webhook_urls.get(app_id)
    moment = time.monotonic()
    if checked is None or moment - checked[0] > WEBHOOK_URL_TTL:
        app = repo.get_app(app_id)
        checked = (moment, bool(app and app.webhook_url))
        _webhook_urls[app_id] = checked
    return checked[1]


def check_report_timeout(svc: Services, task_id: str, now: float) -> str:
    """A sent SMS whose delivery report never came: the `callback_timeout` rules decide."""
    task = repo.get_task(task_id)
    if task is None or task.status != "sent" or task.callback_status:
        return "done"
    return on_failure(svc, task, "callback_timeout", now, provider=task.provider or "", number=task.retry_count,
                      error_code="report_timeout", error_class="unknown",
                      error_message="no delivery report received in time",
                      extra={"callback_status": "timeout", "callback_time": _dt(now)})


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
