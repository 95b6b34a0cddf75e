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


def resolve_env(value: Any, path: Path, env: Mapping[str, str], problems: list[Problem], defaulted: set[Path]) -> Any:
    """Replace every `${NAME}` / `${NAME:-default}` inside strings; unset names are problems.

    A string that is exactly one reference becomes an `EnvStr` so typed keys can coerce it;
    paths that fell back to a default are added to `defaulted`.
    """
    if isinstance(value, dict):
        return {k: resolve_env(v, (*path, k), env, problems, defaulted) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, (*path, i), env, problems, defaulted) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    text = _REFERENCE.sub(lambda m: _lookup(m, path, env, problems, defaulted), value)
    return EnvStr(text) if _REFERENCE.fullmatch(value) else text


def _lookup(match: re.Match[str], path: Path, env: Mapping[str, str], problems: list[Problem], defaulted: set[Path]) -> str:
    name, has_default, default = match.group(1), match.group(2), match.group(3)
    if name in env:
        return env[name]
    if has_default is not None:
        defaulted.add(path)
        return default
    problems.append((path, f"environment variable {name} is not set"))
    return ""

