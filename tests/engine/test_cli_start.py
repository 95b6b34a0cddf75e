"""`mpush serve` and `mpush worker` refuse to start on broken rule files with file:line errors, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from tests.support.service import REDIS_URL


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_broken_rules_print_file_and_line_and_exit_1(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A rule naming an unknown account stops the start: each problem as file:line, a closing line, exit 1."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(
        "templates: [{name: code, variables: [code], text: 'code {code}'}]\n"
        "channels: [{id: 1, name: otp, type: sms, template: code}]\n"
        "providers: [{name: console, type: console}]\n"
        "routing: [{name: otp, when: {channel: otp}, providers: [{use: nobody}]}]\n", encoding="utf-8")
    for name, value in (("MPUSH_RULES_DIR", str(rules)), ("MPUSH_DATA_DIR", str(tmp_path / "data")),
                        ("MPUSH_REDIS_URL", REDIS_URL), ("MPUSH_WATCH_RULES", "false")):
        monkeypatch.setenv(name, value)
    assert main([command]) == 1
    err = capsys.readouterr().err
    assert f"{rules / 'rules.yaml'}:4:" in err and "nobody" in err
    assert "problem(s) in the rule files; fix them and start again" in err and "Traceback" not in err
