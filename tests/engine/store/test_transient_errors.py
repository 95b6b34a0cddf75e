"""Errors a real PostgreSQL or MariaDB raises for "not now" (a deadlock, a lock timeout, a read-only failover) are
the store's StoreUnavailable: the worker's record of a call is made again, the API refuses with 40002."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import peewee
import psycopg2
import pytest

from api.errors import DATABASE_ERROR, unavailable_code
from engine.store import repo
from engine.store.db import StoreUnavailable, bind, connect, transient
from engine.store.migrations import migrate
from tests.engine.store.conftest import mysql_connection, scratch_database

OPEN = ("pending", "scheduled", "processing")
SERVERS = [pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)]


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A migrated scratch database: its kind and URL."""
    with scratch_database(request.param) as url:
        db = connect(url)
        migrate(db)
        db.close_all()
        yield request.param, url


@pytest.fixture
def store(server: tuple[str, str]) -> Iterator[peewee.Database]:
    """The store bound to the scratch database. On PostgreSQL its sessions look for a deadlock after 2 s."""
    kind, url = server
    db = connect(url + ("?options=-c%20deadlock_timeout%3D2s" if kind == "postgres" else ""), pool_size=4)
    bind(db)
    yield db
    db.close_all()


def driver_connection(kind: str, url: str) -> Any:
    """A connection of the driver's own, in a transaction until commit or rollback."""
    return psycopg2.connect(url) if kind == "postgres" else mysql_connection(url, autocommit=False)


def lock_waiters(kind: str, url: str) -> int:
    """How many transactions of the database wait for a row lock."""
    monitor = driver_connection(kind, url)
    try:
        with monitor.cursor() as cursor:
            if kind == "postgres":
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND wait_event_type = 'Lock'")
            else:
                cursor.execute("SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'")
            return int(cursor.fetchone()[0])
    finally:
        monitor.close()


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def claimed_task() -> str:
    """A task with its first attempt begun, as a worker has it while the provider answers."""
    task_id = str(uuid.uuid4())
    repo.create_tasks([{"task_id": task_id, "app_id": "a" * 16, "receiver": "13800000000"}])
    assert repo.claim_attempts([repo.AttemptClaim(task_id, 1, "vendor", "route", "v1")], OPEN) == [True]
    return task_id


LOCKS = {
    "task": "UPDATE tasks SET error_message = 'held' WHERE task_id = %s",
    "attempt": "UPDATE attempts SET error_message = 'held' WHERE task_id = %s",
}


def record_against_a_blocker(kind: str, url: str, first: str, monkeypatch: pytest.MonkeyPatch
                             ) -> list[BaseException | None]:
    """Record a claimed attempt's success while another transaction holds the task's `first` row and then asks
    for the other one; what each try of the store's record transaction ended with (None: it committed)."""
    task_id = claimed_task()
    fillers = [str(uuid.uuid4()) for _ in range(20)]
    repo.create_tasks([{"task_id": filler, "app_id": "a" * 16, "receiver": "13800000001"} for filler in fillers])
    tries: list[BaseException | None] = []
    record_once = repo._record_attempts

    def spied(*args: Any) -> list[bool]:
        try:
            result = record_once(*args)
        except BaseException as exc:
            tries.append(exc)
            raise
        tries.append(None)
        return result

    monkeypatch.setattr(repo, "_record_attempts", spied)
    blocker = driver_connection(kind, url)
    results: list[list[bool]] = []
    recorder = threading.Thread(target=lambda: results.append(repo.record_attempts(
        [repo.AttemptEnd(task_id, 1, "ok", True, "msg-1")],
        [repo.StatusChange(task_id, OPEN, {"status": "success", "provider_message_id": "msg-1"})])))
    with blocker.cursor() as cursor:
        if kind == "postgres":
            cursor.execute("SET deadlock_timeout = '60s'")  # the record's session is the one to find the cycle
        # Rows changed by the blocker make it the larger transaction, which MariaDB keeps when it breaks a cycle.
        cursor.execute("UPDATE tasks SET error_message = 'held' WHERE task_id IN ("
                       + ", ".join(["%s"] * len(fillers)) + ")", fillers)
        cursor.execute(LOCKS[first], (task_id,))
        recorder.start()
        wait_for(lambda: lock_waiters(kind, url) == 1)
        cursor.execute(LOCKS["attempt" if first == "task" else "task"], (task_id,))
    blocker.rollback()
    blocker.close()
    recorder.join(30)
    assert results == [[True]]
    assert repo.get_task(task_id).status == "success"
    assert [(a.status, a.provider_message_id) for a in repo.list_attempts(task_id)] == [("ok", "msg-1")]
    return tries


@pytest.mark.parametrize("first", ["task", "attempt"])
def test_a_record_meeting_a_transaction_that_locks_in_the_other_order_is_kept(
        store: peewee.Database, server: tuple[str, str], first: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another transaction locking a task's rows while the worker records its call's outcome never makes the
    outcome lost: the record commits, at worst after one try the server rolled back, which was StoreUnavailable."""
    tries = record_against_a_blocker(*server, first, monkeypatch)
    assert tries[-1] is None and len(tries) <= 2
    assert all(isinstance(exc, StoreUnavailable) for exc in tries[:-1])


def test_the_record_is_made_again_after_the_server_chose_it_as_deadlock_victim(
        store: peewee.Database, server: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The record locks both the attempt and its task, so a transaction taking them in the opposite order makes
    a real deadlock: the server rolls the record back and it is made again (one of the two orders does it)."""
    kind, url = server
    deadlocked = []
    for first in ("task", "attempt"):
        with monkeypatch.context() as patch:
            tries = record_against_a_blocker(kind, url, first, patch)
        deadlocked += [exc for exc in tries if exc is not None]
    assert len(deadlocked) == 1
    driver_error = getattr(deadlocked[0].__cause__, "orig", None)  # peewee keeps the driver's exception
    assert (driver_error.pgcode == "40P01") if kind == "postgres" else (driver_error.args[0] == 1213)


def session_setting(kind: str, url: str, postgres: str, mysql: str) -> str:
    """`url` with a setting every session of the store starts with."""
    if kind == "postgres":
        return url + "?options=" + quote(f"-c {postgres}")
    return url + "?init_command=" + quote(mysql)


def test_a_database_failing_over_to_read_only_is_unavailable_and_keeps_nothing(server: tuple[str, str]) -> None:
    """Writes to a server that turned read-only (a standby during a failover) are StoreUnavailable, which the API
    answers with 40002 for the client to retry, and nothing of the call is stored."""
    kind, url = server
    read_only = connect(session_setting(kind, url, "default_transaction_read_only=on",
                                        "SET SESSION TRANSACTION READ ONLY"))
    bind(read_only)
    task_id = str(uuid.uuid4())
    try:
        with pytest.raises(StoreUnavailable) as refused:
            repo.create_tasks([{"task_id": task_id, "app_id": "a" * 16, "receiver": "13800000000"}])
        assert unavailable_code(refused.value) == DATABASE_ERROR
        assert transient(refused.value.__cause__)
        assert repo.get_task(task_id) is None  # reading still works
    finally:
        read_only.close_all()


def test_a_row_lock_not_granted_in_time_is_unavailable(server: tuple[str, str]) -> None:
    """A change waiting for a row lock past the server's lock timeout is StoreUnavailable, and the connection
    stays usable for the next call."""
    kind, url = server
    impatient = connect(session_setting(kind, url, "lock_timeout=200ms", "SET SESSION innodb_lock_wait_timeout = 1"),
                        pool_size=1)
    bind(impatient)
    try:
        task_id = claimed_task()
        blocker = driver_connection(kind, url)
        with blocker.cursor() as cursor:
            cursor.execute(LOCKS["task"], (task_id,))
            with pytest.raises(StoreUnavailable):
                repo.mark_status_if(task_id, OPEN, status="failed")
        blocker.rollback()
        blocker.close()
        assert repo.mark_status_if(task_id, OPEN, status="failed")
        assert repo.get_task(task_id).status == "failed"
    finally:
        impatient.close_all()
