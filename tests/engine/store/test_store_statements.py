"""The hot path's hand-composed SQL: what the database does with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.store import statements
from engine.store.db import connect, connection
from engine.store.migrations import migrate
from engine.store.models import Attempt, Task


@pytest.mark.parametrize("count", [1, 8, 9, 64])
def test_sqlite_updates_by_task_ids_look_rows_up_by_task_id(tmp_path: Path, count: int) -> None:
    """However many task ids a guarded UPDATE names, SQLite finds them through the task_id index, never by
    walking the open tasks through a status index (its choice without statistics from nine ids on)."""
    db = connect(f"sqlite:///{tmp_path / 'plan.db'}")
    migrate(db)
    sql = statements.update_in_sql(db, Task, ("status",), "task_id", count, status_in=3)
    with connection(db):
        plan = db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", ["processing", *["id"] * count, "a", "b", "c"]).fetchall()
    assert [row[-1] for row in plan] == ["SEARCH tasks USING INDEX tasks_task_id (task_id=?)"]


def test_updates_by_key_need_a_unique_key(tmp_path: Path) -> None:
    """An UPDATE by a list of keys is composed only for a field with its own unique index."""
    db = connect(f"sqlite:///{tmp_path / 'plan.db'}")
    with pytest.raises(ValueError, match="no unique index"):
        statements.update_in_sql(db, Attempt, ("status",), "task_id", 2)
