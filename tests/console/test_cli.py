"""The console's CLI: `mpush operators`, `mpush tasks list/show` and `mpush providers test` against a live gateway."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from engine.cli import main
from engine.store import queries
from tests.support.service import Gateway


@pytest.fixture
def cli_env(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    monkeypatch.setenv("MPUSH_URL", gw.url)
    monkeypatch.setenv("MPUSH_ADMIN_TOKEN", "admin-token")
    return gw


def test_tasks_list_and_show_print_the_timeline(cli_env: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    """`tasks list --receiver` finds the message; `tasks show` prints its routing rule, attempts and decision."""
    task_id = cli_env.send("otp", "13800138000", {"code": "1"})["data"]["task_id"]
    cli_env.wait(task_id)
    assert main(["tasks", "list", "--receiver", "13800138000"]) == 0
    assert task_id in capsys.readouterr().out
    assert main(["tasks", "show", task_id]) == 0
    out = capsys.readouterr().out
    assert "routed by rule otp-failover" in out and "attempt 1 via flaky: retryable" in out
    assert "switch_provider by rule switch-on-error" in out and "attempt 2 via steady: ok" in out


def test_tasks_list_pages_with_a_cursor(cli_env: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    """With more matches than --limit, the command prints the --after that shows the rest."""
    for _ in range(3):
        cli_env.send("otp", "13100000000", {"code": "1"})
    assert main(["tasks", "list", "--receiver", "13100000000", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    after = out.split("more: --after ")[1].strip()
    assert main(["tasks", "list", "--receiver", "13100000000", "--limit", "2", "--after", after]) == 0
    assert "more:" not in capsys.readouterr().out


def test_refusals_are_one_line_without_traceback(cli_env: Gateway, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown task, a bad filter, a wrong token or no gateway: exit 1 and one line saying what to do."""
    assert main(["tasks", "show", "nope"]) == 1
    assert capsys.readouterr().err == "mpush: the gateway refused: task not found\n"
    assert main(["tasks", "list", "--status", "bogus"]) == 1
    assert "status must be one of" in capsys.readouterr().err
    monkeypatch.setenv("MPUSH_ADMIN_TOKEN", "wrong")
    assert main(["tasks", "list"]) == 1
    assert "refused the admin token" in capsys.readouterr().err
    monkeypatch.setenv("MPUSH_URL", "http://127.0.0.1:9")
    assert main(["tasks", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mpush: cannot reach the gateway at http://127.0.0.1:9") and "Traceback" not in err


def test_providers_test_sends_through_the_account(cli_env: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    """`providers test` reports the outcome; a failing account exits 1, an unknown one says so."""
    assert main(["providers", "test", "steady", "--to", "13800138000"]) == 0
    assert capsys.readouterr().out.startswith("steady -> 13800138000: ok in ")
    assert main(["providers", "test", "flaky", "--to", "13800138000"]) == 1
    assert "error: 503 vendor busy" in capsys.readouterr().out
    assert main(["providers", "test", "nobody", "--to", "1"]) == 1
    assert "no provider account 'nobody'" in capsys.readouterr().err


def test_send_wait_waits_for_every_receiver(cli_env: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    """`send --wait` with several receivers returns once every task of the batch is final."""
    code = main(["send", "--app-id", cli_env.app_id, "--secret", cli_env.secret, "--channel", "otp",
                 "--to", "13200000001", "--to", "13200000002", "--param", "code=1", "--wait"])
    assert code == 0
    assert "2 success" in capsys.readouterr().out


def test_operators_create_and_refuse_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`operators create` stores an argon2 hash the console accepts; a second one of that name is refused."""
    monkeypatch.setenv("MPUSH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MPUSH_DATABASE_URL", f"sqlite:///{tmp_path / 'ops.db'}")
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["operators", "create", "ops", "--password-stdin"]) == 0
    assert queries.check_operator("ops", "a long password") is not None
    assert queries.check_operator("ops", "another password") is None
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["operators", "create", "ops", "--password-stdin"]) == 1
    assert "exists already" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["operators", "create", "other", "--password-stdin"]) == 1
    assert "at least 10 characters" in capsys.readouterr().err
