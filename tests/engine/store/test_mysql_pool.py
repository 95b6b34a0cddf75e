"""The MariaDB pool: a store call costs only its own statements, and sessions the server killed are replaced."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from engine.store import repo
from engine.store.db import KEEPALIVE_IDLE_SECONDS, TCP_USER_TIMEOUT_MS, MySQLPool, bind, connect
from engine.store.migrations import migrate
from tests.engine.store.conftest import kill_mysql_sessions, scratch_database

pytestmark = pytest.mark.mysql

SENT: list[str] = []


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with scratch_database("mysql") as url:
        db = connect(url)
        migrate(db)
        db.close_all()
        yield url


@pytest.fixture
def pool(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MySQLPool]:
    """The store bound to a pool of the scratch database, every command PyMySQL sends noted in SENT."""
    send = pymysql.connections.Connection._execute_command

    def noted(self: Any, command: int, sql: Any) -> Any:
        text = sql.decode() if isinstance(sql, bytes) else str(sql)
        SENT.append(text.split()[0].upper() if command == pymysql.constants.COMMAND.COM_QUERY else f"#{command}")
        return send(self, command, sql)

    monkeypatch.setattr(pymysql.connections.Connection, "_execute_command", noted)
    db = connect(url, pool_size=2)
    assert isinstance(db, MySQLPool)
    bind(db)
    yield db
    db.close_all()


def new_task() -> str:
    task_id = str(uuid.uuid4())
    repo.create_tasks([{"task_id": task_id, "app_id": "a" * 16, "receiver": "13800000000"}])
    return task_id


def test_a_store_call_on_a_pooled_connection_sends_only_its_statements(pool: MySQLPool) -> None:
    """Taking a connection from the pool sends no ping, and handing it back no ROLLBACK: a lookup is one
    query, a transaction its BEGIN, statements and COMMIT."""
    task_id = new_task()
    SENT.clear()
    assert repo.get_task(task_id).task_id == task_id
    assert SENT == ["SELECT"]
    SENT.clear()
    assert repo.claim_attempts([repo.AttemptClaim(task_id, 1, "vendor", "route", "v1")], ("pending",)) == [True]
    assert SENT == ["BEGIN", "INSERT", "UPDATE", "COMMIT"]


def test_a_connection_handed_back_inside_a_transaction_is_rolled_back(pool: MySQLPool) -> None:
    """A connection returned to the pool with a transaction open (a call cut short) has it rolled back, so the
    next call on it neither sees nor commits that work."""
    task_id = new_task()
    pool.connect()
    pool.begin()
    pool.execute_sql("UPDATE tasks SET status = 'failed' WHERE task_id = %s", (task_id,))
    pool._close(pool.connection())  # what the pool does at check-in, transaction or not
    pool._state.reset()
    SENT.clear()
    assert repo.get_task(task_id).status == "pending"
    assert "ROLLBACK" not in SENT  # it was rolled back at check-in, not later


def test_a_store_call_after_the_server_killed_the_sessions_connects_afresh(pool: MySQLPool, url: str) -> None:
    """A call whose pooled connection the server ended is made again on a fresh one and succeeds."""
    task_id = new_task()
    assert kill_mysql_sessions(url) >= 1
    assert repo.get_task(task_id).task_id == task_id
    assert kill_mysql_sessions(url) >= 1
    second = new_task()
    assert set(repo.get_tasks([task_id, second])) == {task_id, second}


def test_a_pooled_connection_gives_up_on_a_silent_server_within_seconds(pool: MySQLPool) -> None:
    """A new connection's socket probes an idle server after KEEPALIVE_IDLE_SECONDS and drops data left
    unacknowledged for TCP_USER_TIMEOUT_MS, as libpq's do, instead of the system's two hours and quarter hour."""
    pool.connect(reuse_if_open=True)
    sock = pool.connection()._sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_SECONDS
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == TCP_USER_TIMEOUT_MS
    assert repo.get_task("no-such-task") is None  # the connection still serves store calls
