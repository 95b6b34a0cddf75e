"""A worker process killed with SIGKILL mid-load: another worker finishes, no message is delivered twice."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from engine.store import repo
from engine.store.models import Attempt
from tests.support.loopback import LoopbackServer, Reply
from tests.support.service import ENCRYPTION_KEY, REDIS_URL, gateway, write_rules

RULES = """
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: load, type: sms, template: code}}
providers:
  - {{name: vendor, type: fake, config: {{url: "{url}/send"}}}}
routing:
  - {{name: load, when: {{channel: load}}, providers: [{{use: vendor}}]}}
failures:
  - name: resend-unknown
    scene: unknown_outcome
    action: retry
    retry: {{max: 3, delay: 0.1s}}
"""

MESSAGES = 1000


def start_worker(tmp: Path, rules: Path, database_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MPUSH_REDIS_URL": REDIS_URL,
        "MPUSH_DATABASE_URL": database_url,
        "MPUSH_RULES_DIR": str(rules),
        "MPUSH_DATA_DIR": str(tmp / "data"),
        "MPUSH_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "MPUSH_ADMIN_TOKEN": "admin-token",
        "MPUSH_VISIBILITY_TIMEOUT": "2",
        "MPUSH_WORKER_THREADS": "4",
        "MPUSH_WATCH_RULES": "false",
        "MPUSH_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_worker_is_taken_over_without_delivering_twice(tmp_path: Path) -> None:
    """After SIGKILL of the first worker, a second one delivers all 1,000 tasks; an attempt cut short is resent
    only under its own idempotency key (which the vendor drops), so no task reaches the vendor under two keys."""
    vendor = LoopbackServer(lambda request: Reply(200, '{"code": 0}', delay=0.01)).start()
    rules = write_rules(tmp_path, RULES.format(url=vendor.url))
    database_url = f"sqlite:///{tmp_path / 'mpush.db'}"
    first = second = None
    try:
        with gateway(tmp_path, rules, workers=False, database_url=database_url) as gw:
            receivers = [f"1380000{i:04d}" for i in range(MESSAGES)]
            answer = gw.call("POST", "/api/v1/messages/batch",
                             {"channel_id": "load", "receivers": receivers, "template_params": {"code": "1"}})
            assert answer["code"] == 0, answer
            batch_id = answer["data"]["batch_id"]

            first = start_worker(tmp_path, rules, database_url)
            _wait(lambda: len(vendor.requests) >= 150, 60, "the first worker to deliver 150 messages")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_at = len(vendor.requests)
            assert killed_at < MESSAGES

            second = start_worker(tmp_path, rules, database_url)
            _wait(lambda: repo.batch_summary(batch_id, gw.app_id)["pending_count"] == 0, 120,
                  "every task to reach a final status")
            summary = repo.batch_summary(batch_id, gw.app_id)
            assert summary["success_count"] == MESSAGES, summary
            assert Attempt.select().where(Attempt.status == "sending").count() == 0
            lost = Attempt.select().where(Attempt.status == "unknown").count()
            assert lost <= 4  # claimed per call: only the calls in flight (4 threads) can be in doubt
            print(f"killed after {killed_at} vendor calls; {lost} attempts cut short, resent under their own key")
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0, second.stderr.read().decode() if second.stderr else ""

        keys_by_task = collections.defaultdict(set)
        for request in vendor.requests:
            keys_by_task[json.loads(request.body)["task_id"]].add(request.header("Idempotency-Key"))
        assert len(keys_by_task) == MESSAGES
        assert {task_id: keys for task_id, keys in keys_by_task.items() if len(keys) > 1} == {}
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(20)
        vendor.stop()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
