"""A loaded rule set: catalogue, ordered rules, the compiled network, and the decisions it makes."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from . import reference
from .compiler import KINDS, CompiledRule, Program, compile_rules
from .decisions import (
    DEFAULT_RULE,
    FailureDecision,
    QuotaCheck,
    QuotaDecision,
    RoutingDecision,
    Scene,
)
from .explain import Explanation, explain
from .facts import Fact, make_fact
from .issues import RuleIssue
from .model import Channel, ProviderAccount, RuleSetVersion, Template
from .rules import DeferPolicy, FailureRule, Origin, QuotaRule, RetryPolicy, Rule, RoutingRule, Settings

_BUILT_IN = Origin("(built in)", 0, "")
DEFAULT_FAILURES: dict[str, FailureRule] = {
    "send_failure": FailureRule(DEFAULT_RULE, _BUILT_IN, "send_failure", "retry", retry=RetryPolicy()),
    "callback_failure": FailureRule(DEFAULT_RULE, _BUILT_IN, "callback_failure", "fail"),
    "callback_timeout": FailureRule(DEFAULT_RULE, _BUILT_IN, "callback_timeout", "ignore"),
    # an attempt whose outcome is unknown is resent only under its own idempotency key, to a vendor that drops
    # repeated keys (`bound_failure` turns this retry into fail anywhere else)
    "unknown_outcome": FailureRule(DEFAULT_RULE, _BUILT_IN, "unknown_outcome", "retry", retry=RetryPolicy()),
}


class RuleSet:
    """Immutable once built; safe to share between threads. Decisions name their rule and version."""

    def __init__(
        self,
        *,
        version: RuleSetVersion,
        settings: Settings,
        channels: Mapping[str, Channel],
        templates: Mapping[str, Template],
        providers: Mapping[str, ProviderAccount],
        routing: Sequence[RoutingRule],
        quotas: Sequence[QuotaRule],
        failures: Sequence[FailureRule],
        notes: Sequence[RuleIssue] = (),
        backend: str = "network",
        disabled: Collection[str] = (),
    ) -> None:
        self.version = version
        self.settings = settings
        self.timezone = ZoneInfo(settings.timezone)
        self.channels = dict(channels)
        self.templates = dict(templates)
        self.providers = dict(providers)
        self.disabled_providers = frozenset(disabled)  # declared in the files, switched off (not in `providers`)
        self.notes = tuple(notes)
        self._by_id = {channel.id: channel for channel in self.channels.values()}
        self._rules: dict[str, tuple[Rule, ...]] = {
            "routing": _by_priority(routing),
            "quotas": _by_priority(quotas),
            **{scene: _by_priority([r for r in failures if r.scene == scene]) for scene in KINDS[2:]},
        }
        self.program: Program = compile_rules(
            [CompiledRule(kind, i, rule.when, rule.origin) for kind, rules in self._rules.items() for i, rule in enumerate(rules)]
        )
        self._network = _start_network(self.program) if backend == "network" else None
        self.backend = "network" if self._network is not None else "reference"
        if self._network is not None:
            self._network_matching = _memoized_matching(self._network, self.program.names)
            weakref.finalize(self, self._network.close)

    def __repr__(self) -> str:
        counts = ", ".join(f"{kind}={len(rules)}" for kind, rules in self._rules.items())
        return f"<RuleSet {self.version} backend={self.backend} {counts}>"

    def channel(self, ref: int | str) -> Channel | None:
        """A channel by numeric id (or its decimal text) or by name."""
        if isinstance(ref, int) and not isinstance(ref, bool):
            return self._by_id.get(ref)
        found = self.channels.get(ref)
        if found is None and ref.isascii() and ref.isdigit() and len(ref) <= 10:
            return self._by_id.get(int(ref))
        return found

    def rules(self, kind: str) -> tuple[Rule, ...]:
        """Rules of one kind (routing, quotas, or a failure scene) in priority order."""
        return self._rules[kind]

    def fact(
        self,
        *,
        now: datetime,
        app: str,
        channel: Channel,
        receiver: str,
        tags: Sequence[str] = (),
        priority: int = 0,
        attempt: int = 0,
        provider: str = "",
        error_code: str = "",
        error_class: str = "",
        error_message: str = "",
    ) -> Fact:
        return make_fact(
            now=now,
            timezone=self.timezone,
            default_region=self.settings.default_region,
            app=app,
            channel=channel,
            receiver=receiver,
            tags=tags,
            priority=priority,
            attempt=attempt,
            provider=provider,
            error_code=error_code,
            error_class=error_class,
            error_message=error_message,
        )

    def matching(self, kind: str, fact: Fact) -> list[int]:
        """Positions of the rules of `kind` that match, in priority order."""
        if self._network is not None:
            positions = self._network_matching(tuple(self.program.message(kind, fact.fields).items()))
            if positions is not None:
                return list(positions)
        return reference.matching(self._rules[kind], fact.fields)

    def route(self, fact: Fact) -> RoutingDecision:
        matched = self.matching("routing", fact)
        if not matched:
            reason = f"no routing rule matches channel {fact.fields['channel']!r}"
            return RoutingDecision("reject", DEFAULT_RULE, str(self.version), reason=reason)
        return self.routing_decision(self._rules["routing"][matched[0]], fact)

    def routing_decision(self, rule: RoutingRule, fact: Fact) -> RoutingDecision:
        version = str(self.version)
        if rule.defer_until is not None:
            until = next_local(fact.now, rule.defer_until, self.timezone)
            return RoutingDecision("defer", rule.name, version, defer_until=until)
        if rule.reject:
            return RoutingDecision("reject", rule.name, version, reason=rule.reject)
        return RoutingDecision("route", rule.name, version, tiers=rule.tiers)

    def quotas(self, fact: Fact) -> QuotaDecision:
        rules = self._rules["quotas"]
        offset = local_offset(fact.now, self.timezone)
        checks = tuple(quota_check(rules[i], fact.fields, offset) for i in self.matching("quotas", fact))
        return QuotaDecision(checks, str(self.version))

    def on_failure(self, scene: Scene, fact: Fact) -> FailureDecision:
        if scene not in DEFAULT_FAILURES:
            raise ValueError(f"unknown scene {scene!r}")
        matched = self.matching(scene, fact)
        rule = self._rules[scene][matched[0]] if matched else DEFAULT_FAILURES[scene]
        return failure_decision(rule, fact.fields["attempt"], str(self.version), fact.now, self.timezone)

    def explain(self, fact: Fact, scene: Scene | None = None) -> Explanation:
        """The decisions for a fact and, for every rule, whether it matched and why not."""
        return explain(self, fact, scene)

    def close(self) -> None:
        """Free the engine state (evaluations afterwards use the reference evaluator)."""
        if self._network is not None:
            self._network.close()


MATCH_MEMO = 4096


def _memoized_matching(network: Any, names: Mapping[str, tuple[str, int]]
                       ) -> Callable[[tuple[tuple[str, Any], ...]], tuple[int, ...] | None]:
    """The network's matches per engine message, remembered: the message holds only what rules test (the
    integer fields and one flag per text test), so the messages of a day's traffic repeat, while each
    fact differs. Holds no reference to the rule set, so dropping the rule set still closes the network."""

    @functools.lru_cache(maxsize=MATCH_MEMO)
    def positions(message: tuple[tuple[str, Any], ...]) -> tuple[int, ...] | None:
        found = network.matches(dict(message))
        return None if found is None else tuple(sorted({names[name][1] for name in found}))

    return positions


def quota_check(rule: QuotaRule, fields: Mapping[str, Any], utc_offset: int = 0) -> QuotaCheck:
    key = rule.name + "".join(f"|{name}={fields[name]}" for name in rule.key)
    return QuotaCheck(rule.name, key, rule.limit, rule.window_seconds, rule.on_exceed, utc_offset)


def local_offset(now: datetime, zone: ZoneInfo) -> int:
    """Seconds east of UTC that `zone` is at `now`."""
    offset = now.astimezone(zone).utcoffset()
    return int(offset.total_seconds()) if offset else 0


def failure_decision(rule: FailureRule, attempt: int, version: str, now: datetime | None = None,
                     zone: ZoneInfo | None = None) -> FailureDecision:
    """Apply a failure rule to the number of attempts already made; a deferral waits from `now` (aware), its
    `until` read in the rule's time zone, else in `zone` (the rule set's)."""
    base = {"rule": rule.name, "version": version, "scene": rule.scene, "alert": rule.alert}
    if rule.action == "defer" and now is not None:
        until = defer_until(rule.defer, now, zone or ZoneInfo("UTC"))
        return FailureDecision("defer", delay_seconds=(until - now).total_seconds(), defer_until=until, **base)
    if rule.action == "retry":
        policy = rule.retry
        if attempt > policy.max:
            return FailureDecision("fail", exhausted=True, reasons=(f"attempt {attempt} > retry max {policy.max}",), **base)
        return FailureDecision("retry", delay_seconds=policy.delay_for(attempt), **base)
    if rule.action == "switch_provider":
        switch = rule.switch
        if attempt > switch.max:
            return FailureDecision("fail", exhausted=True, reasons=(f"attempt {attempt} > switch max {switch.max}",), **base)
        return FailureDecision("switch_provider", delay_seconds=switch.delay, exclude_current=switch.exclude_current, **base)
    return FailureDecision(rule.action, **base)


def defer_until(policy: DeferPolicy, now: datetime, zone: ZoneInfo) -> datetime:
    """When a deferral ends: the next local `until` (in the policy's zone, else `zone`), or `now` plus `delay`."""
    if policy.until is None:
        return now + timedelta(seconds=policy.delay)
    return next_local(now, policy.until, ZoneInfo(policy.timezone) if policy.timezone else zone)


def next_local(now: datetime, at: time, zone: ZoneInfo) -> datetime:
    """The first moment after `now` whose local wall-clock time in `zone` is `at`."""
    local = now.astimezone(zone)
    candidate = datetime.combine(local.date(), at, tzinfo=zone)
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=zone)
    return candidate


def _by_priority(rules: Sequence[Rule]) -> tuple[Rule, ...]:
    return tuple(sorted(rules, key=lambda rule: -rule.priority))


def _start_network(program: Program) -> Any:
    try:
        from .network import Network
    except ImportError:  # durable-rules not installed: the reference evaluator decides alone
        return None
    return Network(program)
