"""Redis out of reach: the API answers 40003 (retry later), never 40001, and accepts again once it is back; our
own surfaces (admin API, console) say so with HTTP 503 and Retry-After."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from engine.store import queries
from tests.console.conftest import OPERATOR, PASSWORD, Console
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                "--appendonly", "no", "--dir", str(directory)], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    process = start_redis(port, tmp_path)
    yield port, process
    process.kill()
    process.wait()


def test_sends_while_redis_is_down_answer_40003_and_succeed_once_it_is_back(
        tmp_path: Path, own_redis: tuple[int, subprocess.Popen[bytes]]) -> None:
    """Single sends and task reads while Redis is gone get 40003; after it returns, sends are accepted again."""
    port, process = own_redis
    with gateway(tmp_path, write_rules(tmp_path, CONSOLE_RULES), workers=False,
                 redis_url=f"redis://127.0.0.1:{port}/0") as gw:
        assert gw.send("otp", "13800138000", {"code": "1"})["code"] == 0
        process.kill()
        process.wait()
        answers = [gw.send("otp", "13800138000", {"code": "1"}) for _ in range(3)]
        batch = gw.call("POST", "/api/v1/messages/batch",
                        {"channel_id": "otp", "receivers": ["13800138001"], "template_params": {"code": "1"}})
        assert {answer["code"] for answer in [*answers, batch]} == {40003}
        restarted = start_redis(port, tmp_path)
        try:
            assert _eventually_accepted(gw)
        finally:
            restarted.kill()
            restarted.wait()


def test_the_admin_api_and_console_answer_503_while_redis_is_down(
        tmp_path: Path, own_redis: tuple[int, subprocess.Popen[bytes]]) -> None:
    """With Redis gone the admin API answers HTTP 503 with 40003 and Retry-After, a console page is an HTML 503
    page saying Redis is out of reach, and the wire API's task read keeps the reference's HTTP 200 with 40003."""
    port, process = own_redis
    with gateway(tmp_path, write_rules(tmp_path, CONSOLE_RULES), workers=False,
                 redis_url=f"redis://127.0.0.1:{port}/0") as gw:
        task_id = gw.send("otp", "13800138000", {"code": "1"})["data"]["task_id"]
        queries.create_operator(OPERATOR, PASSWORD)
        console = Console(gw.url)
        assert console.sign_in().url.endswith("/console/")
        process.kill()
        process.wait()
        stats = requests.get(gw.url + "/api/admin/stats", headers={"Authorization": "Bearer admin-token"}, timeout=10)
        page = console.get("/console/")
        wire = gw.request("GET", f"/api/v1/messages/{task_id}")
    assert (stats.status_code, stats.json()["code"], stats.headers["retry-after"]) == (503, 40003, "2")
    assert (page.status_code, page.headers["retry-after"]) == (503, "2")
    assert page.headers["content-type"].startswith("text/html") and "Redis is out of reach" in page.text
    assert (wire.status_code, wire.json()["code"]) == (200, 40003)


def test_a_silent_redis_stalls_no_other_request(tmp_path: Path, own_redis: tuple[int, subprocess.Popen[bytes]]) -> None:
    """While Redis is frozen (SIGSTOP: connections open, no answer), admin stats waiting on it do not hold up
    the event loop: another request is answered at once, and the stats get 503 once the Redis timeout ends."""
    port, process = own_redis
    with gateway(tmp_path, write_rules(tmp_path, CONSOLE_RULES), workers=False,
                 redis_url=f"redis://127.0.0.1:{port}/0") as gw:
        assert gw.send("otp", "13800138000", {"code": "1"})["code"] == 0  # Redis connections now pooled
        process.send_signal(signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(1) as pool:
                stats = pool.submit(requests.get, gw.url + "/api/admin/stats", timeout=30,
                                    headers={"Authorization": "Bearer admin-token"})
                time.sleep(0.5)  # the stats request is now waiting on Redis
                started = time.monotonic()
                assert requests.get(gw.url + "/health/simple", timeout=30).status_code == 200
                waited = time.monotonic() - started
                assert stats.result().status_code == 503
        finally:
            process.send_signal(signal.SIGCONT)
    assert waited < 1.0, f"another request waited {waited:.1f} s behind a frozen Redis"


def _eventually_accepted(gw: Gateway) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if gw.send("otp", "13800138000", {"code": "1"})["code"] == 0:
            return True
        time.sleep(0.2)
    return False
