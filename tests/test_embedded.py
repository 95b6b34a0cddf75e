"""The zero-configuration mode of the README's first command: `mpush serve` on SQLite and an embedded Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mpush(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=True)


def _embedded_redis(data_dir: Path) -> list[psutil.Process]:
    """The redis-server processes working in `data_dir` (an embedded Redis persists there)."""
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if process.info["name"] == "redis-server" and Path(process.cwd()) == data_dir:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_serve_with_no_configuration_delivers_and_shuts_down_cleanly(tmp_path: Path) -> None:
    """With no Redis or database configured, `mpush serve` keeps everything under its data folder, delivers a
    message sent with `mpush send` through the console provider, and on SIGTERM finishes, stops its embedded
    Redis and exits 0."""
    data_dir, port = tmp_path / "data", _free_port()
    env = {name: value for name, value in os.environ.items()
           if name not in ("MPUSH_REDIS_URL", "MPUSH_DATABASE_URL", "MPUSH_CONFIG")}
    env.update(MPUSH_DATA_DIR=str(data_dir), MPUSH_PORT=str(port), MPUSH_WATCH_RULES="false")
    server = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (data_dir / "admin.token").exists() or not _embedded_redis(data_dir.resolve()):
            assert server.poll() is None and time.monotonic() < deadline, "mpush serve did not start"
            time.sleep(0.2)
        created = _mpush("apps", "create", "demo", env=env).stdout
        fields = dict(line.split(":", 1) for line in created.splitlines() if line.startswith("app_"))
        sent = _mpush("send", "--url", f"http://127.0.0.1:{port}", "--app-id", fields["app_id"].strip(),
                      "--secret", fields["app_secret"].strip(), "--channel", "verify-sms", "--to", "13800138000",
                      "--param", "code=123456", "--wait", env=env)
        assert "success" in sent.stdout
        redis_servers = _embedded_redis(data_dir.resolve())
        kept = {path.name for path in data_dir.iterdir()}
        assert kept >= {"mpush.db", "appendonly.aof", "encryption.key", "admin.token"}
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
        _, still_running = psutil.wait_procs(redis_servers, timeout=15)
    finally:
        server.kill()
        for process in _embedded_redis(data_dir.resolve()):  # a failed run leaves no server behind
            process.kill()
    assert server.returncode == 0, output
    assert "sms to +8613800138000 via console" in output and "123456" in output
    assert redis_servers and not still_running
