"""Opening the database named by a URL, binding the models to it, and telling when it is unreachable."""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee
from playhouse.pool import MaxConnectionsExceeded, PooledDatabase, PooledMySQLDatabase, PooledPostgresqlDatabase

from engine.files import FILE_MODE, private_dir, private_file
from engine.store.models import database
from engine.store.statements import Shape

log = logging.getLogger("mpush.store")

# No commit checkpoints the WAL itself (wal_autocheckpoint 0): `checkpoint`, run by a thread of each long-running
# process, does it beside them. The commit that crossed the 1,000-page mark used to copy the WAL back and
# fsync, holding the writer turn: the API's inserts waited 17 ms at p99 for it, 5 ms without.
SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "busy_timeout": 5000, "foreign_keys": 1,
                  "wal_autocheckpoint": 0}
CHECKPOINT_SECONDS = 1.0
POOL_OPTIONS = {"stale_timeout": 300, "timeout": 10}
DEFAULT_POOL_SIZE = 32
CONNECT_TIMEOUT_SECONDS = 5
# A database host gone silent (a partition, a frozen host: packets dropped, no reset) must fail the calls waiting
# on it within seconds, not when the kernel gives up retransmitting a quarter of an hour later. Unanswered
# keepalive probes end a wait for a reply after IDLE + COUNT x INTERVAL seconds; data left unacknowledged ends
# the connection after USER_TIMEOUT. A live server answers probes however long its query runs.
KEEPALIVE_IDLE_SECONDS, KEEPALIVE_INTERVAL_SECONDS, KEEPALIVE_COUNT = 5, 2, 3
TCP_USER_TIMEOUT_MS = 10_000
POSTGRES_DEAD_PEER = {"keepalives": 1, "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
                      "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS, "keepalives_count": KEEPALIVE_COUNT,
                      "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
# MySQL's plain DATETIME drops microseconds and TEXT stops at 64 KiB; webhook bodies and raw reports may be larger.
MYSQL_FIELD_TYPES = {"DATETIME": "DATETIME(6)", "TEXT": "MEDIUMTEXT"}
SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")


class StoreUnavailable(Exception):
    """The database cannot serve the call now: unreachable, restarting, read-only during a failover, or the call's
    transaction rolled back by the server (a deadlock victim, a lock or statement timeout). Nothing was written,
    unless the connection was lost with a commit's reply: callers that must know say so (`ClaimsInDoubt`,
    `intake.RefusedInDoubt`). The same call may be made again later."""

    def __init__(self, cause: BaseException | str) -> None:
        super().__init__(f"database unavailable: {cause}")


# PostgreSQL's SQLSTATEs that say "not now" rather than "never": the transaction was rolled back by a conflict
# (40: serialization failure, deadlock), a lock or a statement timed out (55P03, 57014), the server is short of
# resources or connections (53), shutting down or starting (57P), unreachable (08), failed at an I/O (58), a
# read-only standby as during a failover (25006), or it ended a session idle in a transaction (25P03). peewee
# translates some of them to OperationalError, the read-only one to InternalError: they are told by their code.
PG_TRANSIENT = ("08", "40", "53", "55P03", "57", "58", "25006", "25P03")
PG_CONFLICTS = ("40", "55P03", "57014")
# MySQL's conflicts, which leave the connection sound: deadlock victim, lock wait and statement timeouts
# (MariaDB's and MySQL's). Its other transient errors the driver already raises as OperationalError.
MYSQL_CONFLICTS = frozenset({1213, 1205, 1969, 3024})


def transient(exc: BaseException) -> bool:
    """Whether a database error means the call may succeed later (see StoreUnavailable), not that it is wrong:
    peewee's or the driver's OperationalError or InterfaceError (DB-API's names), or a PostgreSQL "not now"."""
    if isinstance(exc, MaxConnectionsExceeded):
        return True
    driver = _driver_error(exc)
    code = getattr(driver, "pgcode", None)
    if code:
        return code.startswith(PG_TRANSIENT)
    return any(kind.__name__ in ("OperationalError", "InterfaceError") for kind in type(exc).__mro__)


def conflict(exc: BaseException) -> bool:
    """Whether the server rolled the call back over a lock or a timeout, the connection itself being sound."""
    driver = _driver_error(exc)
    code = getattr(driver, "pgcode", None)
    if code:
        return code.startswith(PG_CONFLICTS)
    args = getattr(driver, "args", ())
    return bool(args) and isinstance(args[0], int) and args[0] in MYSQL_CONFLICTS  # pymysql: the error number


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's exception under peewee's translation of it (kept as `orig`)."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def connect(url: str, *, pool_size: int = DEFAULT_POOL_SIZE, prepare: bool = True) -> peewee.Database:
    """A database for `sqlite:///path.db`, `sqlite:///:memory:`, `postgresql://…` or `mysql://…`.

    Query parameters of a PostgreSQL or MySQL URL are passed to the driver (e.g. `?sslmode=require`); a
    process keeps at most `pool_size` connections to PostgreSQL or MySQL. Nothing is opened until first use.
    On PostgreSQL the hot statements are prepared on each connection unless `prepare` is false (behind a
    pooler that may run a connection's statements on different server connections).
    """
    if pool_size < 1:
        raise ValueError(f"the database pool size must be at least 1, got {pool_size}")
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
        return _mysql(name, options, pool_size)
    options = {**POSTGRES_DEAD_PEER, **options}
    return PostgresPool(name, max_connections=pool_size, prepare=prepare, **POOL_OPTIONS, **options)


class CheckFreePool(PooledDatabase):
    """A connection pool whose check-out and check-in cost no round trip.

    peewee's pools ask the server before handing out an idle connection (`SELECT 1`, or a MySQL ping), and
    its MySQL pool sends a ROLLBACK on every check-in: one or two more round trips for every store call (a
    fifth of the worker's statements on PostgreSQL, more than a third on MariaDB). Here a connection the
    driver still believes open is handed out as it is; one the server has dropped meanwhile (a restart, a
    killed session) fails its first statement, which `connection` turns into StaleConnection while discarding
    it and every idle connection beside it, as they were most likely cut by the same restart; the store call
    is then made once more, on a fresh connection (see `repo._guarded`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._untried = threading.local()

    def _connect(self) -> Any:
        conn = super()._connect()  # a new connection, or one the pool had
        self._untried.value = True
        return conn

    def begin(self, *args: Any, **kwargs: Any) -> None:
        super().begin(*args, **kwargs)
        self._untried.value = False

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        cursor = super().execute_sql(sql, params)
        self._untried.value = False
        return cursor

    def untried(self) -> bool:
        """Whether nothing has yet succeeded on this thread's connection since it was checked out: when its
        first statement finds it dropped, nothing of the call reached the database, and a retry is safe."""
        return bool(getattr(self._untried, "value", False))


class PostgresPool(CheckFreePool, PooledPostgresqlDatabase):
    """The PostgreSQL pool, which also keeps the hot statements prepared on each connection."""

    def __init__(self, *args: Any, prepare: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepare = prepare
        self._names = itertools.count(1)
        # Per connection, the statements prepared on it by their SQL text, least recently used first.
        self._statements: weakref.WeakKeyDictionary[Any, dict[str, Prepared]] = weakref.WeakKeyDictionary()
        self._statements_lock = threading.Lock()
        self._opened = _clock()

    def _is_closed(self, conn: Any) -> bool:
        from psycopg2.extensions import TRANSACTION_STATUS_UNKNOWN

        return bool(conn.closed) or conn.get_transaction_status() == TRANSACTION_STATUS_UNKNOWN

    def _connect(self) -> Any:
        conn = super()._connect()
        with self._statements_lock:
            self._statements.setdefault(conn, {})
        return conn

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        if self._prepare and isinstance(sql, Shape):
            sql = self._prepared(sql, len(params or ()))
        return super().execute_sql(sql, params)

    def _prepared(self, sql: Shape, params: int) -> str:
        """What to send for `sql` on this thread's connection: the EXECUTE of its prepared statement, preparing
        it first (or again, at its REPREPARE_AT-th run or once `_outgrown`), or `sql` itself when it has too many
        parameters."""
        prepared = self._statements[self.connection()]
        statement = prepared.pop(sql, None)
        if statement is None:
            if params > PREPARE_MAX_PARAMETERS:
                return sql
            self._make_room(prepared, params)
            statement = Prepared(f"mpush_{next(self._names)}", params)
            super().execute_sql(f"PREPARE {statement.name} AS {numbered_parameters(sql)}")
        elif statement.runs in REPREPARE_AT or self._outgrown(statement):
            statement.prepared_at = _clock()
            super().execute_sql(f"DEALLOCATE {statement.name}")
            super().execute_sql(f"PREPARE {statement.name} AS {numbered_parameters(sql)}")
        statement.runs += 1
        prepared[sql] = statement  # now the most recently used
        name = statement.name
        return f"EXECUTE {name} ({', '.join(['%s'] * params)})" if params else f"EXECUTE {name}"

    def _outgrown(self, statement: Prepared) -> bool:
        """Whether the tables may have doubled since `statement` was planned, had they grown steadily from empty
        when the pool opened: it is older than the pool was then (at least REPREPARE_SECONDS[0], at most [1])."""
        low, high = REPREPARE_SECONDS
        return _clock() - statement.prepared_at > min(high, max(low, statement.prepared_at - self._opened))

    def _make_room(self, prepared: dict[str, Prepared], params: int) -> None:
        """Deallocate the least recently used statements until one more with `params` parameters fits."""
        while prepared and (len(prepared) >= MAX_PREPARED or
                            sum(s.parameters for s in prepared.values()) + params > MAX_PREPARED_PARAMETERS):
            super().execute_sql(f"DEALLOCATE {prepared.pop(next(iter(prepared))).name}")


# A prepared statement holds ~70 KB of the server's memory plus ~0.3 KB per parameter (measured: a 900-row
# INSERT of tasks, 30,000 parameters, held 10 MB). Per connection at most 64 statements and 16,384 parameters
# are kept, ~10 MB, which holds the hot shapes; a statement of more than 1,000 parameters (large batches,
# whose parsing is small beside their rows' work) is sent as it is, so batches of many sizes cannot fill the
# server's memory with plans used once.
MAX_PREPARED = 64
MAX_PREPARED_PARAMETERS = 16_384
PREPARE_MAX_PARAMETERS = 1_000

# After five runs PostgreSQL keeps one generic plan, made for the tables as they are then, and makes it anew
# only when ANALYZE has run. On a new database that plan is made on empty tables (a sequential scan), and
# autovacuum analyses them only once a minute, so at a thousand messages a second each statement would scan
# tens of thousands of rows: the server spent 7.5 ms per message instead of 0.7 in the first two minutes.
# Prepared again each time its runs double, a statement's plan is made for tables at most about twice smaller
# than they are; beyond 65,536 runs the tables' growth is slow enough for autovacuum.
REPREPARE_AT = frozenset(2**n for n in range(6, 17))
# Counting runs misses the shapes that run seldom (a batch of an unusual size) while the tables grow: a
# statement is also prepared again once it is as old as the pool was when it was prepared (1 s at least), and
# every 10 minutes however old the pool, to plan with what ANALYZE has learnt since.
REPREPARE_SECONDS = (1.0, 600.0)
_clock = time.monotonic


@dataclass
class Prepared:
    """A statement prepared on a connection: its name, its parameters and how many times it has been executed."""

    name: str
    parameters: int
    runs: int = 0
    prepared_at: float = field(default_factory=lambda: _clock())


def numbered_parameters(sql: str) -> str:
    """A psycopg2 statement's `%s` parameters as PostgreSQL's `$1`, `$2`, ... (and `%%` as `%`)."""
    count = itertools.count(1)
    return re.sub(r"%[s%]", lambda match: f"${next(count)}" if match.group() == "%s" else "%", sql)


# What a store call may raise when the database could not serve it (the call may be made again later).
STORE_ERRORS = (StoreUnavailable, peewee.OperationalError, peewee.InterfaceError)


class StaleConnection(StoreUnavailable):
    """A pooled connection the server had dropped failed its first statement: nothing was done, the call may
    be made again on a fresh connection."""


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
    except Exception as exc:
        if isinstance(exc, StoreUnavailable) or not transient(exc):
            raise
        if conflict(exc) or isinstance(exc, MaxConnectionsExceeded):
            raise StoreUnavailable(exc) from exc  # the server and the connections are sound
        stale = isinstance(db, CheckFreePool) and db.untried()
        if opened and pooled and not db.is_closed():
            db.manual_close()
        if pooled:
            db.close_idle()  # cut by the same server restart, most likely: connect afresh next time
        raise (StaleConnection if stale else StoreUnavailable)(exc) from exc
    finally:
        if opened and pooled and not db.is_closed() and not db.in_transaction():
            db.close()


class WriterTurns:
    """Takes turns writing one SQLite file, across the threads and processes using it: an exclusive flock on
    a file beside it, held around each write.

    SQLite lets one writer in at a time, and its busy handler makes the others sleep 1, 2, 5, 10, 25, 50,
    then 100 ms between tries; with an API and a worker writing, BEGIN IMMEDIATE waited 4-9 ms at p90 and
    35-80 ms at p99. A process waiting on the flock wakes the moment the holder lets go. Re-entrant within
    a thread; the kernel releases the lock of a process that dies holding it.
    """

    def __init__(self, database_path: str) -> None:
        self.path = f"{database_path}-writer.lock"
        self._local = threading.local()

    def take(self) -> None:
        local = self._local
        if getattr(local, "fd", None) is None:
            local.fd, local.depth = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), 0
        if local.depth == 0:
            fcntl.flock(local.fd, fcntl.LOCK_EX)
        local.depth += 1

    def give_back(self) -> None:
        local = self._local
        local.depth -= 1
        if local.depth == 0:
            fcntl.flock(local.fd, fcntl.LOCK_UN)

    @contextmanager
    def turn(self) -> Iterator[None]:
        self.take()
        try:
            yield
        finally:
            self.give_back()


_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


class TurnTakingSqliteDatabase(peewee.SqliteDatabase):
    """A SQLite file whose writers take turns (`WriterTurns`): a transaction begun IMMEDIATE or EXCLUSIVE
    holds the turn until it commits or rolls back, and a write outside a transaction for its statement."""

    def __init__(self, database: str, **kwargs: Any) -> None:
        super().__init__(database, **kwargs)
        self.writer_turns = WriterTurns(database)
        self._turn_held = threading.local()

    def begin(self, lock_type: str | None = None) -> None:
        if lock_type not in ("IMMEDIATE", "EXCLUSIVE"):
            super().begin(lock_type)
            return
        self.writer_turns.take()
        try:
            super().begin(lock_type)
        except BaseException:
            self.writer_turns.give_back()
            raise
        self._turn_held.value = True

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._end_turn()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._end_turn()

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        if self.in_transaction() or not _WRITE.match(sql):
            return super().execute_sql(sql, params)
        with self.writer_turns.turn():
            return super().execute_sql(sql, params)

    def _end_turn(self) -> None:
        if getattr(self._turn_held, "value", False):
            self._turn_held.value = False
            self.writer_turns.give_back()


def checkpoint(db: peewee.Database) -> None:
    """Copy a SQLite file's write-ahead log back into it and let the log start over: most of it alongside the
    writers, then what they added meanwhile in a writer turn, so that the copy is complete and the next
    write begins the log anew. Nothing to do for other databases."""
    if not isinstance(db, TurnTakingSqliteDatabase):
        return
    with connection(db):
        db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")
        with db.writer_turns.turn():
            db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")


def keep_checkpointing(db: peewee.Database, stop: threading.Event) -> None:
    """`checkpoint` every CHECKPOINT_SECONDS until `stop` (a thread of `mpush serve` and `mpush worker`)."""
    while not stop.wait(CHECKPOINT_SECONDS):
        try:
            checkpoint(db)
        except StoreUnavailable as exc:
            log.warning("store.checkpoint failed: %s", exc)


def _sqlite(path: str) -> peewee.SqliteDatabase:
    if not path:
        raise ValueError(
            "a SQLite URL is sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    if path == ":memory:":
        # A named shared-cache memory database, so every thread's connection sees the same tables.
        name = f"file:mpush-{uuid.uuid4().hex}?mode=memory&cache=shared"
        return peewee.SqliteDatabase(name, uri=True, pragmas={"foreign_keys": 1}, timeout=5)
    _private_sqlite_files(Path(path))
    return TurnTakingSqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=5)


def _private_sqlite_files(path: Path) -> None:
    """The database file 0600 before SQLite opens it (its -wal and -shm files take its mode), in a 0700
    folder when we create the folder; the files of an older version are made 0600 too."""
    if not path.parent.exists():
        private_dir(path.parent)
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal", "-writer.lock"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.chmod(companion, FILE_MODE)


class DeadPeerMySQLDatabase(peewee.MySQLDatabase):
    """PyMySQL connections whose sockets give up on a silent server as libpq's do (KEEPALIVE_*, TCP_USER_TIMEOUT):
    PyMySQL turns keepalives on with the system's two-hour idle time and has no setting for the rest."""

    def _connect(self) -> Any:
        conn = super()._connect()
        bound_dead_peer(conn._sock)
        return conn


def bound_dead_peer(sock: socket.socket) -> None:
    """Set the keepalive and user timeout options on a TCP socket, those this platform has."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket has no peer to lose
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT), ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_MS)):
        if hasattr(socket, name):  # all on Linux; macOS lacks the user timeout
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class MySQLPool(CheckFreePool, PooledMySQLDatabase, DeadPeerMySQLDatabase):
    """The MySQL / MariaDB pool: no ping at check-out, and a ROLLBACK at check-in only for a connection that
    the server says is in a transaction (PyMySQL keeps the server's status of the last reply)."""

    def _is_closed(self, conn: Any) -> bool:
        return not conn.open

    def _can_reuse(self, conn: Any) -> bool:
        from pymysql.constants import SERVER_STATUS

        if conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
            return bool(super()._can_reuse(conn))
        return True


def _mysql(name: str, options: dict[str, object], pool_size: int) -> peewee.MySQLDatabase:
    from pymysql.constants import CLIENT

    # FOUND_ROWS: an UPDATE reports the rows it matched, as on PostgreSQL and SQLite, not only those it changed.
    return MySQLPool(
        name,
        charset="utf8mb4",
        client_flag=CLIENT.FOUND_ROWS,
        field_types=MYSQL_FIELD_TYPES,
        max_connections=pool_size,
        **POOL_OPTIONS,
        **options,
    )


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
