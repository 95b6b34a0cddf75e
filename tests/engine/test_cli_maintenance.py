"""`mpush purge` and `mpush rekey` as an operator runs them: real processes on a SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.store import db as store_db
from engine.store import repo
from engine.store.migrations import migrate
from engine.store.models import Task, database

OLD_KEY = "o" * 32
NEW_KEY = "n" * 32


def mpush(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "MPUSH_DATA_DIR": str(tmp_path), "MPUSH_LOG_LEVEL": "WARNING", **env}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=environ, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(autouse=True)
def keep_binding() -> Any:
    """The models go back to whatever database they were bound to before the test."""
    previous = database.obj
    yield
    database.initialize(previous)


def bind(tmp_path: Path) -> None:
    database = store_db.connect(f"sqlite:///{tmp_path / 'mpush.db'}")
    store_db.bind(database)
    migrate(database)


def test_purge_deletes_old_final_tasks_and_says_what_it_deleted(tmp_path: Path) -> None:
    """purge --older-than 30d removes a 40-day-old delivered task, keeps a new one, and prints the counts."""
    bind(tmp_path)
    repo.create_tasks([{"task_id": f"t{i}", "app_id": "a" * 16, "receiver": "1"} for i in range(2)])
    forty_days_ago = datetime.now(UTC) - timedelta(days=40)
    Task.update(status="success", created_at=forty_days_ago, updated_at=forty_days_ago).where(
        Task.task_id == "t0").execute()
    dry = mpush(tmp_path, "purge", "--older-than", "30d", "--dry-run")
    assert dry.returncode == 0 and "would delete 1 final tasks" in dry.stdout
    done = mpush(tmp_path, "purge", "--older-than", "30d")
    assert done.returncode == 0 and done.stdout.strip() == "deleted 1 tasks"
    assert [t.task_id for t in Task.select()] == ["t1"]


def test_purge_refuses_a_bad_duration_in_one_line(tmp_path: Path) -> None:
    """A duration it cannot read is exit 2 and one line naming the option, no traceback."""
    result = mpush(tmp_path, "purge", "--older-than", "forever")
    assert result.returncode == 2 and result.stderr.startswith("mpush: --older-than: bad duration 'forever'")
    assert "Traceback" not in result.stderr


def test_rekey_moves_secrets_so_the_new_key_alone_opens_them(tmp_path: Path) -> None:
    """With the old key named as previous, rekey re-encrypts each secret; without it, rekey says what to set."""
    bind(tmp_path)
    app, secret = repo.create_app("demo", OLD_KEY.encode())
    refused = mpush(tmp_path, "rekey", MPUSH_ENCRYPTION_KEY=NEW_KEY)
    assert refused.returncode == 2 and "MPUSH_PREVIOUS_ENCRYPTION_KEY" in refused.stderr
    done = mpush(tmp_path, "rekey", MPUSH_ENCRYPTION_KEY=NEW_KEY, MPUSH_PREVIOUS_ENCRYPTION_KEY=OLD_KEY)
    assert done.returncode == 0 and done.stdout.strip() == "re-encrypted 1 app secrets under the new key"
    stored = repo.get_app(app.app_id)
    assert stored is not None and repo.app_secret(stored, NEW_KEY.encode()) == secret
