"""The fault suite: one API and two worker processes, a mock vendor counting what it delivers, load from a
real client, and a fault mid-load. Each scenario asserts the delivery contract: every accepted message ends
final within a bound, the vendor delivers none twice, and scheduled ones never go early.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from engine.signing import sign_headers

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).parents[2]
MESSAGES, RATE = 600, 150.0
DRAIN_SECONDS = 90.0
RULES = """
templates:
  - {{name: code, variables: [code], text: "your code is {{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
providers:
  - {{name: vendor, type: fake, config: {{url: "http://127.0.0.1:{port}/send", timeout: 2}}}}
routing:
  - {{name: otp, when: {{channel: otp}}, providers: [{{use: vendor}}]}}
failures:
  - {{name: resend-unknown, scene: unknown_outcome, action: retry, retry: {{max: 5, delay: 1s}}}}
  - {{name: retry, scene: send_failure, action: retry, retry: {{max: 5, delay: 1s, backoff: 2, max_delay: 10s}}}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)


@dataclass
class Cluster:
    """The processes of one scenario and what it needs to drive and inspect them."""

    tmp: Path
    redis_port: int
    vendor_port: int
    api_port: int
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    app_id: str = ""
    secret: str = ""
    accepted: list[str] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)  # the codes of sends not accepted

    def start(self, name: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115  (closed with the process)
        self.processes[name] = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=log, stderr=log)

    def mpush(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "engine.cli", *args]

    def start_redis(self, appendonly: bool = False) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if appendonly else ["--appendonly", "no"]
        self.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
                             *persistence, "--dir", str(self.tmp)])
        wait_until(self._redis_up, 10, "redis")

    def _redis_up(self) -> bool:
        try:
            return bool(redis.Redis(port=self.redis_port).ping())
        except redis.ConnectionError:
            return False

    def start_api(self) -> None:
        self.start("api", self.mpush("serve", "--no-workers", "--port", str(self.api_port)))
        wait_until(self._api_up, 30, "the API")

    def _api_up(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.api_port}/health", timeout=1).status_code < 600
        except requests.RequestException:
            return False

    def start_worker(self, name: str) -> None:
        self.start(name, self.mpush("worker"))

    def workers_reading(self) -> bool:
        """Both workers' readers (two each) are waiting on the stream."""
        clients = redis.Redis(port=self.redis_port).client_list()
        return sum(client.get("cmd") == "xreadgroup" for client in clients) >= 4

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def send(self, index: int, **extra: object) -> None:
        body = json.dumps({"channel_id": 1, "receiver": f"1380013{index:04d}", "template_params": {"code": "1"},
                           **extra}, separators=(",", ":"), sort_keys=True).encode()
        path = "/api/v1/messages"
        headers = sign_headers(self.app_id, self.secret, "POST", path, body, now=int(time.time()),
                               nonce=uuid.uuid4().hex)
        try:
            answer = requests.post(f"http://127.0.0.1:{self.api_port}{path}", data=body, timeout=5,
                                   headers={"Content-Type": "application/json", **headers}).json()
        except (requests.RequestException, ValueError):
            return  # no answer (the API was killed): maybe accepted, not counted
        if answer.get("code") == 0:
            self.accepted.append(answer["data"]["task_id"])
        else:
            self.refused[answer.get("code")] += 1

    def load(self, count: int = MESSAGES, rate: float = RATE, during: Callable[[], None] | None = None,
             at: int = MESSAGES // 3) -> None:
        """Offer `count` sends at `rate` from 8 client threads; run `during` once `at` were offered."""
        start = time.monotonic()
        threads: list[threading.Thread] = []
        for index in range(count):
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
            if index == at and during is not None:
                during()
            thread = threading.Thread(target=self.send, args=(index,))
            thread.start()
            threads.append(thread)
            threads = [t for t in threads if t.is_alive()]
        for thread in threads:
            thread.join(10)

    def vendor(self, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.vendor_port}{path}", data=body,
                                         method="POST" if body is not None else "GET")
        with urllib.request.urlopen(request, timeout=5) as answer:
            return bytes(answer.read())

    def delivered(self) -> Counter[str]:
        return Counter(task_id for _, task_id in json.loads(self.vendor("/stats")))

    def statuses(self) -> dict[str, str]:
        from engine.store import db as store_db
        from engine.store.models import Task

        database = store_db.connect(self.env["MPUSH_DATABASE_URL"])
        try:
            with store_db.connection(database):
                return dict(Task.select(Task.task_id, Task.status).bind(database).tuples())
        finally:
            database.close()

    def failure_reasons(self) -> Counter[str]:
        """Why the tasks that ended failed did (their last error and attempt count): what to read when a
        scenario fails."""
        from engine.store import db as store_db
        from engine.store.models import Task

        database = store_db.connect(self.env["MPUSH_DATABASE_URL"])
        try:
            with store_db.connection(database):
                rows = (Task.select(Task.error_code, Task.error_message, Task.retry_count)
                        .where(Task.status == "failed").bind(database).tuples())
                return Counter(f"{code} {message[:100]} (attempts: {tries})" for code, message, tries in rows)
        finally:
            database.close()

    def drain(self, timeout: float = DRAIN_SECONDS) -> dict[str, str]:
        """Wait until every stored task is final; the statuses."""
        final = ("success", "failed")
        open_tasks = lambda: Counter(status for status in self.statuses().values() if status not in final)  # noqa: E731
        wait_until(lambda: not open_tasks(), timeout, f"every task to be final (still open: {dict(open_tasks())})")
        return self.statuses()

    def check_contract(self, drain_seconds: float = DRAIN_SECONDS) -> dict[str, int]:
        """Every accepted message final within `drain_seconds`, delivered once by the vendor's count; the
        figures for the output (`failed`: accepted messages that ended failed)."""
        statuses = self.drain(drain_seconds)
        delivered = self.delivered()
        twice = {task_id: n for task_id, n in delivered.items() if n > 1}
        assert set(self.accepted) <= set(statuses)
        assert twice == {}
        succeeded = {task_id for task_id, status in statuses.items() if status == "success"}
        assert succeeded <= set(delivered)
        figures = {"accepted": len(self.accepted), "success": len(succeeded),
                   "failed": sum(statuses[task_id] == "failed" for task_id in self.accepted),
                   "delivered": len(delivered), "sent_twice": len(twice),
                   "repeats_dropped": int(self.vendor("/repeats"))}
        print(f"\n{figures}")
        if figures["failed"]:
            print(f"why tasks failed: {dict(self.failure_reasons())}")
        return figures

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Redis of its own, the mock vendor, one API and two workers over one SQLite database."""
    yield from start_cluster(tmp_path)


def start_cluster(tmp_path: Path, appendonly: bool = False, **settings: str) -> Iterator[Cluster]:
    """The scenario's processes (`settings` override the short sweep and reclaim times of the others)."""
    ports = free_port(), free_port(), free_port()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(RULES.format(port=ports[1]), encoding="utf-8")
    env = {**os.environ, "MPUSH_REDIS_URL": f"redis://127.0.0.1:{ports[0]}/0",
           "MPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'mpush.db'}", "MPUSH_ENCRYPTION_KEY": "k" * 32,
           "MPUSH_ADMIN_TOKEN": "t" * 32, "MPUSH_RULES_DIR": str(rules), "MPUSH_DATA_DIR": str(tmp_path / "data"),
           "MPUSH_WATCH_RULES": "false", "MPUSH_VISIBILITY_TIMEOUT": "5", "MPUSH_ATTEMPT_LEASE": "6",
           "MPUSH_SWEEP_INTERVAL": "2", "MPUSH_OUTBOX_GRACE": "5", "MPUSH_WORKER_THREADS": "4",
           "MPUSH_LOG_LEVEL": "WARNING", **settings}
    running = Cluster(tmp_path, *ports, env)
    try:
        running.start_redis(appendonly)
        running.start("vendor", [sys.executable, str(ROOT / "bench" / "mock_vendor.py"), str(ports[1])])
        subprocess.run(running.mpush("migrate"), env=env, cwd=ROOT, check=True, capture_output=True)
        created = subprocess.run(running.mpush("apps", "create", "faults", "--rate-limit", "0", "--daily-quota", "0"),
                                 env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        running.app_id, running.secret = (line.split()[1] for line in created.splitlines()[:2])
        running.start_api()
        running.start_worker("worker1")
        running.start_worker("worker2")
        wait_until(running.workers_reading, 60, "both workers to read the stream")
        yield running
    finally:
        running.stop()


def test_a_worker_killed_mid_load_and_restarted(cluster: Cluster) -> None:
    """SIGKILL of one of two workers mid-load, started again: all delivered, none twice."""
    def kill_and_restart() -> None:
        cluster.kill("worker1")
        cluster.start_worker("worker1b")

    cluster.load(during=kill_and_restart)
    figures = cluster.check_contract()
    assert figures["failed"] == 0


def test_a_worker_killed_mid_load_with_a_slow_vendor(cluster: Cluster) -> None:
    """With the vendor answering in 200 ms, many calls are in flight at the kill; the other worker finishes
    them after their leases expire, resending only under the same key."""
    cluster.vendor("/delay", b"0.2")
    cluster.load(count=300, rate=60, during=lambda: cluster.kill("worker1"), at=150)
    figures = cluster.check_contract()
    assert figures["failed"] == 0


def test_the_api_killed_mid_load(cluster: Cluster) -> None:
    """SIGKILL of the API mid-load and a new one started: whatever was answered accepted is delivered, once."""
    def kill_and_restart() -> None:
        cluster.kill("api")
        cluster.start_api()

    cluster.load(during=kill_and_restart)
    cluster.check_contract()


def test_redis_losing_its_data_mid_load(cluster: Cluster) -> None:
    """FLUSHALL mid-load: workers recreate their group, the lost jobs come back from the database, no restart."""
    flushed_at: list[float] = []

    def flush() -> None:
        redis.Redis(port=cluster.redis_port).flushall()
        flushed_at.append(time.monotonic())

    cluster.load(during=flush)
    figures = cluster.check_contract()
    assert figures["failed"] == 0
    print(f"drained {time.monotonic() - flushed_at[0]:.1f}s after the flush")


def test_redis_killed_and_restarted_mid_load(cluster: Cluster) -> None:
    """Redis down for 3 s mid-load: sends in that window are refused (40003), every accepted one is delivered."""
    def bounce() -> None:
        cluster.kill("redis")
        time.sleep(3)
        cluster.start_redis()

    cluster.load(during=bounce)
    figures = cluster.check_contract()
    assert figures["failed"] == 0
    assert set(cluster.refused) <= {40003}, cluster.refused


@pytest.fixture
def persistent(tmp_path: Path) -> Iterator[Cluster]:
    """The cluster with Redis on an append-only file synced every second, and the default outbox grace and
    visibility timeout (a minute each), so neither sweep nor reclaim can stand in for the restart recovery."""
    yield from start_cluster(tmp_path, appendonly=True, MPUSH_OUTBOX_GRACE="60", MPUSH_SWEEP_INTERVAL="10",
                             MPUSH_VISIBILITY_TIMEOUT="60")


def test_redis_killed_and_restarted_from_its_append_only_file_mid_load(persistent: Cluster) -> None:
    """Redis SIGKILLed mid-load and started again on its append-only file, which may miss the last second of
    jobs: the scheduler re-queues the tasks touched just before, so every accepted message is delivered,
    once, within 20 s of the restart rather than after the minute-long outbox grace."""
    restarted: list[float] = []

    def bounce() -> None:
        persistent.kill("redis")
        persistent.start_redis(appendonly=True)
        restarted.append(time.monotonic())

    persistent.load(count=900, rate=300.0, during=bounce, at=450)
    figures = persistent.check_contract(drain_seconds=20.0 - (time.monotonic() - restarted[0]))
    assert figures["failed"] == 0
    print(f"drained within {time.monotonic() - restarted[0]:.1f}s of the restart")


def test_a_vendor_hanging_past_the_timeout(cluster: Cluster) -> None:
    """The vendor hangs past the 2 s timeout for 6 s: the cut-off calls are unknown and resent only under their
    own key; every task ends final, none is delivered twice."""
    def hang() -> None:
        cluster.vendor("/delay", b"3")
        threading.Timer(6, lambda: cluster.vendor("/delay", b"0")).start()

    cluster.load(count=300, rate=60, during=hang, at=60)
    cluster.check_contract()


def test_scheduled_messages_are_never_sent_early(cluster: Cluster) -> None:
    """Messages scheduled 20 s ahead survive sweeps and a Redis flush and reach the vendor only at their time."""
    due = datetime.now(UTC) + timedelta(seconds=20)
    for index in range(20):
        cluster.send(index, scheduled_at=due.isoformat(timespec="seconds"))
    assert len(cluster.accepted) == 20
    time.sleep(6)  # past the outbox grace and a few sweeps
    redis.Redis(port=cluster.redis_port).flushall()
    time.sleep(4)
    assert cluster.delivered() == Counter()
    cluster.check_contract()
    times = [at for at, _ in json.loads(cluster.vendor("/stats"))]
    assert len(times) == 20 and min(times) >= due.timestamp() - 1


def test_the_database_locked_by_another_process_mid_load(cluster: Cluster) -> None:
    """Another process holds SQLite's write lock for 4 s mid-load: sends wait or are refused (40002), attempts
    are recorded once the lock is gone; every accepted message is delivered once and none fails."""
    import sqlite3

    locked = threading.Event()

    def hold_the_lock() -> None:
        holder = sqlite3.connect(cluster.env["MPUSH_DATABASE_URL"].removeprefix("sqlite:///"), timeout=10,
                                 isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(4)
        holder.execute("ROLLBACK")
        holder.close()

    def lock() -> None:
        threading.Thread(target=hold_the_lock).start()
        locked.wait(10)

    cluster.load(during=lock)
    figures = cluster.check_contract()
    assert figures["failed"] == 0 and figures["accepted"] >= MESSAGES // 2
    assert set(cluster.refused) <= {40002}, cluster.refused


def test_a_hundred_rule_reloads_a_fifth_of_them_broken(cluster: Cluster) -> None:
    """The rule file rewritten and reloaded (SIGHUP to every process) 100 times mid-load, every fifth time broken:
    broken files are refused and the last good version stays; every message is delivered once, none fails."""
    rules = Path(cluster.env["MPUSH_RULES_DIR"]) / "rules.yaml"
    good = rules.read_text(encoding="utf-8")
    reloaded: list[int] = []

    def churn() -> None:
        for index in range(100):
            text = "routing: [{name: broken" if index % 5 == 4 else f"{good}\n# reload {index}\n"
            rules.write_text(text, encoding="utf-8")
            for name in ("api", "worker1", "worker2"):
                cluster.processes[name].send_signal(signal.SIGHUP)
            reloaded.append(index)
            time.sleep(0.05)

    cluster.load(during=lambda: threading.Thread(target=churn).start())
    wait_until(lambda: len(reloaded) == 100, 30, "the 100 reloads")
    figures = cluster.check_contract()
    assert figures["failed"] == 0

    def status() -> dict[str, Any]:
        return requests.get(f"http://127.0.0.1:{cluster.api_port}/api/admin/rules", timeout=5,
                            headers={"Authorization": "Bearer " + cluster.env["MPUSH_ADMIN_TOKEN"]}).json()["data"]

    # the last write was a broken one; its reload may still be reading when the messages are all final
    wait_until(lambda: "rules.yaml" in (status()["last_error"] or ""), 10, "the last, broken file refused")
    assert status()["reloads"] >= 1 and status()["failures"] >= 1
