"""Shared state while turning parsed rule files into the model: items, issues, notes, `${ENV}`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._yaml import Document
from .issues import Path, RuleIssue, format_path
from .rules import Origin
from .schema import EnvStr, Located, Problem

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")
ENV_KEYS = ("config", "enabled", "callback")  # the only keys of a provider account that may hold ${NAME}
# The gateway's own settings (engine/settings.py reads MPUSH_* and APP_ENCRYPTION_KEY) are never readable.
_RESERVED_PREFIX = "MPUSH_"
_RESERVED_NAMES = frozenset({"APP_ENCRYPTION_KEY"})


def is_gateway_setting(name: str) -> bool:
    """Whether an environment variable belongs to the gateway itself, which rule files may not read."""
    return name.startswith(_RESERVED_PREFIX) or name in _RESERVED_NAMES


@dataclass
class Context:
    """Everything the section builders share; they report problems here instead of raising."""

    env: Mapping[str, str]
    items: dict[str, list[Located]] = field(default_factory=dict)
    declared: dict[str, set[str]] = field(default_factory=dict)  # names, including items with problems
    issues: list[RuleIssue] = field(default_factory=list)
    notes: list[RuleIssue] = field(default_factory=list)

    def section(self, name: str) -> list[Located]:
        return self.items.get(name, [])

    def unique(self, section: str) -> list[Located]:
        """Items of a section with unique names; later duplicates are reported and left out."""
        seen: dict[str, Located] = {}
        for item in self.section(section):
            name = item.value["name"]
            if name in seen:
                first = self.origin(seen[name])
                self.problem(item, ("name",), f"duplicate {section} name {name!r} (first defined at {first})")
                continue
            seen[name] = item
        return list(seen.values())

    def problem(self, item: Located, path: Path, message: str) -> None:
        doc: Document = item.doc
        self.issues.append(doc.issue((*item.path, *path), message))

    def problems(self, item: Located, problems: list[Problem]) -> bool:
        """Report (path, message) pairs whose paths are absolute; True when there were any."""
        doc: Document = item.doc
        self.issues.extend(doc.issue(path, message) for path, message in problems)
        return bool(problems)

    def note(self, item: Located, message: str) -> None:
        doc: Document = item.doc
        self.notes.append(doc.issue(item.path, message))

    def origin(self, item: Located) -> Origin:
        doc: Document = item.doc
        return Origin(doc.file, doc.line(item.path), format_path(item.path))


def misplaced_env(item: Located) -> list[Problem]:
    """`${NAME}` outside a provider account's config / enabled / callback, or naming a gateway setting."""
    problems: list[Problem] = []
    if item.section == "providers" and isinstance(item.value, dict):
        for key, value in item.value.items():
            _references(value, (*item.path, key), key in ENV_KEYS, problems)
    else:
        _references(item.value, item.path, False, problems)
    return problems


def _references(value: Any, path: Path, allowed: bool, problems: list[Problem]) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _references(child, (*path, key), allowed, problems)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _references(child, (*path, i), allowed, problems)
    elif isinstance(value, str) and "${" in value:
        for name in dict.fromkeys(match.group(1) for match in _REFERENCE.finditer(value)):
            if not allowed:
                problems.append((path, f"${{{name}}}: environment references are allowed only in a provider "
                                       f"account's {', '.join(ENV_KEYS)}"))
            elif is_gateway_setting(name):
                problems.append((path, f"${{{name}}} is a setting of the gateway itself; rule files cannot read it"))


def resolve_env(value: Any, path: Path, env: Mapping[str, str], problems: list[Problem], defaulted: set[Path]) -> Any:
    """Replace every `${NAME}` / `${NAME:-default}` inside strings; unset names are problems.

    Every string holding a reference becomes an `EnvStr` naming its references (so messages name them
    instead of showing the value); paths that fell back to a default are added to `defaulted`.
    """
    if isinstance(value, dict):
        return {k: resolve_env(v, (*path, k), env, problems, defaulted) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, (*path, i), env, problems, defaulted) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    resolved = EnvStr(_REFERENCE.sub(lambda m: _lookup(m, path, env, problems, defaulted), value))
    resolved.names = tuple(dict.fromkeys(match.group(1) for match in _REFERENCE.finditer(value)))
    resolved.whole = _REFERENCE.fullmatch(value) is not None
    return resolved


def _lookup(match: re.Match[str], path: Path, env: Mapping[str, str], problems: list[Problem], defaulted: set[Path]) -> str:
    name, has_default, default = match.group(1), match.group(2), match.group(3)
    if name in env:
        return env[name]
    if has_default is not None:
        defaulted.add(path)
        return default
    problems.append((path, f"environment variable {name} is not set"))
    return ""

