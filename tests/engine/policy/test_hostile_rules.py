"""Hostile and careless rule files: each class is refused with exact `file:line: path: message` lines, never a traceback."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from tests.engine.policy.rulekit import BILLION_LAUGHS, MINIMAL, NOON, TYPES, load

from engine.policy import RuleError, conditions
from engine.policy.building import is_gateway_setting
from engine.policy.cases import load_cases
from engine.policy.loader import load_dir, load_git, load_texts
from engine.policy.rules import RetryPolicy
from engine.policy.schema import MAX_DELAY
from engine.settings import Settings

RETRY = "failures:\n  - name: f\n    scene: send_failure\n    action: retry\n    retry: {%s}\n"
GATE = "is a setting of the gateway itself; rule files cannot read it"
ONLY_ACCOUNTS = "environment references are allowed only in a provider account's config, enabled, callback"

HOSTILE = {
    "quota window .inf": (
        "quotas:\n  - {name: q, key: [app], limit: 1, per: .inf}\n",
        ["2: quotas[0].per: bad duration inf (a finite number of seconds, at least 0)"],
    ),
    "circuit window .inf": (
        "providers:\n  - {name: c2, type: console, circuit: {window: .inf}}\n",
        ["2: providers[0].circuit.window: bad duration inf (a finite number of seconds, at least 0)"],
    ),
    "backoff .nan": (RETRY % "backoff: .nan", ["5: failures[0].retry.backoff: must be a finite number, got nan"]),
    "delay .inf": (RETRY % "delay: .inf", ["5: failures[0].retry.delay: bad duration inf (a finite number of seconds, at least 0)"]),
    "delay past the cap": (RETRY % "max_delay: 30d", ["5: failures[0].retry.max_delay: must be between 0s and 86400s, got '30d'"]),
    "merge key": (
        "routing:\n  - &r {name: a, providers: [{use: console}]}\n  - {<<: *r, name: b}\n",
        ["3: routing[1]: merge keys (<<) are not supported; write the keys out"],
    ),
    "custom tag": (
        "routing:\n  - {name: !foo a, providers: [{use: console}]}\n",
        ["2: routing[0].name: YAML tag !foo is not allowed (rule files hold plain strings, numbers, booleans, lists and mappings)"],
    ),
    "python tag": (
        "routing:\n  - {name: r, reject: !!python/name:os.system x}\n",
        ["2: routing[0].reject: YAML tag !!python/name:os.system is not allowed "
         "(rule files hold plain strings, numbers, booleans, lists and mappings)"],
    ),
    "recursive alias": ("routing: &x\n  - *x\n", ["1: routing[0]: an alias refers to the list or mapping that contains it"]),
    "billion laughs": (BILLION_LAUGHS, ["5: l4: more than 50000 values once aliases are expanded (nested aliases?)"]),
    "huge repetition": (
        "routing:\n  - {name: r, when: {receiver: {matches: 'a{4294967295}'}}, providers: [{use: console}]}\n",
        ["2: routing[0].when.receiver.matches: bad regular expression 'a{4294967295}': a repetition count above 1000"],
    ),
    "backreference": (
        "routing:\n  - {name: r, when: {receiver: {matches: '(a)\\1'}}, providers: [{use: console}]}\n",
        ["2: routing[0].when.receiver.matches: bad regular expression '(a)\\\\1': invalid escape sequence: \\1 "
         "(RE2 syntax: no backreferences or lookaround)"],
    ),
    "lookahead": (
        "routing:\n  - {name: r, when: {receiver: {matches: '(?=1)'}}, providers: [{use: console}]}\n",
        ["2: routing[0].when.receiver.matches: bad regular expression '(?=1)': invalid perl operator: (?= "
         "(RE2 syntax: no backreferences or lookaround)"],
    ),
    "env in a reject reason": ('routing:\n  - {name: r, reject: "home is ${HOME}"}\n', [f"2: routing[0].reject: ${{HOME}}: {ONLY_ACCOUNTS}"]),
    "env in a template": (
        'templates:\n  - {name: t, text: "${HOME} {x}", variables: [x]}\n',
        [f"2: templates[0].text: ${{HOME}}: {ONLY_ACCOUNTS}"],
    ),
    "env in an alert": (
        'failures:\n  - {name: f, scene: send_failure, action: alert, alert: {webhook: "${HOOK}"}}\n',
        [f"2: failures[0].alert.webhook: ${{HOOK}}: {ONLY_ACCOUNTS}"],
    ),
    "env in a provider template": (
        'providers:\n  - {name: c2, type: console, templates: {code: "${CODE}"}}\n',
        [f"2: providers[0].templates.code: ${{CODE}}: {ONLY_ACCOUNTS}"],
    ),
    "admin token in an account": (
        'providers:\n  - {name: c2, type: console, callback: {token: "${MPUSH_ADMIN_TOKEN}"}}\n',
        [f"2: providers[0].callback.token: ${{MPUSH_ADMIN_TOKEN}} {GATE}"],
    ),
    "encryption key in a disabled account": (
        'providers:\n  - {name: c2, type: sms_x, enabled: false, config: {id: "${APP_ENCRYPTION_KEY}", key: k}}\n',
        [f"2: providers[0].config.id: ${{APP_ENCRYPTION_KEY}} {GATE}"],
    ),
    "misspelt provider": (
        "routing:\n  - name: r\n    providers: [{use: consol}]\n",
        ["3: routing[0].providers[0].use: unknown provider account 'consol' (did you mean 'console'?)"],
    ),
    "misspelt channel": (
        "routing:\n  - {name: r, when: {channel: smss}, providers: [{use: console}]}\n",
        ["2: routing[0].when.channel: unknown channel 'smss' (did you mean 'sms'?)"],
    ),
    "misspelt key": (
        "routing:\n  - {name: r, priorty: 1, providers: [{use: console}]}\n",
        ["2: routing[0].priorty: unknown key (did you mean 'priority'?) "
         "(expected one of: name, priority, when, providers, defer_until, reject, description)"],
    ),
    "tab indentation": ("routing:\n\t- name: r\n", ["2: YAML syntax error: found character that cannot start any token (a tab? indent with spaces)"]),
    "missing space after a colon": (
        "routing:\n  - name:r\n    providers: [{use: console}]\n",
        ["3: YAML syntax error: mapping values are not allowed in this context (is a space missing after the ':' on line 2?)"],
    ),
    "missing dash": (
        "routing:\n  - name: a\n    providers: [{use: console}]\n  name: b\n",
        ["4: YAML syntax error: did not find expected '-' indicator "
         "(every item of a list needs '- ' at the same indentation: is a '-' missing?)"],
    ),
    "5000-digit integer": (
        "routing:\n  - {name: r, priority: " + "9" * 5000 + ", providers: [{use: console}]}\n",
        ["2: routing[0].priority: cannot read '" + "9" * 40 + "…': Exceeds the limit (4300 digits) for integer "
         "string conversion: value has 5000 digits"],
    ),
    "impossible date": ("routing:\n  - {name: r, description: 2024-13-45}\n", ["2: routing[0].description: cannot read '2024-13-45': month must be in 1..12"]),
    "deep nesting": ("x: " + "[" * 500 + "]" * 500 + "\n", ["1: x" + "[0]" * 63 + ": nested deeper than 64 levels"]),
    "lone surrogate": ("routing:\n  - {name: r, reject: '\ud800'}\n", ["2: not valid Unicode text (a lone surrogate)"]),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_refused_with_file_and_line(name: str) -> None:
    """Each hostile class raises RuleError whose text is exactly the expected file:line lines, fast."""
    body, expected = HOSTILE[name]
    started = time.perf_counter()
    with pytest.raises(RuleError) as caught:
        load_texts({"a.yaml": MINIMAL, "h.yaml": body}, env={"HOME": "/root", "MPUSH_ADMIN_TOKEN": "tok-123"},
                   provider_types=TYPES, backend="reference")
    assert str(caught.value).splitlines() == [f"h.yaml:{line}" for line in expected]
    assert time.perf_counter() - started < 1.0
    assert "tok-123" not in str(caught.value) and "/root" not in str(caught.value)


def test_every_variable_the_settings_read_is_a_gateway_setting() -> None:
    """Each environment name engine/settings.py reads (its fields as MPUSH_*, and any literal) is unreadable by rules."""
    source = (Path(__file__).parents[3] / "engine" / "settings.py").read_text(encoding="utf-8")
    literals = set(re.findall(r'environ(?:\.get\(|\[)"([A-Z][A-Z0-9_]*)"', source))
    names = literals | {f"MPUSH_{field.name.upper()}" for field in dataclasses.fields(Settings)}
    assert {"MPUSH_CONFIG", "APP_ENCRYPTION_KEY", "MPUSH_ADMIN_TOKEN", "MPUSH_DATABASE_URL"} <= names
    assert [name for name in sorted(names) if not is_gateway_setting(name)] == []


def test_int64_minimum_is_a_valid_bound() -> None:
    """-2^63 is the smallest int64 and compiles on both backends; one less is refused."""
    text = "routing:\n  - {name: r, when: {attempt: {gt: -9223372036854775808}}, providers: [{use: console}]}\n"
    for backend in ("reference", "network"):
        ruleset = load(text, backend=backend)
        assert [rule.name for rule in ruleset.rules("routing")] == ["r"]
        ruleset.close()
    with pytest.raises(RuleError, match="is outside the 64-bit integer range"):
        load(text.replace("808}", "809}"), backend="reference")


def test_retry_delay_is_capped_and_never_overflows() -> None:
    """retry {max: 1000, backoff: 100} at attempt 200 (and at 2^62) waits max_delay, a finite number."""
    ruleset = load(RETRY.replace("    retry: {%s}", "    retry: {max: 1000, backoff: 100, max_delay: 1h}"), backend="reference")
    policy = ruleset.rules("send_failure")[0].retry
    assert policy.delay_for(200) == policy.delay_for(2**62) == 3600.0
    assert RetryPolicy(delay=MAX_DELAY, backoff=100, max_delay=MAX_DELAY).delay_for(10**30) == MAX_DELAY
    assert RetryPolicy(delay=0.0, backoff=100, max_delay=60).delay_for(10**6) == 0.0


def test_regex_runs_in_linear_time() -> None:
    """The classic catastrophic pattern answers at once on a long non-matching receiver, on both backends."""
    text = "routing:\n  - {name: r, when: {receiver: {matches: '(a+)+$'}}, providers: [{use: console}]}\n"
    assert not conditions.Test("receiver", "matches", "(a+)+$").holds({"receiver": "a" * 100_000 + "!"})
    for backend in ("reference", "network"):
        ruleset = load(text, backend=backend)
        started = time.perf_counter()
        channel = ruleset.channel("sms")
        assert channel is not None
        fact = ruleset.fact(now=NOON, app="a", channel=channel, receiver="a" * 28 + "!")
        assert ruleset.route(fact).rule != "r"
        assert time.perf_counter() - started < 0.5
        ruleset.close()


def test_resolved_secret_never_appears_in_an_error() -> None:
    """A secret read into a typed config key that cannot take it is named by variable, its value never shown."""
    text = 'providers:\n  - {name: v, type: sms_x, config: {id: x, key: k, port: "${SECRET}", mode: "${SECRET}"}}\n'
    with pytest.raises(RuleError) as caught:
        load_texts({"a.yaml": MINIMAL, "s.yaml": text}, env={"SECRET": "hunter2"}, provider_types=TYPES, backend="reference")
    assert str(caught.value).splitlines() == [
        "s.yaml:2: providers[0].config.port: must be an integer, got the value of ${SECRET}",
        "s.yaml:2: providers[0].config.mode: must be one of text, markdown, got the value of ${SECRET}",
    ]


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _loop(path: Path) -> None:
    os.symlink(path.name, path)


def _dangling(path: Path) -> None:
    os.symlink("nowhere.yaml", path)


def _directory(path: Path) -> None:
    path.mkdir()


SPECIAL = {
    "fifo": (_fifo, "is not a regular file (a FIFO, socket or device)"),
    "link loop": (_loop, "symbolic link loop"),
    "dangling link": (_dangling, "dangling symbolic link (to nowhere.yaml)"),
    "directory": (_directory, "is a directory, not a rule file"),
}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_special_files_are_reported_never_opened_blocking(tmp_path: Path, kind: str) -> None:
    """A FIFO, link loop, dangling link or directory named *.yaml is an error at file:1, next to the other files' errors."""
    make, message = SPECIAL[kind]
    (tmp_path / "a.yaml").write_text(MINIMAL + "routing:\n  - {name: r, providers: [{use: nobody}]}\n", encoding="utf-8")
    make(tmp_path / "b.yaml")
    with pytest.raises(RuleError) as caught:
        load_dir(tmp_path, env={}, provider_types=TYPES, backend="reference")
    assert str(caught.value).splitlines() == [
        f"{tmp_path}/a.yaml:8: routing[0].providers[0].use: unknown provider account 'nobody'",
        f"{tmp_path}/b.yaml:1: {message}",
    ]


def test_hidden_names_are_not_rule_files(tmp_path: Path) -> None:
    """An editor's lock file (a dangling link named .#x.yaml) is not read, so editing never breaks a reload."""
    (tmp_path / "a.yaml").write_text(MINIMAL, encoding="utf-8")
    os.symlink("user@host.1234", tmp_path / ".#a.yaml")
    assert load_dir(tmp_path, env={}, provider_types=TYPES, backend="reference").channels.keys() == {"sms"}


def test_latin1_file_does_not_hide_the_other_files_errors(tmp_path: Path) -> None:
    """A file that is not UTF-8 is reported at the line of its first bad byte, and the other files are still checked."""
    (tmp_path / "a.yaml").write_bytes(b"# ok\nrouting:\n  - {name: caf\xe9, reject: no}\n")
    (tmp_path / "b.yaml").write_text(MINIMAL + "routing:\n  - {name: r, providers: [{use: nobody}]}\n", encoding="utf-8")
    with pytest.raises(RuleError) as caught:
        load_dir(tmp_path, env={}, provider_types=TYPES, backend="reference")
    assert str(caught.value).splitlines() == [
        f"{tmp_path}/a.yaml:3: not UTF-8 (byte 0xe9); save the file as UTF-8",
        f"{tmp_path}/b.yaml:8: routing[0].providers[0].use: unknown provider account 'nobody'",
    ]


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    """A rule file past the size budget is one error, read no further than the budget."""
    (tmp_path / "big.yaml").write_bytes(b"# " + b"x" * (1024 * 1024) + b"\n")
    with pytest.raises(RuleError, match=r"big.yaml:1: file is larger than 131072 bytes"):
        load_dir(tmp_path, env={}, provider_types=TYPES, backend="reference")


def test_special_entries_of_the_tests_directory_are_reported(tmp_path: Path) -> None:
    """In tests/, a directory named x.yaml and a FIFO are case-file errors, not a traceback or a hang."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "x.yaml").mkdir()
    os.mkfifo(tests / "y.yaml")
    with pytest.raises(RuleError) as caught:
        load_cases(tests)
    assert str(caught.value).splitlines() == [
        f"{tests}/x.yaml:1: is a directory, not a rule file",
        f"{tests}/y.yaml:1: is not a regular file (a FIFO, socket or device)",
    ]


def test_non_utf8_file_at_a_git_revision_is_an_issue(tmp_path: Path) -> None:
    """load_git reports a committed latin-1 file at its line, beside the other files' errors, instead of a traceback."""
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_bytes(b"routing:\n  - {name: caf\xe9, reject: no}\n")
    (rules / "b.yaml").write_text(MINIMAL + "routing:\n  - {name: r, providers: [{use: nobody}]}\n", encoding="utf-8")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "rules")
    with pytest.raises(RuleError) as caught:
        load_git(tmp_path, "HEAD", "rules", env={}, provider_types=TYPES, backend="reference")
    assert str(caught.value).splitlines() == [
        "git:HEAD:rules/a.yaml:2: not UTF-8 (byte 0xe9); save the file as UTF-8",
        "git:HEAD:rules/b.yaml:8: routing[0].providers[0].use: unknown provider account 'nobody'",
    ]
