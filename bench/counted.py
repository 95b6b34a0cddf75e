"""Runs `mpush` (engine.cli) counting its database statements and Redis round trips, for the end-to-end bench.

    python bench/counted.py COUNTS_FILE serve --no-workers --port 8000

Every statement the database driver is handed is one round trip (BEGIN, COMMIT and the connection pool's
liveness check included; an executemany counts one per parameter row, as psycopg2 and PyMySQL send them one
by one). A Redis round trip is one packed send, a pipeline's or a script call's included; Redis commands are
counted too. The counts are written to COUNTS_FILE as JSON every 0.2 s (and at a clean exit).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import peewee
import redis.connection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COUNTS = {"db_statements": 0, "db_transactions": 0, "redis_round_trips": 0, "redis_commands": 0}
_lock = threading.Lock()


def _count(name: str, n: int = 1) -> None:
    with _lock:
        COUNTS[name] += n


def _counting_cursor_class() -> type:
    import psycopg2.extensions

    class CountingCursor(psycopg2.extensions.cursor):  # type: ignore[misc]
        def execute(self, query: Any, vars: Any = None) -> Any:
            _count("db_statements")
            if isinstance(query, str) and query.strip().upper() in ("COMMIT", "ROLLBACK"):
                _count("db_transactions")
            return super().execute(query, vars)

        def executemany(self, query: Any, vars_list: Any) -> Any:
            rows = list(vars_list)
            _count("db_statements", len(rows))
            return super().executemany(query, rows)

    return CountingCursor


def _patch_postgres() -> None:
    cursor_class = _counting_cursor_class()
    original = peewee.PostgresqlDatabase._connect

    def connect(self: peewee.PostgresqlDatabase) -> Any:
        conn = original(self)
        conn.cursor_factory = cursor_class
        return conn

    peewee.PostgresqlDatabase._connect = connect  # type: ignore[method-assign]


def _patch_generic() -> None:
    """SQLite and MySQL: statements through peewee, BEGIN and COMMIT included (a pool's ping is not seen)."""
    execute_sql = peewee.Database.execute_sql

    def counted_execute_sql(self: peewee.Database, sql: str, params: Any = None) -> Any:
        if not isinstance(self, peewee.PostgresqlDatabase):
            _count("db_statements")
        return execute_sql(self, sql, params)

    peewee.Database.execute_sql = counted_execute_sql  # type: ignore[method-assign]
    for name in ("begin", "commit", "rollback"):
        for cls in (peewee.Database, peewee.SqliteDatabase, peewee.MySQLDatabase):
            if name in vars(cls):
                setattr(cls, name, _counted_end(cls, vars(cls)[name], name != "begin"))


def _counted_end(cls: type, method: Any, ends: bool) -> Any:
    def run(self: peewee.Database, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(self, peewee.PostgresqlDatabase):
            _count("db_statements")
            if ends:
                _count("db_transactions")
        return method(self, *args, **kwargs)

    return run


def _patch_redis() -> None:
    connection = redis.connection.AbstractConnection
    send_packed, send_command, pack_commands = (connection.send_packed_command, connection.send_command,
                                                connection.pack_commands)

    def counted_send_packed(self: Any, command: Any, check_health: bool = True) -> Any:
        _count("redis_round_trips")
        return send_packed(self, command, check_health)

    def counted_send_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        _count("redis_commands")
        return send_command(self, *args, **kwargs)

    def counted_pack_commands(self: Any, commands: Any) -> Any:
        commands = list(commands)
        _count("redis_commands", len(commands))
        return pack_commands(self, commands)

    connection.send_packed_command = counted_send_packed  # type: ignore[method-assign]
    connection.send_command = counted_send_command  # type: ignore[method-assign]
    connection.pack_commands = counted_pack_commands  # type: ignore[method-assign]


def _keep_writing(path: Path, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        _write(path)


def _write(path: Path) -> None:
    with _lock:
        text = json.dumps(COUNTS)
    partial = path.with_suffix(".tmp")
    partial.write_text(text)
    os.replace(partial, path)


def main() -> int:
    path, args = Path(sys.argv[1]), sys.argv[2:]
    _patch_postgres()
    _patch_generic()
    _patch_redis()
    threading.Thread(target=_keep_writing, args=(path, threading.Event()), daemon=True).start()
    from engine.cli import main as mpush

    try:
        return mpush(args)
    finally:
        _write(path)


if __name__ == "__main__":
    sys.exit(main())
