"""Decisions: routing by priority, defer and reject, quota keys, failure actions and defaults, fact fields."""

from __future__ import annotations

import gc
from datetime import datetime, timezone
from typing import Any

import pytest
from tests.engine.policy.rulekit import NOON, SHANGHAI, load

from engine.policy import DEFAULT_RULE, AlertSpec, Candidate, Fact, RuleSet

RULES = """
routing:
  - name: low
    priority: 1
    when: {channel: sms}
    providers: [{use: a}]
  - name: high
    priority: 5
    when: {channel: sms, receiver.country: CN}
    providers: [{use: a, weight: 3}, {use: b, weight: 1}, {use: console, tier: 2}]
  - name: quiet
    priority: 9
    when: {channel: promo, any: [{local_hour: {gte: 21}}, {local_hour: {lt: 9}}]}
    defer_until: "09:00"
  - name: no-foreign-promo
    priority: 8
    when: {channel: promo, receiver.country: {not_in: [CN]}}
    reject: not abroad
quotas:
  - {name: daily, key: [app], limit: 100, per: 1d}
  - {name: per-receiver, when: {template: code}, key: [app, receiver], limit: 5, per: 1h, on_exceed: defer}
failures:
  - name: backoff
    scene: send_failure
    when: {error_code: E1}
    action: retry
    retry: {max: 3, delay: 5s, backoff: 3, max_delay: 30s}
  - name: switch
    scene: send_failure
    priority: 10
    when: {error_message: {contains_any: [TIMEOUT]}}
    action: switch_provider
    switch_provider: {max: 2, delay: 500ms, exclude_current: false}
  - name: page
    scene: callback_failure
    when: {provider: a}
    action: alert
    alert: {webhook: "https://alert.test", level: critical}
"""


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    return load(RULES)


def fact(ruleset: RuleSet, channel: str = "sms", receiver: str = "13800138000", now: datetime = NOON, **kw: Any) -> Fact:
    return ruleset.fact(now=now, app="app1", channel=ruleset.channels[channel], receiver=receiver, **kw)


def test_highest_priority_match_routes(ruleset: RuleSet) -> None:
    """The matching rule with the highest priority decides; its tiers keep order and weights."""
    decision = ruleset.route(fact(ruleset))
    assert (decision.action, decision.rule) == ("route", "high")
    assert decision.tiers == ((Candidate("a", 3), Candidate("b", 1)), (Candidate("console", 1),))
    assert decision.version == str(ruleset.version)


def test_lower_priority_rule_routes_when_the_higher_does_not_match(ruleset: RuleSet) -> None:
    """A US number skips the CN rule and takes the next one."""
    assert ruleset.route(fact(ruleset, receiver="+14155552671")).rule == "low"


def test_quiet_hours_defer_to_the_next_local_morning(ruleset: RuleSet) -> None:
    """At 22:30 local, defer_until is 09:00 the next day in the rule set's zone, as an aware datetime."""
    late = datetime(2024, 5, 6, 22, 30, tzinfo=SHANGHAI)
    decision = ruleset.route(fact(ruleset, channel="promo", now=late))
    assert decision.action == "defer"
    assert decision.defer_until == datetime(2024, 5, 7, 9, 0, tzinfo=SHANGHAI)


def test_quiet_hours_use_local_time_of_a_utc_now(ruleset: RuleSet) -> None:
    """now in UTC is read in the rule set's zone: 00:30 UTC is 08:30 in Shanghai, deferred to 09:00."""
    early = datetime(2024, 5, 6, 0, 30, tzinfo=timezone.utc)
    decision = ruleset.route(fact(ruleset, channel="promo", now=early))
    assert decision.defer_until == datetime(2024, 5, 6, 9, 0, tzinfo=SHANGHAI)


def test_reject_carries_its_reason(ruleset: RuleSet) -> None:
    """A reject rule returns its reason."""
    decision = ruleset.route(fact(ruleset, channel="promo", receiver="+447911123456"))
    assert (decision.action, decision.rule, decision.reason) == ("reject", "no-foreign-promo", "not abroad")


def test_no_matching_route_rejects_with_the_default_rule(ruleset: RuleSet) -> None:
    """Without a matching routing rule the decision is a reject naming the default rule."""
    decision = ruleset.route(fact(ruleset, channel="mail", receiver="x@example.com"))
    assert (decision.action, decision.rule) == ("reject", DEFAULT_RULE)
    assert "no routing rule matches channel 'mail'" in decision.reason


def test_all_matching_quotas_apply_with_their_keys(ruleset: RuleSet) -> None:
    """Every matching quota rule is returned with a counter key built from its key fields."""
    checks = ruleset.quotas(fact(ruleset)).checks
    assert [(c.rule, c.key, c.limit, c.window_seconds, c.on_exceed) for c in checks] == [
        ("daily", "daily|app=app1", 100, 86400, "reject"),
        ("per-receiver", "per-receiver|app=app1|receiver=13800138000", 5, 3600, "defer"),
    ]


@pytest.mark.parametrize(("attempt", "delay"), [(1, 5.0), (2, 15.0), (3, 30.0)])
def test_retry_delay_grows_by_backoff_up_to_max_delay(ruleset: RuleSet, attempt: int, delay: float) -> None:
    """delay * backoff**(attempt-1), capped at max_delay."""
    decision = ruleset.on_failure("send_failure", fact(ruleset, attempt=attempt, error_code="E1"))
    assert (decision.action, decision.rule, decision.delay_seconds) == ("retry", "backoff", delay)


def test_retry_past_max_fails_exhausted(ruleset: RuleSet) -> None:
    """attempt > max turns the retry into fail with exhausted set."""
    decision = ruleset.on_failure("send_failure", fact(ruleset, attempt=4, error_code="E1"))
    assert (decision.action, decision.exhausted, decision.rule) == ("fail", True, "backoff")


def test_switch_provider_within_budget_then_fail(ruleset: RuleSet) -> None:
    """switch_provider keeps its delay and exclude_current while attempt <= max, then fails exhausted."""
    ok = ruleset.on_failure("send_failure", fact(ruleset, attempt=2, error_message="read timeout"))
    assert (ok.action, ok.delay_seconds, ok.exclude_current) == ("switch_provider", 0.5, False)
    spent = ruleset.on_failure("send_failure", fact(ruleset, attempt=3, error_message="read timeout"))
    assert (spent.action, spent.exhausted) == ("fail", True)


def test_alert_carries_the_alert_spec(ruleset: RuleSet) -> None:
    """An alert rule returns its webhook and level."""
    decision = ruleset.on_failure("callback_failure", fact(ruleset, attempt=1, provider="a"))
    assert decision.action == "alert" and decision.alert == AlertSpec("https://alert.test", "critical")


@pytest.mark.parametrize(
    ("scene", "attempt", "action", "delay"),
    [("send_failure", 1, "retry", 2.0), ("send_failure", 3, "retry", 8.0), ("send_failure", 4, "fail", 0.0),
     ("callback_failure", 1, "fail", 0.0), ("callback_timeout", 1, "ignore", 0.0), ("unknown_outcome", 1, "retry", 2.0),
     ("unknown_outcome", 4, "fail", 0.0)],
)
def test_defaults_when_nothing_matches(ruleset: RuleSet, scene: str, attempt: int, action: str, delay: float) -> None:
    """Reference defaults: retry 3x from 2s doubling (cap 60s); callback failure fails; timeout is ignored; an
    unknown outcome is retried as a send failure is (the runtime resends it only under its own key)."""
    decision = ruleset.on_failure(scene, fact(ruleset, attempt=attempt, provider="b"))
    assert (decision.rule, decision.action, decision.delay_seconds) == (DEFAULT_RULE, action, delay)


def test_fact_derives_fields(ruleset: RuleSet) -> None:
    """Channel type, template, country, email domain, local hour and ISO weekday are derived."""
    sms = fact(ruleset, tags=["vip"])
    assert sms.fields["receiver.country"] == "CN" and sms.fields["channel_type"] == "sms"
    assert (sms.fields["local_hour"], sms.fields["weekday"], sms.fields["template"]) == (12, 1, "code")
    assert sms.fields["tags"] == ("vip",)
    mail = fact(ruleset, channel="mail", receiver="Ops@Example.COM")
    assert (mail.fields["receiver.domain"], mail.fields["receiver.country"]) == ("example.com", "")
    promo = fact(ruleset, channel="promo", tags=["marketing", "x"])
    assert promo.fields["tags"] == ("marketing", "x")


def test_fact_refuses_naive_time_and_huge_integers(ruleset: RuleSet) -> None:
    """A naive now or a priority outside int64 is a ValueError, never handed to the engine."""
    with pytest.raises(ValueError, match="timezone-aware"):
        fact(ruleset, now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="64-bit"):
        fact(ruleset, priority=2**63)


def test_channel_lookup_by_id_name_or_digits(ruleset: RuleSet) -> None:
    """channel() finds by numeric id, by name, and by decimal text of the id."""
    assert ruleset.channel(2) is ruleset.channel("promo") is ruleset.channel("2")
    assert ruleset.channel(99) is None and ruleset.channel("nope") is None


def test_closed_network_falls_back_to_the_reference_evaluator() -> None:
    """After close(), decisions still come (from the reference evaluator) and stay the same."""
    ruleset = load(RULES)
    before = ruleset.route(fact(ruleset))
    ruleset.close()
    assert ruleset.route(fact(ruleset)) == before


def test_a_dropped_rule_set_closes_its_network_without_waiting_for_the_collector() -> None:
    """The remembered matches keep no cycle through the rule set: the last reference gone, its engine is freed."""
    ruleset = load(RULES)
    ruleset.route(fact(ruleset))
    network = ruleset._network
    assert network is not None and not network.closed
    gc.disable()
    try:
        del ruleset
        assert network.closed
    finally:
        gc.enable()


def test_repeated_evaluations_answer_as_the_reference_does() -> None:
    """Facts that share everything rules test are decided from memory after the first, and every decision,
    receiver-keyed quotas included, still equals the reference evaluator's."""
    network, reference = load(RULES), load(RULES, backend="reference")
    for n in range(40):
        for channel in ("sms", "promo"):
            receiver = f"+86138001{n:05d}" if n % 2 else f"+1415555{n:04d}"
            facts = [fact(ruleset, channel=channel, receiver=receiver) for ruleset in (network, reference)]
            assert network.route(facts[0]) == reference.route(facts[1])
            assert network.quotas(facts[0]) == reference.quotas(facts[1])
    assert network._network_matching.cache_info().hits > 100


def test_explain_names_winner_losers_and_reasons(ruleset: RuleSet) -> None:
    """The trace shows the winner, a matched loser, a failed condition and the version."""
    text = str(ruleset.explain(fact(ruleset, attempt=1, error_code="E1"), "send_failure"))
    assert f"rule set {ruleset.version}" in text
    assert "WIN  high (priority 5, rules.yaml:" in text
    assert "lost low (priority 1, rules.yaml:" in text and "lost to high" in text
    assert "--  quiet (priority 9, rules.yaml:" in text and "channel is 'promo', got 'sms'" in text
    assert "=> retry by backoff after 5s" in text


def test_quota_checks_carry_the_rule_sets_utc_offset() -> None:
    """Quota checks are aligned to the rule set's time zone: Asia/Shanghai is 8 hours east of UTC."""
    from datetime import UTC, datetime

    from engine.policy.ruleset import local_offset
    from zoneinfo import ZoneInfo

    assert local_offset(datetime(2026, 11, 27, tzinfo=UTC), ZoneInfo("Asia/Shanghai")) == 8 * 3600
    assert local_offset(datetime(2026, 7, 1, tzinfo=UTC), ZoneInfo("Europe/Berlin")) == 2 * 3600


def test_failure_rules_match_on_the_error_class() -> None:
    """`error_class` is a fact field: a rule on it matches that class only, on both evaluators."""
    rules = """
failures:
  - {name: no-money, scene: send_failure, when: {error_class: account}, action: switch_provider}
  - {name: bad-number, scene: send_failure, when: {error_class: {in: [receiver, content]}}, action: fail}
  - {name: wait-report, scene: unknown_outcome, when: {error_class: unknown}, action: ignore}
"""
    for backend in ("network", "reference"):
        ruleset = load(rules, backend=backend)
        decide = lambda scene, cls: ruleset.on_failure(scene, fact(ruleset, attempt=1, error_class=cls)).rule  # noqa: E731
        assert [decide("send_failure", cls) for cls in ("account", "receiver", "content", "transient")] == [
            "no-money", "bad-number", "bad-number", DEFAULT_RULE]
        assert decide("unknown_outcome", "unknown") == "wait-report"


def test_an_unknown_error_class_is_a_load_error() -> None:
    """A class outside the vocabulary is refused with its file and line, like an unknown provider."""
    with pytest.raises(Exception, match=r"failures\[0\]\.when\.error_class: unknown error class 'broke'"):
        load("failures:\n  - {name: x, scene: send_failure, when: {error_class: broke}, action: fail}\n")


def _decision(action: str, scene: str = "send_failure") -> Any:
    from engine.policy.decisions import FailureDecision

    return FailureDecision(action, "r", "v", scene)  # type: ignore[arg-type]


@pytest.mark.parametrize("action", ["fail", "ignore", "alert"])
def test_bounding_leaves_final_decisions_alone(action: str) -> None:
    """Decisions that end the task are carried out as the rules made them, however often the task failed."""
    from engine.policy.decisions import bound_failure

    decision = _decision(action)
    assert bound_failure(decision, decided=99, limit=20, deduplicates=False) is decision


def test_a_retry_past_the_decision_limit_becomes_fail_with_the_reason() -> None:
    """The runtime guard: the limit of failure decisions per task turns a retry into fail, saying why."""
    from engine.policy.decisions import bound_failure

    assert bound_failure(_decision("retry"), decided=19, limit=20, deduplicates=False).action == "retry"
    bounded = bound_failure(_decision("switch_provider"), decided=20, limit=20, deduplicates=True)
    assert (bounded.action, bounded.overruled) == ("fail", "gave up after 20 failure decisions "
                                                           "(MPUSH_MAX_FAILURE_DECISIONS=20)")


def test_an_unknown_outcome_is_resent_only_where_the_vendor_deduplicates() -> None:
    """A retry of an unknown outcome stands only when the vendor drops a repeated idempotency key."""
    from engine.policy.decisions import bound_failure

    assert bound_failure(_decision("retry", "unknown_outcome"), decided=0, limit=20, deduplicates=True).action == "retry"
    refused = bound_failure(_decision("retry", "unknown_outcome"), decided=0, limit=20, deduplicates=False)
    assert refused.action == "fail" and "not resent" in refused.overruled
