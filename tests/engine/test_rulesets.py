"""The live rule set: reload swaps atomically, broken files never go live, the watcher reloads on change."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from engine.policy import RuleError
from engine.policy import loader
from engine.policy.loader import load_dir, load_texts
from engine.rulesets import RuleSetHolder
from providers.base import ConfigField

TYPES = {"console": {}, "fake": {}, "sms_x": {"key": ConfigField(secret=True)}}
NOW = datetime(2024, 5, 6, 4, 0, tzinfo=timezone.utc)
CATALOGUE = """
templates: [{name: code, variables: [code], text: "code {code}"}]
channels: [{id: 1, name: sms, type: sms, template: code}]
providers: [{name: console, type: console, config: {}}]
"""


def generation(n: int) -> str:
    """A good rule file whose routing and quota rule names both carry the generation number."""
    return CATALOGUE + f"""
routing:
  - {{name: gen-{n}, when: {{channel: sms}}, providers: [{{use: console}}]}}
quotas:
  - {{name: q-{n}, key: [app], limit: 10, per: 1h}}
"""


BROKEN = CATALOGUE + """
routing:
  - {name: broken, when: {channel: sms}, providers: [{use: nowhere}]}
"""


@pytest.fixture()
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(generation(0), encoding="utf-8")
    return tmp_path


def test_reload_swaps_in_a_good_version(rules_dir: Path) -> None:
    """A changed file becomes current on reload(); counters and status follow."""
    holder = RuleSetHolder(rules_dir, env={}, provider_types=TYPES)
    (rules_dir / "rules.yaml").write_text(generation(1), encoding="utf-8")
    result = holder.reload()
    assert result is holder.current and holder.current.rules("routing")[0].name == "gen-1"
    status = holder.status()
    assert (status["reloads"], status["failures"], status["last_error"]) == (1, 0, None)
    assert status["version"] == str(holder.current.version)


def test_broken_reload_keeps_the_running_version(rules_dir: Path) -> None:
    """A broken file is reported with file:line and the previous version keeps deciding."""
    holder = RuleSetHolder(rules_dir, env={}, provider_types=TYPES)
    before = holder.current
    (rules_dir / "rules.yaml").write_text(BROKEN, encoding="utf-8")
    result = holder.reload()
    assert isinstance(result, RuleError)
    assert holder.current is before
    assert holder.last_error == f"{rules_dir / 'rules.yaml'}:7: routing[0].providers[0].use: unknown provider account 'nowhere'"
    assert holder.status()["failures"] == 1


def test_failing_rule_test_case_blocks_the_swap(rules_dir: Path) -> None:
    """A version whose tests/ cases fail never goes live; the mismatch is the error."""
    holder = RuleSetHolder(rules_dir, env={}, provider_types=TYPES)
    (rules_dir / "tests").mkdir()
    (rules_dir / "tests" / "cases.yaml").write_text(
        "cases:\n  - name: expects gen-0\n    fact: {channel: sms}\n    expect: {route: {rule: gen-0}}\n", encoding="utf-8"
    )
    (rules_dir / "rules.yaml").write_text(generation(1), encoding="utf-8")
    result = holder.reload()
    assert isinstance(result, RuleError)
    assert "rule test 'expects gen-0' failed: route.rule: expected 'gen-0', got 'gen-1'" in str(result)
    assert holder.current.rules("routing")[0].name == "gen-0"


def test_a_file_caught_half_written_is_read_once_its_writer_is_done(rules_dir: Path) -> None:
    """A reload that reads a file while it is rewritten in place (its first half, itself a valid rule set without
    routes, there for half the settling time) loads the whole file, not the half."""
    whole = generation(1)
    half = whole[: whole.index("routing:")]
    assert load_texts({"rules.yaml": half}, env={}, provider_types=TYPES)  # the half alone is a good rule set
    target = rules_dir / "rules.yaml"
    target.write_text(half, encoding="utf-8")
    writer = threading.Timer(loader.SETTLE_SECONDS / 2, lambda: target.write_text(whole, encoding="utf-8"))
    writer.start()
    holder = RuleSetHolder(rules_dir, env={}, provider_types=TYPES)
    writer.join()
    assert holder.current.rules("routing")[0].name == "gen-1"


def test_an_empty_rule_file_is_refused(rules_dir: Path) -> None:
    """An empty file (how a file truncated for its rewrite reads, however long its writer stalls) fails the
    reload with its name; the running version stays."""
    holder = RuleSetHolder(rules_dir, env={}, provider_types=TYPES)
    before = holder.current
    (rules_dir / "rules.yaml").write_text("  \n", encoding="utf-8")
    assert isinstance(holder.reload(), RuleError) and holder.current is before
    assert holder.last_error == f"{rules_dir / 'rules.yaml'}:1: the file is empty: refused, as a file caught being " \
        "rewritten in place reads (remove it, or give it a comment)"


def test_files_that_never_stop_changing_are_not_loaded(rules_dir: Path) -> None:
    """A reload during a rewrite that never settles keeps the running version and says why."""
    holder = RuleSetHolder(rules_dir, env={}, provider_types=TYPES)
    before, stop, writing = holder.current, threading.Event(), threading.Event()

    def rewrite() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            (rules_dir / "rules.yaml").write_text(generation(n), encoding="utf-8")
            writing.set()
            time.sleep(0.01)

    writer = threading.Thread(target=rewrite)
    writer.start()
    writing.wait(5)
    try:
        result = holder.reload()
    finally:
        stop.set()
        writer.join()
    assert isinstance(result, RuleError) and holder.current is before
    assert "kept changing while read" in str(holder.last_error)


def test_initial_load_failure_raises(tmp_path: Path) -> None:
    """A holder cannot start without a valid rule set."""
    (tmp_path / "rules.yaml").write_text(BROKEN, encoding="utf-8")
    with pytest.raises(RuleError):
        RuleSetHolder(tmp_path, env={}, provider_types=TYPES)


def test_unexpected_reload_failure_is_reported_not_raised(rules_dir: Path) -> None:
    """Even a vanished directory turns into a recorded error, never an exception."""
    holder = RuleSetHolder(rules_dir, env={}, provider_types=TYPES)
    (rules_dir / "rules.yaml").unlink()
    assert isinstance(holder.reload(), RuleError)
    assert "no *.yaml rule files" in (holder.last_error or "")


@pytest.mark.timeout(120)
def test_concurrent_evaluations_during_200_reloads(rules_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluations never fail or mix versions while 200 reloads (a fifth broken) swap the rule set."""
    monkeypatch.setattr(loader, "SETTLE_SECONDS", 0.001)  # each file is written whole before its reload
    holder = RuleSetHolder(rules_dir, env={}, provider_types=TYPES)
    stop = threading.Event()
    errors: list[str] = []
    seen: set[str] = set()

    def evaluate() -> None:
        while not stop.is_set():
            ruleset = holder.current
            try:
                fact = ruleset.fact(now=NOW, app="a", channel=ruleset.channels["sms"], receiver="13800138000")
                route, quotas = ruleset.route(fact), ruleset.quotas(fact)
            except Exception as exc:  # any evaluation error fails the test
                errors.append(repr(exc))
                continue
            generation_of_route = route.rule.removeprefix("gen-")
            if route.rule == "broken":
                errors.append("a broken version went live")
            if quotas.checks[0].rule != f"q-{generation_of_route}" or route.version != quotas.version != str(ruleset.version):
                errors.append(f"mixed versions: {route.rule} / {quotas.checks[0].rule}")
            seen.add(route.rule)
            time.sleep(0.0005)  # leave the reloading thread its share of the GIL

    threads = [threading.Thread(target=evaluate) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for n in range(1, 201):
            broken = n % 5 == 0
            (rules_dir / "rules.yaml").write_text(BROKEN if broken else generation(n), encoding="utf-8")
            result = holder.reload()
            if broken:
                assert isinstance(result, RuleError)
            else:
                assert holder.current.rules("routing")[0].name == f"gen-{n}"
                fresh = load_dir(rules_dir, env={}, provider_types=TYPES, backend="reference")
                assert holder.status()["version"] == str(fresh.version)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []
    assert (holder.reloads, holder.failures) == (160, 40)
    assert len(seen) > 1


@pytest.mark.timeout(60)
def test_watcher_reloads_on_file_change(rules_dir: Path) -> None:
    """Writing a rule file makes the watcher call reload(); setting stop ends the loop."""
    holder = RuleSetHolder(rules_dir, env={}, provider_types=TYPES)
    stop = threading.Event()
    watcher = threading.Thread(target=holder.watch, args=(stop,))
    watcher.start()
    try:
        deadline = time.monotonic() + 30
        while holder.reloads == 0 and time.monotonic() < deadline:
            (rules_dir / "rules.yaml").write_text(generation(int(time.monotonic() * 1000)), encoding="utf-8")
            time.sleep(0.5)
        assert holder.reloads >= 1
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert not watcher.is_alive()


def test_watcher_follows_a_git_commit_without_a_file_change(rules_dir: Path) -> None:
    """Committing files already on disk moves the version label to the new commit, no file write needed."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.test", *args], cwd=rules_dir,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    holder = RuleSetHolder(rules_dir, env={}, provider_types=TYPES)
    assert holder.current.version.commit == git("rev-parse", "HEAD")
    stop = threading.Event()
    watcher = threading.Thread(target=holder.watch, args=(stop,), kwargs={"git_every": 0.2})
    watcher.start()
    try:
        git("commit", "-q", "--allow-empty", "-m", "second")
        head = git("rev-parse", "HEAD")
        deadline = time.monotonic() + 15
        while holder.current.version.commit != head and time.monotonic() < deadline:
            time.sleep(0.1)
        assert str(holder.current.version).endswith(f"@{head[:12]}")
    finally:
        stop.set()
        watcher.join(timeout=10)
