"""Intake when the database's answer is lost: a refused request's tasks are never sent, an idempotent one's are."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine import scheduler
from engine.store import repo
from engine.store.db import StoreUnavailable
from engine.store.models import Task
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with gateway(tmp_path, write_rules(tmp_path, CONSOLE_RULES), workers=False) as running:
        yield running


@pytest.fixture
def reply_lost(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The next insert of tasks commits, then fails as a connection cut before the reply; the rows it stored."""
    create, stored = repo.create_tasks, []

    def commit_then_fail(rows: list[dict[str, Any]], batch: dict[str, Any] | None = None) -> None:
        create(rows, batch)
        if not stored:
            stored.append(len(rows))
            raise StoreUnavailable("server closed the connection unexpectedly")

    monkeypatch.setattr(repo, "create_tasks", commit_then_fail)
    return stored


def stored_tasks() -> list[Task]:
    return list(Task.select())


def settled(timeout: float = 10.0) -> list[Task]:
    """The stored tasks once none is still pending."""
    deadline = time.monotonic() + timeout
    tasks = stored_tasks()
    while any(task.status == "pending" for task in tasks) and time.monotonic() < deadline:
        time.sleep(0.1)
        tasks = stored_tasks()
    return tasks


def test_a_refused_send_the_database_stored_anyway_is_failed_and_never_sent(gw: Gateway,
                                                                             reply_lost: list[int]) -> None:
    """A send answered 40002 whose row was committed before the reply was lost is marked failed within seconds,
    so the outbox sweep never queues what the client was told was not kept."""
    assert gw.send("otp", "13800138000", {"code": "1"})["code"] == 40002
    assert reply_lost == [1]
    tasks = settled()
    assert [(task.status, task.error_code) for task in tasks] == [("failed", "refused_in_doubt")]
    later = datetime.now(UTC) + timedelta(seconds=gw.svc.settings.outbox_grace * 2)
    assert scheduler.requeue_stranded(gw.svc, later) == 0


def test_an_idempotent_send_refused_the_same_way_goes_on_with_its_retry(gw: Gateway, reply_lost: list[int]) -> None:
    """With an idempotency key the stored task is left alone: the client's retry finds it and it stays open."""
    body, key = {"channel_id": "otp", "receiver": "13800138000", "template_params": {"code": "1"}}, "order-7"
    first = gw.call("POST", "/api/v1/messages", body, {"Idempotency-Key": key})
    assert first["code"] == 40002 and reply_lost == [1]
    retry = gw.call("POST", "/api/v1/messages", body, {"Idempotency-Key": key})
    assert retry["code"] == 0
    time.sleep(2.5)  # past the settling round that would have failed it
    [task] = stored_tasks()
    assert (task.task_id, task.status) == (retry["data"]["task_id"], "pending")
