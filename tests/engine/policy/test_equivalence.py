"""Property: on generated rule sets and facts, the durable-rules network and the reference evaluator agree."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tests.engine.policy.rulekit import CATALOGUE, SHANGHAI

from engine.policy import SCENES, RuleError, RuleSet
from engine.policy.loader import load_texts
from tests.engine.policy.rulekit import TYPES

TEXT_VALUES: dict[str, list[str]] = {
    "app": ["a1", "a2", "a3"],
    "channel": ["sms", "promo", "mail"],
    "channel_type": ["sms", "email"],
    "template": ["code", "promo", "mail"],
    "receiver": ["13800138000", "+14155552671", "ops@example.com"],
    "receiver.country": ["CN", "US", ""],
    "receiver.domain": ["example.com", ""],
    "provider": ["a", "b", "console"],
    "error_code": ["E1", "E2", "network"],
    "error_message": ["read timeout", "余额不足", "Network Error", ""],
}
INT_VALUES = {"priority": (0, 2), "attempt": (0, 3), "local_hour": (8, 10), "weekday": (1, 2)}
TAGS = ["vip", "marketing", "x"]


def text_test(field: str) -> st.SearchStrategy[dict[str, Any]]:
    values = TEXT_VALUES[field]
    words = st.sampled_from(["time", "余额", "NETWORK", "example", "138", "+1", "E"])
    return st.one_of(
        st.sampled_from(values).map(lambda v: {field: v}),
        st.lists(st.sampled_from(values), min_size=1, max_size=3).map(lambda v: {field: {"in": v}}),
        st.lists(st.sampled_from(values), min_size=1, max_size=2).map(lambda v: {field: {"not_in": v}}),
        words.map(lambda w: {field: {"prefix": w}}),
        st.lists(words, min_size=1, max_size=2).map(lambda w: {field: {"contains_any": w}}),
        st.sampled_from(["^1", "[Tt]ime", "例|額|额", "com$"]).map(lambda r: {field: {"matches": r}}),
        st.booleans().map(lambda b: {field: {"exists": b}}),
    )


def int_test(field: str) -> st.SearchStrategy[dict[str, Any]]:
    low, high = INT_VALUES[field]
    ops = st.sampled_from(["eq", "lt", "lte", "gt", "gte"])
    value = st.integers(low - 1, high + 1)
    return st.one_of(
        st.tuples(ops, value).map(lambda t: {field: t[1]} if t[0] == "eq" else {field: {t[0]: t[1]}}),
        st.tuples(st.sampled_from(["in", "not_in"]), st.lists(value, min_size=1, max_size=3)).map(lambda t: {field: {t[0]: t[1]}}),
    )


def tag_test() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.sampled_from(TAGS).map(lambda t: {"tags": t}),
        st.tuples(st.sampled_from(["in", "not_in"]), st.lists(st.sampled_from(TAGS), min_size=1, max_size=2)).map(
            lambda t: {"tags": {t[0]: t[1]}}
        ),
        st.booleans().map(lambda b: {"tags": {"exists": b}}),
    )


LEAF = st.one_of(
    st.sampled_from(sorted(TEXT_VALUES)).flatmap(text_test),
    st.sampled_from(sorted(INT_VALUES)).flatmap(int_test),
    tag_test(),
)
CONDITION = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda items: {"all": items}),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: {"any": items}),
        inner.map(lambda item: {"not": item}),
    ),
    max_leaves=5,
)
WHEN = st.one_of(st.none(), CONDITION)
PRIORITY = st.integers(0, 3)


def _with_when(rule: dict[str, Any], when: Any) -> dict[str, Any]:
    return {**rule, "when": when} if when is not None else rule


ROUTE = st.tuples(PRIORITY, WHEN, st.sampled_from(["providers", "reject", "defer"])).map(
    lambda t: _with_when(
        {"priority": t[0], **({"providers": [{"use": "a"}, {"use": "b", "tier": 2}]} if t[2] == "providers"
                               else {"reject": "no"} if t[2] == "reject" else {"defer_until": "09:00"})},
        t[1],
    )
)
QUOTA = st.tuples(PRIORITY, WHEN, st.lists(st.sampled_from(["app", "receiver", "channel"]), min_size=1, max_size=2, unique=True)).map(
    lambda t: _with_when({"priority": t[0], "key": t[2], "limit": 5, "per": "1h"}, t[1])
)
FAILURE = st.tuples(PRIORITY, WHEN, st.sampled_from(SCENES), st.sampled_from(["retry", "switch_provider", "fail", "ignore"])).map(
    lambda t: _with_when({"priority": t[0], "scene": t[2], "action": t[3]}, t[1])
)
RULE_SET = st.tuples(
    st.lists(ROUTE, max_size=8), st.lists(QUOTA, max_size=4), st.lists(FAILURE, max_size=8)
).map(lambda t: {section: [{"name": f"{section}-{i}", **rule} for i, rule in enumerate(rules)]
                 for section, rules in zip(("routing", "quotas", "failures"), t)})

FACT = st.fixed_dictionaries(
    {
        "app": st.sampled_from(TEXT_VALUES["app"]),
        "channel": st.sampled_from(TEXT_VALUES["channel"]),
        "receiver": st.sampled_from(TEXT_VALUES["receiver"]),
        "tags": st.lists(st.sampled_from(TAGS), max_size=2),
        "priority": st.integers(0, 2),
        "attempt": st.integers(0, 3),
        "provider": st.sampled_from(TEXT_VALUES["provider"] + [""]),
        "error_code": st.sampled_from(TEXT_VALUES["error_code"] + [""]),
        "error_message": st.sampled_from(TEXT_VALUES["error_message"]),
        "hours": st.sampled_from([8, 9, 10, 32, 33, 34]),
    }
)


def _pair(data: dict[str, Any]) -> tuple[RuleSet, RuleSet]:
    text = CATALOGUE + yaml.safe_dump(data, allow_unicode=True)
    try:
        network = load_texts({"gen.yaml": text}, env={}, provider_types=TYPES, backend="network")
    except RuleError as exc:
        assume("alternatives" not in str(exc))
        raise
    reference = load_texts({"gen.yaml": text}, env={}, provider_types=TYPES, backend="reference")
    return network, reference


def _decisions(ruleset: RuleSet, raw: dict[str, Any]) -> tuple[Any, ...]:
    now = datetime(2024, 5, 6, tzinfo=SHANGHAI) + timedelta(hours=raw["hours"])
    fields = {k: v for k, v in raw.items() if k not in ("channel", "hours")}
    fact = ruleset.fact(now=now, channel=ruleset.channels[raw["channel"]], **fields)
    kinds = ("routing", "quotas", *SCENES)
    return (
        tuple(tuple(ruleset.matching(kind, fact)) for kind in kinds),
        ruleset.route(fact),
        ruleset.quotas(fact),
        tuple(ruleset.on_failure(scene, fact) for scene in SCENES),
    )


@pytest.mark.timeout(300)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RULE_SET, st.lists(FACT, min_size=1, max_size=25))
def test_network_and_reference_decide_identically(data: dict[str, Any], facts: list[dict[str, Any]]) -> None:
    """Every matching set and every routing, quota and failure decision is the same on both backends."""
    network, reference = _pair(data)
    try:
        assert network.backend == "network" and reference.backend == "reference"
        for raw in facts:
            assert _decisions(network, raw) == _decisions(reference, raw)
    finally:
        network.close()
