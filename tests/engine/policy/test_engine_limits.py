"""Rule sets at and just past each durable-rules limit: accepted and evaluated, or rejected with a message.

Every test has a timeout: a regression that hands the C engine a bad shape must fail, not hang.
"""

from __future__ import annotations

import json

import pytest
from tests.engine.policy.rulekit import NOON, load

from engine.policy import RuleError, RuleSet
from engine.policy.compiler import MAX_ALTERNATIVES, MAX_FEATURES, MAX_SIBLINGS, MAX_SIMULTANEOUS, EngineError
from engine.policy.network import canary

pytestmark = pytest.mark.timeout(60)


def _routes(conditions: list[str]) -> str:
    return "routing:\n" + "".join(f"  - {{name: r{i}, when: {c}, providers: [{{use: a}}]}}\n" for i, c in enumerate(conditions))


def _route_all(ruleset: RuleSet, **fields: object) -> list[int]:
    fact = ruleset.fact(now=NOON, app=str(fields.get("app", "x")), channel=ruleset.channels["sms"],
                        receiver="13800138000", attempt=int(fields.get("attempt", 0)),  # type: ignore[call-overload]
                        error_message=str(fields.get("error_message", "")))
    return ruleset.matching("routing", fact)


def test_siblings_at_the_limit_compile_and_evaluate() -> None:
    """MAX_SIBLINGS different first conditions compile, and a fact finds its one rule."""
    ruleset = load(_routes([f"{{app: app-{i}}}" for i in range(MAX_SIBLINGS)]))
    assert ruleset.backend == "network"
    assert _route_all(ruleset, app="app-123") == [123]


def test_siblings_past_the_limit_are_rejected() -> None:
    """One more sibling is a load error naming the rule and the limit (the engine would hang)."""
    with pytest.raises(RuleError) as caught:
        load(_routes([f"{{app: app-{i}}}" for i in range(MAX_SIBLINGS + 1)]))
    (issue,) = caught.value.issues
    assert issue.path == f"routing[{MAX_SIBLINGS}]"
    assert f"more than {MAX_SIBLINGS} different conditions follow the same leading conditions" in issue.message


def test_simultaneous_matches_at_the_limit_evaluate() -> None:
    """MAX_SIMULTANEOUS overlapping thresholds all matching one fact evaluate without engine error 303."""
    ruleset = load(_routes([f"{{attempt: {{lt: {i + 1}}}}}" for i in range(MAX_SIMULTANEOUS)]))
    assert _route_all(ruleset, attempt=0) == list(range(MAX_SIMULTANEOUS))


def test_simultaneous_matches_past_the_limit_are_rejected() -> None:
    """One more overlapping threshold is refused at load."""
    with pytest.raises(RuleError, match="could match one fact at the same time"):
        load(_routes([f"{{attempt: {{lt: {i + 1}}}}}" for i in range(MAX_SIMULTANEOUS + 1)]))


def _word_rules(count: int) -> list[str]:
    return [f"{{app: app-{i % 8}, error_message: {{contains_any: [w{i:03d}x]}}}}" for i in range(count)]


def test_features_at_the_limit_evaluate() -> None:
    """A fact carrying the most features the budget allows stays under the engine's 253 properties."""
    words = MAX_FEATURES - 1  # one equality group (app) plus the word tests
    ruleset = load(_routes(_word_rules(words)))
    message = " ".join(f"w{i:03d}x" for i in range(words))
    assert _route_all(ruleset, app="app-0", error_message=message) == list(range(0, words, 8))


def test_features_past_the_limit_are_rejected() -> None:
    """One more distinct text test than the budget is refused at load."""
    with pytest.raises(RuleError, match=f"more than {MAX_FEATURES} distinct text tests"):
        load(_routes(_word_rules(MAX_FEATURES)))


def test_alternatives_at_and_past_the_limit() -> None:
    """A condition whose normal form has MAX_ALTERNATIVES branches loads; one that has more is refused."""
    four = "{any: [{app: a}, {app: b}, {app: c}, {app: d}]}"
    assert MAX_ALTERNATIVES == 16
    load(_routes([f"{{all: [{four}, {{any: [{{attempt: 1}}, {{attempt: 2}}, {{attempt: 3}}, {{attempt: 4}}]}}]}}"]))
    with pytest.raises(RuleError, match="expands to more than 16 alternatives"):
        load(_routes([f"{{all: [{four}, {{any: [{{attempt: 1}}, {{attempt: 2}}, {{attempt: 3}}, {{attempt: 4}}, {{attempt: 5}}]}}]}}"]))


def test_canary_catches_a_definition_that_hangs_the_engine() -> None:
    """600 siblings hang create_ruleset; the canary child times out and this process carries on."""
    definition = {f"r{i}": {"all": [{"m": {"$and": [{"__k": 1}, {"app": i}]}}]} for i in range(600)}
    with pytest.raises(EngineError, match="did not finish compiling"):
        canary(json.dumps(definition), timeout=3)


def test_canary_reports_an_engine_error() -> None:
    """An operator the engine does not know fails the canary with the engine's message."""
    with pytest.raises(EngineError, match="failed to compile"):
        canary(json.dumps({"r": {"all": [{"m": {"$in": {"app": 1}}}]}}), timeout=20)
