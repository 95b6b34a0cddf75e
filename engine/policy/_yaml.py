"""YAML text -> plain Python values plus the line of every key and item (for file:line errors)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .issues import Path, RuleIssue, format_path

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class Document:
    """One parsed rule file: its name, its data and where each path starts."""

    file: str
    data: Any
    lines: Mapping[Path, int]

    def line(self, path: Path) -> int:
        """Line of `path`, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def issue(self, path: Path, message: str) -> RuleIssue:
        return RuleIssue(self.file, self.line(path), format_path(path), message)


def parse(file: str, text: str) -> tuple[Document | None, list[RuleIssue]]:
    """Parse one file; on a syntax error return no document and the located error."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [RuleIssue(file, line, "", f"YAML syntax error: {problem}")]
    lines: dict[Path, int] = {(): 1}
    issues: list[RuleIssue] = []
    data = _convert(root, (), lines, issues, file) if root is not None else {}
    return Document(file, data, lines), issues


_constructor = yaml.constructor.SafeConstructor()


def _convert(node: yaml.Node, path: Path, lines: dict[Path, int], issues: list[RuleIssue], file: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _constructor.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                issues.append(RuleIssue(file, key_node.start_mark.line + 1, format_path(path), "keys must be plain strings"))
                continue
            key = str(key)
            child = (*path, key)
            if key in out:
                issues.append(RuleIssue(file, key_node.start_mark.line + 1, format_path(child), "duplicate key"))
                continue
            lines[child] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, child, lines, issues, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), lines, issues, file) for i, item in enumerate(node.value)]
    return _constructor.construct_object(node)
