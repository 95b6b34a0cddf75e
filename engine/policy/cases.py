"""Rule test cases (`DIR/tests/*.yaml`: input fact -> expected decision) and facts written as JSON.

The same fact format serves `rules test`, `rules explain`, `rules diff` and the admin dry-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ._yaml import Document, parse
from .decisions import ERROR_CLASSES, SCENES, FailureDecision, QuotaDecision, RoutingDecision, Scene
from .facts import Fact
from .issues import RuleError, RuleIssue
from .loader import read_yaml_files
from .ruleset import RuleSet
from .schema import AnyValue, Int, ListOf, MapOf, Num, Obj, Str

_FACT = Obj(
    {
        "app": Str(),
        "channel": AnyValue(help="channel name or id"),
        "receiver": Str(),
        "tags": ListOf(Str()),
        "priority": Int(),
        "attempt": Int(),
        "provider": Str(),
        "error_code": AnyValue(),
        "error_class": Str(enum=ERROR_CLASSES),
        "error_message": Str(),
        "now": AnyValue(help="ISO 8601 with offset; noon of 2024-01-01 in the rule set's zone when absent"),
        "scene": Str(enum=SCENES),
    },
    required=("channel",),
)
FACT_KEYS = tuple(key for key in _FACT.fields if key != "scene")
_ROUTE = Obj(
    {"rule": Str(), "action": Str(enum=("route", "defer", "reject")), "defer_until": Str(), "reason": Str(), "tiers": ListOf(ListOf(Str()))}
)
_FAILURE = Obj(
    {"rule": Str(), "action": Str(), "delay_seconds": Num(0, 1e12), "exhausted": AnyValue(), "exclude_current": AnyValue(), "alert_level": AnyValue(),
     "defer_until": Str()}
)
CASE = Obj(
    {
        "name": Str(allow_empty=False),
        "scene": Str(enum=SCENES),
        "fact": MapOf(AnyValue()),
        "expect": Obj({"route": _ROUTE, "quotas": ListOf(Str()), "failure": _FAILURE}),
    },
    required=("name", "fact", "expect"),
)
CASES_FILE = Obj({"cases": ListOf(CASE)}, required=("cases",))


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    file: str
    line: int
    fact: Mapping[str, Any]
    scene: Scene | None
    expect: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Mismatch:
    case: Case
    what: str
    expected: Any
    actual: Any

    def __str__(self) -> str:
        return f"{self.case.where}: {self.case.name}: {self.what}: expected {self.expected!r}, got {self.actual!r}"

    def issue(self) -> RuleIssue:
        text = f"rule test {self.case.name!r} failed: {self.what}: expected {self.expected!r}, got {self.actual!r}"
        return RuleIssue(self.case.file, self.case.line, "", text)


class FactError(ValueError):
    """A fact written as JSON/YAML that cannot be turned into a Fact."""


def load_cases(directory: str | Path) -> list[Case]:
    """Every case of `directory/*.yaml` (empty when the directory does not exist); raises RuleError."""
    root = Path(directory)
    if not root.is_dir():
        return []
    cases: list[Case] = []
    files, issues = read_yaml_files(root)
    for file, text in files.items():
        doc, problems = parse(file, text)
        issues += problems
        if doc is not None:
            cases += _cases(doc, issues)
    if issues:
        raise RuleError(issues)
    return cases


def _cases(doc: Document, issues: list[RuleIssue]) -> list[Case]:
    problems = list(CASES_FILE.check(doc.data, ()))
    issues += [doc.issue(path, message) for path, message in problems]
    if problems:
        return []
    out = []
    for i, raw in enumerate(doc.data["cases"]):
        fact_problems = list(_FACT.check(raw["fact"], ("cases", i, "fact")))
        issues += [doc.issue(path, message) for path, message in fact_problems]
        scene = raw.get("scene") or raw["fact"].get("scene")
        out.append(Case(raw["name"], doc.file, doc.line(("cases", i)), raw["fact"], scene, raw["expect"]))
    return out


def fact_from_mapping(ruleset: RuleSet, data: Mapping[str, Any], now: datetime | None = None) -> Fact:
    """A Fact from {channel, receiver, app, tags, priority, attempt, provider, error_code, error_class, error_message, now}.

    `now` comes from the data, else the argument, else noon of 2024-01-01 in the rule set's zone.
    """
    unknown = sorted(set(data) - set(_FACT.fields))
    if unknown:
        raise FactError(f"unknown fact field(s) {', '.join(unknown)} (fields: {', '.join(FACT_KEYS)}, scene)")
    channel = ruleset.channel(data.get("channel", ""))
    if channel is None:
        raise FactError(f"unknown channel {data.get('channel')!r}")
    moment = _moment(data.get("now"), now, ruleset)
    try:
        return ruleset.fact(
            now=moment,
            app=str(data.get("app", "")),
            channel=channel,
            receiver=str(data.get("receiver", "")),
            tags=[str(tag) for tag in data.get("tags", ())],
            priority=data.get("priority", 0),
            attempt=data.get("attempt", 0),
            provider=str(data.get("provider", "")),
            error_code=str(data.get("error_code", "")),
            error_class=str(data.get("error_class", "")),
            error_message=str(data.get("error_message", "")),
        )
    except ValueError as exc:
        raise FactError(str(exc)) from None


def _moment(raw: Any, now: datetime | None, ruleset: RuleSet) -> datetime:
    if raw is None:
        return now or datetime(2024, 1, 1, 12, tzinfo=ruleset.timezone)
    if isinstance(raw, datetime):
        moment = raw
    else:
        try:
            moment = datetime.fromisoformat(str(raw))
        except ValueError:
            raise FactError(f"now must be an ISO 8601 time, got {raw!r}") from None
    if moment.tzinfo is None:
        raise FactError(f"now must carry a UTC offset, got {raw!r}")
    return moment


def run_cases(ruleset: RuleSet, cases: list[Case]) -> list[Mismatch]:
    """Every difference between what the cases expect and what the rule set decides."""
    mismatches: list[Mismatch] = []
    for case in cases:
        try:
            fact = fact_from_mapping(ruleset, case.fact)
        except FactError as exc:
            mismatches.append(Mismatch(case, "fact", "a valid fact", str(exc)))
            continue
        expect = case.expect
        if "route" in expect:
            mismatches += _compare(case, "route", expect["route"], routing_summary(ruleset.route(fact)))
        if "quotas" in expect:
            actual = [check.rule for check in ruleset.quotas(fact).checks]
            if actual != expect["quotas"]:
                mismatches.append(Mismatch(case, "quotas", expect["quotas"], actual))
        if "failure" in expect:
            if case.scene is None:
                mismatches.append(Mismatch(case, "scene", "a scene for the failure expectation", None))
                continue
            mismatches += _compare(case, "failure", expect["failure"], failure_summary(ruleset.on_failure(case.scene, fact)))
    return mismatches


def _compare(case: Case, what: str, expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[Mismatch]:
    return [
        Mismatch(case, f"{what}.{key}", value, actual.get(key))
        for key, value in expected.items()
        if actual.get(key) != value
    ]


def routing_summary(decision: RoutingDecision) -> dict[str, Any]:
    """A routing decision as plain data, without the version (what cases and diffs compare)."""
    return {
        "rule": decision.rule,
        "action": decision.action,
        "tiers": [[candidate.provider for candidate in tier] for tier in decision.tiers],
        "weights": [[candidate.weight for candidate in tier] for tier in decision.tiers],
        "defer_until": decision.defer_until.isoformat() if decision.defer_until else None,
        "reason": decision.reason,
    }


def quota_summary(decision: QuotaDecision) -> list[dict[str, Any]]:
    return [
        {"rule": c.rule, "key": c.key, "limit": c.limit, "window_seconds": c.window_seconds, "on_exceed": c.on_exceed}
        for c in decision.checks
    ]


def failure_summary(decision: FailureDecision) -> dict[str, Any]:
    return {
        "rule": decision.rule,
        "action": decision.action,
        "delay_seconds": decision.delay_seconds,
        "exhausted": decision.exhausted,
        "exclude_current": decision.exclude_current,
        "alert_level": decision.alert.level if decision.alert else None,
        "defer_until": decision.defer_until.isoformat() if decision.defer_until else None,
    }
