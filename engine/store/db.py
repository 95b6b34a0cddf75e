"""Opening the database named by a URL, binding the models to it, and telling when it is unreachable."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee
from playhouse.pool import MaxConnectionsExceeded, PooledDatabase, PooledMySQLDatabase, PooledPostgresqlDatabase

from engine.store.models import database

SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000, "foreign_keys": 1}
POOL_OPTIONS = {"max_connections": 32, "stale_timeout": 300, "timeout": 10}
CONNECT_TIMEOUT_SECONDS = 5
# MySQL's plain DATETIME drops microseconds and TEXT stops at 64 KiB; webhook bodies and raw reports may be larger.
MYSQL_FIELD_TYPES = {"DATETIME": "DATETIME(6)", "TEXT": "MEDIUMTEXT"}
SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")


class StoreUnavailable(Exception):
    """The database cannot be reached or refused the connection; nothing was read or written."""

    def __init__(self, cause: BaseException | str) -> None:
        super().__init__(f"database unavailable: {cause}")


def connect(url: str) -> peewee.Database:
    """A database for `sqlite:///path.db`, `sqlite:///:memory:`, `postgresql://…` or `mysql://…`.

    Query parameters of a PostgreSQL or MySQL URL are passed to the driver (e.g. `?sslmode=require`).
    Nothing is opened until first use.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return _sqlite(url[len("sqlite:///"):] if url.startswith("sqlite:///") else "")
    if parts.scheme not in SCHEMES:
        raise ValueError(f"unsupported database URL {_redacted(url)!r}: expected one of {', '.join(SCHEMES)}")
    name = unquote(parts.path.lstrip("/"))
    if not name or not parts.hostname:
        raise ValueError(f"database URL {_redacted(url)!r} needs a host and a database name")
    options: dict[str, object] = {"host": parts.hostname, "user": unquote(parts.username or "")}
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    if parts.port:
        options["port"] = parts.port
    options["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    options.update((name, int(value) if value.isdigit() else value) for name, value in parse_qsl(parts.query))
    if parts.scheme == "mysql":
        return _mysql(name, options)
    return PooledPostgresqlDatabase(name, **POOL_OPTIONS, **options)


def bind(db: peewee.Database) -> None:
    """Point every model at `db`."""
    database.initialize(db)


def ping(db: peewee.Database) -> str | None:
    """None when the database answers a trivial query, else why not (for /health)."""
    try:
        with connection(db):
            db.execute_sql("SELECT 1")
    except StoreUnavailable as exc:
        return str(exc)
    return None


@contextmanager
def connection(db: peewee.Database) -> Iterator[peewee.Database]:
    """Use `db` for a block: reachability errors become StoreUnavailable, and a pooled connection the block
    opened goes back to the pool afterwards (or is discarded after an error). A connection held by an
    enclosing block or transaction is left alone."""
    opened = db.is_closed()
    pooled = isinstance(db, PooledDatabase)
    try:
        yield db
    except (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded) as exc:
        if opened and pooled and not db.is_closed():
            db.manual_close()
        raise StoreUnavailable(exc) from exc
    finally:
        if opened and pooled and not db.is_closed() and not db.in_transaction():
            db.close()


class WriterTurns:
    """Takes turns writing one SQLite file, across the threads and processes using it: an exclusive flock on
    a file beside it, held around each write transaction.

    SQLite lets one writer in at a time, and its busy handler makes the others sleep 1, 2, 5, 10, 25, 50,
    then 100 ms between tries; with an API and a worker writing, BEGIN IMMEDIATE waited 4-9 ms at p90 and
    35-80 ms at p99. A process waiting on the flock wakes the moment the holder lets go. Re-entrant within
    a thread; the kernel releases the lock of a process that dies holding it.
    """

    def __init__(self, database_path: str) -> None:
        self.path = f"{database_path}-writer.lock"
        self._local = threading.local()

    @contextmanager
    def turn(self) -> Iterator[None]:
        local = self._local
        if getattr(local, "fd", None) is None:
            local.fd, local.depth = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), 0
        if local.depth == 0:
            fcntl.flock(local.fd, fcntl.LOCK_EX)
        local.depth += 1
        try:
            yield
        finally:
            local.depth -= 1
            if local.depth == 0:
                fcntl.flock(local.fd, fcntl.LOCK_UN)


def writer_turn(db: peewee.Database) -> contextlib.AbstractContextManager[None]:
    """Hold the write turn of `db` when it is a SQLite file (nothing to take turns on otherwise)."""
    turns = getattr(db, "writer_turns", None)
    return turns.turn() if isinstance(turns, WriterTurns) else contextlib.nullcontext()


def _sqlite(path: str) -> peewee.SqliteDatabase:
    if not path:
        raise ValueError(
            "a SQLite URL is sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    if path == ":memory:":
        # A named shared-cache memory database, so every thread's connection sees the same tables.
        name = f"file:mpush-{uuid.uuid4().hex}?mode=memory&cache=shared"
        return peewee.SqliteDatabase(name, uri=True, pragmas={"foreign_keys": 1}, timeout=5)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = peewee.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=5)
    db.writer_turns = WriterTurns(path)  # type: ignore[attr-defined]
    return db


def _mysql(name: str, options: dict[str, object]) -> peewee.MySQLDatabase:
    from pymysql.constants import CLIENT

    # FOUND_ROWS: an UPDATE reports the rows it matched, as on PostgreSQL and SQLite, not only those it changed.
    return PooledMySQLDatabase(
        name,
        charset="utf8mb4",
        client_flag=CLIENT.FOUND_ROWS,
        field_types=MYSQL_FIELD_TYPES,
        **POOL_OPTIONS,
        **options,
    )


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
