"""Every real provider end to end: signed API -> worker -> mock vendor checking the wire protocol ->
the vendor's delivery report through the callback endpoint -> the customer's signed webhook."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import yaml
from aiosmtpd.controller import Controller

from engine.signing import verify_webhook
from engine.store import repo
from engine.store.models import Callback
from tests.providers import (
    test_aliyun_sms, test_dingtalk_robot, test_dingtalk_work, test_tencent_sms, test_webhook, test_wecom_app,
    test_wecom_robot, test_zrwinfo_sms,
)
from tests.providers.contract import ProviderCase
from tests.support.loopback import LoopbackServer, Recorded, Reply
from tests.support.service import Gateway, gateway

TOKEN = "report-token"
Report = Callable[[str, str], tuple[str, bytes]]  # (provider message id, receiver) -> (content type, body)


def aliyun_report(message_id: str, receiver: str) -> tuple[str, bytes]:
    item = {**test_aliyun_sms.REPORTS[0], "biz_id": message_id, "phone_number": receiver}
    return "application/json", json.dumps([item]).encode()


def tencent_report(message_id: str, receiver: str) -> tuple[str, bytes]:
    item = {**test_tencent_sms.REPORTS[0], "sid": message_id, "mobile": receiver}
    return "application/json", json.dumps([item]).encode()


def zrwinfo_report(message_id: str, receiver: str) -> tuple[str, bytes]:
    form = {**test_zrwinfo_sms.DELIVERED, "smUuid": message_id, "mobile": receiver}
    return "application/x-www-form-urlencoded", urlencode(form).encode()


CASES: dict[str, tuple[ProviderCase, str, str, Report | None]] = {
    "aliyun_sms": (test_aliyun_sms.CASE, "sms", "13800138000", aliyun_report),
    "tencent_sms": (test_tencent_sms.CASE, "sms", "+8613800138000", tencent_report),
    "zrwinfo_sms": (test_zrwinfo_sms.CASE, "sms", "13800138000", zrwinfo_report),
    "wecom_app": (test_wecom_app.CASE, "wecom", "zhangsan|lisi", None),
    "wecom_robot": (test_wecom_robot.CASE, "wecom", "wangwu", None),
    "dingtalk_work": (test_dingtalk_work.CASE, "dingtalk", "user001", None),
    "dingtalk_robot": (test_dingtalk_robot.CASE, "dingtalk", "13900002222", None),
    "webhook": (test_webhook.CASE, "webhook", "ops", None),
}


class Customer:
    """The app's webhook endpoint."""

    def __init__(self) -> None:
        self.server = LoopbackServer(lambda request: Reply(200, "{}")).start()

    def events(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while len(self.server.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.server.requests)} webhook events, wanted {count}"
            time.sleep(0.05)
        return self.server.requests


@pytest.fixture
def customer() -> Iterator[Customer]:
    running = Customer()
    yield running
    running.server.stop()


def write_rules(path: Path, channel_type: str, provider_type: str, config: dict[str, Any]) -> Path:
    rules = {
        "templates": [{"name": "code", "variables": ["code"], "text": "您的验证码是{code}", "subject": "验证码"}],
        "channels": [{"id": 1, "name": "out", "type": channel_type, "template": "code"}],
        "providers": [{
            "name": "acct", "type": provider_type, "config": config, "callback": {"token": TOKEN},
            "templates": {"code": {"code": "SMS_100", "params": {"code": "{code}"}}},
            "signatures": {"default": "木雷"},
        }],
        "routing": [{"name": "out", "when": {"channel": "out"}, "providers": [{"use": "acct"}]}],
    }
    path.mkdir()
    (path / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
    return path


def assert_signed_event(gw: Gateway, event: Recorded, task_id: str, kind: str) -> None:
    body = json.loads(event.body)
    assert (body["task_id"], body["event"]) == (task_id, kind)
    assert verify_webhook(gw.secret, int(event.header("X-Webhook-Timestamp")), event.body,
                          event.header("X-Webhook-Signature"))


@pytest.mark.parametrize("name", list(CASES))
def test_provider_delivers_reports_back_and_notifies_the_app(name: str, tmp_path: Path, customer: Customer) -> None:
    """A message goes out over the vendor's real protocol (the mock checks it as the vendor does), the
    vendor's report (where it sends one) completes the task, and the app receives one signed event."""
    case, channel_type, receiver, report = CASES[name]
    problems: list[str] = []
    vendor = LoopbackServer(case.vendor(case.success, problems)).start()
    try:
        config = {**case.config(vendor.url), "timeout": 5.0}
        rules = write_rules(tmp_path / "rules", channel_type, case.provider.TYPE, config)
        with gateway(tmp_path, rules, webhook_url=customer.server.url + "/events") as gw:
            answer = gw.send("out", receiver, {"code": "123456"})
            assert answer["code"] == 0, answer
            task_id = answer["data"]["task_id"]
            task = gw.wait(task_id, ("sent", "success", "failed"))
            if name == "webhook":  # the mock expects its own message's key; ours names this task's attempt
                problems.remove("idempotency key")
                assert vendor.requests[0].header("Idempotency-Key") == f"{task_id}-1"
            assert problems == [] and task.status in ("sent", "success"), (problems, task.error_message)
            if report is not None:
                assert task.status == "sent"
                content_type, body = report(task.provider_message_id, receiver)
                requests.post(f"{gw.url}/api/callback/acct?token=wrong", data=body, timeout=5,
                              headers={"Content-Type": content_type})
                assert repo.get_task(task_id).status == "sent"
                assert [c.verified for c in Callback.select()] == [False]
                answered = requests.post(f"{gw.url}/api/callback/acct?token={TOKEN}", data=body, timeout=5,
                                         headers={"Content-Type": content_type})
                assert answered.status_code == 200, answered.text
                task = gw.wait(task_id)
                assert task.callback_status == "delivered"
            assert gw.wait(task_id).status == "success"
            [event] = customer.events(1)
            assert_signed_event(gw, event, task_id, "delivered")
    finally:
        vendor.stop()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


def test_email_goes_out_over_smtp_and_a_bounce_fails_it(tmp_path: Path, customer: Customer) -> None:
    """An email is accepted by a real SMTP server on loopback with a readable Chinese subject; a later
    bounce report through the callback endpoint turns the task failed and the app hears of both."""
    inbox = Inbox()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        config = {"host": "127.0.0.1", "port": port, "security": "none", "from_address": "noreply@example.com", "from_name": "木雷",
                  "timeout": 5.0}
        rules = write_rules(tmp_path / "rules", "email", "smtp", config)
        with gateway(tmp_path, rules, webhook_url=customer.server.url + "/events") as gw:
            task_id = gw.send("out", "user@example.com", {"code": "123456"})["data"]["task_id"]
            task = gw.wait(task_id)
            assert task.status == "success"
            [raw] = inbox.messages
            mail = message_from_bytes(raw)
            assert str(make_header(decode_header(mail["Subject"]))) == "验证码"
            bounce = {"message_id": task.provider_message_id, "email": "user@example.com", "status": "bounced",
                      "bounce_type": "hard", "error_code": "550", "error_message": "mailbox unavailable"}
            answer = requests.post(f"{gw.url}/api/callback/acct?token={TOKEN}", json=bounce, timeout=5)
            assert answer.status_code == 200, answer.text
            deadline = time.monotonic() + 10
            while repo.get_task(task_id).status != "failed":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            events = customer.events(2)
            assert [json.loads(e.body)["event"] for e in events] == ["delivered", "failed"]
    finally:
        controller.stop()
