"""Delivery reports and customer webhooks end to end: callback endpoint -> task -> signed webhook."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from engine import webhooks
from engine.signing import verify_webhook
from engine.store import repo
from engine.store.models import Callback, WebhookDelivery
from engine.worker import Worker
from tests.support.loopback import LoopbackServer, Recorded, Reply
from tests.support.service import Gateway, gateway, write_rules

RULES = """
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: reported, type: sms, template: code}}
  - {{id: 2, name: instant, type: sms, template: code}}
providers:
  - name: reporting
    type: fake
    config: {{final: false}}
    callback: {{token: cb-token}}
  - {{name: instant, type: fake, config: {{}}}}
routing:
  - {{name: reported, when: {{channel: reported}}, providers: [{{use: reporting}}]}}
  - {{name: instant, when: {{channel: instant}}, providers: [{{use: instant}}]}}
failures:
  - {{name: report-failed, scene: callback_failure, when: {{error_code: UNDELIV}}, action: fail}}
"""


class Receiver:
    """The customer's webhook endpoint: answers from a script, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.server = LoopbackServer(self._answer).start()

    def _answer(self, request: Recorded) -> Reply:
        return Reply(self.statuses.pop(0) if self.statuses else 200, "{}")

    def events(self) -> list[Recorded]:
        return self.server.requests


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.stop()


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    return write_rules(tmp_path, RULES.format())


@pytest.fixture
def gw(tmp_path: Path, rules_dir: Path, receiver: Receiver) -> Iterator[Gateway]:
    with gateway(tmp_path, rules_dir, webhook_url=receiver.server.url + "/hook", callback_timeout=1.0) as running:
        yield running


def send_and_wait_sent(gw: Gateway) -> str:
    answer = gw.send("reported", "13800138000", {"code": "1"})
    assert answer["code"] == 0, answer
    task = gw.wait(answer["data"]["task_id"], ("sent",))
    return str(task.task_id)


def report(gw: Gateway, body: object, token: str = "cb-token") -> requests.Response:
    return requests.post(f"{gw.url}/api/callback/reporting?token={token}", json=body, timeout=5)


def wait_for_events(receiver: Receiver, count: int, timeout: float = 10.0) -> list[Recorded]:
    deadline = time.monotonic() + timeout
    while len(receiver.events()) < count:
        assert time.monotonic() < deadline, f"{len(receiver.events())} webhook calls, wanted {count}"
        time.sleep(0.05)
    return receiver.events()


class TestReports:
    def test_delivered_report_completes_task_and_fires_signed_webhook(self, gw: Gateway, receiver: Receiver) -> None:
        """A verified 'delivered' report makes the task success and the app gets one verifiable event."""
        task_id = send_and_wait_sent(gw)
        message_id = repo.get_task(task_id).provider_message_id
        answer = report(gw, {"id": message_id, "status": "delivered"})
        assert answer.status_code == 200
        task = gw.wait(task_id)
        assert task.status == "success" and task.callback_status == "delivered"
        [event] = wait_for_events(receiver, 1)
        stamp = int(event.header("X-Webhook-Timestamp"))
        assert verify_webhook(gw.secret, stamp, event.body, event.header("X-Webhook-Signature"))
        assert json.loads(event.body)["event"] == "delivered" and json.loads(event.body)["task_id"] == task_id

    def test_forged_replayed_and_unknown_reports_change_nothing(self, gw: Gateway, receiver: Receiver) -> None:
        """A wrong token is refused, a repeated report and an unknown id are recorded but not applied."""
        task_id = send_and_wait_sent(gw)
        message_id = repo.get_task(task_id).provider_message_id
        assert report(gw, {"id": message_id, "status": "failed"}, token="forged").status_code == 403
        assert repo.get_task(task_id).status == "sent"
        assert report(gw, {"id": "no-such-id", "status": "delivered"}).status_code == 200
        assert report(gw, {"id": message_id, "status": "delivered"}).status_code == 200
        gw.wait(task_id)
        assert report(gw, {"id": message_id, "status": "delivered"}).status_code == 200
        notes = sorted(c.note for c in Callback.select())
        assert notes == ["", "callback token missing or wrong", "duplicate report", "unknown provider message id"]
        assert len(wait_for_events(receiver, 1)) == 1

    def test_failed_report_runs_callback_failure_rules(self, gw: Gateway, receiver: Receiver) -> None:
        """A 'failed' report matching a callback_failure rule fails the task under that rule."""
        task_id = send_and_wait_sent(gw)
        message_id = repo.get_task(task_id).provider_message_id
        report(gw, {"id": message_id, "status": "failed", "code": "UNDELIV", "message": "undeliverable"})
        task = gw.wait(task_id)
        assert (task.status, task.callback_status, task.rule) == ("failed", "failed", "report-failed")
        assert json.loads(wait_for_events(receiver, 1)[0].body)["event"] == "failed"

    def test_missing_report_runs_callback_timeout_rules(self, gw: Gateway) -> None:
        """With no report within the callback timeout, the default callback_timeout rule marks it timed out."""
        task_id = send_and_wait_sent(gw)
        deadline = time.monotonic() + 10
        while repo.get_task(task_id).callback_status != "timeout":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        task = repo.get_task(task_id)
        assert task.status == "sent" and task.rule == "(default)"


class TestWebhookRetries:
    def test_failing_receiver_gets_the_event_once_across_worker_restarts(
        self, tmp_path: Path, rules_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A receiver answering 500 twice then 200 gets the event delivered exactly once, each try by a new worker."""
        monkeypatch.setattr(webhooks, "BACKOFF_SECONDS", (0.2, 0.2, 0.2))
        receiver = Receiver([500, 503])
        try:
            with gateway(tmp_path, rules_dir, workers=False, webhook_url=receiver.server.url + "/hook") as gw:
                answer = gw.send("instant", "13800138000", {"code": "1"})
                for _ in range(4):  # each round is a fresh worker: a restart between tries
                    time.sleep(0.25)
                    Worker(gw.svc, threads=1, name=f"restart-{_}").drain()
                assert repo.get_task(answer["data"]["task_id"]).status == "success"
                [delivery] = list(WebhookDelivery.select())
                tries = repo.list_webhook_tries(delivery.id)
                assert [t.status_code for t in tries] == [500, 503, 200]
                assert repo.get_webhook_delivery(delivery.id).status == "delivered"
                assert len(receiver.events()) == 3
                assert len({r.header("X-Webhook-Id") for r in receiver.events()}) == 1
        finally:
            receiver.server.stop()
