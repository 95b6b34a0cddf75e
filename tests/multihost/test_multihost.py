"""The production shape on separate hosts: two API and two worker hosts over one PostgreSQL and one Redis.

A "db" host holds Redis and PostgreSQL, a "vendor" host the mock vendor, a "client" host the load;
mid-load one worker host is cut off (link down, then back) and the other is killed and started again.
Every accepted message must be delivered, and the vendor must have received each exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import netns

ROOT = Path(__file__).parents[2]
WHY_NOT = netns.available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"network namespaces unavailable: {WHY_NOT}")

MESSAGES, RATE = 1200, 100.0
DRAIN_SECONDS = 90.0
VENDOR_PORT, API_PORT = 9000, 8080
RULES = """
templates:
  - {{name: code, variables: [code], text: "your code is {{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
providers:
  - {{name: vendor, type: fake, config: {{url: "http://{vendor}:{port}/send", timeout: 5}}}}
routing:
  - {{name: otp, when: {{channel: otp}}, providers: [{{use: vendor}}]}}
"""


def gateway_env(tmp_path: Path, role: str, redis_url: str, database_url: str) -> dict[str, str]:
    data = tmp_path / role
    data.mkdir(exist_ok=True)
    return {**os.environ, "MPUSH_REDIS_URL": redis_url, "MPUSH_DATABASE_URL": database_url,
            "MPUSH_ENCRYPTION_KEY": "k" * 32, "MPUSH_ADMIN_TOKEN": "t" * 32, "MPUSH_RULES_DIR": str(tmp_path / "rules"),
            "MPUSH_DATA_DIR": str(data), "MPUSH_WATCH_RULES": "false", "MPUSH_VISIBILITY_TIMEOUT": "5",
            "MPUSH_LOG_LEVEL": "INFO"}


def mpush(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", *args]


def sql(host: netns.Host, url: str, query: str) -> str:
    return host.run(["psql", url, "-Atc", query]).stdout.strip()


def test_two_api_and_two_worker_hosts_deliver_everything_once_through_a_cut_and_a_kill(tmp_path: Path) -> None:
    """Through a worker host's partition and another's SIGKILL, every accepted send ends delivered, once."""
    with netns.Network(index=240) as net:
        db, vendor, client = net.add("db"), net.add("vendor"), net.add("client")
        apis = [net.add("api1"), net.add("api2")]
        workers = [net.add("work1"), net.add("work2")]
        redis_url = netns.start_redis(db, tmp_path / "redis")
        database_url = netns.start_postgres(db)
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "rules.yaml").write_text(RULES.format(vendor=vendor.address, port=VENDOR_PORT))
        vendor.start([sys.executable, str(ROOT / "bench" / "mock_vendor.py"), str(VENDOR_PORT), vendor.address])

        env = gateway_env(tmp_path, "admin", redis_url, database_url)
        apis[0].run(mpush("migrate"), env=env, cwd=ROOT)
        created = apis[0].run(mpush("apps", "create", "load", "--rate-limit", "0", "--daily-quota", "0"),
                              env=env, cwd=ROOT).stdout
        app_id, secret = (line.split()[1] for line in created.splitlines()[:2])
        for host in apis:
            host.start(mpush("serve", "--no-workers", "--host", host.address, "--port", str(API_PORT)),
                       env=gateway_env(tmp_path, host.name, redis_url, database_url), log=tmp_path / f"{host.name}.log")
        worker_env = {host.name: gateway_env(tmp_path, host.name, redis_url, database_url) for host in workers}
        processes = {host.name: host.start(mpush("worker"), env=worker_env[host.name], log=tmp_path / f"{host.name}.log")
                     for host in workers}
        for host in apis:
            netns.wait_for(client, [sys.executable, "-c", "import urllib.request; "
                                    f"urllib.request.urlopen('http://{host.address}:{API_PORT}/health', timeout=2)"])

        urls = [f"http://{host.address}:{API_PORT}" for host in apis]
        load = subprocess.Popen(client.command([sys.executable, str(Path(__file__).parent / "load.py"), app_id, secret,
                                                str(MESSAGES), str(RATE), *urls]),
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(3)
        net.cut("work1")  # partitioned mid-load: its stream entries are reclaimed by the others
        time.sleep(4)
        os.killpg(processes[workers[1].name].pid, signal.SIGKILL)
        time.sleep(2)
        net.restore("work1")
        workers[1].start(mpush("worker"), env=worker_env[workers[1].name], log=tmp_path / f"{workers[1].name}-2.log")
        accepted_out, _ = load.communicate(timeout=MESSAGES / RATE + 60)
        accepted = set(accepted_out.split())
        print(f"separate hosts (network namespaces): {len(accepted)} of {MESSAGES} sends accepted")
        assert len(accepted) >= MESSAGES * 0.9

        deadline = time.monotonic() + DRAIN_SECONDS
        while (open_count := int(sql(db, database_url, "SELECT count(*) FROM tasks WHERE status NOT IN "
                                                       "('success', 'failed')"))) and time.monotonic() < deadline:
            time.sleep(1)
        statuses = dict(line.split("|") for line in sql(db, database_url,
                                                        "SELECT status, count(*) FROM tasks GROUP BY status").split())
        stats = client.run([sys.executable, "-c", "import urllib.request; print(urllib.request.urlopen("
                            f"'http://{vendor.address}:{VENDOR_PORT}/stats', timeout=5).read().decode())"]).stdout
        received = [task_id for _, task_id in json.loads(stats)]
        twice = sorted({task_id for task_id in received if received.count(task_id) > 1})
        stored = set(sql(db, database_url, "SELECT task_id FROM tasks").split())
        print(f"statuses {statuses}; vendor received {len(received)} sends of {len(set(received))} tasks")
        assert open_count == 0, statuses
        assert accepted <= stored
        assert statuses == {"success": str(len(stored))}, statuses
        assert twice == []
        assert set(received) == stored
