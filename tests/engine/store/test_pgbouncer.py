"""Behind PgBouncer in transaction mode, with MPUSH_DATABASE_PREPARE off, the store works from many threads."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from engine.store.db import PostgresPool, bind, connect
from engine.store.migrations import migrate
from engine.settings import Settings
from tests.engine.store.conftest import scratch_database, server_url
from tests.engine.store.test_pg_round_trips import CountingCursor, steps

pytestmark = pytest.mark.postgres

PGBOUNCER = "/usr/sbin/pgbouncer"  # Debian's package, installed by .ci/run


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[int]:
    """A PgBouncer on a free loopback port in front of the test server, pooling by transaction over two
    server connections; its port."""
    if not os.path.exists(PGBOUNCER):
        pytest.fail(f"{PGBOUNCER} is required (Debian's pgbouncer package; .ci/run installs it)", pytrace=False)
    server = urlsplit(server_url("postgres"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="mpush-pgbouncer-"))
    folder.chmod(0o755)  # read by PgBouncer after it drops root for the postgres user
    (folder / "users.txt").write_text(f'"{server.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={server.hostname} port={server.port or 5432}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 2\n")
    user = ["-u", "postgres"] if os.geteuid() == 0 else []  # PgBouncer refuses to run as root
    process = subprocess.Popen([PGBOUNCER, *user, str(folder / "pgbouncer.ini")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"PgBouncer did not start: {process.stderr.read() if process.stderr else ''}")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_setting_defaults_to_prepared_and_reads_false_from_the_environment() -> None:
    """MPUSH_DATABASE_PREPARE is on unless the environment turns it off."""
    assert Settings.from_env({}).database_prepare is True
    assert Settings.from_env({"MPUSH_DATABASE_PREPARE": "false"}).database_prepare is False


def test_batch_steps_from_many_threads_through_a_transaction_pooler_with_preparation_off(pgbouncer: int) -> None:
    """With preparation off no PREPARE is sent, and four threads inserting, loading, claiming and recording
    batches through PgBouncer, whose two server connections their statements share one by one, all succeed
    (a statement prepared on one server connection would be missing on the other)."""
    with scratch_database("postgres") as direct_url:
        parts = urlsplit(direct_url)
        db = connect(parts._replace(netloc=f"{parts.username}@127.0.0.1:{pgbouncer}").geturl(), pool_size=4,
                     prepare=False)
        assert isinstance(db, PostgresPool)
        migrate(db)
        db.close_all()
        db.connect_params["cursor_factory"] = CountingCursor
        bind(db)
        try:
            assert steps(2) == steps(2) == [["INSERT"], ["SELECT"] * 2, ["WITH"], ["WITH"]]
            failures: list[BaseException] = []

            def run() -> None:
                try:
                    for size in (1, 3, 16, 1, 3, 16):
                        steps(size)  # each checks that its tasks and attempts ended as recorded
                except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                    failures.append(exc)

            threads = [threading.Thread(target=run) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert failures == []
        finally:
            db.close_all()
