"""The schema's history: an ordered list of migrations, each applied once and recorded in `schema_version`.

Migration 001 builds the tables from the current models, so a later migration may find its change already
made on a database created after it was written; each one therefore checks before it alters.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import peewee

from engine.store.db import connection
from engine.store.models import MODELS, UtcDateTimeField, utcnow

# Binary collation keeps comparisons exact (ids, idempotency keys) as on PostgreSQL and SQLite.
MYSQL_TABLE_SETTINGS = ("DEFAULT CHARSET=utf8mb4", "COLLATE=utf8mb4_bin")
LOCK_NAME = "mpush_migrate"
LOCK_TIMEOUT_SECONDS = 60


class SchemaVersion(peewee.Model):
    name = peewee.CharField(max_length=100, primary_key=True)
    applied_at = UtcDateTimeField(default=utcnow)

    class Meta:
        table_name = "schema_version"


Migration = Callable[[peewee.Database], None]


def create_tables(db: peewee.Database) -> None:
    """001: every table and index of the models."""
    for model in (SchemaVersion, *MODELS):
        _create_table(db, model)


MIGRATIONS: tuple[tuple[str, Migration], ...] = (("001_create_tables", create_tables),)


def migrate(db: peewee.Database) -> list[str]:
    """Bring `db` to the latest schema; returns the names of the migrations applied (none when up to date).

    Safe to run from several processes at once: they take a database-wide lock in turn.
    """
    applied: list[str] = []
    with connection(db), db.bind_ctx((SchemaVersion, *MODELS)), _migration_lock(db):
        _create_table(db, SchemaVersion)
        done = {row.name for row in SchemaVersion.select()}
        for name, step in MIGRATIONS:
            if name in done:
                continue
            with db.atomic():
                step(db)
                SchemaVersion.create(name=name)
            applied.append(name)
    return applied


def _create_table(db: peewee.Database, model: type[peewee.Model]) -> None:
    if db.table_exists(model._meta.table_name):
        return
    if isinstance(db, peewee.MySQLDatabase):
        model._meta.table_settings = MYSQL_TABLE_SETTINGS
    try:
        db.create_tables([model], safe=False)
    finally:
        model._meta.table_settings = None


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
