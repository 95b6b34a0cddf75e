"""YAML text -> plain Python values plus the line of every key and item (for file:line errors), within a budget.

Rule files are hostile input: only plain YAML (strings, numbers, booleans, null, lists, mappings,
anchors and aliases) is read, and a file may not grow past a size, depth and expansion budget, so a
few bytes of aliases ("billion laughs") fail fast instead of eating the process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .issues import Path, RuleIssue, format_path

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Reading costs ~20 µs a YAML value, so these keep any one file well under a second; they are ten times
# what the engine's own limit of 5000 compiled rules needs.
MAX_FILE_BYTES = 128 * 1024  # one rule file, as UTF-8
MAX_DIR_BYTES = 2 * 1024 * 1024  # all the rule files of a directory together
MAX_NODES = 50_000  # values after alias expansion, per file
MAX_EXPANDED_CHARS = 2 * 1024 * 1024  # text after alias expansion, per file
MAX_DEPTH = 64  # nesting of lists and mappings

_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp", "seq", "map")
)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NO_SPACE_AFTER_COLON = re.compile(r"^\s*(?:-\s+)?[\w.-]+:[^\s:/]")
_HINTS = (
    ("cannot start any token", "a tab? indent with spaces"),
    ("tab character", "indent with spaces, not tabs"),
    ("expected '-' indicator", "every item of a list needs '- ' at the same indentation: is a '-' missing?"),
    ("did not find expected key", "check the indentation; is a '- ' missing before a list item?"),
    ("could not find expected ':'", "is a space missing after a ':'?"),
    ("mapping values are not allowed", "is a space missing after a ':', or does a value with ': ' need quotes?"),
)


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


def decode(file: str, data: bytes) -> tuple[str | None, list[RuleIssue]]:
    """UTF-8 bytes of a rule file -> text; a file too large or not UTF-8 is an issue at its line."""
    if len(data) > MAX_FILE_BYTES:
        return None, [RuleIssue(file, 1, "", f"file is larger than {MAX_FILE_BYTES} bytes")]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start : exc.start + 1].hex()
        return None, [RuleIssue(file, line, "", f"not UTF-8 (byte 0x{byte}); save the file as UTF-8")]


def parse(file: str, text: str) -> tuple[Document | None, list[RuleIssue]]:
    """Parse one file; on a syntax error or a blown budget return no document and the located error."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return None, [RuleIssue(file, text.count("\n", 0, exc.start) + 1, "", "not valid Unicode text (a lone surrogate)")]
    if size > MAX_FILE_BYTES:
        return None, [RuleIssue(file, 1, "", f"file is larger than {MAX_FILE_BYTES} bytes")]
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        return None, [_syntax_issue(file, text, exc)]
    if root is None:
        return Document(file, {}, {(): 1}), []
    walk = _Walk(file)
    try:
        walk.measure(root, ())
        data = walk.convert(root, ())
    except _Refused as exc:
        return None, [*walk.issues, exc.issue]
    return Document(file, data, walk.lines), walk.issues


def _syntax_issue(file: str, text: str, exc: yaml.YAMLError) -> RuleIssue:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    hint = next((advice for needle, advice in _HINTS if needle in problem), "")
    suspect = _missing_space_line(text, line)
    if suspect and "':'" in hint:
        hint = f"is a space missing after the ':' on line {suspect}?"
    return RuleIssue(file, line, "", f"YAML syntax error: {problem}" + (f" ({hint})" if hint else ""))


def _missing_space_line(text: str, line: int) -> int | None:
    """The line (at or just before `line`) holding `key:value` with no space after the colon, if any."""
    lines = text.splitlines()
    for number in range(line, max(line - 3, 0), -1):
        if number <= len(lines) and _NO_SPACE_AFTER_COLON.match(lines[number - 1]):
            return number
    return None


class _Refused(Exception):
    """The file may not be converted further (budget, recursion, unsupported YAML); carries the issue."""

    def __init__(self, issue: RuleIssue) -> None:
        self.issue = issue


class _Walk:
    """The conversion of one file: measured first (budget, tags, cycles), then built with line numbers."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Path, int] = {(): 1}
        self.issues: list[RuleIssue] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self.sizes: dict[int, tuple[int, int]] = {}  # node id -> (values, characters) once aliases are expanded
        self.open: set[int] = set()  # collections being measured, to catch an alias inside itself

    def refuse(self, node: yaml.Node, path: Path, message: str) -> _Refused:
        return _Refused(RuleIssue(self.file, node.start_mark.line + 1, format_path(path), message))

    def measure(self, node: yaml.Node, path: Path) -> tuple[int, int]:
        """Check the node graph before building anything: plain tags, depth, no cycle, and the size it
        expands to, computed once per node so a few bytes of nested aliases cost a few steps, not billions."""
        known = self.sizes.get(id(node))
        if known is not None:
            return known
        if node.tag not in _PLAIN_TAGS:
            raise self.refuse(node, path, _tag_message(node.tag))
        if isinstance(node, yaml.ScalarNode):
            size = (1, len(node.value))
        else:
            if len(path) >= MAX_DEPTH:
                raise self.refuse(node, path, f"nested deeper than {MAX_DEPTH} levels")
            if id(node) in self.open:
                raise self.refuse(node, path, "an alias refers to the list or mapping that contains it")
            self.open.add(id(node))
            size = (1, 0)
            for child, child_path in self.children(node, path):
                nodes, chars = self.measure(child, child_path)
                size = (size[0] + nodes, size[1] + chars)
            self.open.discard(id(node))
        if size[0] > MAX_NODES:
            raise self.refuse(node, path, f"more than {MAX_NODES} values once aliases are expanded (nested aliases?)")
        if size[1] > MAX_EXPANDED_CHARS:
            raise self.refuse(node, path, f"more than {MAX_EXPANDED_CHARS} characters of text once aliases are expanded")
        self.sizes[id(node)] = size
        return size

    def children(self, node: yaml.Node, path: Path) -> list[tuple[yaml.Node, Path]]:
        if isinstance(node, yaml.SequenceNode):
            return [(item, (*path, i)) for i, item in enumerate(node.value)]
        out: list[tuple[yaml.Node, Path]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise self.refuse(key_node, path, "merge keys (<<) are not supported; write the keys out")
            child = (*path, str(key_node.value)) if isinstance(key_node, yaml.ScalarNode) else path
            out += [(key_node, child), (value_node, child)]
        return out

    def convert(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def scalar(self, node: yaml.Node, path: Path) -> Any:
        try:
            return self.constructor.yaml_constructors[node.tag](self.constructor, node)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            shown = node.value if len(node.value) <= 40 else node.value[:40] + "…"
            raise self.refuse(node, path, f"cannot read {shown!r}: {str(exc).splitlines()[0].split(';')[0][:120]}") from None

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = self.scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
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


def _tag_message(tag: str) -> str:
    shown = "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag
    return f"YAML tag {shown[:60]} is not allowed (rule files hold plain strings, numbers, booleans, lists and mappings)"
