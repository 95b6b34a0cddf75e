"""Fuzzing the rule loader: generated and mutated YAML, hostile bytes and special files, each within a time and memory budget.

Every input must end as a loaded rule set or a RuleError whose every line is `file:line: ...`; never a
traceback, a hang or growth past the budget. The generated inputs run in-process (tracemalloc measures
them); the special cases run in a child process under RLIMIT_AS 256 MiB with a 2 s timeout.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.engine.policy.rulekit import BILLION_LAUGHS, MINIMAL, TYPES

from engine.policy import RuleError
from engine.policy._yaml import decode
from engine.policy.loader import load_texts

ROOT = Path(__file__).parents[3]
TIME_BUDGET = 2.0  # seconds per input
MEMORY_BUDGET = 256 * 1024 * 1024  # address space of the child process
TRACED_BUDGET = 64 * 1024 * 1024  # Python allocations of one in-process load
LOCATED = re.compile(r"^(a|f)\.yaml:\d+: ")


# Values a careless or hostile author writes: numbers at and past every edge, env references, regexes.
NASTY_SCALARS = st.one_of(
    st.sampled_from([
        ".inf", "-.inf", ".nan", "1e400", "-1e400", "9" * 30, "-9223372036854775808", "9223372036854775808", "0", "-1",
        "${HOME}", "${MPUSH_ADMIN_TOKEN}", "${X:-1}", "'(a+)+$'", "'a{4294967295}'", "'(a)\\1'", "'(?=a)'", "~", "null",
        "yes", "2024-13-45", "2024-01-01", "0x1F", "0o17", "1_000", "'\\t'", "!foo x", "!!python/name:os.system x",
        "!!binary aGk=", "!!set {a, b}", "'5s'", "'1d'", "'500ms'", "'100/s'", "'0/s'", "'9999999999/s'", "'30d'",
    ]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12).map(json.dumps),
)
KEYS = st.sampled_from([
    "name", "id", "type", "template", "text", "variables", "when", "providers", "use", "weight", "tier", "priority",
    "reject", "defer_until", "key", "limit", "per", "on_exceed", "scene", "action", "retry", "max", "delay", "backoff",
    "max_delay", "switch_provider", "circuit", "window", "open_for", "rate", "config", "enabled", "callback", "token",
    "allow_ips", "channel", "receiver", "attempt", "matches", "in", "lt", "gte", "prefix", "all", "any", "not", "<<",
])
SECTIONS = st.sampled_from(["routing", "quotas", "failures", "providers", "channels", "templates", "settings", "routes"])


def _flow(depth: int) -> st.SearchStrategy[str]:
    """YAML flow text: nested mappings and lists over nasty scalars, some anchored and aliased."""
    if depth == 0:
        return NASTY_SCALARS
    inner = _flow(depth - 1)
    mapping = st.lists(st.tuples(KEYS, inner), max_size=5).map(lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}")
    sequence = st.lists(inner, max_size=5).map(lambda items: "[" + ", ".join(items) + "]")
    return st.one_of(inner, mapping, sequence)


def _value(valid: list[str]) -> st.SearchStrategy[str]:
    """Mostly a valid value for the key, sometimes a nasty one."""
    return st.one_of(*[st.sampled_from(valid)] * 4, NASTY_SCALARS)


DURATION = _value(["0", "1", "2s", "500ms", "5m", "1h", "1d"])
PLAUSIBLE = st.one_of(
    st.builds(
        "routing:\n  - {{name: r, priority: {}, when: {{channel: sms, receiver: {{matches: {}}}}}, providers: [{{use: console}}]}}\n".format,
        _value(["0", "7", "65535"]), _value(["'^1'", "'(a+)+$'", "'[0-9]{3}'", "'x|y'"]),
    ),
    st.builds(
        "quotas:\n  - {{name: q, key: [app], limit: {}, per: {}}}\n".format,
        _value(["1", "100", "9007199254740992"]), DURATION,
    ),
    st.builds(
        "failures:\n  - {{name: f, scene: send_failure, action: retry, retry: {{max: {}, delay: {}, backoff: {}, max_delay: {}}}}}\n".format,
        _value(["0", "3", "1000"]), DURATION, _value(["1", "2", "1.5", "100"]), DURATION,
    ),
    st.builds(
        "providers:\n  - {{name: v, type: sms_x, enabled: {}, config: {{id: {}, key: {}}}, rate: {}}}\n".format,
        _value(["true", "false", "'${X:-true}'"]), _value(["a", "'${X}'"]), _value(["k", "'${HOME}'"]),
        _value(["'10/s'", "'5/10s'"]),
    ),
)
RANDOM_SECTIONS = st.lists(st.tuples(SECTIONS, st.lists(_flow(3), max_size=4)), min_size=1, max_size=4).map(
    lambda sections: "".join(f"{name}:\n" + "".join(f"  - {item}\n" for item in items) for name, items in sections)
)
RULE_TEXT = st.one_of(PLAUSIBLE, PLAUSIBLE, RANDOM_SECTIONS)
ALIASES = st.sampled_from([
    "x: &a [1, 2]\ny: *a\n", "x: &a {k: v}\ny: {<<: *a}\n", "x: &a [*a]\n", "x: *nope\n",
    "\n".join(BILLION_LAUGHS.splitlines()[:8]) + "\n",
    "s: &s '" + "x" * 5000 + "'\nt: [" + ", ".join(["*s"] * 1000) + "]\n",
])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A generated rule file (next to a.yaml with the catalogue), then byte-level damage: insertions, deletions, tabs, non-UTF-8 bytes, aliases."""
    data = bytearray(draw(RULE_TEXT).encode())
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 4]))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["bytes", "delete", "tab", "alias", "dash", "colon"]))
        if kind == "bytes":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "alias":
            data[at:at] = draw(ALIASES).encode()
        else:
            data[at:at] = {"tab": b"\t", "dash": b"- ", "colon": b":"}[kind]
    return bytes(data)


def _load(files: dict[str, bytes]) -> tuple[list[str], float, int]:
    """Lines of the RuleError (empty when it loaded), seconds and traced peak bytes; fails on any other exception."""
    tracemalloc.start()
    started = time.perf_counter()
    texts, unreadable = {}, []
    for name, data in files.items():
        text, issues = decode(name, data)
        unreadable += issues
        if text is not None:
            texts[name] = text
    try:
        load_texts(texts, env={"HOME": "/root", "X": "2"}, provider_types=TYPES, backend="reference",
                   unreadable=unreadable).close()
        lines: list[str] = []
    except RuleError as exc:
        lines = str(exc).splitlines()
    finally:
        seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return lines, seconds, peak


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_generated_files_load_or_fail_located_within_budget(data: bytes) -> None:
    """A generated, damaged rule file (beside a clean one) loads or is refused with file:line lines, in 2 s and 64 MiB."""
    lines, seconds, peak = _load({"a.yaml": MINIMAL.encode(), "f.yaml": data})
    assert all(LOCATED.match(line) for line in lines), lines
    assert seconds < TIME_BUDGET and peak < TRACED_BUDGET


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_load_or_fail_located(data: bytes) -> None:
    """Any bytes at all as a rule file are refused (or loaded) with file:line lines, never a traceback."""
    lines, seconds, _ = _load({"f.yaml": data})
    assert all(LOCATED.match(line) for line in lines), lines
    assert seconds < TIME_BUDGET


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BUDGET, MEMORY_BUDGET))


def run_child(directory: Path) -> dict[str, Any]:
    """Load `directory` in a child process under the memory limit; the 2 s budget starts once it has imported."""
    child = subprocess.Popen([sys.executable, "-m", "tests.engine.policy.loadcheck", str(directory)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_limit_memory)
    assert child.stderr is not None
    try:  # "ready" comes on stderr: reading it must not buffer any of stdout, which communicate reads raw
        assert child.stderr.readline() == "ready\n"
        out, err = child.communicate(timeout=TIME_BUDGET)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, err
    return json.loads(out)


def _write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        data = text.encode() if isinstance(text, str) else text
        (root / name).write_bytes(data)

    return make


def _fifo_in_tests(root: Path) -> None:
    (root / "tests").mkdir()
    os.mkfifo(root / "tests" / "t.yaml")


SPECIAL: dict[str, tuple[Callable[[Path], None], str]] = {
    "billion laughs": (_write("b.yaml", BILLION_LAUGHS), "b.yaml:5: l4: more than 50000 values once aliases are expanded"),
    "quadratic blow-up": (
        _write("b.yaml", "s: &s '" + "x" * 100_000 + "'\nt: [" + ", ".join(["*s"] * 100) + "]\n"),
        "b.yaml:2: t: more than 2097152 characters of text once aliases are expanded",
    ),
    "alias fan-out": (
        _write("b.yaml", "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\nb: [" + ", ".join(["*a"] * 25_000) + "]\n"),
        "b.yaml:2: b: more than 50000 values",
    ),
    "recursive alias": (_write("b.yaml", "a: &a [*a]\n"), "b.yaml:1: a[0]: an alias refers to the list or mapping that contains it"),
    "deep flow nesting": (_write("b.yaml", "a: " + "[" * 990 + "]" * 990 + "\n"), "nested deeper than 64 levels"),
    "deep block nesting": (
        _write("b.yaml", "".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "v: 1\n"),
        "nested deeper than 64 levels",
    ),
    "1 MB file": (_write("b.yaml", "# " + "x" * (1 << 20) + "\n"), "b.yaml:1: file is larger than 131072 bytes"),
    "widest file": (_write("b.yaml", "b: [" + ", ".join(["1"] * 43_000) + "]\n"), "b.yaml:1: b: unknown section"),
    "latin-1": (_write("b.yaml", b"routing:\n  - {name: caf\xe9}\n"), "b.yaml:2: not UTF-8 (byte 0xe9)"),
    "python tag": (_write("b.yaml", "a: !!python/object/apply:os.system [echo hi]\n"), "YAML tag !!python/object/apply:os.system is not allowed"),
    "fifo": (lambda root: os.mkfifo(root / "b.yaml"), "b.yaml:1: is not a regular file"),
    "link loop": (lambda root: os.symlink("b.yaml", root / "b.yaml"), "b.yaml:1: symbolic link loop"),
    "dangling link": (lambda root: os.symlink("gone.yaml", root / "b.yaml"), "b.yaml:1: dangling symbolic link"),
    "fifo in tests": (_fifo_in_tests, "t.yaml:1: is not a regular file"),
    "directory in tests": (lambda root: (root / "tests" / "x.yaml").mkdir(parents=True), "x.yaml:1: is a directory, not a rule file"),
}


@pytest.mark.parametrize("case", sorted(SPECIAL))
def test_special_input_is_refused_within_time_and_memory(tmp_path: Path, case: str) -> None:
    """Each special input ends in a child limited to 256 MiB within 2 s, refused with the expected file:line line."""
    make, expected = SPECIAL[case]
    (tmp_path / "a.yaml").write_text(MINIMAL + "routing:\n  - {name: r, providers: [{use: console}]}\n", encoding="utf-8")
    make(tmp_path)
    report = run_child(tmp_path)
    assert report["outcome"] == "refused", report["lines"]
    assert any(expected in line for line in report["lines"]), report["lines"]
    assert all(re.match(r"^\S+\.yaml:\d+: ", line) for line in report["lines"]), report["lines"]
    assert report["seconds"] < TIME_BUDGET and report["max_rss"] < MEMORY_BUDGET


def test_clean_directory_loads_in_the_child(tmp_path: Path) -> None:
    """The child loads a clean directory, so a refusal above is the loader's answer, not a broken harness."""
    (tmp_path / "a.yaml").write_text(MINIMAL + "routing:\n  - {name: r, providers: [{use: console}]}\n", encoding="utf-8")
    assert run_child(tmp_path)["outcome"] == "loaded"
