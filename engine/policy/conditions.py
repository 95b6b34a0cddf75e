"""The `when` language: parse and validate a condition, evaluate it on fact fields, say why it failed.

This module is the meaning of a condition. The compiler translates the same trees for
durable-rules; the reference evaluator and `explain` use `holds` / `why_not` directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

import re2

from .issues import Path, suggest
from .schema import INT64_MAX, INT64_MIN, Problem

STR, INT, LIST = "text", "integer", "list"
FIELDS: dict[str, str] = {
    "app": STR,
    "channel": STR,
    "channel_type": STR,
    "template": STR,
    "receiver": STR,
    "receiver.country": STR,
    "receiver.domain": STR,
    "tags": LIST,
    "priority": INT,
    "attempt": INT,
    "provider": STR,
    "error_code": STR,
    "error_class": STR,
    "error_message": STR,
    "local_hour": INT,
    "weekday": INT,
}
OPERATORS: dict[str, tuple[str, ...]] = {
    STR: ("eq", "in", "not_in", "prefix", "contains_any", "matches", "exists"),
    INT: ("eq", "in", "not_in", "lt", "lte", "gt", "gte"),
    LIST: ("eq", "in", "not_in", "exists"),
}
# Fields whose values must name something declared in the rule set.
REFERENCES = {"channel": "channel", "template": "template", "provider": "provider account", "channel_type": "channel type",
              "error_class": "error class"}


@dataclass(frozen=True, slots=True)
class Test:
    """One field test; `value` is normalised (tuples for lists, casefolded for contains_any)."""

    field: str
    op: str
    value: Any

    def holds(self, fields: Mapping[str, Any]) -> bool:
        actual = fields[self.field]
        if FIELDS[self.field] == LIST:
            return _list_holds(self.op, self.value, actual)
        return _scalar_holds(self.op, self.value, actual)

    def __str__(self) -> str:
        shown = list(self.value) if isinstance(self.value, tuple) else self.value
        return f"{self.field} {_OP_WORDS[self.op]} {shown!r}"


@dataclass(frozen=True, slots=True)
class All:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Any_:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition


Condition = Union[Test, All, Any_, Not]
MAX_PATTERN_LENGTH = 1000
MAX_REPEAT = 1000  # RE2's own limit; RE2 reads a larger count as literal text, we refuse it
_REPEAT = re2.compile(r"(?:^|[^\\])\{(\d+)(?:,(\d*))?\}")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 8 << 20  # a pattern whose compiled program needs more is refused at load
_RE2_OPTIONS.log_errors = False
ALWAYS = All(())

_OP_WORDS = {
    "eq": "is",
    "in": "in",
    "not_in": "not in",
    "prefix": "starts with",
    "contains_any": "contains any of",
    "matches": "matches",
    "exists": "exists is",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
}


def _scalar_holds(op: str, value: Any, actual: Any) -> bool:
    if op == "eq":
        return actual == value
    if op == "in":
        return actual in value
    if op == "not_in":
        return actual not in value
    if op == "prefix":
        return any(actual.startswith(p) for p in value)
    if op == "contains_any":
        folded = actual.casefold()
        return any(word in folded for word in value)
    if op == "matches":
        return regex(value).search(actual) is not None
    if op == "exists":
        return bool(actual) == value
    if op == "lt":
        return actual < value
    if op == "lte":
        return actual <= value
    if op == "gt":
        return actual > value
    return actual >= value


def _list_holds(op: str, value: Any, actual: Sequence[str]) -> bool:
    if op == "eq":
        return value in actual
    if op == "in":
        return any(item in value for item in actual)
    if op == "not_in":
        return not any(item in value for item in actual)
    return bool(actual) == value


@lru_cache(maxsize=1024)
def regex(pattern: str) -> re2._Regexp:
    """The compiled RE2 (linear-time) form of a `matches` pattern; every evaluation path uses it."""
    return re2.compile(pattern, options=_RE2_OPTIONS)


def holds(cond: Condition, fields: Mapping[str, Any]) -> bool:
    """Whether the condition is true for these fact fields."""
    if isinstance(cond, Test):
        return cond.holds(fields)
    if isinstance(cond, All):
        return all(holds(item, fields) for item in cond.items)
    if isinstance(cond, Any_):
        return any(holds(item, fields) for item in cond.items)
    return not holds(cond.item, fields)


def why_not(cond: Condition, fields: Mapping[str, Any]) -> str | None:
    """None when the condition holds, else the first reason it does not, in words."""
    if isinstance(cond, Test):
        return None if cond.holds(fields) else f"{cond}, got {_shown(fields[cond.field])}"
    if isinstance(cond, All):
        for item in cond.items:
            reason = why_not(item, fields)
            if reason:
                return reason
        return None
    if isinstance(cond, Any_):
        if any(holds(item, fields) for item in cond.items):
            return None
        return "none of: " + "; ".join(str(why_not(item, fields)) for item in cond.items)
    return f"not ({describe(cond.item)}) but it holds" if holds(cond.item, fields) else None


def describe(cond: Condition) -> str:
    """The condition in words, one line."""
    if isinstance(cond, Test):
        return str(cond)
    if isinstance(cond, Not):
        return f"not ({describe(cond.item)})"
    joiner = " and " if isinstance(cond, All) else " or "
    return joiner.join(f"({describe(i)})" if isinstance(i, (All, Any_)) else describe(i) for i in cond.items) or "always"


def _shown(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def parse(raw: Any, path: Path, known: Mapping[str, frozenset[str]]) -> tuple[Condition, list[Problem]]:
    """Parse a `when` block. `known` names the declared channels / templates / providers / types."""
    problems: list[Problem] = []
    cond = _parse_block(raw, path, known, problems)
    return cond, problems


def _parse_block(raw: Any, path: Path, known: Mapping[str, frozenset[str]], problems: list[Problem]) -> Condition:
    if raw is None:
        return ALWAYS
    if not isinstance(raw, dict):
        problems.append((path, "a condition must be a mapping of field: test"))
        return ALWAYS
    items: list[Condition] = []
    for key, value in raw.items():
        child = (*path, key)
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                problems.append((child, f"{key} takes a non-empty list of conditions"))
                continue
            parts = tuple(_parse_block(v, (*child, i), known, problems) for i, v in enumerate(value))
            items.append(All(parts) if key == "all" else Any_(parts))
        elif key == "not":
            items.append(Not(_parse_block(value, child, known, problems)))
        elif key in FIELDS:
            items.extend(_parse_field(key, value, child, known, problems))
        else:
            hint = suggest(key, [*FIELDS, "all", "any", "not"])
            problems.append((child, f"unknown field{hint} (fields: {', '.join(FIELDS)}; combinators: all, any, not)"))
    return items[0] if len(items) == 1 else All(tuple(items))


def _parse_field(
    name: str, raw: Any, path: Path, known: Mapping[str, frozenset[str]], problems: list[Problem]
) -> Iterator[Test]:
    kind = FIELDS[name]
    ops = raw if isinstance(raw, dict) else {"eq": raw}
    if not ops:
        problems.append((path, "an operator map must not be empty"))
    for op, value in ops.items():
        where = (*path, op) if isinstance(raw, dict) else path
        if op not in OPERATORS[kind]:
            problems.append((where, f"unknown operator {op!r}{suggest(op, OPERATORS[kind])} for {kind} field {name} "
                                    f"(operators: {', '.join(OPERATORS[kind])})"))
            continue
        normalised, error = _normalise(name, kind, op, value)
        if error:
            problems.append((where, error))
            continue
        problems.extend((where, message) for message in _unknown_references(name, op, normalised, known))
        yield Test(name, op, normalised)


def _normalise(name: str, kind: str, op: str, value: Any) -> tuple[Any, str | None]:
    if op == "exists":
        return (value, None) if isinstance(value, bool) else (None, "exists takes true or false")
    if op == "matches":
        if not isinstance(value, str):
            return None, "matches takes one regular expression"
        if len(value) > MAX_PATTERN_LENGTH:
            return None, f"a regular expression may be at most {MAX_PATTERN_LENGTH} characters"
        if any(int(count or 0) > MAX_REPEAT for found in _REPEAT.finditer(value) for count in found.groups()):
            return None, f"bad regular expression {value!r}: a repetition count above {MAX_REPEAT}"
        try:
            regex(value)
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            return None, f"bad regular expression {value!r}: {reason} (RE2 syntax: no backreferences or lookaround)"
        return value, None
    many = op in ("in", "not_in", "prefix", "contains_any")
    values = value if isinstance(value, list) and many else [value]
    if op in ("in", "not_in") and not isinstance(value, list):
        return None, f"{op} takes a list"
    if not values:
        return None, f"{op} takes a non-empty list"
    scalars = []
    for item in values:
        scalar, error = _scalar(kind, item)
        if error:
            return None, error
        scalars.append(scalar)
    if op == "contains_any":
        return tuple(sorted({s.casefold() for s in scalars})), None
    if op in ("in", "not_in", "prefix"):
        return tuple(sorted(set(scalars))), None
    return scalars[0], None


def _scalar(kind: str, value: Any) -> tuple[Any, str | None]:
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"must be an integer, got {value!r}"
        if not INT64_MIN <= value <= INT64_MAX:
            return None, f"{value} is outside the 64-bit integer range"
        return value, None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f"must be text, got {value!r}"
    return str(value), None


def _unknown_references(name: str, op: str, value: Any, known: Mapping[str, frozenset[str]]) -> Iterator[str]:
    if name not in REFERENCES or op not in ("eq", "in", "not_in"):
        return
    declared = known.get(name, frozenset())
    for item in value if isinstance(value, tuple) else (value,):
        if item not in declared:
            yield f"unknown {REFERENCES[name]} {item!r}{suggest(item, declared)}"
