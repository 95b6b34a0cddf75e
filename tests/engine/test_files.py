"""Data files (the SQLite database and its WAL/SHM, the embedded Redis's files) are 0600 in 0700 directories."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.services import open_services
from engine.store import repo
from tests.support.service import CONSOLE_RULES, settings_for, write_rules


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The usual umask 022, which alone would leave new files world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if not path.is_symlink() and not path.is_socket():
            found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_zero_configuration_data_is_owner_only(tmp_path: Path) -> None:
    """With the embedded Redis and the default SQLite file, everything under the data folder is 0600 (files) or
    0700 (folders), while the service runs and writes, including files left world-readable by an older version."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "mpush.db-wal").write_bytes(b"")  # an older version's leftovers, world-readable
    (data / "notes.txt").write_text("old")
    os.chmod(data / "notes.txt", 0o644)
    settings = settings_for(tmp_path, write_rules(tmp_path, CONSOLE_RULES), redis_url="", database_url="")
    svc = open_services(settings)
    try:
        repo.create_app("files", svc.key)
        svc.redis.set("mpush:test", "1")
        svc.redis.save()
        modes = _modes(data)
    finally:
        svc.close()
        svc.redis._cleanup()  # stop the embedded redis-server now rather than at exit
    names = set(modes)
    assert {"mpush.db", "mpush.db-wal", "mpush.db-shm", "redis.rdb", "notes.txt"} <= names, names
    assert any(name.startswith("appendonly") for name in names), names  # the AOF file (or folder, Redis 7)
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o700 if (data / name).is_dir() else 0o600)}
    assert wrong == {}


def test_sqlite_file_outside_the_data_folder_is_owner_only(tmp_path: Path) -> None:
    """A SQLite file named by MPUSH_DATABASE_URL elsewhere is created 0600 (so are its WAL and SHM), in a 0700
    folder when the gateway creates that folder."""
    settings = settings_for(tmp_path, write_rules(tmp_path, CONSOLE_RULES),
                            database_url=f"sqlite:///{tmp_path / 'db' / 'store.db'}")
    svc = open_services(settings)
    try:
        repo.create_app("files", svc.key)
        modes = _modes(tmp_path / "db")
    finally:
        svc.close()
    assert modes == {".": 0o700, "store.db": 0o600, "store.db-wal": 0o600, "store.db-shm": 0o600,
                     "store.db-writer.lock": 0o600}
