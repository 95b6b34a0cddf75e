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
    walk = _Walk(file)
    data = walk.convert(root, ()) if root is not None else {}
    return Document(file, data, walk.lines), walk.issues


class _Walk:
    """One conversion. Its constructor caches every node it builds, so it must not outlive the file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Path, int] = {(): 1}
        self.issues: list[RuleIssue] = []
        self.constructor = yaml.constructor.SafeConstructor()

    def convert(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node)

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.constructor.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                self.issues.append(RuleIssue(self.file, line, format_path(path), "keys must be plain strings"))
                continue
            child = (*path, str(key))
            if str(key) in out:
                self.issues.append(RuleIssue(self.file, line, format_path(child), "duplicate key"))
                continue
            self.lines[child] = line
            out[str(key)] = self.convert(value_node, child)
        return out
