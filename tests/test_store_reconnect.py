"""The database drops every connection of the gateway mid-load: the store reconnects, nothing is lost or sent twice."""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
import requests

from engine.queue import job
from engine.store import queries, repo
from engine.store.db import bind, connect
from engine.store.migrations import migrate
from engine.store.models import Attempt, Task
from tests.support.loopback import LoopbackServer, Reply
from engine.worker import POSTPONE_SECONDS, Worker
from tests.console.conftest import OPERATOR, PASSWORD, Console
from tests.engine.store.conftest import kill_mysql_sessions, scratch_database
from tests.support.service import REPORTING_RULES, delayed_jobs, gateway, write_rules

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


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql)])
def server_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A scratch database on the PostgreSQL or the MariaDB test server, dropped after."""
    with scratch_database(request.param) as url:
        yield url


def cut_connections(database_url: str) -> int:
    """Terminate every server session serving `database_url`'s database (as a restart would); how many."""
    if database_url.startswith("mysql:"):
        return kill_mysql_sessions(database_url)
    admin = psycopg2.connect(SERVER_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = %s AND pid <> pg_backend_pid()", (urlsplit(database_url).path[1:],))
        (count,) = cursor.fetchone()
    admin.close()
    return int(count)


def refuse_connections(database_url: str, refused: bool) -> None:
    """Make the server refuse (or accept again) new connections to `database_url`'s database, cutting the open
    ones: the database is out of reach for the gateway, as while a restart is under way."""
    admin = psycopg2.connect(SERVER_URL)
    admin.autocommit = True
    admin.cursor().execute(f"ALTER DATABASE {urlsplit(database_url).path[1:]} ALLOW_CONNECTIONS {not refused}")
    admin.close()
    if refused:
        cut_connections(database_url)


def test_a_send_job_the_database_cannot_serve_comes_back_in_seconds(tmp_path: Path, database_url: str) -> None:
    """With the database out of reach, a worker puts the send job back in the delayed set for POSTPONE_SECONDS
    and acknowledges its entry, instead of leaving it pending for the visibility timeout (a minute): once the
    database answers again, the job is due within seconds."""
    rules = write_rules(tmp_path, RULES.format(url="http://127.0.0.1:9"))
    with gateway(tmp_path, rules, workers=False, database_url=database_url, visibility_timeout=60.0) as gw:
        task_id = gw.send("load", "13800000000", {"code": "1"})["data"]["task_id"]
        refuse_connections(database_url, True)
        try:
            stop = threading.Event()
            worker = Worker(gw.svc, threads=1, name="postponing")
            running = threading.Thread(target=worker.run, args=(stop,))
            started = time.time()
            running.start()
            deadline = time.monotonic() + 10
            while job("send", task_id).encode() not in delayed_jobs(gw.svc):
                assert time.monotonic() < deadline, "the postponed job never reached the delayed set"
                time.sleep(0.05)
            stop.set()
            running.join(10)
        finally:
            refuse_connections(database_url, False)
        due = delayed_jobs(gw.svc)[job("send", task_id).encode()]
        assert started < due <= time.time() + POSTPONE_SECONDS
        assert worker.counters["postponed"] >= 1
        assert sum(group["pending"] for stream in gw.svc.queue.streams
                   for group in gw.svc.redis.xinfo_groups(stream)) == 0


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


def test_cut_connections_mid_load_lose_nothing_and_send_nothing_twice(tmp_path: Path, server_database_url: str
                                                                     ) -> None:
    """Connections cut three times while messages are sent, on PostgreSQL and on MariaDB: every accepted message
    is delivered, and the vendor sees each attempt once; refused sends (the API's store call failed) are not
    delivered at all."""
    database_url = server_database_url
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


def set_read_only(database_url: str, read_only: bool) -> None:
    """Make every new session of the database read-only (or writable again) and cut the open ones: the address
    the gateway uses now leads to a standby, as for a moment during a failover."""
    admin = psycopg2.connect(SERVER_URL)
    admin.autocommit = True
    admin.cursor().execute(f"ALTER DATABASE {urlsplit(database_url).path[1:]} "
                           f"SET default_transaction_read_only = {'on' if read_only else 'off'}")
    admin.close()
    cut_connections(database_url)


def test_a_send_while_the_database_is_a_read_only_standby_is_refused_with_40002(tmp_path: Path,
                                                                                 database_url: str) -> None:
    """While the database only reads (a failover under way), a send is refused with 40002 for the client to
    retry and nothing is stored; once it is writable again the same send is accepted and delivered."""
    vendor = LoopbackServer(lambda request: Reply(200, '{"code": 0}')).start()
    rules = write_rules(tmp_path, RULES.format(url=vendor.url))
    try:
        with gateway(tmp_path, rules, database_url=database_url) as gw:
            set_read_only(database_url, True)
            try:
                answer = gw.send("load", "13800000000", {"code": "1"}, idempotency_key="failover-1")
            finally:
                set_read_only(database_url, False)
            assert answer["code"] == 40002, answer
            assert Task.select().count() == 0
            answer = gw.send("load", "13800000000", {"code": "1"}, idempotency_key="failover-1")
            assert answer["code"] == 0
            assert gw.wait(answer["data"]["task_id"]).status == "success"
        assert len(vendor.requests) == 1
    finally:
        vendor.stop()


def test_a_delivery_report_the_database_cannot_take_is_answered_503_and_applied_when_sent_again(
        tmp_path: Path, database_url: str) -> None:
    """A vendor's report arriving while the database is out of reach gets 503, not the vendor's 200, so the
    vendor sends it again; sent again once the database is back, it is applied (not taken for a duplicate)."""
    rules = write_rules(tmp_path, REPORTING_RULES)
    with gateway(tmp_path, rules, database_url=database_url) as gw:
        answer = gw.send("otp", "13800138000", {"code": "1"})
        task = gw.wait(answer["data"]["task_id"], ("sent",))
        report = {"id": task.provider_message_id, "status": "delivered"}
        url = f"{gw.url}/api/callback/reporting?token=cb-token"
        refuse_connections(database_url, True)
        try:
            refused = requests.post(url, json=report, timeout=10)
        finally:
            refuse_connections(database_url, False)
        assert refused.status_code == 503
        assert repo.get_task(task.task_id).status == "sent"
        assert requests.post(url, json=report, timeout=10).status_code == 200
        assert gw.wait(task.task_id).status == "success"


def test_the_admin_api_and_console_answer_503_while_the_database_is_out_of_reach(tmp_path: Path,
                                                                               database_url: str) -> None:
    """With the database out of reach the admin API answers HTTP 503 with 40002 and Retry-After and a console
    page is an HTML 503 page saying so, while the wire API keeps the reference's 40002; all answer once it is
    back."""
    with gateway(tmp_path, write_rules(tmp_path, REPORTING_RULES), workers=False, database_url=database_url) as gw:
        task_id = gw.send("otp", "13800138000", {"code": "1"})["data"]["task_id"]
        queries.create_operator(OPERATOR, PASSWORD)
        console = Console(gw.url)
        assert console.sign_in().url.endswith("/console/")
        admin = {"Authorization": "Bearer admin-token"}
        refuse_connections(database_url, True)
        try:
            tasks = requests.get(gw.url + "/api/admin/tasks", headers=admin, timeout=10)
            page = console.get("/console/messages")
            wire = gw.request("GET", f"/api/v1/messages/{task_id}")
        finally:
            refuse_connections(database_url, False)
        assert (tasks.status_code, tasks.json()["code"], tasks.headers["retry-after"]) == (503, 40002, "2")
        assert page.status_code == 503 and "The database is out of reach" in page.text
        assert (wire.status_code, wire.json()["code"]) == (200, 40002)
        assert requests.get(gw.url + "/api/admin/tasks", headers=admin, timeout=10).json()["data"]["total"] == 1
        assert console.get("/console/messages").status_code == 200
