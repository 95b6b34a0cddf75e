"""`mpush rules check | test | explain | diff | schema`: output and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.cli import main

SHIPPED = Path(__file__).parents[2] / "rules"


@pytest.fixture()
def rules_copy(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(SHIPPED, target)
    return target


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["rules", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_summarises_the_shipped_rules(capsys: pytest.CaptureFixture[str]) -> None:
    """check exits 0 and prints the version and every section's rules."""
    code, out, _ = run(capsys, "check", str(SHIPPED))
    assert code == 0
    assert out.startswith("rule set ") and " OK (network backend, time zone Asia/Shanghai" in out
    assert "1:verify-sms" in out and "otp-china" in out and "balance-alert" in out


def test_check_lists_every_error_and_exits_1(rules_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check exits 1 and prints each problem as file:line: path: message."""
    text = (rules_copy / "routing.yaml").read_text(encoding="utf-8")
    (rules_copy / "routing.yaml").write_text(text.replace("use: fake}", "use: faek}").replace("priority: 300", "priority: -3"))
    code, _, err = run(capsys, "check", str(rules_copy))
    assert code == 1
    assert f"{rules_copy / 'routing.yaml'}:7: routing[0].priority: must be between 0 and 65535, got -3" in err
    assert "unknown provider account 'faek'" in err and "2 problem(s)" in err


def test_test_runs_the_shipped_cases(capsys: pytest.CaptureFixture[str]) -> None:
    """test exits 0 when every case passes and says how many ran."""
    code, out, _ = run(capsys, "test", str(SHIPPED))
    assert code == 0 and "0 failed" in out


def test_test_shows_expected_and_actual(rules_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A changed rule breaks its case: exit 1, with the case location, expected and actual."""
    text = (rules_copy / "failures.yaml").read_text(encoding="utf-8")
    (rules_copy / "failures.yaml").write_text(text.replace("retry: {max: 3, delay: 2s", "retry: {max: 3, delay: 3s"))
    code, out, _ = run(capsys, "test", str(rules_copy))
    assert code == 1
    assert "an Aliyun system error retries with backoff: failure.delay_seconds: expected 4.0, got 6.0" in out
    assert "2 failed" in out  # the transient retry and the catch-all retry share that delay


def test_explain_prints_the_trace(capsys: pytest.CaptureFixture[str]) -> None:
    """explain shows the fact, the winner, the losers with reasons and the decision."""
    fact = json.dumps({"channel": "verify-sms", "receiver": "+14155552671", "attempt": 1, "error_class": "account",
                       "error_code": "isp.RAM_PERMISSION_DENY", "now": "2024-05-06T10:00:00+08:00"})
    code, out, _ = run(capsys, "explain", "--rules", str(SHIPPED), "--scene", "send_failure", fact)
    assert code == 0
    assert "receiver.country = 'US'" in out
    assert "WIN  otp-international" in out and "otp-china (priority 100" in out and "got 'US'" in out
    assert "=> switch_provider by account-switch after 0s" in out


def test_explain_reads_a_fact_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """@file reads the fact from a file."""
    (tmp_path / "fact.json").write_text('{"channel": 2, "receiver": "a@b.example"}')
    code, out, _ = run(capsys, "explain", "--rules", str(SHIPPED), f"@{tmp_path / 'fact.json'}")
    assert code == 0 and "receiver.domain = 'b.example'" in out


def test_explain_rejects_a_bad_fact(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown channel or field is a clear error and exit 2."""
    code, _, err = run(capsys, "explain", "--rules", str(SHIPPED), '{"channel": "nope"}')
    assert code == 2 and "unknown channel 'nope'" in err
    code, _, err = run(capsys, "explain", "--rules", str(SHIPPED), '{"channel": 1, "colour": "red"}')
    assert code == 2 and "unknown fact field(s) colour" in err


FACTS = [
    {"channel": "verify-sms", "receiver": "13800138000", "now": "2024-05-06T10:00:00+08:00"},
    {"channel": "verify-sms", "receiver": "13900139000", "now": "2024-05-06T10:00:00+08:00"},
    {"channel": "notice-email", "receiver": "a@b.example"},
    {"channel": "verify-sms", "receiver": "13800138000", "attempt": 1, "error_message": "x", "scene": "send_failure"},
]


def test_diff_counts_changed_decisions_per_rule(rules_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """diff replays every fact through both versions, shows changes with counts per rule, exits 1."""
    text = (rules_copy / "routing.yaml").read_text(encoding="utf-8")
    (rules_copy / "routing.yaml").write_text(text.replace("name: otp-china", "name: otp-cn"))
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in FACTS) + "\n")
    code, out, _ = run(capsys, "diff", str(SHIPPED), str(rules_copy), "--facts", str(facts))
    assert code == 1
    assert "4 fact(s) replayed" in out
    assert "     3  routing: otp-china -> otp-cn" in out
    assert "3 decision(s) changed" in out


def test_diff_of_identical_rules_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No change means exit 0, usable as a CI gate."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in FACTS))
    code, out, _ = run(capsys, "diff", str(SHIPPED), str(SHIPPED), "--facts", str(facts))
    assert code == 0 and "no decision changed" in out


def test_diff_against_a_git_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """git:REV reads the rules directory as committed at REV."""
    shutil.copytree(SHIPPED, tmp_path / "rules")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t.test", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    text = (tmp_path / "rules" / "quotas.yaml").read_text(encoding="utf-8")
    (tmp_path / "rules" / "quotas.yaml").write_text(text.replace("limit: 10000", "limit: 20000"))
    (tmp_path / "facts.jsonl").write_text(json.dumps(FACTS[2]))
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "diff", "git:HEAD", "rules", "--facts", "facts.jsonl")
    assert code == 1 and "1  quotas: app-daily -> app-daily" in out


def test_diff_reports_a_bad_facts_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A line that is not a valid fact stops the diff with its line number and exit 2."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps(FACTS[0]) + "\n" + json.dumps({"channel": "nope"}) + "\n")
    code, _, err = run(capsys, "diff", str(SHIPPED), str(SHIPPED), "--facts", str(facts))
    assert code == 2 and f"{facts}:2: unknown channel 'nope'" in err


def test_diff_refuses_an_unknown_scene_like_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fact line naming a scene that does not exist is a bad line, not silently a routing-only fact."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({**FACTS[0], "scene": "send_failur"}) + "\n")
    code, _, err = run(capsys, "diff", str(SHIPPED), str(SHIPPED), "--facts", str(facts))
    assert code == 2 and f"{facts}:1: scene must be one of send_failure" in err


def test_schema_is_json_schema_of_rule_files(capsys: pytest.CaptureFixture[str]) -> None:
    """schema prints a JSON Schema whose properties are the rule-file sections."""
    code, out, _ = run(capsys, "schema")
    schema = json.loads(out)
    assert code == 0 and schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["properties"]) == {"settings", "channels", "templates", "providers", "routing", "quotas", "failures"}
    assert schema["properties"]["routing"]["items"]["additionalProperties"] is False


def test_diff_goes_past_bad_lines_and_counts_them(rules_copy: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Bad lines (not JSON, not a fact) are reported one line each and skipped; the good ones are still replayed."""
    text = (rules_copy / "routing.yaml").read_text(encoding="utf-8")
    (rules_copy / "routing.yaml").write_text(text.replace("name: otp-china", "name: otp-cn"))
    facts = tmp_path / "facts.jsonl"
    facts.write_text("{oops\n" + json.dumps({"channel": "nope"}) + "\n" + json.dumps(FACTS[0]) + "\n")
    code, out, err = run(capsys, "diff", str(SHIPPED), str(rules_copy), "--facts", str(facts))
    assert code == 2 and "1 fact(s) replayed" in out and "routing: otp-china -> otp-cn" in out
    assert f"{facts}:1: not JSON" in err and f"{facts}:2: unknown channel 'nope' (line skipped)" in err
    assert err.rstrip().endswith(f"2 bad line(s) in {facts} skipped")


def test_diff_says_how_many_changed_facts_it_did_not_print(rules_copy: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Past --show, the changed facts are counted, not printed."""
    text = (rules_copy / "routing.yaml").read_text(encoding="utf-8")
    (rules_copy / "routing.yaml").write_text(text.replace("name: otp-china", "name: otp-cn"))
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in FACTS) + "\n")
    code, out, _ = run(capsys, "diff", str(SHIPPED), str(rules_copy), "--facts", str(facts), "--show", "1")
    assert code == 1 and out.count("  old: ") == 1
    assert "... and 2 more changed fact(s) not printed (--show 3 prints them all)" in out


def test_diff_names_a_bad_revision_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A git:REV that names no commit is one line saying so and what to give instead, exit 2."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "facts.jsonl").write_text(json.dumps(FACTS[0]))
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "diff", "git:no-such-branch", str(SHIPPED), "--facts", "facts.jsonl")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("mpush rules diff: no commit 'no-such-branch' in the git repository at")
