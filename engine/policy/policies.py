"""Build the policy sections (routing, quotas, failures) from parsed items."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import conditions
from .building import Context
from .conditions import Condition
from .decisions import ERROR_CLASSES, AlertSpec, Candidate
from .issues import suggest
from .model import CHANNEL_TYPES, Channel, ProviderAccount
from .rules import DeferPolicy, FailureRule, QuotaRule, RetryPolicy, RoutingRule, SwitchPolicy
from .schema import Located, as_bool, parse_duration

DEFAULT_RETRY = RetryPolicy()
DEFAULT_SWITCH = SwitchPolicy()


def known_names(ctx: Context, channels: Mapping[str, Channel]) -> dict[str, frozenset[str]]:
    """What `when` values may name: declared channels, templates, provider accounts and types."""
    return {
        "channel": frozenset(channels) | frozenset(ctx.declared.get("channels", ())),
        "template": frozenset(ctx.declared.get("templates", ())),
        "provider": frozenset(ctx.declared.get("providers", ())),
        "channel_type": frozenset(CHANNEL_TYPES),
        "error_class": frozenset(ERROR_CLASSES),
    }


def build_routing(
    ctx: Context, known: Mapping[str, frozenset[str]], accounts: Mapping[str, ProviderAccount], disabled: set[str]
) -> list[RoutingRule]:
    rules: list[RoutingRule] = []
    for item in ctx.unique("routing"):
        raw = item.value
        when = _when(ctx, item, known)
        outcomes = [key for key in ("providers", "defer_until", "reject") if key in raw]
        if len(outcomes) != 1:
            ctx.problem(item, (), f"give exactly one of providers, defer_until, reject (got {', '.join(outcomes) or 'none'})")
            continue
        base = RoutingRule(raw["name"], ctx.origin(item), raw.get("priority", 0), when, description=raw.get("description", ""))
        if "defer_until" in raw:
            hour, minute = map(int, raw["defer_until"].split(":"))
            rules.append(replace(base, defer_until=time(hour, minute)))
        elif "reject" in raw:
            rules.append(replace(base, reject=raw["reject"]))
        else:
            tiers = _tiers(ctx, item, accounts, disabled)
            if tiers:
                rules.append(replace(base, tiers=tiers))
    return rules


def _tiers(
    ctx: Context, item: Located, accounts: Mapping[str, ProviderAccount], disabled: set[str]
) -> tuple[tuple[Candidate, ...], ...]:
    by_tier: dict[int, list[Candidate]] = {}
    seen: set[str] = set()
    all_disabled = True
    for i, entry in enumerate(item.value["providers"]):
        name = entry["use"]
        if name in seen:
            ctx.problem(item, ("providers", i, "use"), f"provider {name!r} is listed twice")
        seen.add(name)
        all_disabled = all_disabled and name in disabled
        if name in accounts:
            by_tier.setdefault(entry.get("tier", 1), []).append(Candidate(name, entry.get("weight", 1)))
        elif name not in disabled and name not in ctx.declared.get("providers", ()):
            declared = ctx.declared.get("providers", ())
            ctx.problem(item, ("providers", i, "use"), f"unknown provider account {name!r}{suggest(name, declared)}")
    if not by_tier and all_disabled:
        ctx.note(item, "every provider of this route is disabled; the route is left out")
    return tuple(tuple(by_tier[tier]) for tier in sorted(by_tier))


def build_quotas(ctx: Context, known: Mapping[str, frozenset[str]]) -> list[QuotaRule]:
    rules: list[QuotaRule] = []
    for item in ctx.unique("quotas"):
        raw = item.value
        when = _when(ctx, item, known)
        seconds = parse_duration(raw["per"])
        if seconds < 1 or seconds != int(seconds):
            ctx.problem(item, ("per",), f"a quota window must be a whole number of seconds, got {raw['per']!r}")
            continue
        rules.append(
            QuotaRule(
                name=raw["name"],
                origin=ctx.origin(item),
                key=tuple(raw["key"]),
                limit=raw["limit"],
                window_seconds=int(seconds),
                priority=raw.get("priority", 0),
                when=when,
                on_exceed=raw.get("on_exceed", "reject"),
                description=raw.get("description", ""),
            )
        )
    return rules


def build_failures(ctx: Context, known: Mapping[str, frozenset[str]]) -> list[FailureRule]:
    rules: list[FailureRule] = []
    for item in ctx.unique("failures"):
        raw = item.value
        when = _when(ctx, item, known)
        action = raw["action"]
        for block in ("retry", "switch_provider", "defer"):  # an alert block may go with any action
            if block in raw and block != action:
                ctx.problem(item, (block,), f"a {block} block needs action: {block} (action is {action})")
        retry, switch = raw.get("retry", {}), raw.get("switch_provider", {})
        alert = raw.get("alert", {})
        rules.append(
            FailureRule(
                name=raw["name"],
                origin=ctx.origin(item),
                scene=raw["scene"],
                action=action,
                priority=raw.get("priority", 0),
                when=when,
                retry=RetryPolicy(
                    max=retry.get("max", DEFAULT_RETRY.max),
                    delay=parse_duration(retry.get("delay", DEFAULT_RETRY.delay)),
                    backoff=float(retry.get("backoff", DEFAULT_RETRY.backoff)),
                    max_delay=parse_duration(retry.get("max_delay", DEFAULT_RETRY.max_delay)),
                ),
                switch=SwitchPolicy(
                    max=switch.get("max", DEFAULT_SWITCH.max),
                    delay=parse_duration(switch.get("delay", DEFAULT_SWITCH.delay)),
                    exclude_current=as_bool(switch.get("exclude_current", True)) is not False,
                ),
                alert=AlertSpec(str(alert.get("webhook", "")), alert.get("level", "warning"))
                if action == "alert" or "alert" in raw else None,
                defer=_defer(ctx, item) if action == "defer" else DeferPolicy(),
                description=raw.get("description", ""),
            )
        )
    return rules


def _defer(ctx: Context, item: Located) -> DeferPolicy:
    """The `defer` block of a defer rule: exactly one of `until` (with an optional known `timezone`) or `delay`."""
    block = item.value.get("defer")
    if not isinstance(block, dict) or ("until" in block) == ("delay" in block):
        ctx.problem(item, ("defer",), "action defer needs a defer block with either until (HH:MM) or delay")
        return DeferPolicy()
    if "delay" in block:
        if "timezone" in block:
            ctx.problem(item, ("defer", "timezone"), "timezone goes with until, not with delay")
        return DeferPolicy(delay=parse_duration(block["delay"]))
    zone = str(block.get("timezone", ""))
    if zone:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            ctx.problem(item, ("defer", "timezone"), f"unknown time zone {zone!r}")
            zone = ""
    hour, minute = map(int, str(block["until"]).split(":"))
    return DeferPolicy(until=time(hour, minute), timezone=zone)


def _when(ctx: Context, item: Located, known: Mapping[str, frozenset[str]]) -> Condition:
    cond, problems = conditions.parse(item.value.get("when"), (*item.path, "when"), known)
    ctx.problems(item, problems)
    return cond


