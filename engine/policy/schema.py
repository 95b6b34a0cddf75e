"""The raw shape of rule files: a declarative spec that validates parsed YAML and exports JSON Schema.

Only structure lives here (keys, types, ranges, formats). Cross-references and conditions are
checked by the loader and `conditions.py`, which know what the names mean.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .decisions import FAILURE_ACTIONS, SCENES
from .issues import Path, suggest
from .model import CHANNEL_TYPES

Problem = tuple[Path, str]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Ranges within which delivery stays sane (docs/rules.md lists them): every duration is finite, and
# retry delays are capped, so a computed delay can never overflow or park a job out of reach.
MAX_DELAY = 86400.0  # retry delay / max_delay and switch_provider delay: one day
MAX_QUOTA_WINDOW = 366 * 86400  # quota `per`: one year
MAX_CIRCUIT_PERIOD = 86400.0  # circuit window and open_for: one day
MAX_RETRIES = 1000  # retry max and switch_provider max
MAX_BACKOFF = 100.0  # retry backoff factor (at least 1)
MAX_RATE_COUNT = 1_000_000  # provider rate: calls per period
MAX_RATE_PERIOD = 86400  # provider rate: the period, in seconds
MAX_QUOTA_LIMIT = 2**53  # quota limit (exact in a double)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"(\d+)\s*/\s*(\d*)\s*(s|m|h|d)", re.ASCII)


class EnvStr(str):
    """A string with its `${NAME}` references resolved. `names` lets messages name the variables instead of
    showing a value that may be a secret; `whole` marks one reference alone, which typed keys may coerce."""

    names: tuple[str, ...] = ()
    whole: bool = False


def shown(value: Any) -> str:
    """A value for an error message: a resolved environment value is named, never shown."""
    if isinstance(value, EnvStr):
        return "the value of " + ", ".join(f"${{{name}}}" for name in value.names)
    return _short(value)


def parse_duration(value: Any) -> float:
    """"500ms", "5s", "5m", "1h", "1d", or a number of seconds -> finite seconds >= 0; ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer past the float range
            seconds = math.inf
    else:
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"bad duration {_short(value)} (use e.g. 500ms, 5s, 5m, 1h, 1d)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 <= seconds < math.inf:
        raise ValueError(f"bad duration {_short(value)} (a finite number of seconds, at least 0)")
    return seconds


def parse_rate(value: Any) -> tuple[int, int]:
    """"100/s", "6000/m", "5/10s" -> (count, per_seconds); ValueError otherwise."""
    match = _RATE.fullmatch(value.strip()) if isinstance(value, str) and len(value) <= 40 else None
    if match is None:
        raise ValueError(f"bad rate {_short(value)} (use e.g. 100/s, 6000/m, 5/10s)")
    count, per = int(match.group(1)), int(match.group(2) or 1) * int(_UNIT_SECONDS[match.group(3)])
    if not (1 <= count <= MAX_RATE_COUNT and 1 <= per <= MAX_RATE_PERIOD):
        raise ValueError(f"bad rate {value!r} (1 to {MAX_RATE_COUNT} calls per 1 s to {MAX_RATE_PERIOD} s)")
    return count, per


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def as_bool(value: Any) -> bool | None:
    """A YAML bool, or an env string spelling one; None when it is neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, EnvStr) and value.whole:
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}.get(
            value.strip().lower()
        )
    return None


class Spec:
    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        raise NotImplementedError

    def json(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Str(Spec):
    pattern: str | None = None
    enum: tuple[str, ...] = ()
    allow_empty: bool = True
    help: str = ""

    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        if not isinstance(value, str):
            yield path, f"must be a string, got {_kind(value)}"
        elif self.enum and value not in self.enum:
            yield path, f"must be one of {', '.join(self.enum)}, got {_short(value)}{suggest(value, self.enum)}"
        elif not value and not self.allow_empty:
            yield path, "must not be empty"
        elif self.pattern and value and not re.fullmatch(self.pattern, value):
            yield path, f"{_short(value)} does not match {self.pattern}"

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        if self.enum:
            out["enum"] = list(self.enum)
        if self.pattern:
            out["pattern"] = self.pattern
        if not self.allow_empty:
            out["minLength"] = 1
        return _described(out, self.help)


@dataclass(frozen=True)
class Int(Spec):
    minimum: int = INT64_MIN
    maximum: int = INT64_MAX
    help: str = ""

    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        if isinstance(value, bool) or not isinstance(value, int):
            yield path, f"must be an integer, got {_kind(value)}"
        elif not self.minimum <= value <= self.maximum:
            yield path, f"must be between {self.minimum} and {self.maximum}, got {value}"

    def json(self) -> dict[str, Any]:
        return _described({"type": "integer", "minimum": self.minimum, "maximum": self.maximum}, self.help)


@dataclass(frozen=True)
class Num(Spec):
    minimum: float
    maximum: float
    exclusive_minimum: bool = False
    help: str = ""

    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            yield path, f"must be a number, got {_kind(value)}"
        elif not math.isfinite(value):
            yield path, f"must be a finite number, got {value}"
        elif value > self.maximum or value < self.minimum or (self.exclusive_minimum and value == self.minimum):
            low = f"greater than {self.minimum}" if self.exclusive_minimum else f"at least {self.minimum}"
            yield path, f"must be {low} and at most {self.maximum}, got {value}"

    def json(self) -> dict[str, Any]:
        low = "exclusiveMinimum" if self.exclusive_minimum else "minimum"
        return _described({"type": "number", low: self.minimum, "maximum": self.maximum}, self.help)


@dataclass(frozen=True)
class Bool(Spec):
    help: str = ""

    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        deferred = isinstance(value, str) and "${" in value  # checked once the reference is resolved
        if not deferred and as_bool(value) is None:
            yield path, f"must be true or false, got {value!r}"

    def json(self) -> dict[str, Any]:
        return _described({"anyOf": [{"type": "boolean"}, {"type": "string", "pattern": r"^\$\{"}]}, self.help)


@dataclass(frozen=True)
class Duration(Spec):
    maximum: float
    minimum: float = 0.0
    help: str = ""

    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            yield path, str(exc)
            return
        if not self.minimum <= seconds <= self.maximum:
            yield path, f"must be between {self.minimum:g}s and {self.maximum:g}s, got {_short(value)}"

    def json(self) -> dict[str, Any]:
        text = {"type": "string", "pattern": f"^{_DURATION.pattern}$"}
        number = {"type": "number", "minimum": self.minimum, "maximum": self.maximum}
        help = self.help or f"duration: 500ms, 5s, 5m, 1h, 1d (at most {self.maximum:g}s)"
        return _described({"anyOf": [text, number]}, help)


@dataclass(frozen=True)
class Rate(Spec):
    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        try:
            parse_rate(value)
        except ValueError as exc:
            yield path, str(exc)

    def json(self) -> dict[str, Any]:
        return {"type": "string", "pattern": f"^{_RATE.pattern}$", "description": "calls per period: 100/s, 6000/m, 5/10s"}


@dataclass(frozen=True)
class AnyValue(Spec):
    help: str = ""

    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        return iter(())

    def json(self) -> dict[str, Any]:
        return _described({}, self.help)


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    min_items: int = 0
    help: str = ""

    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        if not isinstance(value, list):
            yield path, f"must be a list, got {_kind(value)}"
            return
        if len(value) < self.min_items:
            yield path, f"must have at least {self.min_items} item(s)"
        for i, item in enumerate(value):
            yield from self.item.check(item, (*path, i))

    def json(self) -> dict[str, Any]:
        return _described({"type": "array", "items": self.item.json(), "minItems": self.min_items}, self.help)


@dataclass(frozen=True)
class MapOf(Spec):
    value: Spec
    help: str = ""

    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        if not isinstance(value, dict):
            yield path, f"must be a mapping, got {_kind(value)}"
            return
        for key, item in value.items():
            yield from self.value.check(item, (*path, key))

    def json(self) -> dict[str, Any]:
        return _described({"type": "object", "additionalProperties": self.value.json()}, self.help)


@dataclass(frozen=True)
class OneOf(Spec):
    options: tuple[Spec, ...]
    help: str = ""

    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        attempts = [list(option.check(value, path)) for option in self.options]
        if all(attempts):
            yield min(attempts, key=len)[0]

    def json(self) -> dict[str, Any]:
        return _described({"anyOf": [option.json() for option in self.options]}, self.help)


@dataclass(frozen=True)
class Obj(Spec):
    fields: Mapping[str, Spec]
    required: tuple[str, ...] = ()
    help: str = ""

    def check(self, value: Any, path: Path) -> Iterator[Problem]:
        if not isinstance(value, dict):
            yield path, f"must be a mapping, got {_kind(value)}"
            return
        for key, item in value.items():
            if key not in self.fields:
                yield (*path, key), f"unknown key{suggest(key, self.fields)} (expected one of: {', '.join(self.fields)})"
            else:
                yield from self.fields[key].check(item, (*path, key))
        for key in self.required:
            if key not in value:
                yield path, f"missing required key {key!r}"

    def json(self) -> dict[str, Any]:
        out = {
            "type": "object",
            "properties": {key: spec.json() for key, spec in self.fields.items()},
            "required": list(self.required),
            "additionalProperties": False,
        }
        return _described(out, self.help)


def _described(out: dict[str, Any], help: str) -> dict[str, Any]:
    return {**out, "description": help} if help else out


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", type(None): "nothing"}.get(type(value), type(value).__name__)


KEY_FIELDS = ("app", "channel", "channel_type", "template", "receiver", "receiver.country", "receiver.domain", "provider")

NAME = Str(pattern=NAME_PATTERN, allow_empty=False, help="unique within its section")
PRIORITY = Int(0, 65535, help="higher wins; ties go to the rule defined first")
WHEN = AnyValue(help="condition: {field: value | {operator: value}} with all / any / not")
DESCRIPTION = Str(help="free text, shown by `mpush rules explain`")

SETTINGS = Obj(
    {
        "timezone": Str(allow_empty=False, help="IANA zone for local_hour / weekday / defer_until (Asia/Shanghai)"),
        "default_region": Str(pattern=r"^[A-Z]{2}$", help="region for receivers written without + (CN)"),
    }
)
CHANNEL = Obj(
    {
        "id": Int(1, 2**31 - 1, help="the channel_id clients send"),
        "name": NAME,
        "type": Str(enum=CHANNEL_TYPES),
        "template": Str(allow_empty=False),
        "tags": ListOf(Str(allow_empty=False)),
        "description": DESCRIPTION,
    },
    required=("id", "name", "type", "template"),
)
TEMPLATE = Obj(
    {
        "name": NAME,
        "variables": ListOf(Str(pattern=r"^\w+$", allow_empty=False)),
        "text": Str(allow_empty=False),
        "subject": Str(),
        "html": Str(),
        "description": DESCRIPTION,
    },
    required=("name", "text"),
)
PROVIDER_TEMPLATE = OneOf(
    (
        Str(allow_empty=False, help="vendor template code; params map the variables in declared order"),
        Obj({"code": Str(allow_empty=False), "params": MapOf(Str())}, required=("code",)),
    )
)
PROVIDER = Obj(
    {
        "name": NAME,
        "type": Str(allow_empty=False, help="provider type from the providers registry"),
        "config": MapOf(AnyValue(), help="validated by the provider type's config schema"),
        "templates": MapOf(PROVIDER_TEMPLATE, help="system template -> vendor template"),
        "signatures": MapOf(Str(allow_empty=False), help="alias -> vendor sign name"),
        "rate": Rate(),
        "circuit": Obj(
            {
                "failure_ratio": Num(0.0, 1.0, exclusive_minimum=True),
                "min_calls": Int(1, 1_000_000),
                "window": Duration(MAX_CIRCUIT_PERIOD, minimum=1),
                "open_for": Duration(MAX_CIRCUIT_PERIOD, minimum=1),
                "half_open_probes": Int(1, 1000),
            }
        ),
        "callback": Obj({"token": Str(), "allow_ips": ListOf(Str(allow_empty=False))}),
        "enabled": Bool(help="false leaves the account out; its ${ENV} are not resolved"),
        "description": DESCRIPTION,
    },
    required=("name", "type"),
)
CANDIDATE = Obj(
    {"use": Str(allow_empty=False), "weight": Int(1, 10000), "tier": Int(1, 100)},
    required=("use",),
)
ROUTE = Obj(
    {
        "name": NAME,
        "priority": PRIORITY,
        "when": WHEN,
        "providers": ListOf(CANDIDATE, min_items=1),
        "defer_until": Str(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", help="HH:MM in the rule set's time zone"),
        "reject": Str(allow_empty=False, help="reason given to the client"),
        "description": DESCRIPTION,
    },
    required=("name",),
)
QUOTA = Obj(
    {
        "name": NAME,
        "priority": PRIORITY,
        "when": WHEN,
        "key": ListOf(Str(enum=KEY_FIELDS), min_items=1),
        "limit": Int(1, MAX_QUOTA_LIMIT),
        "per": Duration(MAX_QUOTA_WINDOW, minimum=1),
        "on_exceed": Str(enum=("reject", "defer")),
        "description": DESCRIPTION,
    },
    required=("name", "key", "limit", "per"),
)
FAILURE = Obj(
    {
        "name": NAME,
        "scene": Str(enum=SCENES),
        "priority": PRIORITY,
        "when": WHEN,
        "action": Str(enum=FAILURE_ACTIONS),
        "retry": Obj(
            {
                "max": Int(0, MAX_RETRIES),
                "delay": Duration(MAX_DELAY),
                "backoff": Num(1.0, MAX_BACKOFF),
                "max_delay": Duration(MAX_DELAY),
            }
        ),
        "switch_provider": Obj({"max": Int(0, MAX_RETRIES), "delay": Duration(MAX_DELAY), "exclude_current": Bool()}),
        "alert": Obj({"webhook": Str(), "level": Str(enum=("info", "warning", "critical"))}),
        "defer": Obj(
            {
                "until": Str(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", help="HH:MM: wait for the next such local time"),
                "timezone": Str(allow_empty=False, help="IANA zone of `until` (the rule set's when absent)"),
                "delay": Duration(MAX_DELAY, help="or wait this long"),
            },
            help="action defer: wait for `until` or for `delay`, then send again without counting a try",
        ),
        "description": DESCRIPTION,
    },
    required=("name", "scene", "action"),
)

ITEMS: dict[str, Spec] = {
    "settings": SETTINGS,
    "channels": CHANNEL,
    "templates": TEMPLATE,
    "providers": PROVIDER,
    "routing": ROUTE,
    "quotas": QUOTA,
    "failures": FAILURE,
}
SECTIONS: dict[str, Spec] = {name: spec if name == "settings" else ListOf(spec) for name, spec in ITEMS.items()}
RULE_FILE = Obj(SECTIONS, help="a message-push rule file; sections may be split across files")


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of one rule file, for editors."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://message-push.dev/schema/rules.json",
        "title": "message-push rule file",
        **RULE_FILE.json(),
    }


@dataclass(frozen=True, slots=True)
class Located:
    """One item of a section with where it came from."""

    section: str
    index: int
    value: Any
    doc: Any = field(repr=False)

    @property
    def path(self) -> Path:
        return (self.section, self.index) if self.index >= 0 else (self.section,)
