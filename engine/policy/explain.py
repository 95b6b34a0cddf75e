"""The human trace of a decision: every rule, whether it matched, why it lost or failed, the winner."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .conditions import why_not
from .decisions import FailureDecision, QuotaDecision, RoutingDecision, Scene
from .facts import Fact

if TYPE_CHECKING:
    from .ruleset import RuleSet


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule's fate: matched and won, matched and lost, or did not match (with the reason)."""

    name: str
    origin: str
    priority: int
    matched: bool
    won: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    version: str
    backend: str
    fact: Fact
    routing: RoutingDecision
    quotas: QuotaDecision
    failure: FailureDecision | None
    traces: dict[str, tuple[RuleTrace, ...]]

    def __str__(self) -> str:
        lines = [f"rule set {self.version} ({self.backend} backend)", "fact:"]
        lines += [f"  {name} = {_show(value)}" for name, value in self.fact.fields.items()]
        lines += [f"  now = {self.fact.now.isoformat()}", "", "routing (first match by priority):"]
        lines += _trace_lines(self.traces["routing"]) + [f"  => {_routing(self.routing)}", "", "quotas (every match applies):"]
        lines += _trace_lines(self.traces["quotas"], winner="USE ")
        lines += [f"  => {check.key} limit {check.limit} per {check.window_seconds}s, on exceed {check.on_exceed}" for check in self.quotas.checks]
        lines += [] if self.quotas.checks else ["  => no quota applies"]
        if self.failure is not None:
            lines += ["", f"{self.failure.scene} (first match by priority):"] + _trace_lines(self.traces[self.failure.scene])
            lines.append(f"  => {_failure(self.failure)}")
        return "\n".join(lines)


def explain(ruleset: RuleSet, fact: Fact, scene: Scene | None) -> Explanation:
    kinds = ["routing", "quotas"] + ([scene] if scene else [])
    traces = {kind: _traces(ruleset, kind, fact, first_only=kind != "quotas") for kind in kinds}
    return Explanation(
        version=str(ruleset.version),
        backend=ruleset.backend,
        fact=fact,
        routing=ruleset.route(fact),
        quotas=ruleset.quotas(fact),
        failure=ruleset.on_failure(scene, fact) if scene else None,
        traces=traces,
    )


def _traces(ruleset: RuleSet, kind: str, fact: Fact, first_only: bool) -> tuple[RuleTrace, ...]:
    matched = set(ruleset.matching(kind, fact))
    winner = min(matched) if matched and first_only else None
    out = []
    for i, rule in enumerate(ruleset.rules(kind)):
        if i in matched:
            won = winner is None or i == winner
            reason = "" if won else f"lost to {ruleset.rules(kind)[winner].name} (higher priority or defined earlier)"
        else:
            won, reason = False, why_not(rule.when, fact.fields) or ""
        out.append(RuleTrace(rule.name, str(rule.origin), rule.priority, i in matched, won, reason))
    return tuple(out)


def _trace_lines(traces: Sequence[RuleTrace], winner: str = "WIN ") -> list[str]:
    if not traces:
        return ["  (no rules; the built-in default applies)"]
    lines = []
    for t in traces:
        mark = winner if t.won else ("lost" if t.matched else " -- ")
        lines.append(f"  {mark} {t.name} (priority {t.priority}, {t.origin})" + (f": {t.reason}" if t.reason else ""))
    return lines


def _routing(decision: RoutingDecision) -> str:
    if decision.action == "route":
        tiers = " | ".join(", ".join(f"{c.provider}*{c.weight}" for c in tier) for tier in decision.tiers)
        return f"route by {decision.rule}: tiers {tiers}"
    if decision.action == "defer":
        until = decision.defer_until.isoformat() if decision.defer_until else "?"
        return f"defer by {decision.rule} until {until}"
    return f"reject by {decision.rule}: {decision.reason}"


def _failure(decision: FailureDecision) -> str:
    text = f"{decision.action} by {decision.rule}"
    if decision.action in ("retry", "switch_provider"):
        text += f" after {decision.delay_seconds:g}s"
    if decision.action == "defer" and decision.defer_until is not None:
        text += f" until {decision.defer_until.isoformat()}"
    if decision.alert is not None:
        text += f" to {decision.alert.webhook or '(default alert webhook)'} level {decision.alert.level}"
    return text + "".join(f" ({reason})" for reason in decision.reasons)


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)
