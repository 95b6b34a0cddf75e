"""Rule-file problems: one `RuleIssue` per problem, all of them raised together as `RuleError`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """("routing", 0, "when", "channel") -> "routing[0].when.channel"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def suggest(name: object, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" naming the closest choice to a misspelt name, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True, slots=True)
class RuleIssue:
    """One problem, located: file, 1-based line, key path inside the file, message."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class RuleError(Exception):
    """A rule set that cannot be used; carries every problem found, not just the first."""

    def __init__(self, issues: Iterable[RuleIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)
