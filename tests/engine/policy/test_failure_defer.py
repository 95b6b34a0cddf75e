"""Failure actions on error classes: `defer` to a time window or by a delay, alerts beside any action, tries counted
without the deferred ones."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from tests.engine.policy.rulekit import NOON, SHANGHAI, load

from engine.policy import AlertSpec, RuleSet
from engine.policy.decisions import FailureDecision, bound_failure, counted_attempts

RULES = """
failures:
  - name: window
    scene: send_failure
    when: {error_class: window}
    action: defer
    defer: {until: "08:00", timezone: Asia/Shanghai}
  - name: later
    scene: send_failure
    when: {error_class: throttled}
    action: defer
    defer: {delay: 10m}
  - name: local
    scene: callback_failure
    action: defer
    defer: {until: "09:30"}
  - name: broke
    scene: send_failure
    priority: 5
    when: {error_class: account}
    action: switch_provider
    switch_provider: {max: 2, delay: 0s}
    alert: {level: critical}
"""


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    return load(RULES)


def decide(ruleset: RuleSet, scene: str, now: datetime = NOON, **kw: Any) -> FailureDecision:
    fact = ruleset.fact(now=now, app="app1", channel=ruleset.channels["sms"], receiver="13800138000", attempt=1, **kw)
    return ruleset.on_failure(scene, fact)  # type: ignore[arg-type]


def test_a_window_failure_waits_for_the_next_opening_in_the_rules_zone() -> None:
    """`until` 08:00 Asia/Shanghai at 23:30 Beijing time waits 8.5 hours, to 08:00 the next day."""
    decision = decide(load(RULES), "send_failure", now=datetime(2024, 1, 1, 23, 30, tzinfo=SHANGHAI),
                      error_class="window")
    assert (decision.action, decision.rule, decision.delay_seconds) == ("defer", "window", 8.5 * 3600)
    assert decision.defer_until == datetime(2024, 1, 2, 8, 0, tzinfo=SHANGHAI)


def test_the_until_time_zone_is_the_rules_own_not_the_clock_of_the_fact(ruleset: RuleSet) -> None:
    """A fact timed in UTC still waits for 08:00 in Shanghai (00:00 UTC)."""
    decision = decide(ruleset, "send_failure", now=datetime(2024, 1, 1, 22, 0, tzinfo=timezone.utc),
                      error_class="window")
    assert decision.defer_until is not None and decision.defer_until.astimezone(timezone.utc) == \
        datetime(2024, 1, 2, 0, 0, tzinfo=timezone.utc)


def test_a_defer_by_delay_waits_that_long(ruleset: RuleSet) -> None:
    """`delay: 10m` waits 600 s from the decision's time."""
    decision = decide(ruleset, "send_failure", error_class="throttled")
    assert (decision.action, decision.delay_seconds, decision.defer_until) == ("defer", 600.0,
                                                                              NOON + timedelta(minutes=10))


def test_until_without_a_zone_reads_the_rule_sets_zone(ruleset: RuleSet) -> None:
    """Without `timezone`, `until` is local time of the rule set (Asia/Shanghai in the shared catalogue)."""
    decision = decide(ruleset, "callback_failure")  # at noon in Shanghai: the next 09:30 is tomorrow's
    noon = NOON.astimezone(SHANGHAI)
    assert noon.hour == 12 and decision.defer_until == datetime(noon.year, noon.month, noon.day, 9, 30,
                                                                tzinfo=SHANGHAI) + timedelta(days=1)


def test_an_alert_may_go_with_a_switch(ruleset: RuleSet) -> None:
    """An account failure switches provider and carries the alert to send beside it."""
    decision = decide(ruleset, "send_failure", error_class="account")
    assert (decision.action, decision.alert) == ("switch_provider", AlertSpec("", "critical"))


@pytest.mark.parametrize(("block", "error"), [
    ("{}", "either until (HH:MM) or delay"),
    ('{until: "08:00", delay: 5s}', "either until (HH:MM) or delay"),
    ('{until: "8am"}', "does not match"),
    ('{until: "24:00"}', "does not match"),
    ("{delay: 2d}", "must be between 0s and 86400s"),
    ("{delay: -1}", "bad duration"),
    ('{until: "08:00", timezone: Mars/Olympus}', "unknown time zone 'Mars/Olympus'"),
    ("{delay: 5s, timezone: Asia/Shanghai}", "timezone goes with until"),
    ("{after: 5s}", "unknown key"),
])
def test_a_bad_defer_block_is_refused_with_a_clear_error(block: str, error: str) -> None:
    """Every malformed defer block is a load error naming the key, never a traceback."""
    with pytest.raises(Exception, match="failures") as raised:
        load(f"failures:\n  - {{name: d, scene: send_failure, action: defer, defer: {block}}}\n")
    assert error in str(raised.value)


def test_a_defer_rule_without_its_block_is_refused() -> None:
    """`action: defer` needs the block that says how long."""
    with pytest.raises(Exception, match="either until"):
        load("failures:\n  - {name: d, scene: send_failure, action: defer}\n")


def test_a_defer_block_on_another_action_is_refused() -> None:
    """A defer block beside `action: retry` is a mistake the loader names."""
    with pytest.raises(Exception, match="a defer block needs action: defer"):
        load("failures:\n  - {name: d, scene: send_failure, action: retry, defer: {delay: 5s}}\n")


def test_deferred_attempts_do_not_count_as_tries() -> None:
    """Three attempts of which two were answered by a deferral count as one try; any attempt counts at least once."""
    assert counted_attempts(3, 2) == 1
    assert counted_attempts(3, 0) == 3
    assert counted_attempts(2, 5) == 1
    assert counted_attempts(0, 0) == 0


def test_a_deferral_is_bounded_like_a_retry() -> None:
    """A window that never opens cannot loop: past the decision limit a deferral becomes fail."""
    defer = FailureDecision("defer", "r", "v", "send_failure", delay_seconds=60.0)
    assert bound_failure(defer, decided=3, limit=20, deduplicates=False).action == "defer"
    assert bound_failure(defer, decided=20, limit=20, deduplicates=False).action == "fail"
