"""Delivering tasks: route, select, claim, send, record, and carry out the failure decision.

The send jobs of one stream read are planned together: their tasks loaded in two queries, routed, and their
accounts chosen in one Redis round trip. Each planned attempt is then carried out on its own (or, where the
vendor takes many receivers of one message a call, with the others of its `batches` group), by whichever
sender thread takes it:

    claim (the attempt begun, owned and leased; the task processing) -> send -> record -> decide

It is claimed just before its provider call, so an attempt that never left the worker is never in doubt, and
claims and records made at the same moment by different threads share one transaction (`GroupCommit`); the
breakers count successes a stream read at a time (`Selector.count_many`).

The delivery contract (docs/delivery.md): an attempt belongs to the worker that claimed it while its lease
lasts, and that worker renews the lease while the call is in flight; only an expired lease makes it lost. An
attempt whose outcome is unknown (lost with its worker, or a call cut off after the request left) is never
resent blindly: the `unknown_outcome` rules decide, and a resend goes out to the same account under the same
idempotency key only where the vendor deduplicates on it; anywhere else the task fails with that reason.
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
from engine.microbatch import GroupCommit
from engine.policy.decisions import FailureDecision, RoutingDecision, Scene, bound_failure, counted_attempts
from engine.policy.model import Channel, ProviderAccount, render
from engine.policy.ruleset import RuleSet
from engine.policy.selection import call_health
from engine.queue import job
from engine.selector import ChoiceRequest
from engine.services import Services
from engine.store import repo
from engine.store.db import STORE_ERRORS, StoreUnavailable
from engine.store.models import OPEN_TASK_STATUSES, UNFINISHED_TASK_STATUSES, Attempt, Task
from providers import registry
from providers.base import Account, Message, Outcome, SendContext, SendResult, with_defaults

log = logging.getLogger("mpush.delivery")

WEBHOOK_URL_TTL = 2.0
EARLY_SLACK = 0.5  # seconds a scheduled job may run before its time (the delayed set releases in rounds)
LOST = "the worker making this call stopped (its lease expired); outcome unknown"

T = TypeVar("T")
U = TypeVar("U")
Mapper = Callable[[Callable[[T], U], Sequence[T]], list[U]]


@dataclass(frozen=True, slots=True)
class Planned:
    """An attempt ready to be claimed: the task, the account chosen for it and the routing rule that decided.
    `key_number` names the earlier attempt whose idempotency key a resend reuses."""

    task: Task
    ruleset: RuleSet
    channel: Channel
    account: ProviderAccount
    number: int
    rule: str
    rule_version: str
    key_number: int | None = None

    def claim(self, owner: str = "", lease_until: datetime | None = None) -> repo.AttemptClaim:
        return repo.AttemptClaim(self.task.task_id, self.number, self.account.name, self.rule, self.rule_version,
                                 owner, lease_until, self.key_number)


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


def deliver_many(svc: Services, task_ids: Sequence[str], now: float, mapper: Mapper[Planned, str] | None = None,
                 owner: str = "") -> list[str]:
    """Make the next attempt of each task; a label per id, in order. `mapper` runs the attempts (a thread
    pool's `map` makes them concurrently); a task named twice is handled once, the repeat is "done"."""
    labels, plans = plan(svc, task_ids, now)
    done = (mapper or _map)(lambda item: carry_out(svc, item, owner), plans)
    labels.update(zip((item.task.task_id for item in plans), done))
    return _per_entry(task_ids, labels)


def plan(svc: Services, task_ids: Sequence[str], now: float) -> tuple[dict[str, str], list[Planned]]:
    """Route the tasks and choose their accounts: the attempts to make, and a label for every task without one."""
    unique = list(dict.fromkeys(task_ids))
    tasks, attempts = repo.load_for_delivery(unique)
    labels: dict[str, str] = {}
    routed: list[Routed] = []
    plans: list[Planned] = []
    for task_id in unique:
        step = route(svc, tasks.get(task_id), attempts.get(task_id, []), now)
        if isinstance(step, Routed):
            routed.append(step)
        elif isinstance(step, Planned):
            plans.append(step)
        else:
            labels[task_id] = step
    return labels, plans + select(svc, routed, labels, now)


def route(svc: Services, task: Task | None, attempts: list[Attempt], now: float) -> Routed | Planned | str:
    """Ask the rule set who may deliver the task; a resend is planned at once; a label instead when nothing is
    to be sent now."""
    if task is None:
        return "missing"
    if task.status not in OPEN_TASK_STATUSES:
        return "done"
    last = attempts[-1] if attempts else None
    if last is not None and last.status == "sending":
        return _lost_or_busy(svc, task, last, now)
    due = task.due
    if due is not None and due.timestamp() > now + EARLY_SLACK:
        svc.queue.defer(job("send", task.task_id), due.timestamp(), earlier_only=True)
        return "early"  # a scheduled send or a retry's delay not yet over: a sweep's or a reclaim's extra job
    ruleset = svc.rules.current
    channel = ruleset.channel(task.channel)
    if channel is None:
        return finish(svc, task, "failed", error_code="channel_gone",
                      error_message=f"channel {task.channel!r} is not in rule set {ruleset.version}")
    if last is not None and last.status == "unknown" and task.resend_of == last.number:
        return _resend(svc, task, last, ruleset, channel, len(attempts) + 1)
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


def _lost_or_busy(svc: Services, task: Task, last: Attempt, now: float) -> str:
    """An attempt still `sending`: its owner's, while the lease holds (this job comes back when it ends);
    lost once the lease has expired, and then its outcome is unknown."""
    if last.lease_until is not None and last.lease_until.timestamp() > now:
        svc.queue.defer(job("send", task.task_id), last.lease_until.timestamp() + 1, earlier_only=True)
        return "busy"
    if not repo.expire_attempt(task.task_id, last.number, _dt(now), LOST):
        return "busy"  # another worker found it first, or its owner just finished it
    metrics.LOST_ATTEMPTS.labels(last.provider).inc()
    return on_unknown(svc, task, last.number, last.provider, now, error_code="worker_lost", error_message=LOST)


def _resend(svc: Services, task: Task, last: Attempt, ruleset: RuleSet, channel: Channel, number: int
            ) -> Planned | str:
    """The same account and idempotency key as the attempt whose outcome is unknown, so the vendor drops it
    if that one did arrive."""
    account = ruleset.providers.get(last.provider)
    if account is None:
        return finish(svc, task, "failed", error_code="resend_impossible",
                      error_message=f"outcome unknown and account {last.provider!r} is gone: not resent")
    return Planned(task, ruleset, channel, account, number, last.rule, ruleset.version,
                   key_number=last.key_number or last.number)


def select(svc: Services, routed: list[Routed], labels: dict[str, str], now: float) -> list[Planned]:
    """Choose an account for every routed task in one round trip; no account available is a send failure, and
    each one counts as a try, so the failure rules' limits end it."""
    requests = [ChoiceRequest(r.decision.tiers, r.decision.rule, r.excluded, r.ruleset.providers) for r in routed]
    plans: list[Planned] = []
    for item, choice in zip(routed, svc.selector.choose_many(requests, now)):
        if choice.provider is None:
            labels[item.task.task_id] = on_failure(svc, item.task, "send_failure", now, provider="",
                                                   number=max(item.task.retry_count, item.attempts) + 1,
                                                   error_code="no_provider", error_class="account",
                                                   error_message=choice.reason, ruleset=item.ruleset)
            continue
        plans.append(Planned(item.task, item.ruleset, item.channel, item.ruleset.providers[choice.provider],
                             item.attempts + 1, item.decision.rule, item.decision.version))
    return plans


def _claim_many(claims: Sequence[repo.AttemptClaim]) -> list[bool]:
    return repo.claim_attempts(claims, OPEN_TASK_STATUSES)


def _record_many(items: Sequence[tuple[repo.AttemptEnd, repo.StatusChange]]) -> list[bool]:
    """Finish the attempts and apply the status changes of calls that ended together, in one transaction."""
    return repo.record_attempts([end for end, _ in items], [change for _, change in items])


_claims = GroupCommit(_claim_many)
_records = GroupCommit(_record_many)


def carry_out(svc: Services, plan: Planned, owner: str = "") -> str:
    """Claim, send, record and decide one planned attempt; "busy" when another worker claimed it first."""
    return carry_out_many(svc, [plan], owner)[0]


class ClaimsInDoubt(StoreUnavailable):
    """The store failed while claiming: the claims may have been committed before the reply was lost, and none
    of their calls was made. Whoever made them gives them back once the store answers (`repo.release_claims`)."""

    def __init__(self, cause: BaseException, claims: Sequence[repo.AttemptClaim]) -> None:
        super().__init__(cause)
        self.claims = list(claims)


def carry_out_many(svc: Services, plans: Sequence[Planned], owner: str = "") -> list[str]:
    """`carry_out` for attempts that go in one vendor call (a group from `batches`): claimed together, sent
    together, then recorded and decided each on its own; a label per plan."""
    lease_until = _dt(time.time() + svc.settings.attempt_lease)
    claims = [plan.claim(owner, lease_until) for plan in plans]
    try:
        claimed = _claims.submit_many(claims)
    except STORE_ERRORS as exc:
        raise ClaimsInDoubt(exc, claims) from exc
    mine = [plan for plan, ok in zip(plans, claimed) if ok]
    settled = iter(settle_many(svc, attempt_many(svc, mine, time.time()), time.time()) if mine else ())
    return [next(settled) if ok else "busy" for ok in claimed]


def batches(plans: Sequence[Planned]) -> list[list[Planned]]:
    """The plans in groups that one vendor call can carry: the same account, template, params and text, each
    receiver once (a resend goes alone, under its own key), at most as many as the account's vendor takes."""
    groups: list[list[Planned]] = []
    open_groups: dict[tuple[str, ...], tuple[list[Planned], set[str]]] = {}
    for plan in plans:
        size = registry.batch_size(plan.account.type, plan.account.config)
        if size <= 1 or plan.key_number is not None:
            groups.append([plan])
            continue
        task = plan.task
        key = (plan.account.name, plan.channel.name, task.template, str(task.template_params), task.content,
               task.title or "", task.signature or "")
        group, receivers = open_groups.setdefault(key, ([], set()))
        if task.receiver in receivers:
            groups.append(group)  # vendors answer per receiver: one receiver once a call
            group, receivers = open_groups[key] = ([], set())
        group.append(plan)
        receivers.add(task.receiver)
        if len(group) >= size:
            groups.append(open_groups.pop(key)[0])
    return groups + [group for group, _ in open_groups.values()]


def largest_batch(ruleset: RuleSet) -> int:
    """The most messages one call can carry for any account of the rule set (1 when none batches)."""
    return max((registry.batch_size(account.type, account.config) for account in ruleset.providers.values()),
               default=1)


def attempt_many(svc: Services, plans: Sequence[Planned], now: float) -> list[Sent]:
    """Render and send claimed attempts of one account in one call (one when its vendor takes one)."""
    messages = [build_message(plan) for plan in plans]
    if len(plans) == 1:
        result, latency_ms = send(svc, plans[0].account, messages[0], now)
        return [Sent(plans[0], result, latency_ms)]
    results, latency_ms = send_batch(svc, plans[0].account, messages, now)
    return [Sent(plan, result, latency_ms) for plan, result in zip(plans, results)]


def settle_many(svc: Services, sents: Sequence[Sent], now: float) -> list[str]:
    """Store the outcomes and the tasks' new statuses (in one group commit), count the calls for the circuit
    breakers (`Selector.count_many`), then per attempt announce a final status, wait for a delivery report, or
    decide the failure."""
    lease = svc.settings.attempt_lease
    changes = [_status_change(sent) if sent.result.ok else _deciding(sent, now + lease) for sent in sents]
    applied = _records.submit_many([(_attempt_end(sent), change) for sent, change in zip(sents, changes)])
    svc.selector.count_many([(sent.plan.account.name, call_health(sent.result.error_class), sent.plan.account.circuit)
                             for sent in sents], now)
    return [_decide(svc, sent, ok, now) for sent, ok in zip(sents, applied)]


def _decide(svc: Services, sent: Sent, applied: bool, now: float) -> str:
    plan, result = sent.plan, sent.result
    task = plan.task
    if result.ok and result.final:
        return announce_final(svc, task, "success") if applied else "done"
    if result.ok:
        svc.queue.defer(job("timeout", task.task_id), now + svc.settings.callback_timeout)
        return "sent"
    if result.error_class == "unknown":
        return on_unknown(svc, task, plan.number, plan.account.name, now, error_code=result.error_code,
                          error_message=result.error_message, ruleset=plan.ruleset)
    return on_failure(svc, task, "send_failure", now, provider=plan.account.name, number=plan.number,
                      error_code=result.error_code, error_class=result.error_class,
                      error_message=result.error_message, ruleset=plan.ruleset)


def _attempt_end(item: Sent) -> repo.AttemptEnd:
    result = item.result
    status = "unknown" if result.error_class == "unknown" else result.outcome.value
    return repo.AttemptEnd(item.plan.task.task_id, item.plan.number, status, result.final,
                           result.provider_message_id, result.error_code, result.error_message,
                           dict(result.request_summary), dict(result.response_summary), item.latency_ms)


def _status_change(item: Sent) -> repo.StatusChange:
    """A successful call: final means delivered; otherwise sent, and the delivery report will tell."""
    fields = {"provider": item.plan.account.name, "retry_count": item.plan.number,
              "provider_message_id": item.result.provider_message_id, "error_code": "", "error_message": ""}
    if item.result.final:
        return repo.StatusChange(item.plan.task.task_id, UNFINISHED_TASK_STATUSES, {"status": "success", **fields})
    return repo.StatusChange(item.plan.task.task_id, OPEN_TASK_STATUSES, {"status": "sent", **fields})


def _deciding(item: Sent, until: float) -> repo.StatusChange:
    """A failed call: until its decision is stored, another job for the task waits (as "early") rather than
    send the next attempt at once; should this worker die deciding, the task goes on after `until`."""
    return repo.StatusChange(item.plan.task.task_id, OPEN_TASK_STATUSES, {"not_before": _dt(until)})


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
        key_attempt=plan.key_number or plan.number,
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


def send_batch(svc: Services, account: ProviderAccount, messages: Sequence[Message], now: float
               ) -> tuple[list[SendResult], int]:
    """One vendor call for several messages: a result per message, and the call's latency in ms. A provider
    bug, or results that do not match the messages one to one, is an unknown outcome for each (the call may
    have reached the vendor), never a lost task."""
    send_many = registry.batch_sender(account.type)
    assert send_many is not None, f"{account.type} sends one message a call"
    ctx = SendContext(transport=svc.transport, now=_dt(now), tokens=svc.tokens)
    started = time.perf_counter()
    try:
        results = list(send_many(messages, provider_account(account), ctx))
        if len(results) != len(messages):
            raise ValueError(f"{len(results)} results for {len(messages)} messages")
    except Exception as exc:  # a provider bug must not strand the tasks
        log.exception("provider.crashed provider=%s tasks=%d", account.name, len(messages))
        unknown = SendResult(Outcome.RETRYABLE, error_code="provider_error", error_class="unknown",
                             error_message=type(exc).__name__)
        results = [unknown] * len(messages)
    elapsed = time.perf_counter() - started
    metrics.SEND_SECONDS.labels(account.name).observe(elapsed)
    for result in results:
        metrics.SENDS.labels(account.name, result.outcome.value).inc()
    return results, round(elapsed * 1000)


def provider_account(account: ProviderAccount) -> Account:
    """The account as its provider takes it: the rule file's settings with the provider's defaults filled in."""
    schema = registry.get(account.type).CONFIG
    return Account(account.name, account.type, with_defaults(schema, account.config), callback=account.callback)


def on_unknown(svc: Services, task: Task, number: int, provider: str, now: float, *, error_code: str,
               error_message: str, ruleset: RuleSet | None = None) -> str:
    """An attempt that may or may not have reached the vendor. Where the vendor sends delivery reports the task
    waits for one (or the report timeout); then, or at once elsewhere, the `unknown_outcome` rules decide."""
    metrics.UNKNOWN_OUTCOMES.labels(provider or "-", error_code or "-").inc()
    account = (ruleset or svc.rules.current).providers.get(provider)
    if account is not None and registry.sends_reports(account.type, account.config):
        if repo.mark_status_if(task.task_id, UNFINISHED_TASK_STATUSES, status="sent", provider=provider,
                               retry_count=number, error_code=error_code, error_message=error_message):
            svc.queue.defer(job("timeout", task.task_id), now + svc.settings.callback_timeout)
        return "unknown"
    return on_failure(svc, task, "unknown_outcome", now, provider=provider, number=number, error_code=error_code,
                      error_class="unknown", error_message=error_message, ruleset=ruleset)


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
    decided = repo.decision_counts(task.task_id)
    fact = ruleset.fact(now=_dt(now), app=task.app_id, channel=channel, receiver=task.receiver,
                        tags=json.loads(task.tags or "[]"), attempt=counted_attempts(number, decided.get("defer", 0)),
                        provider=provider, error_code=error_code, error_class=error_class, error_message=error_message)
    account = ruleset.providers.get(provider)
    decision = bound_failure(ruleset.on_failure(scene, fact), decided=sum(decided.values()),
                             limit=svc.settings.max_failure_decisions,
                             deduplicates=account is not None and registry.deduplicates(account.type))
    metrics.DECISIONS.labels(scene, decision.action, decision.rule).inc()
    if decision.overruled:
        error_message = f"{error_message}; {decision.overruled}"
    repo.record_decision(task.task_id, number, scene, decision.action, rule=decision.rule,
                         rule_version=decision.version, delay_seconds=decision.delay_seconds, provider=provider,
                         error_class=error_class, error_code=error_code, error_message=error_message)
    fields: dict[str, Any] = dict(extra or {}, rule=decision.rule, rule_version=decision.version,
                                  error_code=error_code, error_message=error_message, retry_count=number)
    log.info("failure.decided task=%s scene=%s action=%s rule=%s provider=%s class=%s code=%r", task.task_id,
             scene, decision.action, decision.rule, provider, error_class, error_code)
    if decision.alert is not None:
        webhooks.send_alert(svc, decision.alert.webhook or svc.settings.alert_webhook, decision.alert.level,
                            task, provider=provider, error_code=error_code, error_message=error_message)
    if decision.action in ("retry", "switch_provider", "defer") and scene == "unknown_outcome":
        return _retry(svc, task, decision, "", now, dict(fields, resend_of=number))
    if decision.action in ("retry", "switch_provider"):
        return _retry(svc, task, decision, provider, now, fields)
    if decision.action == "defer":
        return _defer_after_failure(svc, task, now + decision.delay_seconds, fields)
    if decision.action == "ignore":
        repo.update_task(task.task_id, **fields)
        return "ignored"
    return finish(svc, task, "failed", **fields)


def _retry(svc: Services, task: Task, decision: FailureDecision, provider: str, now: float,
           fields: dict[str, Any]) -> str:
    excluded = json.loads(task.exclude_providers or "[]")
    if decision.action == "switch_provider" and decision.exclude_current and provider and provider not in excluded:
        excluded.append(provider)
    due = now + decision.delay_seconds
    if not repo.mark_status_if(task.task_id, UNFINISHED_TASK_STATUSES, status="pending", not_before=_dt(due),
                               exclude_providers=json.dumps(excluded), **fields):
        return "done"
    svc.queue.defer(job("send", task.task_id), due)
    return "retried"


def _defer_after_failure(svc: Services, task: Task, due: float, fields: dict[str, Any]) -> str:
    """Send again at `due` (a send-time window opens), on any account the routing then allows."""
    if not repo.mark_status_if(task.task_id, UNFINISHED_TASK_STATUSES, status="scheduled", scheduled_at=_dt(due),
                               not_before=_dt(due), **fields):
        return "done"
    svc.queue.defer(job("send", task.task_id), due)
    return "deferred"


def defer(svc: Services, task: Task, due: float, **fields: Any) -> str:
    if repo.mark_status_if(task.task_id, OPEN_TASK_STATUSES, status="scheduled", scheduled_at=_dt(due), **fields):
        svc.queue.defer(job("send", task.task_id), due)
    return "deferred"


def finish(svc: Services, task: Task, status: str, **fields: Any) -> str:
    """Move a task to a final status once, and tell the app's webhook about it."""
    if not repo.mark_status_if(task.task_id, UNFINISHED_TASK_STATUSES, status=status, **fields):
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
    """A sent SMS whose delivery report never came: the `callback_timeout` rules decide, or the
    `unknown_outcome` ones when the call itself never answered."""
    task = repo.get_task(task_id)
    if task is None or task.status != "sent" or task.callback_status:
        return "done"
    last = repo.list_attempts(task_id)[-1:]
    if last and last[0].status == "unknown":
        return on_failure(svc, task, "unknown_outcome", now, provider=last[0].provider, number=last[0].number,
                          error_code=last[0].error_code or "unknown", error_class="unknown",
                          error_message=last[0].error_message or "outcome unknown and no delivery report came",
                          extra={"callback_status": "timeout", "callback_time": _dt(now)})
    return on_failure(svc, task, "callback_timeout", now, provider=task.provider or "", number=task.retry_count,
                      error_code="report_timeout", error_class="unknown",
                      error_message="no delivery report received in time",
                      extra={"callback_status": "timeout", "callback_time": _dt(now)})


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
