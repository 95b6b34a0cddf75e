"""A task's history as one ordered timeline: accepted, routed, every attempt, every failure decision,
delivery reports and customer webhook tries. The console page, the admin API and `mpush tasks show` share it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.policy.ruleset import RuleSet
from engine.policy.rules import Origin, RoutingRule
from engine.store import repo
from engine.store.models import Attempt, Task

KIND_ORDER = {"accepted": 0, "routed": 1, "attempt": 2, "decision": 3, "report": 4, "webhook": 5}


@dataclass(frozen=True, slots=True)
class Event:
    """One step: when, what kind, a one-line title, how it went (ok / failed / pending / info), labelled
    facts, and longer blocks (vendor request and answer, raw report) shown preformatted."""

    at: datetime | None
    kind: str
    title: str
    outcome: str = "info"
    facts: list[tuple[str, str]] = field(default_factory=list)
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def to_public(self) -> dict[str, Any]:
        return {"at": repo.rfc3339(self.at), "kind": self.kind, "title": self.title, "outcome": self.outcome,
                "facts": dict(self.facts), "blocks": dict(self.blocks)}


def build(task: Task, ruleset: RuleSet, rules_dir: Path) -> list[Event]:
    """Every event of the task, oldest first. Routing candidates come from `ruleset` (loaded from `rules_dir`)
    when it is the version that routed; otherwise the event says which version it was."""
    attempts = repo.list_attempts(task.task_id)
    events = [_accepted(task)]
    routed_by: tuple[str, str] | None = None
    tiers: dict[str, int] = {}
    for attempt in attempts:
        if (attempt.rule, attempt.rule_version) != routed_by:
            routed_by = (attempt.rule, attempt.rule_version)
            rule = _routing_rule(ruleset, attempt.rule) if str(ruleset.version) == attempt.rule_version else None
            events.append(_routed(attempt, rule, ruleset, rules_dir))
            tiers = {c.provider: number for number, tier in enumerate(rule.tiers, 1) for c in tier} if rule else {}
        events.append(_attempt(attempt, tiers.get(attempt.provider)))
    if not attempts and task.rule and task.error_code == "rejected_by_rule":
        events.append(Event(task.updated_at, "routed", f"rejected by routing rule {task.rule}", "failed",
                            [("rule", task.rule), ("version", task.rule_version), ("reason", task.error_message)]))
    events += [_decision(d) for d in repo.list_decisions(task.task_id)]
    events += [_report(c) for c in repo.list_callbacks(task.task_id)]
    for delivery in repo.list_webhook_deliveries(task.task_id):
        events += _webhook(delivery)
    return sorted(events, key=lambda e: (e.at is None, e.at or task.created_at, KIND_ORDER[e.kind]))


def _accepted(task: Task) -> Event:
    facts = [("task", task.task_id), ("app", task.app_id), ("channel", task.channel), ("receiver", task.receiver),
             ("template", task.template), ("status now", task.status)]
    if task.receiver_as_sent:
        facts.insert(4, ("receiver as sent", task.receiver_as_sent))
    if task.trace_id:
        facts.append(("trace id", task.trace_id))
    if task.batch_id:
        facts.append(("batch", task.batch_id))
    if task.scheduled_at:
        facts.append(("scheduled at", repo.rfc3339(task.scheduled_at) or ""))
    if task.idempotency_key:
        facts.append(("idempotency key", task.idempotency_key))
    tags = json.loads(task.tags or "[]")
    if tags:
        facts.append(("tags", ", ".join(tags)))
    blocks: list[tuple[str, Any]] = [("template params", json.loads(task.template_params or "{}"))]
    if task.title or task.content:
        blocks.append(("rendered", f"{task.title}\n{task.content}".strip()))
    return Event(task.created_at, "accepted", "accepted by the API", "ok", facts, blocks)


def _routing_rule(ruleset: RuleSet, name: str) -> RoutingRule | None:
    return next((rule for rule in ruleset.rules("routing") if rule.name == name and isinstance(rule, RoutingRule)),
                None)


def where(origin: Origin, rules_dir: Path) -> str:
    """file:line of a rule, the file named by its path under the rules directory when it is there."""
    path = Path(origin.file)
    try:
        path = path.resolve().relative_to(rules_dir.resolve())
    except (ValueError, OSError):
        pass
    return f"{path}:{origin.line}"


def _routed(attempt: Attempt, rule: RoutingRule | None, ruleset: RuleSet, rules_dir: Path) -> Event:
    """The routing rule that chose the attempt's account; its tiers of candidates when `rule` is known."""
    facts = [("rule", attempt.rule), ("version", attempt.rule_version)]
    if rule is not None:
        facts.append(("defined at", where(rule.origin, rules_dir)))
        for number, tier in enumerate(rule.tiers, 1):
            facts.append((f"tier {number}", ", ".join(f"{c.provider} (weight {c.weight})" for c in tier)))
    else:
        facts.append(("candidates", f"not shown: the live rule set is {ruleset.version}, not {attempt.rule_version}"))
    return Event(attempt.created_at, "routed", f"routed by rule {attempt.rule}", "info", facts)


def _attempt(attempt: Attempt, tier: int | None) -> Event:
    outcome = {"ok": "ok", "sending": "pending"}.get(attempt.status, "failed")
    account = attempt.provider if tier is None else f"{attempt.provider} (tier {tier})"
    facts = [("account", account), ("outcome", attempt.status),
             ("latency", "" if attempt.latency_ms is None else f"{attempt.latency_ms} ms")]
    if attempt.provider_message_id:
        facts.append(("vendor message id", attempt.provider_message_id))
    if attempt.error_code or attempt.error_message:
        facts.append(("error", f"{attempt.error_code} {attempt.error_message}".strip()))
    exchanged = (("vendor request", attempt.request), ("vendor answer", attempt.response))
    blocks = [(name, value) for name, value in exchanged if value not in (None, "", "{}", "null")]
    return Event(attempt.created_at, "attempt", f"attempt {attempt.number} via {attempt.provider}: {attempt.status}",
                 outcome, facts, blocks)


def _decision(decision: Any) -> Event:
    facts = [("scene", decision.scene), ("action", decision.action), ("rule", decision.rule),
             ("version", decision.rule_version), ("after attempt", str(decision.number))]
    if decision.action in ("retry", "switch_provider", "defer"):
        facts.append(("delay", f"{decision.delay_seconds:g} s"))
    if decision.provider:
        facts.append(("account", decision.provider))
    error = " ".join(part for part in (decision.error_class, decision.error_code, decision.error_message) if part)
    if error:
        facts.append(("error", error))
    outcome = "pending" if decision.action in ("retry", "switch_provider", "ignore", "defer") else "failed"
    return Event(decision.created_at, "decision", f"{decision.scene}: {decision.action} by rule {decision.rule}",
                 outcome, facts)


def _report(callback: Any) -> Event:
    verified = "signature verified" if callback.verified else "not verified"
    facts = [("account", callback.provider), ("status", callback.status or "(none)"), ("verified", verified),
             ("applied", "yes" if callback.applied else "no")]
    if callback.note:
        facts.append(("note", callback.note))
    if callback.error_code or callback.error_message:
        facts.append(("error", f"{callback.error_code} {callback.error_message}".strip()))
    outcome = "ok" if callback.status == "delivered" else "failed" if callback.status else "info"
    return Event(callback.created_at, "report", f"delivery report: {callback.status or 'unreadable'}", outcome,
                 facts, [("raw", callback.raw)] if callback.raw else [])


def _webhook(delivery: Any) -> list[Event]:
    tries = repo.list_webhook_tries(delivery.id)
    head = [("url", delivery.url), ("event", delivery.event), ("status", delivery.status)]
    if not tries:
        return [Event(delivery.created_at, "webhook", f"webhook {delivery.event}: queued", "pending", head,
                      [("body", delivery.body)])]
    events = []
    for attempt in tries:
        answer = f"HTTP {attempt.status_code}" if attempt.status_code is not None else attempt.error or "no answer"
        ok = attempt.status_code is not None and 200 <= attempt.status_code < 300
        latency = "" if attempt.latency_ms is None else f"{attempt.latency_ms} ms"
        facts = [*head, ("answer", answer), ("latency", latency)]
        events.append(Event(attempt.created_at, "webhook", f"webhook {delivery.event} try {attempt.number}: {answer}",
                            "ok" if ok else "failed", facts, [("body", delivery.body)] if attempt.number == 1 else []))
    return events
