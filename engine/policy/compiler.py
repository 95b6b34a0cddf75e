"""Rules -> one durable-rules JSON ruleset plus the Python-side feature tests, inside the engine's limits.

Durable-rules only ever sees integers: a kind code, the integer fact fields, and boolean
"features" (present = true) computed in Python for every text test. That sidesteps the
engine's type coercion, its regex dialect and leak, and its unicode handling. Each rule
becomes one conjunction per alternative of its condition's disjunctive normal form.

The limits below were measured on durable-rules 2.0.28 (reference/durable-rules.md and
tests/engine/policy/test_limits.py): 512 children under one node hangs `create_ruleset`,
65 alpha nodes matching one fact at once raises error 303, and more than 253 properties
in one fact raises error 302. We keep a margin below each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .conditions import FIELDS, INT, LIST, STR, All, Condition, Not, Test
from .rules import Origin

MAX_SIBLINGS = 500
MAX_SIMULTANEOUS = 60
MAX_FEATURES = 240
MAX_ALTERNATIVES = 16
MAX_NETWORK_RULES = 5000
INT_FIELDS = tuple(name for name, kind in FIELDS.items() if kind == INT)
KINDS = ("routing", "quotas", "send_failure", "callback_failure", "callback_timeout", "unknown_outcome")
PRIME = "__prime__"

# Low-cardinality fields first, so rules share the first nodes of their chains.
_FIELD_RANK = {
    name: rank
    for rank, name in enumerate(
        ("channel_type", "channel", "template", "provider", "app", "error_class", "error_code", "receiver.country",
         "receiver.domain", "tags", "weekday", "local_hour", "priority", "attempt", "receiver", "error_message")
    )
}
_NEGATED = {"eq": "$neq", "lt": "$gte", "lte": "$gt", "gt": "$lte", "gte": "$lt"}

Literal = tuple[Test, bool]
Link = tuple[dict[str, Any], tuple[str, str]]  # engine test, exclusion group


class LimitError(Exception):
    """A rule would take the engine past one of its hard limits."""

    def __init__(self, origin: Origin, message: str) -> None:
        super().__init__(message)
        self.origin = origin
        self.message = message


class EngineError(Exception):
    """The engine itself refused a compiled program (the canary compile crashed, failed or hung)."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One YAML rule to compile: its kind, its position in priority order, its condition."""

    kind: str
    index: int
    when: Condition
    origin: Origin


@dataclass
class FeatureTable:
    """Text tests of one kind, evaluated in Python into the fact's feature properties."""

    index: dict[str, dict[Any, list[str]]] = field(default_factory=dict)  # field -> value -> features
    predicates: list[tuple[str, Test]] = field(default_factory=list)

    def message(self, fields: Mapping[str, Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, by_value in self.index.items():
            values = fields[name] if FIELDS[name] == LIST else (fields[name],)
            for value in values:
                for feature in by_value.get(value, ()):
                    out[feature] = 1
        for feature, test in self.predicates:
            if test.holds(fields):
                out[feature] = 1
        return out


@dataclass
class Program:
    """The compiled rule set: the engine definition and, per kind, its features and rule names."""

    definition: dict[str, Any]
    features: dict[str, FeatureTable]
    names: dict[str, tuple[str, int]]  # engine rule name -> (kind, index)

    def message(self, kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The engine message for one evaluation (the network adds its sid)."""
        message: dict[str, Any] = {"__k": KINDS.index(kind) + 1}
        for name in INT_FIELDS:
            message[name] = fields[name]
        message.update(self.features[kind].message(fields))
        return message

    def digest_text(self) -> str:
        return json.dumps(self.definition, sort_keys=True, ensure_ascii=False)


def compile_rules(rules: Sequence[CompiledRule]) -> Program:
    """Compile; raises LimitError naming the first rule that would break an engine limit."""
    builder = _Builder()
    for rule in rules:
        builder.add(rule)
    definition = {PRIME: {"all": [{"m": {"$ex": {PRIME: 1}}}]}, **builder.definition}
    return Program(definition, builder.tables, builder.names)


class _Builder:
    def __init__(self) -> None:
        self.definition: dict[str, Any] = {}
        self.names: dict[str, tuple[str, int]] = {}
        self.tables: dict[str, FeatureTable] = {kind: FeatureTable() for kind in KINDS}
        self.feature_of: dict[tuple[str, str, str, Any], str] = {}
        self.budget: dict[str, _FeatureBudget] = {kind: _FeatureBudget() for kind in KINDS}
        self.trie = _Node()

    def add(self, rule: CompiledRule) -> None:
        try:
            alternatives = dnf(rule.when, True)
        except _TooComplex as exc:
            raise LimitError(rule.origin, str(exc)) from None
        for alt, literals in enumerate(alternatives):
            if len(self.names) >= MAX_NETWORK_RULES:
                raise LimitError(rule.origin, f"the rule set compiles to more than {MAX_NETWORK_RULES} engine rules")
            code = KINDS.index(rule.kind) + 1
            links = [({"__k": code}, ("eq", "__k"))]
            links += [self.term(rule, literal) for literal in sorted(set(literals), key=_literal_order)]
            self.trie.insert(links, rule.origin)
            name = f"k{code}r{rule.index}a{alt}"
            self.definition[name] = {"all": [{"m": {"$and": [term for term, _ in links]}}]}
            self.names[name] = (rule.kind, rule.index)

    def term(self, rule: CompiledRule, literal: Literal) -> Link:
        """The engine test for one literal, with the group of tests it excludes (equal groups never co-match)."""
        test, positive = literal
        unique = ("term", repr(literal))
        if FIELDS[test.field] == INT and test.op in _NEGATED:
            if not positive:
                return {_NEGATED[test.op]: {test.field: test.value}}, unique
            if test.op == "eq":
                return {test.field: test.value}, ("eq", test.field)
            return {f"${test.op}": {test.field: test.value}}, unique
        feature = self.feature(rule, test)
        if not positive:
            return {"$nex": {feature: 1}}, unique
        single_valued = test.op == "eq" and FIELDS[test.field] == STR
        return {feature: 1}, ("eq", test.field) if single_valued else unique

    def feature(self, rule: CompiledRule, test: Test) -> str:
        key = (rule.kind, test.field, test.op, test.value)
        if key in self.feature_of:
            return self.feature_of[key]
        name = f"f{len(self.feature_of)}"
        self.feature_of[key] = name
        self.budget[rule.kind].count(test, rule.origin)
        table = self.tables[rule.kind]
        if test.op in ("eq", "in"):
            values = test.value if test.op == "in" else (test.value,)
            for value in values:
                table.index.setdefault(test.field, {}).setdefault(value, []).append(name)
        else:
            table.predicates.append((name, test))
        return name


@dataclass
class _FeatureBudget:
    """Upper bound of features one fact can carry: equality features of one text field exclude each other."""

    eq_fields: set[str] = field(default_factory=set)
    others: int = 0

    def count(self, test: Test, origin: Origin) -> None:
        if test.op == "eq" and FIELDS[test.field] == STR:
            self.eq_fields.add(test.field)
        else:
            self.others += 1
        if len(self.eq_fields) + self.others > MAX_FEATURES:
            raise LimitError(
                origin,
                f"more than {MAX_FEATURES} distinct text tests (prefix / contains_any / matches / in / tags) in one section;"
                " the engine takes at most 253 properties per fact",
            )


class _Node:
    """The engine's alpha network as a trie of condition chains, to check its limits before it exists."""

    __slots__ = ("children", "groups", "depth_bound", "best_child")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.groups: set[tuple[str, str]] = set()
        self.depth_bound = 0
        self.best_child = 0

    def insert(self, chain: list[Link], origin: Origin) -> int:
        if not chain:
            return self.depth_bound
        term, group = chain[0]
        key = json.dumps(term, sort_keys=True)
        child = self.children.get(key)
        if child is None:
            if len(self.children) >= MAX_SIBLINGS:
                raise LimitError(
                    origin,
                    f"more than {MAX_SIBLINGS} different conditions follow the same leading conditions "
                    f"({key} is one too many); the engine hangs past 511. "
                    "Lead with a shared test (channel, app) or merge values into `in` lists",
                )
            child = self.children[key] = _Node()
            self.groups.add(group)
        self.best_child = max(self.best_child, child.insert(chain[1:], origin))
        width = len(self.groups)
        self.depth_bound = max(width, width - 1 + self.best_child)
        if self.depth_bound > MAX_SIMULTANEOUS:
            raise LimitError(
                origin,
                f"up to {self.depth_bound} conditions could match one fact at the same time "
                f"(the engine fails past 64); make overlapping thresholds or tests exclusive",
            )
        return self.depth_bound


def _literal_order(literal: Literal) -> tuple[int, int, str, bool]:
    test, positive = literal
    return (_FIELD_RANK[test.field], 0 if test.op == "eq" else 1, repr(test.value) + test.op, not positive)


class _TooComplex(Exception):
    pass


def dnf(cond: Condition, positive: bool) -> list[list[Literal]]:
    """Disjunctive normal form with negations pushed to the tests; at most MAX_ALTERNATIVES."""
    if isinstance(cond, Test):
        return [[(cond, positive)]]
    if isinstance(cond, Not):
        return dnf(cond.item, not positive)
    conjunctive = isinstance(cond, All) == positive
    parts = [dnf(item, positive) for item in cond.items]
    if not conjunctive:
        out = [alt for part in parts for alt in part]
    else:
        out = [[]]
        for part in parts:
            out = [left + right for left in out for right in part]
            _check_width(out)
    _check_width(out)
    return out


def _check_width(alternatives: list[list[Literal]]) -> None:
    if len(alternatives) > MAX_ALTERNATIVES:
        raise _TooComplex(
            f"the condition expands to more than {MAX_ALTERNATIVES} alternatives; use `in` lists instead of nested any/not"
        )

