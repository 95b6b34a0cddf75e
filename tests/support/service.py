"""A whole gateway in the test process: real Redis, a real database, uvicorn on loopback, workers."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
import uvicorn
from redis.cluster import RedisCluster

from api.app import create_app
from engine import keys, scheduler
from engine.cli import server_config
from engine.services import Services, open_services
from engine.settings import Settings
from engine.signing import sign_headers
from engine.store import repo
from engine.worker import Worker
from tests.support.redis_cluster import ADDRESS as CLUSTER_ADDRESS

# db 14: the whole-gateway tests clear every gateway key there, so unit tests (db 15) keep theirs. With
# MPUSH_TEST_REDIS_CLUSTER the gateways use that cluster (one database), with MPUSH_TEST_STREAM_SHARDS shards.
REDIS_URL = (f"redis://{CLUSTER_ADDRESS}" if CLUSTER_ADDRESS
             else os.environ.get("MPUSH_TEST_GATEWAY_REDIS_URL", "redis://127.0.0.1:6379/14"))
STREAM_SHARDS = int(os.environ.get("MPUSH_TEST_STREAM_SHARDS", "1"))
ENCRYPTION_KEY = "k" * 32
FINAL = ("success", "failed")


def clean_redis(url: str = REDIS_URL, *, cluster: bool = bool(CLUSTER_ADDRESS)) -> None:
    """Remove every gateway key from the test database (other tests' keys are left alone)."""
    client = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    names = [name for pattern in keys.PATTERNS for name in client.scan_iter(match=pattern, count=1000)]
    if names:
        client.delete(*names)
    client.close()


@dataclass
class Gateway:
    """A running gateway and a signed client for one app."""

    svc: Services
    url: str
    app_id: str
    secret: str
    worker: Worker | None
    stop: threading.Event
    threads: list[threading.Thread] = field(default_factory=list)

    def request(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
                *, app_id: str | None = None, secret: str | None = None, now: int | None = None) -> requests.Response:
        """A signed request to the API, as the SDKs make it."""
        raw = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        signed = sign_headers(app_id or self.app_id, secret or self.secret, method, path, raw,
                              now=now or int(time.time()), nonce=uuid.uuid4().hex)
        return requests.request(method, self.url + path, data=raw or None, timeout=10,
                                headers={"Content-Type": "application/json", **signed, **(headers or {})})

    def call(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
             **signing: Any) -> dict[str, Any]:
        """The envelope a signed request gets."""
        result: dict[str, Any] = self.request(method, path, body, headers, **signing).json()
        return result

    def send(self, channel: str | int, receiver: str, params: Mapping[str, str] | None = None,
             **extra: Any) -> dict[str, Any]:
        body = {"channel_id": channel, "receiver": receiver, "template_params": dict(params or {}), **extra}
        return self.call("POST", "/api/v1/messages", body)

    def wait(self, task_id: str, statuses: tuple[str, ...] = FINAL, timeout: float = 15.0) -> Any:
        """The task once its status is one of `statuses`; fails the test after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            task = repo.get_task(task_id)
            if task is not None and task.status in statuses:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} is {task.status if task else 'missing'}, wanted {statuses}")
            time.sleep(0.05)


CONSOLE_RULES = """
templates:
  - {name: code, variables: [code], text: "code {code}"}
channels:
  - {id: 1, name: otp, type: sms, template: code}
providers:
  - {name: console, type: console}
routing:
  - {name: otp, when: {channel: otp}, providers: [{use: console}]}
"""  # the least a running gateway needs: one channel, delivered by the console provider

REPORTING_RULES = """
templates:
  - {name: code, variables: [code], text: "code {code}"}
channels:
  - {id: 1, name: otp, type: sms, template: code}
providers:
  - {name: reporting, type: fake, config: {final: false}, callback: {token: cb-token}}
routing:
  - {name: otp, when: {channel: otp}, providers: [{use: reporting}]}
"""  # one channel whose provider accepts at once and reports later, at /api/callback/reporting?token=cb-token


def write_rules(tmp: Path, text: str) -> Path:
    """A rules directory under `tmp` holding `text` as its one rule file."""
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(text, encoding="utf-8")
    return rules


def settings_for(tmp: Path, rules_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp / "data", rules_dir=rules_dir, redis_url=REDIS_URL, redis_cluster=bool(CLUSTER_ADDRESS),
        stream_shards=STREAM_SHARDS,
        database_url=f"sqlite:///{tmp / 'mpush.db'}", encryption_key=ENCRYPTION_KEY, admin_token="admin-token",
        worker_threads=4, visibility_timeout=5.0, callback_timeout=600.0, watch_rules=False, rule_env={},
        outbound_allow="127.0.0.1/32",  # the tests' webhook and alert receivers listen on loopback
    )
    values.update(overrides)
    return Settings(**values)


@contextmanager
def gateway(tmp: Path, rules_dir: Path, *, workers: bool = True, webhook_url: str | None = None,
            **overrides: Any) -> Iterator[Gateway]:
    """Start the API on an ephemeral port plus workers and the scheduler; stop them all afterwards."""
    clean_redis(overrides.get("redis_url", REDIS_URL), cluster=overrides.get("redis_cluster", bool(CLUSTER_ADDRESS)))
    svc = open_services(settings_for(tmp, rules_dir, **overrides))
    app, secret = repo.create_app("test-app", svc.key, webhook_url=webhook_url, daily_quota=0, rate_limit=0)
    stop = threading.Event()
    server = uvicorn.Server(server_config(create_app(svc), svc.settings, "127.0.0.1", 0))
    threads = [threading.Thread(target=server.run, name="uvicorn")]
    worker = Worker(svc, threads=svc.settings.worker_threads, name="test") if workers else None
    if worker is not None:
        threads.append(threading.Thread(target=worker.run, args=(stop,), name="worker"))
        threads.append(threading.Thread(target=scheduler.run, args=(svc, stop), name="scheduler"))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    running = Gateway(svc, f"http://127.0.0.1:{port}", app.app_id, secret, worker, stop, threads)
    try:
        yield running
    finally:
        stop.set()
        server.should_exit = True
        for thread in threads:
            thread.join(timeout=15)
        svc.close()


def delayed_jobs(svc: Services) -> dict[bytes, float]:
    """Every job in the delayed sets of all stream shards, with its due time."""
    return {member: score for name in svc.queue.delayed_sets
            for member, score in svc.redis.zrange(name, 0, -1, withscores=True)}
