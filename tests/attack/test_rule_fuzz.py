"""Rule-file fuzzer: generated and mutated YAML and special files through `mpush rules check|test`, each within
2 s and 256 MiB, end in success or `file:line: path: message` errors, never a traceback, a hang or a blow-up;
a rule set that loads holds only finite, int64 numbers and retry/switch delays within a day."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "rules"
SHIPPED_FILES = sorted(p.name for p in SHIPPED.glob("*.yaml"))
TIME_BUDGET = 2.0  # seconds for one `rules check` of one input
MEMORY_BUDGET = 256 * 1024 * 1024  # the child's whole address space, RLIMIT_AS
LOCATED = re.compile(r"^[^:\n]+:\d+: \S")  # file:line: [path: ]message
EXAMPLES = int(os.environ.get("MPUSH_FUZZ_EXAMPLES", "150"))  # raise it for a longer hunt
SUMMARY = re.compile(r"^(\d+ problem\(s\)|mpush: .+)$")

HOSTILE_SCALARS = [
    ".inf", "-.inf", ".nan", ".NaN", "1e400", "-1e400", "9223372036854775808", "-9223372036854775809",
    "-9223372036854775808", "0x7fffffffffffffff", "1_000_000_000_000_000_000_000", "0o777777777777777777777777",
    "'a{4294967295}'", "'(a+)+$'", "'['", "'(?P<x>a)(?P=x)'", '"${HOME}"', '"${MPUSH_ADMIN_TOKEN}"', "${",
    "!foo x", "!!python/name:os.system", '!!python/object/apply:os.system ["true"]', "!!binary aGVsbG8=",
    "!!set {a, b}", "!!omap [a: 1]", "!!str", "*undefined", "&a x", "2001-12-14t21:59:43.10-05:00", "~", "[]",
    "{}", '"\\ud800"', '"\\x00"', '"\\U0010ffff"', "'" + "x" * 5000 + "'", "[" * 200 + "]" * 200,
    "{<<: {a: 1}}", "-1", "0", "1.5", "true", "no", "'²'", "'١'", "-0", "1e-400", "'\u202e'",
]
BOMBS = [
    "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\n",
    "r: &r [*r]\n",
    "r: &r {k: *r}\n",
    "base: &b {name: x}\nrouting:\n  - <<: *b\n    when: {}\n",
    "routing: &x\n  - name: a\n    when: {}\n    providers: *x\n",
    "%YAML 1.1\n---\nrouting: []\n...\n---\nquotas: []\n",
    "!!python/object/new:os.system [echo hi]\n",
    "? [a, b]\n: c\n",
    "? {a: 1}\n: c\n",
    "1: x\n",
    "null: x\n",
    "\ufeffrouting: []\n",
    "routing:\n\t- name: x\n",
]


def laughs(levels: int, width: int) -> str:
    """A billion-laughs document: each level's list holds `width` aliases of the level below."""
    lines = ["l0: &l0 lol"]
    for level in range(1, levels + 1):
        aliases = ", ".join(f"*l{level - 1}" for _ in range(width))
        lines.append(f"l{level}: &l{level} [{aliases}]")
    lines.append(f"routing: *l{levels}")
    return "\n".join(lines) + "\n"


class LoaderChild:
    """One child process running the CLI under the memory budget; each command gets the time budget."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("MPUSH_RULES_DIR", None)
        self.process = subprocess.Popen([sys.executable, "-m", "tests.attack.loader_child", str(MEMORY_BUDGET)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        assert self.read(timeout=30) == {"ready": True}

    def read(self, timeout: float) -> Any:
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.stop()
            raise AssertionError(f"no answer within {timeout} s (a hang or runaway expansion)")
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            self.process = None
            raise AssertionError(f"the loader process died (exit status {code}; past the memory budget?)")
        return json.loads(line)

    def run(self, command: str, directory: Path) -> dict[str, Any]:
        if self.process is None:
            self.start()
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(f"{command} {directory}\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = self.read(TIME_BUDGET)
        return answer

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def child() -> Iterator[LoaderChild]:
    running = LoaderChild()
    running.start()
    yield running
    running.stop()


def assert_clean_outcome(answer: dict[str, Any], directory: Path, source: str = "") -> None:
    """Success, or every line of the error output is `file:line: …` about a file of `directory`."""
    shown = f"\n--- input ---\n{source[:2000]}" if source else ""
    assert answer["escaped"] is None, f"traceback escaped the CLI:\n{answer['escaped']}{shown}"
    assert "Traceback" not in answer["err"], answer["err"] + shown
    assert answer["status"] in (0, 1), f"exit status {answer['status']}: {answer['err']}{shown}"
    assert not answer.get("insane"), f"loaded with values delivery cannot use: {answer['insane']}{shown}"
    if answer["status"] == 1:
        lines = [line for line in answer["err"].splitlines() if line and not SUMMARY.match(line)]
        assert lines, f"refused without saying why{shown}"
        for line in lines:
            assert LOCATED.match(line) and line.startswith(str(directory)), f"not file:line: {line!r}{shown}"


def rules_with(replaced: str, data: bytes) -> Iterator[Path]:
    """A copy of the shipped rules directory where file `replaced` holds `data`."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        directory = Path(tmp) / "rules"
        shutil.copytree(SHIPPED, directory)
        (directory / replaced).write_bytes(data)
        yield directory


def check_bytes(child: LoaderChild, data: bytes, replaced: str = "routing.yaml") -> None:
    for directory in rules_with(replaced, data):
        assert_clean_outcome(child.run("check", directory), directory, data.decode("utf-8", "replace"))


# --- mutations of the shipped files ---------------------------------------------------------------------------

VALUE = re.compile(r"(?m)(:\s+|-\s+)([^\s{\[#][^\n#,}\]]*)")


def replace_value(text: str, index: int, scalar: str) -> str:
    """The `index`-th (mod count) plain value of `text` replaced by `scalar`."""
    found = list(VALUE.finditer(text))
    if not found:
        return text
    match = found[index % len(found)]
    return text[: match.start(2)] + scalar + text[match.end(2):]


def insert_line(text: str, index: int, snippet: str) -> str:
    """`snippet` as a new line after line `index` (mod count), at that line's indentation."""
    lines = text.splitlines()
    at = index % max(len(lines), 1)
    indent = re.match(r"\s*", lines[at]).group(0) if lines else ""
    return "\n".join([*lines[: at + 1], indent + snippet, *lines[at + 1:]]) + "\n"


def splice_bytes(data: bytes, index: int, junk: bytes) -> bytes:
    at = index % (len(data) + 1)
    return data[:at] + junk + data[at:]


def drop_line(text: str, index: int) -> str:
    lines = text.splitlines()
    if lines:
        del lines[index % len(lines)]
    return "\n".join(lines) + "\n"


def raw(text: str) -> bytes:
    """Text back to the bytes it was decoded from (undecodable bytes were kept as surrogate escapes)."""
    return text.encode("utf-8", "surrogateescape")


MUTATIONS: dict[str, Callable[[str, int, str, bytes], bytes]] = {
    "value": lambda text, i, scalar, junk: raw(replace_value(text, i, scalar)),
    "line": lambda text, i, scalar, junk: raw(insert_line(text, i, f"x{i % 7}: {scalar}")),
    "bytes": lambda text, i, scalar, junk: splice_bytes(raw(text), i, junk),
    "drop": lambda text, i, scalar, junk: raw(drop_line(text, i)),
    "bomb": lambda text, i, scalar, junk: raw(BOMBS[i % len(BOMBS)] + text),
}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(file=st.sampled_from(SHIPPED_FILES),
       steps=st.lists(st.tuples(st.sampled_from(sorted(MUTATIONS)), st.integers(0, 10_000),
                                st.sampled_from(HOSTILE_SCALARS), st.binary(min_size=1, max_size=8)),
                      min_size=1, max_size=4))
def test_mutated_shipped_files_load_or_fail_located(child: LoaderChild, file: str,
                                                    steps: list[tuple[str, int, str, bytes]]) -> None:
    """Shipped rule files with hostile values, lines, bytes and alias bombs spliced in load or fail with file:line."""
    data = (SHIPPED / file).read_bytes()
    for name, index, scalar, junk in steps:
        text = data.decode("utf-8", "surrogateescape")
        data = MUTATIONS[name](text, index, scalar, junk)
    check_bytes(child, data, file)


# --- generated documents --------------------------------------------------------------------------------------

KEYS = ["settings", "templates", "channels", "providers", "routing", "quotas", "failures", "send_failure",
        "name", "id", "type", "when", "receiver", "matches", "channel", "use", "providers", "per", "window",
        "limit", "retry", "max", "backoff", "delay", "priority", "text", "variables", "template", "config",
        "enabled", "reject", "timezone", "then", "scene", "app", "tags", "hours", "in", "not"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.sampled_from(["(a+)+$", "a{4294967295}", "${HOME}", "${MPUSH_ADMIN_TOKEN}", "${X", "1m", "-1s", "1e9h",
                     "00:00-24:00", "25:61-99:99", "otp", "verify-sms", "console", "sms"]))


def documents() -> st.SearchStrategy[Any]:
    return st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(st.sampled_from(KEYS), inner, max_size=6), max_leaves=40)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.dictionaries(st.sampled_from(KEYS[:8]), documents(), max_size=6))
def test_generated_documents_load_or_fail_located(child: LoaderChild, data: dict[str, Any]) -> None:
    """Generated rule documents (any mix of sections, keys and values, inf/nan/huge numbers) load or fail with
    file:line."""
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return
    check_bytes(child, text.encode("utf-8", "surrogatepass"), "zz-generated.yaml")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(levels=st.integers(1, 30), width=st.integers(2, 12))
def test_alias_bombs_fail_fast(child: LoaderChild, levels: int, width: int) -> None:
    """Nested aliases of any depth and width are measured, not expanded: refused or loaded within budget."""
    check_bytes(child, laughs(levels, width).encode(), "zz-bomb.yaml")


@pytest.mark.parametrize("text", BOMBS, ids=range(len(BOMBS)))
def test_fixed_hostile_documents(child: LoaderChild, text: str) -> None:
    """Recursive aliases, merge keys, python tags, complex keys, BOMs and tabs fail with file:line or load."""
    check_bytes(child, text.encode(), "zz-hostile.yaml")


def test_a_file_past_the_size_limit_is_refused_unread(child: LoaderChild) -> None:
    """A 300 MB sparse rule file is refused by its size without being read whole."""
    for directory in rules_with("zz-big.yaml", b""):
        with open(directory / "zz-big.yaml", "r+b") as handle:
            handle.truncate(300 * 1024 * 1024)
        answer = child.run("check", directory)
        assert_clean_outcome(answer, directory)
        assert answer["status"] == 1 and "larger than" in answer["err"]


# --- special files --------------------------------------------------------------------------------------------

def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _loop(path: Path) -> None:
    os.symlink(path.name, path)


def _dangling(path: Path) -> None:
    os.symlink("nowhere.yaml", path)


def _directory(path: Path) -> None:
    path.mkdir()


def _device(path: Path) -> None:
    os.symlink("/dev/zero", path)


def _latin1(path: Path) -> None:
    path.write_bytes("routing:\n  - name: caf\xe9\n".encode("latin-1"))


SPECIAL = {"fifo": _fifo, "loop": _loop, "dangling": _dangling, "directory": _directory, "device": _device,
           "latin1": _latin1}


@pytest.mark.parametrize("where", ["", "tests"])
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_special_files_are_reported_not_skipped(child: LoaderChild, kind: str, where: str) -> None:
    """A FIFO, link loop, dangling link, directory, device or latin-1 file named x.yaml (in rules/ or rules/tests/)
    is reported at its name by `rules check` and `rules test`, never skipped, opened blocking or a traceback."""
    for directory in rules_with("routing.yaml", (SHIPPED / "routing.yaml").read_bytes()):
        target = directory / where / "x.yaml"
        SPECIAL[kind](target)
        command = "test" if where else "check"
        answer = child.run(command, directory)
        assert_clean_outcome(answer, directory)
        assert answer["status"] == 1 and f"{target}:" in answer["err"], answer["err"]


def test_the_shipped_rules_pass_through_the_harness(child: LoaderChild) -> None:
    """The harness itself: the shipped rules check clean and their cases pass in the budgeted child."""
    assert child.run("check", SHIPPED)["status"] == 0
    assert child.run("test", SHIPPED)["status"] == 0
