"""Opening databases from URLs, health pings, unreachable servers, and the schema migrations."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import peewee
import pytest
from playhouse.pool import PooledMySQLDatabase, PooledPostgresqlDatabase

from engine.store import repo
from engine.store.db import (
    POSTGRES_DEAD_PEER,
    StoreUnavailable,
    WriterTurns,
    bind,
    checkpoint,
    connect,
    connection,
    keep_checkpointing,
    ping,
)
from engine.store.migrations import LEAN_DROPPED, MIGRATIONS, UNFINISHED_INDEX, SchemaVersion, migrate
from engine.store.models import MODELS, Decision, database

UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/nothing"


def test_sqlite_file_url_creates_its_directory_and_sets_the_pragmas(tmp_path: Path) -> None:
    """A relative-or-absolute SQLite URL opens that file (making its folder) in WAL mode with the safety pragmas."""
    path = tmp_path / "data" / "mpush.db"
    db = connect(f"sqlite:///{path}")
    try:
        pragmas = {name: db.execute_sql(f"PRAGMA {name}").fetchone()[0]
                   for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys", "wal_autocheckpoint")}
    finally:
        db.close()
    assert path.exists()
    assert pragmas == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 5000, "foreign_keys": 1,
                       "wal_autocheckpoint": 0}


def test_sqlite_memory_database_is_shared_by_threads() -> None:
    """sqlite:///:memory: is one database for every thread, not one per connection."""
    db = connect("sqlite:///:memory:")
    db.execute_sql("CREATE TABLE seen (value TEXT)")
    writer = threading.Thread(target=lambda: (db.execute_sql("INSERT INTO seen VALUES ('from a thread')"), db.close()))
    writer.start()
    writer.join(timeout=10)
    assert db.execute_sql("SELECT value FROM seen").fetchall() == [("from a thread",)]
    db.close()


def test_server_urls_become_pooled_databases_with_driver_options() -> None:
    """PostgreSQL and MySQL URLs give connection pools carrying host, port, credentials and query options, a
    query option overriding the store's own default (here the dead-peer bound)."""
    pg = connect("postgresql://alice:s%40cret@db.example:6543/push?sslmode=require&connect_timeout=2"
                 "&tcp_user_timeout=30000")
    my = connect("mysql://bob:pw@db.example/push")
    assert isinstance(pg, PooledPostgresqlDatabase) and isinstance(my, PooledMySQLDatabase)
    assert pg.database == "push" and my.database == "push"
    assert pg.connect_params == {
        **POSTGRES_DEAD_PEER, "host": "db.example", "port": 6543, "user": "alice", "password": "s@cret",
        "sslmode": "require", "connect_timeout": 2, "tcp_user_timeout": 30000,
    }
    assert my.connect_params["charset"] == "utf8mb4"
    assert pg._max_connections == my._max_connections == 32


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("oracle://scott@tiger/db", "unsupported database URL"),
        ("postgresql://user:hunter2@host", "needs a host and a database name"),
        ("sqlite://", "sqlite:///relative/path.db"),
    ],
)
def test_bad_urls_are_refused_clearly_without_leaking_passwords(url: str, message: str) -> None:
    """An unknown scheme or an incomplete URL is a ValueError that says what is expected and hides the password."""
    with pytest.raises(ValueError, match=message) as caught:
        connect(url)
    assert "hunter2" not in str(caught.value)


def test_ping_answers_none_when_the_database_is_up(db: peewee.Database) -> None:
    """ping() returns None for a reachable database."""
    assert ping(db) is None


def test_unreachable_server_is_reported_not_pretended() -> None:
    """With the server down, ping() explains and repository calls raise StoreUnavailable."""
    down = connect(UNREACHABLE_POSTGRES)
    previous = database.obj
    bind(down)
    try:
        assert ping(down).startswith("database unavailable: ")
        with pytest.raises(StoreUnavailable, match="database unavailable"):
            repo.get_task("any")
    finally:
        bind(previous)


def test_unbound_store_says_how_to_bind() -> None:
    """Calling the repository before bind() is a RuntimeError naming the fix."""
    previous = database.obj
    database.obj = None
    try:
        with pytest.raises(RuntimeError, match="bind"):
            repo.list_apps()
    finally:
        bind(previous)


def test_repository_calls_hand_pooled_connections_back(db: peewee.Database) -> None:
    """After a repository call the thread holds no connection (pools serve many threads), unless it holds one itself."""
    repo.list_apps()
    assert db.is_closed() or not isinstance(db, (PooledPostgresqlDatabase, PooledMySQLDatabase))
    with connection(db):
        db.connect(reuse_if_open=True)
        repo.list_apps()
        assert not db.is_closed()


ALL_STEPS = [name for name, _ in MIGRATIONS]


def _drop_schema(db: peewee.Database) -> None:
    with connection(db), db.bind_ctx((SchemaVersion, *MODELS)):
        db.drop_tables((SchemaVersion, *MODELS))


def test_migrate_builds_the_schema_once_and_is_idempotent(db: peewee.Database) -> None:
    """On an empty database migrate applies every step and creates every table; run again it applies nothing."""
    _drop_schema(db)
    assert migrate(db) == ALL_STEPS
    assert migrate(db) == []
    with connection(db):
        tables = set(db.get_tables())
    assert {model._meta.table_name for model in (SchemaVersion, *MODELS)} <= tables


def test_concurrent_migrations_apply_each_step_exactly_once(db: peewee.Database) -> None:
    """Two processes' worth of migrate() at once: one applies every step, the other finds them done."""
    _drop_schema(db)
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait(timeout=10)
        try:
            results.append(migrate(db))
        except BaseException as exc:  # noqa: BLE001 — surfaced by the assertion below
            errors.append(exc)
        finally:
            if isinstance(db, peewee.SqliteDatabase):
                db.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(results) == [[], ALL_STEPS]


def test_a_database_made_before_the_decisions_table_gains_it(db: peewee.Database) -> None:
    """A schema at 001 without the decisions table is brought up by 002, which creates just that table."""
    _drop_schema(db)
    migrate(db)
    with connection(db):
        db.drop_tables([Decision])
        SchemaVersion.delete().where(SchemaVersion.name == "002_decisions").execute(db)
    assert migrate(db) == ["002_decisions"]
    with connection(db):
        assert Decision._meta.table_name in db.get_tables()


def test_console_step_upgrades_a_database_made_before_it(db: peewee.Database) -> None:
    """003 on a database of 001's older shape adds the console's table and indexes and replaces the batch index."""
    _drop_schema(db)
    migrate(db)
    on_mysql = " ON tasks" if isinstance(db, peewee.MySQLDatabase) else ""
    with connection(db):
        for name in ("tasks_receiver_created_at", "tasks_app_id_created_at", "tasks_batch_id_created_at"):
            db.execute_sql(f"DROP INDEX {name}{on_mysql}")
        db.execute_sql("DROP TABLE operators")
        db.execute_sql("CREATE INDEX tasks_batch_id ON tasks (batch_id)")
        SchemaVersion.delete().where(SchemaVersion.name == "003_console").execute(db)
    assert migrate(db) == ["003_console"]
    with connection(db):
        names = {index.name for index in db.get_indexes("tasks")}
        assert {"tasks_receiver_created_at", "tasks_app_id_created_at", "tasks_batch_id_created_at"} <= names
        assert "tasks_batch_id" not in names and db.table_exists("operators")


def test_lease_step_upgrades_a_database_made_before_it(db: peewee.Database) -> None:
    """004 on a database without the lease columns adds the attempts' owner, lease and key, and the task's resend."""
    _drop_schema(db)
    migrate(db)
    with connection(db):
        for table, column in (("attempts", "owner"), ("attempts", "lease_until"), ("attempts", "key_number"),
                              ("tasks", "resend_of"), ("tasks", "not_before")):
            db.execute_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        SchemaVersion.delete().where(SchemaVersion.name == "004_attempt_leases").execute(db)
    assert migrate(db) == ["004_attempt_leases"]
    with connection(db):
        assert {"owner", "lease_until", "key_number"} <= {column.name for column in db.get_columns("attempts")}
        assert {"resend_of", "not_before"} <= {column.name for column in db.get_columns("tasks")}


def _enters(turns: WriterTurns) -> tuple[threading.Event, threading.Event]:
    """Start a thread that takes a turn; (inside, let_go): set when it got in, set to make it leave."""
    inside, let_go = threading.Event(), threading.Event()

    def take() -> None:
        with turns.turn():
            inside.set()
            let_go.wait(10)

    threading.Thread(target=take, daemon=True).start()
    return inside, let_go


def test_lean_index_step_replaces_the_status_and_updated_at_indexes(db: peewee.Database) -> None:
    """006 on a database with the older task indexes drops them and indexes unfinished tasks by (status, updated_at):
    only them where the database allows a partial index (PostgreSQL, SQLite), every task on MySQL."""
    _drop_schema(db)
    migrate(db)
    on_mysql = " ON tasks" if isinstance(db, peewee.MySQLDatabase) else ""
    with connection(db):
        db.execute_sql(f"DROP INDEX {UNFINISHED_INDEX}{on_mysql}")
        for name, columns in (("tasks_updated_at", "updated_at"), ("tasks_app_id_status", "app_id, status"),
                              ("tasks_status_scheduled_at", "status, scheduled_at")):
            db.execute_sql(f"CREATE INDEX {name} ON tasks ({columns})")
        SchemaVersion.delete().where(SchemaVersion.name == "006_lean_task_indexes").execute(db)
    assert migrate(db) == ["006_lean_task_indexes"]
    with connection(db):
        indexes = {index.name: index for index in db.get_indexes("tasks")}
    assert not set(LEAN_DROPPED) & set(indexes)
    assert indexes[UNFINISHED_INDEX].columns == ["status", "updated_at"]
    partial = "WHERE" in (indexes[UNFINISHED_INDEX].sql or "").upper()  # MySQL reports no SQL
    assert partial is not isinstance(db, peewee.MySQLDatabase)


def test_writer_turns_admit_one_thread_at_a_time(tmp_path: Path) -> None:
    """While one thread holds the write turn another waits, and gets in once the first lets go."""
    turns = WriterTurns(str(tmp_path / "mpush.db"))
    first_inside, first_go = _enters(turns)
    assert first_inside.wait(5)
    second_inside, second_go = _enters(turns)
    assert not second_inside.wait(0.3)
    first_go.set()
    assert second_inside.wait(5)
    second_go.set()


def test_writer_turns_are_reentrant_and_held_until_the_outer_turn_ends(tmp_path: Path) -> None:
    """A nested turn in the same thread does not wait on itself, and leaving it keeps the outer turn held."""
    turns = WriterTurns(str(tmp_path / "mpush.db"))
    with turns.turn():
        with turns.turn():
            pass
        other_inside, other_go = _enters(turns)
        assert not other_inside.wait(0.3)
    assert other_inside.wait(5)
    other_go.set()


def test_a_process_that_dies_holding_the_turn_gives_it_up(tmp_path: Path) -> None:
    """The turn of a killed process is released by the kernel: the next writer gets in."""
    path = str(tmp_path / "mpush.db")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from engine.store.db import WriterTurns
        with WriterTurns({path!r}).turn():
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[3])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        inside, go = _enters(WriterTurns(path))
        assert not inside.wait(0.3)
        holder.send_signal(signal.SIGKILL)
        assert inside.wait(5)
        go.set()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("count", [1, 3], ids=["one task, a single statement", "three tasks, a transaction"])
def test_sqlite_writes_take_their_turn(tmp_path: Path, count: int) -> None:
    """Storing tasks in a SQLite file, alone or in a transaction, waits while another writer holds the turn,
    then goes ahead."""
    db = connect(f"sqlite:///{tmp_path / 'mpush.db'}")
    bind(db)
    migrate(db)
    other, other_go = _enters(WriterTurns(str(tmp_path / "mpush.db")))
    assert other.wait(5)
    created = threading.Event()
    rows = [{"task_id": f"turn-task-{n}", "app_id": "a" * 16, "receiver": "13800000000"} for n in range(count)]
    threading.Thread(target=lambda: (repo.create_tasks(rows), created.set()), daemon=True).start()
    assert not created.wait(0.3)
    other_go.set()
    assert created.wait(5)
    assert repo.get_task(rows[-1]["task_id"]) is not None


def _log_frames(db: peewee.Database) -> int:
    """Frames in the write-ahead log, as a passive checkpoint reports them."""
    with connection(db):
        return int(db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def _write_tasks(count: int, prefix: str) -> None:
    for start in range(0, count, 50):
        repo.create_tasks([{"task_id": f"{prefix}-{n}", "app_id": "a" * 16, "receiver": "13800000000"}
                           for n in range(start, start + 50)])


def test_commits_leave_the_log_to_the_checkpointer_which_lets_it_start_over(tmp_path: Path) -> None:
    """Commits never copy the log back themselves (it grows past SQLite's 1,000-page mark); after
    `checkpoint` every task is in the file and the next write begins the log anew."""
    db = connect(f"sqlite:///{tmp_path / 'mpush.db'}")
    bind(db)
    migrate(db)
    _write_tasks(6000, "before")
    assert _log_frames(db) > 1000
    checkpoint(db)
    _write_tasks(50, "after")
    assert _log_frames(db) < 100
    assert repo.get_task("before-5999") is not None and repo.get_task("after-49") is not None
    db.close()


def test_the_checkpointer_stops_with_its_event(tmp_path: Path) -> None:
    """`keep_checkpointing` returns once its stop event is set."""
    db = connect(f"sqlite:///{tmp_path / 'mpush.db'}")
    migrate(db)
    stop = threading.Event()
    thread = threading.Thread(target=keep_checkpointing, args=(db, stop))
    thread.start()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
