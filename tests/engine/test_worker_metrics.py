"""A worker process started on its own serves its Prometheus metrics when given a port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.redis_server import REDIS_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_mpush_worker_serves_metrics_on_its_port(tmp_path: Path) -> None:
    """With MPUSH_WORKER_METRICS_PORT set, GET /metrics on the worker answers the gateway's counters."""
    port = free_port()
    env = {**os.environ, "MPUSH_REDIS_URL": REDIS_URL, "MPUSH_DATA_DIR": str(tmp_path),
           "MPUSH_RULES_DIR": str(Path(__file__).parents[2] / "rules"), "MPUSH_WORKER_METRICS_PORT": str(port),
           "MPUSH_WATCH_RULES": "false", "MPUSH_LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen([sys.executable, "-m", "engine.cli", "worker", "--threads", "2"], env=env)
    try:
        deadline, answer = time.monotonic() + 60, None
        while answer is None and time.monotonic() < deadline and worker.poll() is None:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except requests.ConnectionError:
                time.sleep(0.2)
        assert answer is not None and answer.status_code == 200
        assert "mpush_provider_sends_total" in answer.text
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
