"""PostgreSQL drops every connection of the gateway mid-load: the store reconnects, nothing is lost or sent twice."""

from __future__ import annotations

import collections
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest

from engine.store import repo
from engine.store.db import bind, connect
from engine.store.migrations import migrate
from engine.store.models import Attempt
from tests.support.loopback import LoopbackServer, Reply
from tests.support.service import gateway, write_rules

pytestmark = pytest.mark.postgres

SERVER_URL = os.environ.get("MPUSH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

RULES = """
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: load, type: sms, template: code}}
providers:
  - {{name: vendor, type: fake, config: {{url: "{url}/send"}}}}
routing:
  - {{name: load, when: {{channel: load}}, providers: [{{use: vendor}}]}}
"""


@pytest.fixture
def database_url() -> Iterator[str]:
    """A scratch database of our own on the test server (so only our own connections are cut), dropped after."""
    name = f"mpush_reconnect_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(SERVER_URL)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield urlsplit(SERVER_URL)._replace(path=f"/{name}").geturl()
    finally:
        admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def cut_connections(database_url: str) -> int:
    """Terminate every server process serving `database_url`'s database (as a restart would); how many."""
    admin = psycopg2.connect(SERVER_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = %s AND pid <> pg_backend_pid()", (urlsplit(database_url).path[1:],))
        (count,) = cursor.fetchone()
    admin.close()
    return int(count)


def test_a_store_call_after_the_connections_are_cut_connects_afresh(database_url: str) -> None:
    """A call whose pooled connection the server dropped is made again on a fresh one: it succeeds, and only
    the dropped connection is thrown away (its first statement had done nothing, so retrying is safe)."""
    db = connect(database_url, pool_size=4)
    migrate(db)
    bind(db)
    task_id = str(uuid.uuid4())
    repo.create_tasks([{"task_id": task_id, "app_id": "a" * 16, "receiver": "13800000000"}])
    assert cut_connections(database_url) >= 1
    assert repo.get_task(task_id).task_id == task_id
    second = str(uuid.uuid4())
    assert cut_connections(database_url) >= 1
    repo.create_tasks([{"task_id": second, "app_id": "a" * 16, "receiver": "13800000001"}])
    assert set(repo.get_tasks([task_id, second])) == {task_id, second}
    db.close_all()


def test_cut_connections_mid_load_lose_nothing_and_send_nothing_twice(tmp_path: Path, database_url: str) -> None:
    """Connections cut three times while messages are sent: every accepted message is delivered, and the
    vendor sees each attempt once; refused sends (the API's store call failed) are not delivered at all."""
    vendor = LoopbackServer(lambda request: Reply(200, '{"code": 0}')).start()
    rules = write_rules(tmp_path, RULES.format(url=vendor.url))
    try:
        with gateway(tmp_path, rules, database_url=database_url, visibility_timeout=1.0) as gw:
            accepted, refused, cut = [], 0, 0
            for i in range(300):
                if i in (60, 140, 220):
                    cut += cut_connections(database_url)
                answer = gw.send("load", f"1380000{i:04d}", {"code": "1"})
                if answer["code"] == 0:
                    accepted.append(answer["data"]["task_id"])
                else:
                    refused += 1
            assert cut >= 3  # the API's and the worker's connections were really there to cut
            for task_id in accepted:
                assert gw.wait(task_id, timeout=30).status == "success"
            postponed = gw.worker.counters["postponed"] if gw.worker else 0
            print(f"{cut} connections cut; {len(accepted)} accepted, {refused} refused; "
                  f"{postponed} send jobs postponed and redelivered")
            time.sleep(1.5)  # a resend would come with a reclaim, after the visibility timeout
            attempts = collections.Counter(task_id for (task_id,) in Attempt.select(Attempt.task_id).tuples())
            assert set(attempts) == set(accepted) and set(attempts.values()) == {1}
        keys = collections.Counter(request.header("Idempotency-Key") for request in vendor.requests)
        assert [key for key, seen in keys.items() if seen > 1] == []
        assert len(vendor.requests) == len(accepted)
    finally:
        vendor.stop()
