"""The store under test on each real database: SQLite in a temp file, PostgreSQL and MariaDB in scratch databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee
import pytest

from engine.store.db import StoreUnavailable, bind, connect, connection
from engine.store.migrations import migrate
from engine.store.models import MODELS

SERVERS = {
    "postgres": ("MPUSH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mysql": ("MPUSH_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}

UNKNOWN_THREAD = 1094  # MySQL's answer to a KILL of a session that has already ended

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
]


def server_url(kind: str) -> str:
    variable, default = SERVERS[kind]
    return os.environ.get(variable, default)


def mysql_connection(url: str, *, autocommit: bool) -> Any:
    """A PyMySQL connection of its own to `url`'s database, outside the store's pool."""
    import pymysql

    parts = urlsplit(url)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=unquote(parts.username or "root"),
                           password=unquote(parts.password or ""), database=parts.path[1:], autocommit=autocommit)


def kill_mysql_sessions(url: str) -> int:
    """End every session on `url`'s database but the one doing it, as a server restart would; how many."""
    import pymysql

    admin = mysql_connection(url, autocommit=True)
    with admin.cursor() as cursor:
        cursor.execute("SELECT id FROM information_schema.processlist WHERE db = DATABASE() "
                       "AND id <> CONNECTION_ID()")
        sessions = [session for (session,) in cursor.fetchall()]
        killed = 0
        for session in sessions:
            try:
                cursor.execute(f"KILL {int(session)}")
                killed += 1
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != UNKNOWN_THREAD:
                    raise  # else the session ended between the listing and its KILL
    admin.close()
    return killed


@contextmanager
def scratch_database(kind: str) -> Iterator[str]:
    """A fresh, uniquely named database on the server (so concurrent runs never meet), dropped afterwards."""
    url = server_url(kind)
    admin = connect(url)
    try:
        with connection(admin):
            admin.execute_sql("SELECT 1")
    except StoreUnavailable as exc:
        variable = SERVERS[kind][0]
        pytest.fail(f"{kind} is required for these tests but {url} is unreachable ({exc}); "
                    f"start it or point {variable} at one", pytrace=False)
    name = f"mpush_test_{uuid.uuid4().hex[:12]}"
    # latin1 as the database default proves the tables bring their own utf8mb4 character set.
    admin.execute_sql(f"CREATE DATABASE {name}" + (" CHARACTER SET latin1" if kind == "mysql" else ""))
    try:
        yield urlsplit(url)._replace(path=f"/{name}").geturl()
    finally:
        admin.execute_sql(f"DROP DATABASE {name}" + (" WITH (FORCE)" if kind == "postgres" else ""))
        admin.close_all()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[peewee.Database]:
    """A migrated database of one kind, shared by the session."""
    if request.param == "sqlite":
        db = connect(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mpush.db'}")
        migrate(db)
        yield db
        db.close()
        return
    with scratch_database(request.param) as url:
        db = connect(url)
        migrate(db)
        yield db
        db.close_all()


@pytest.fixture
def db(backend: peewee.Database) -> Iterator[peewee.Database]:
    """The backend bound to the models, with every table empty."""
    bind(backend)
    with connection(backend):
        for model in reversed(MODELS):
            model.delete().execute()
    yield backend


@pytest.fixture
def key() -> bytes:
    return b"0123456789abcdef0123456789abcdef"
