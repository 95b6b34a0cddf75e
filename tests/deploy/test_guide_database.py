"""The deployment guide's database commands, run as written (the database's name aside) on real servers: backups
and their restore, and the index an operator builds ahead of migration 006."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import peewee
import pytest

from engine.store import repo
from engine.store.db import bind, connect, connection
from engine.store.migrations import UNFINISHED_INDEX, SchemaVersion, migrate
from engine.store.models import Task, database
from tests.deploy.test_deploy_files import GUIDE, guide_shell_blocks, needed
from tests.engine.store.conftest import scratch_database


def guide_command(start: str) -> str:
    """The command of the guide's shell blocks that begins with `start`, its continuation lines joined (a quoted
    argument may span lines) and its trailing comment dropped."""
    lines = "\n".join(guide_shell_blocks()).splitlines()
    for at, line in enumerate(lines):
        if line.startswith(start):
            command = line
            while command.count('"') % 2:
                at += 1
                command += "\n" + lines[at]
            return re.sub(r"\s+#[^\"']*$", "", command)
    raise AssertionError(f"the guide has no command starting {start!r}")


def inline_command(start: str) -> str:
    """A command the guide's prose quotes in backticks, beginning with `start`."""
    found = re.search(rf"`({re.escape(start)}[^`]*)`", GUIDE.read_text(encoding="utf-8"))
    assert found, f"the guide quotes no command starting {start!r}"
    return found.group(1)


def shell(command: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env={**os.environ, **(env or {})},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    return result


@pytest.fixture(autouse=True)
def keep_binding() -> Iterator[None]:
    previous = database.obj
    yield
    database.initialize(previous)


def store_with_a_task(url: str) -> tuple[peewee.Database, str]:
    db = connect(url)
    migrate(db)
    bind(db)
    task_id = str(uuid.uuid4())
    repo.create_tasks([{"task_id": task_id, "app_id": "a" * 16, "receiver": "13800138000", "content": "你好"}])
    return db, task_id


def contents(db: peewee.Database, task_id: str) -> list[str]:
    with connection(db):
        return [task.content for task in Task.select().where(Task.task_id == task_id)]


def postgres_env(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    return {"PGHOST": parts.hostname or "127.0.0.1", "PGPORT": str(parts.port or 5432),
            "PGUSER": parts.username or "postgres"}


@pytest.mark.postgres
def test_the_postgres_backup_restores_a_lost_task(tmp_path: Path) -> None:
    """pg_dump as the guide writes it, then its pg_restore --clean, brings back a task deleted in between."""
    needed("pg_dump")
    with scratch_database("postgres") as url:
        name, env = urlsplit(url).path[1:], postgres_env(url)
        db, task_id = store_with_a_task(url)
        shell(guide_command("pg_dump").replace("-d mpush", f"-d {name}"), tmp_path, env)
        (dump,) = tmp_path.glob("mpush-*.dump")
        with connection(db):
            Task.delete().where(Task.task_id == task_id).execute()
        db.close_all()
        restore = inline_command("pg_restore").replace("-d mpush", f"-d {name}").replace("mpush-….dump", dump.name)
        shell(restore, tmp_path, env)
        assert contents(db, task_id) == ["你好"]
        db.close_all()


@pytest.mark.mysql
def test_the_mysql_dump_loads_back_a_lost_task(tmp_path: Path) -> None:
    """mysqldump as the guide writes it, loaded back with the mysql client, brings back a task deleted in between."""
    needed("mysqldump")
    with scratch_database("mysql") as url:
        parts = urlsplit(url)
        name = parts.path[1:]
        env = {"MYSQL_HOST": parts.hostname or "127.0.0.1", "MYSQL_TCP_PORT": str(parts.port or 3306)}
        db, task_id = store_with_a_task(url)
        shell(guide_command("mysqldump").replace(" mpush >", f" -u {parts.username or 'root'} {name} >"), tmp_path,
              env)
        with connection(db):
            Task.delete().where(Task.task_id == task_id).execute()
        db.close_all()
        shell(f"mysql -u {parts.username or 'root'} {name} < mpush.sql", tmp_path, env)
        assert contents(db, task_id) == ["你好"]
        db.close_all()


def test_the_sqlite_backup_copies_the_live_database(tmp_path: Path) -> None:
    """The guide's sqlite3 .backup, run beside an open store, writes a database holding its tasks."""
    needed("sqlite3")
    db, task_id = store_with_a_task(f"sqlite:///{tmp_path / 'data' / 'mpush.db'}")
    shell(guide_command("sqlite3"), tmp_path)
    copy = connect(f"sqlite:///{tmp_path / 'mpush-backup.db'}")
    assert contents(copy, task_id) == ["你好"]
    db.close()
    copy.close()


@pytest.mark.postgres
def test_the_unfinished_index_built_beforehand_is_the_one_migration_006_keeps(tmp_path: Path) -> None:
    """The guide's CREATE INDEX CONCURRENTLY on a database before 006 builds a valid partial index, and migrate
    then applies 006 without building another."""
    needed("psql")
    with scratch_database("postgres") as url:
        db = connect(url)
        migrate(db)
        with connection(db):
            db.execute_sql(f"DROP INDEX {UNFINISHED_INDEX}")
            db.execute_sql("CREATE INDEX tasks_updated_at ON tasks (updated_at)")
            SchemaVersion.delete().where(SchemaVersion.name == "006_lean_task_indexes").execute(db)
        shell(guide_command('psql "$MPUSH_DATABASE_URL"'), tmp_path, {"MPUSH_DATABASE_URL": url})
        with connection(db):
            (oid,) = db.execute_sql("SELECT indexrelid FROM pg_index JOIN pg_class ON pg_class.oid = indexrelid "
                                    "WHERE relname = %s AND indisvalid", [UNFINISHED_INDEX]).fetchone()
        assert migrate(db) == ["006_lean_task_indexes"]
        with connection(db):
            names = {index.name for index in db.get_indexes("tasks")}
            kept = db.execute_sql("SELECT oid FROM pg_class WHERE relname = %s", [UNFINISHED_INDEX]).fetchone()
        assert kept == (oid,) and "tasks_updated_at" not in names
        db.close_all()
