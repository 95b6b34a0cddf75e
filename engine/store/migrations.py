"""The schema's history: an ordered list of migrations, each applied once and recorded in `schema_version`.

Migration 001 builds the tables from the current models, so a later migration may find its change already
made on a database created after it was written; each one therefore checks before it alters.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import peewee
from playhouse.migrate import SchemaMigrator

from engine.store.db import connection
from engine.store.models import (MODELS, UNFINISHED_TASK_STATUSES, Attempt, Decision, Operator, Task,
                                 UtcDateTimeField, utcnow)

# Binary collation keeps comparisons exact (ids, idempotency keys) as on PostgreSQL and SQLite.
MYSQL_CHARSET = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
LOCK_NAME = "mpush_migrate"
UNFINISHED_INDEX = "tasks_unfinished_status_updated_at"
LEAN_DROPPED = ("tasks_updated_at", "tasks_app_id_status", "tasks_status_scheduled_at")
LOCK_TIMEOUT_SECONDS = 60


class SchemaVersion(peewee.Model):
    name = peewee.CharField(max_length=100, primary_key=True)
    applied_at = UtcDateTimeField(default=utcnow)

    class Meta:
        table_name = "schema_version"


Migration = Callable[[peewee.Database], None]


def create_tables(db: peewee.Database) -> None:
    """001: every table and index of the models."""
    for model in MODELS:
        _create_table(db, model)


def create_decisions(db: peewee.Database) -> None:
    """002: the failure decisions of each task, so its history shows every rule that decided."""
    _create_table(db, Decision)


def add_console(db: peewee.Database) -> None:
    """The console: the operators table and the indexes its message search and dashboard read by. A batch's
    tasks are found newest first by (batch_id, created_at), which also serves what batch_id's own index did."""
    _create_table(db, Operator)
    for model, columns in ((Task, ("receiver", "created_at")), (Task, ("app_id", "created_at")),
                           (Task, ("batch_id", "created_at")), (Attempt, ("created_at",))):
        _create_index(db, model, columns)
    if "tasks_batch_id" in {index.name for index in db.get_indexes("tasks")}:
        _drop_index(db, "tasks", "tasks_batch_id")


def add_attempt_leases(db: peewee.Database) -> None:
    """Attempts carry their owner and lease and the attempt whose idempotency key a resend reuses; a task,
    the unknown-outcome attempt its next attempt resends and the time its retry waits for."""
    for name in ("owner", "lease_until", "key_number"):
        _add_column(db, Attempt, name)
    for name in ("resend_of", "not_before"):
        _add_column(db, Task, name)


def add_intake_columns(db: peewee.Database) -> None:
    """A task's receiver is stored in its one form, the form the client wrote (when it differs) beside it; and
    the trace id of the answer that accepted it."""
    for name in ("receiver_as_sent", "trace_id"):
        _add_column(db, Task, name)


def lean_task_indexes(db: peewee.Database) -> None:
    """006: unfinished tasks (what the sweeps and the outbox look for) are found by one index on (status,
    updated_at) that, on PostgreSQL and SQLite, holds only them, so a delivered task's last write adds no entry;
    the indexes on updated_at, (app_id, status) and (status, scheduled_at) go (purge reads by created_at, counts
    by app by (app_id, created_at)). A delivered task's three row writes add 23 index entries, not 30.
    Building the index reads the whole tasks table once."""
    existing = {index.name for index in db.get_indexes("tasks")}
    if UNFINISHED_INDEX not in existing:
        db.execute_sql(_unfinished_index_sql(db))
    for name in LEAN_DROPPED:
        if name in existing:
            _drop_index(db, "tasks", name)


def _unfinished_index_sql(db: peewee.Database) -> str:
    sql = f"CREATE INDEX {UNFINISHED_INDEX} ON tasks (status, updated_at)"
    if isinstance(db, peewee.MySQLDatabase):
        return sql  # no partial indexes: every task keeps its entry
    statuses = ", ".join(f"'{status}'" for status in UNFINISHED_TASK_STATUSES)
    return f"{sql} WHERE status IN ({statuses})"


MIGRATIONS: tuple[tuple[str, Migration], ...] = (
    ("001_create_tables", create_tables),
    ("002_decisions", create_decisions),
    ("003_console", add_console),
    ("004_attempt_leases", add_attempt_leases),
    ("005_intake_columns", add_intake_columns),
    ("006_lean_task_indexes", lean_task_indexes),
)


def migrate(db: peewee.Database) -> list[str]:
    """Bring `db` to the latest schema; returns the names of the migrations applied (none when up to date).

    Safe to run from several processes at once: they take a database-wide lock in turn. The models' own binding
    is left untouched, so threads already serving requests are not disturbed.
    """
    applied: list[str] = []
    with connection(db), _migration_lock(db):
        _create_table(db, SchemaVersion)
        done = {row.name for row in SchemaVersion.select().bind(db)}
        for name, step in MIGRATIONS:
            if name in done:
                continue
            with db.atomic():
                step(db)
                SchemaVersion.insert(name=name, applied_at=utcnow()).execute(db)
            applied.append(name)
    return applied


def _create_table(db: peewee.Database, model: type[peewee.Model]) -> None:
    if db.table_exists(model._meta.table_name):
        return
    peewee.SchemaManager(model, db).create_all(safe=False)
    if isinstance(db, peewee.MySQLDatabase):
        # New tables take the database's default character set, which may not hold Chinese or emoji.
        db.execute_sql(f"ALTER TABLE {model._meta.table_name} CONVERT TO {MYSQL_CHARSET}")


def _add_column(db: peewee.Database, model: type[peewee.Model], name: str) -> None:
    table = model._meta.table_name
    if name not in {column.name for column in db.get_columns(table)}:
        SchemaMigrator.from_database(db).add_column(table, name, model._meta.fields[name]).run()


def _create_index(db: peewee.Database, model: type[peewee.Model], columns: tuple[str, ...]) -> None:
    index = peewee.ModelIndex(model, [model._meta.fields[name] for name in columns])
    table = model._meta.table_name
    if index._name not in {existing.name for existing in db.get_indexes(table)}:
        db.execute(index)


def _drop_index(db: peewee.Database, table: str, name: str) -> None:
    db.execute_sql(f"DROP INDEX {name}" + (f" ON {table}" if isinstance(db, peewee.MySQLDatabase) else ""))


@contextmanager
def _migration_lock(db: peewee.Database) -> Iterator[None]:
    if isinstance(db, peewee.PostgresqlDatabase):
        key = zlib.crc32(LOCK_NAME.encode())
        db.execute_sql("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (key,))
    elif isinstance(db, peewee.MySQLDatabase):
        (got,) = db.execute_sql("SELECT GET_LOCK(%s, %s)", (LOCK_NAME, LOCK_TIMEOUT_SECONDS)).fetchone()
        if got != 1:
            raise RuntimeError(f"another migration held the lock {LOCK_NAME!r} for {LOCK_TIMEOUT_SECONDS}s")
        try:
            yield
        finally:
            db.execute_sql("SELECT RELEASE_LOCK(%s)", (LOCK_NAME,))
    else:
        # SQLite: an immediate transaction is the database-wide write lock.
        with db.atomic("IMMEDIATE"):
            yield
