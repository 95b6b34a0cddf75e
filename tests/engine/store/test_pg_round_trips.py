"""On PostgreSQL the worker's batch steps and the API's grouped insert cost a fixed number of round trips."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2.extensions
import pytest

from engine.store import repo, statements
from engine.store.db import PostgresPool, bind, connect, numbered_parameters
from engine.store.migrations import migrate
from engine.store.models import Attempt, Task
from tests.engine.store.conftest import scratch_database

pytestmark = pytest.mark.postgres

OPEN = ("pending", "scheduled", "processing")
SENT: list[str] = []


class CountingCursor(psycopg2.extensions.cursor):  # type: ignore[misc]
    """Notes every statement handed to the server (an executemany row by row, as psycopg2 sends them)."""

    def execute(self, query: Any, vars: Any = None) -> Any:
        SENT.append(str(query).split()[0].upper())
        return super().execute(query, vars)

    def executemany(self, query: Any, vars_list: Any) -> Any:
        rows = list(vars_list)
        SENT.extend([str(query).split()[0].upper()] * len(rows))
        return super().executemany(query, rows)


@pytest.fixture(scope="module")
def pool() -> Iterator[PostgresPool]:
    with scratch_database("postgres") as url:
        db = connect(url, pool_size=2)
        assert isinstance(db, PostgresPool)
        migrate(db)
        db.close_all()
        db.connect_params["cursor_factory"] = CountingCursor
        bind(db)
        yield db
        db.close_all()


def counted(action: Any) -> list[str]:
    SENT.clear()
    action()
    return list(SENT)


def batch(size: int) -> tuple[list[dict[str, str]], list[str], list[repo.AttemptClaim], list[repo.AttemptEnd],
                             list[repo.StatusChange]]:
    rows = [{"task_id": str(uuid.uuid4()), "app_id": "a" * 16, "receiver": f"1380000{i:04d}"} for i in range(size)]
    task_ids = [row["task_id"] for row in rows]
    claims = [repo.AttemptClaim(task_id, 1, "vendor", "route", "v1") for task_id in task_ids]
    ends = [repo.AttemptEnd(task_id, 1, "ok", True, f"m-{task_id}", latency_ms=2) for task_id in task_ids]
    changes = [repo.StatusChange(task_id, OPEN, {"status": "success", "provider_message_id": f"m-{task_id}"})
               for task_id in task_ids]
    return rows, task_ids, claims, ends, changes


def steps(size: int) -> list[list[str]]:
    """The statements sent by the insert, load, claim and record of a new batch of `size` tasks, each checked."""
    rows, task_ids, claims, ends, changes = batch(size)
    sent = [counted(lambda: repo.create_tasks(rows)), counted(lambda: repo.load_for_delivery(task_ids)),
            counted(lambda: repo.claim_attempts(claims, OPEN)), counted(lambda: repo.record_attempts(ends, changes))]
    tasks, attempts = repo.load_for_delivery(task_ids)
    assert {task.status for task in tasks.values()} == {"success"}
    assert {attempts[task_id][0].status for task_id in task_ids} == {"ok"}
    return sent


def executed(sent: list[list[str]]) -> list[int]:
    """How many statements each step ran, the PREPAREs of its shapes aside."""
    return [len([statement for statement in step if statement != "PREPARE"]) for step in sent]


@pytest.mark.parametrize("size", [1, 16, 100])
def test_a_batch_costs_the_same_statements_whatever_its_size(pool: PostgresPool, size: int) -> None:
    """Insert, load, claim and record of a batch: 1, 2, 1 and 1 statements for 1, 16 or 100 tasks alike, with
    no liveness check on pool check-out."""
    assert executed(steps(size)) == executed(steps(size)) == [1, 2, 1, 1]


@pytest.mark.parametrize("size", [7, 23])  # sizes no other test here uses: shapes new to the connection
def test_a_shape_is_prepared_on_first_use_and_only_executed_from_then_on(pool: PostgresPool, size: int) -> None:
    """Each statement of a batch's steps is prepared on the connection the first time its shape is used,
    and from then on only executed."""
    assert steps(size) == [["PREPARE", "EXECUTE"], ["PREPARE", "EXECUTE"] * 2, ["PREPARE", "EXECUTE"],
                           ["PREPARE", "EXECUTE"]]
    assert steps(size) == [["EXECUTE"], ["EXECUTE"] * 2, ["EXECUTE"], ["EXECUTE"]]


def test_a_statement_with_more_than_prepare_max_parameters_is_sent_unprepared(
        pool: PostgresPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement of many parameters (a large batch's insert) is sent as it is, every time, while the small
    ones beside it are prepared."""
    monkeypatch.setattr("engine.store.db.PREPARE_MAX_PARAMETERS", 40)
    for _ in range(2):
        insert, load, _, _ = steps(17)  # 17 rows of tasks: hundreds of parameters; the loads: 17 each
        assert insert == ["INSERT"] and load[-1] == "EXECUTE"


def test_a_connection_keeps_at_most_max_prepared_statements_and_parameters(
        pool: PostgresPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_PREPARED shapes, or MAX_PREPARED_PARAMETERS parameters in all, the least recently used
    statements are deallocated, and every shape still answers correctly, whether it was still prepared or had
    to be prepared again."""
    monkeypatch.setattr("engine.store.db.MAX_PREPARED", 3)
    for size in (2, 3, 4, 5, 6, 2, 3):
        steps(size)
    assert count_prepared(pool)[0] == 3
    monkeypatch.setattr("engine.store.db.MAX_PREPARED", 64)
    monkeypatch.setattr("engine.store.db.MAX_PREPARED_PARAMETERS", 300)
    for size in (2, 3, 4, 5, 6, 2, 3):
        steps(size)
    statements_kept, parameters_kept = count_prepared(pool)
    assert statements_kept > 3 and parameters_kept <= 300


def count_prepared(pool: PostgresPool) -> tuple[int, int]:
    """The statements prepared on this thread's connection, and their parameters in all."""
    return pool.execute_sql("SELECT count(*), coalesce(sum(cardinality(parameter_types)), 0)::int "
                            "FROM pg_prepared_statements").fetchone()


def test_a_statement_first_planned_on_empty_tables_is_planned_again_once_they_have_grown(
        pool: PostgresPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A load kept as a sequential scan while the attempts table was empty is prepared again at its
    REPREPARE_AT-th run, and from then on runs by index over the grown table, without waiting for ANALYZE."""
    monkeypatch.setattr("engine.store.db.REPREPARE_AT", frozenset({16}))
    monkeypatch.setattr("engine.store.db._clock", lambda: 1000.0)  # runs alone decide here, not the pool's age
    with scratch_database("postgres") as url:
        db = connect(url, pool_size=1)
        assert isinstance(db, PostgresPool)
        migrate(db)
        db.execute_sql("ALTER TABLE attempts SET (autovacuum_enabled = false)")  # no ANALYZE re-plans it
        bind(db)
        try:
            load = statements.select_in_sql(db, Attempt, "task_id", 4, ("task_id", "number"))
            keys = [str(uuid.uuid4()) for _ in range(4)]
            assert "Seq Scan on attempts" in _plan(db, load, keys, runs=8)
            for _ in range(20):
                rows, _, claims, _, _ = batch(250)
                repo.create_tasks(rows)
                repo.claim_attempts(claims, OPEN)
            assert "Seq Scan on attempts" in _plan(db, load, keys, runs=7)  # 15 runs: the empty table's plan is kept
            regrown = _plan(db, load, keys, runs=8)
            assert "Seq Scan" not in regrown and "Index Cond" in regrown
        finally:
            db.close_all()
            bind(pool)  # the module's database again, for the tests after this one


def test_a_statement_seldom_run_is_planned_again_once_the_pool_has_doubled_its_age(
        pool: PostgresPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A load planned on an empty table, run too seldom to reach a REPREPARE_AT run, is prepared again once it
    is as old as the pool was when it was prepared (a second at least), and then runs by index."""
    clock = [1000.0]
    monkeypatch.setattr("engine.store.db._clock", lambda: clock[0])
    monkeypatch.setattr("engine.store.db.REPREPARE_AT", frozenset())
    with scratch_database("postgres") as url:
        db = connect(url, pool_size=1)
        migrate(db)
        bind(db)
        try:
            load = statements.select_in_sql(db, Attempt, "task_id", 4, ("task_id", "number"))
            keys = [str(uuid.uuid4()) for _ in range(4)]
            clock[0] += 0.5  # the pool is half a second old when the load is first prepared
            assert "Seq Scan on attempts" in _plan(db, load, keys, runs=8)
            for _ in range(20):
                rows, _, claims, _, _ = batch(250)
                repo.create_tasks(rows)
                repo.claim_attempts(claims, OPEN)
            clock[0] += 0.9
            assert "Seq Scan on attempts" in _plan(db, load, keys, runs=8)  # not a second old yet
            clock[0] += 0.2
            regrown = _plan(db, load, keys, runs=8)
            assert "Seq Scan" not in regrown and "Index Cond" in regrown
        finally:
            db.close_all()
            bind(pool)


def _plan(db: Any, sql: str, params: list[str], *, runs: int) -> str:
    """Run the statement `runs` times through the pool, then the plan its prepared statement now uses."""
    for _ in range(runs):
        db.execute_sql(sql, params)
    (name,) = db.execute_sql("SELECT name FROM pg_prepared_statements WHERE statement LIKE %s",
                             [f"% AS {numbered_parameters(sql)}"]).fetchone()
    plan = db.execute_sql(f"EXPLAIN EXECUTE {name} ({', '.join(['%s'] * len(params))})", params).fetchall()
    return "\n".join(line for (line,) in plan)


def test_status_changes_find_tasks_by_id_even_when_few_were_open_at_analyze(pool: PostgresPool) -> None:
    """Analysed while every task was final, then given a backlog, tasks are still changed through their id's
    index: the status condition is one no index serves, so a backlog is never walked to change a few tasks."""
    with scratch_database("postgres") as url:
        db = connect(url, pool_size=1)
        migrate(db)
        bind(db)
        try:
            rows, *_ = batch(3000)
            repo.create_tasks(rows)
            db.execute_sql("UPDATE tasks SET status = 'success'")
            db.execute_sql("ANALYZE tasks")
            backlog, *_ = batch(3000)
            repo.create_tasks(backlog)
            ids = [row["task_id"] for row in backlog[:8]]
            update = statements.update_in_sql(db, Task, ("error_code",), "task_id", len(ids), len(OPEN))
            plan = _plan(db, update, ["x", *ids, *OPEN], runs=8)
            assert "tasks_task_id" in plan and "status" not in plan.split("Index Cond")[1].splitlines()[0]
            assert "tasks_unfinished" not in plan
        finally:
            db.close_all()
            bind(pool)


def test_prepared_statements_survive_a_column_added_under_them(pool: PostgresPool) -> None:
    """A migration adding a column while a process runs (`mpush migrate` before its restart) leaves the
    statements that process prepared working: they name their columns, so their result type is unchanged."""
    steps(2)
    pool.execute_sql("ALTER TABLE tasks ADD COLUMN added_by_a_migration TEXT")
    pool.execute_sql("ALTER TABLE attempts ADD COLUMN added_by_a_migration TEXT")
    try:
        assert steps(2) == [["EXECUTE"], ["EXECUTE"] * 2, ["EXECUTE"], ["EXECUTE"]]
    finally:
        pool.execute_sql("ALTER TABLE tasks DROP COLUMN added_by_a_migration")
        pool.execute_sql("ALTER TABLE attempts DROP COLUMN added_by_a_migration")
