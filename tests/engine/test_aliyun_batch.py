"""Aliyun batch sends end to end: tasks of one template and params go in SendSms calls of up to 1000 numbers to
a mock vendor verifying each signed call, and each number's SmsReport (BizId and phone_number) settles its own
task — against real Redis, SQLite and loopback HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from engine import delivery
from engine.store import repo
from engine.store.models import Callback, Task
from engine.worker import Worker
from tests.providers.sms_mocks import aliyun_batch_vendor, aliyun_business
from tests.support.loopback import LoopbackServer, Reply
from tests.support.service import Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(90)

AK, SECRET, TOKEN = "LTAI5tMockAccessKey", "MockAccessKeySecret0123456789abcd", "report-token"
BAD = "+8613800000444"  # Aliyun refuses any call holding this number as illegal
RULES = """
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
providers:
  - name: aliyun
    type: aliyun_sms
    config: {{access_key_id: {ak}, access_key_secret: {secret}, base_url: "{url}", sign_name: 木雷, timeout: 5.0}}
    callback: {{token: {token}}}
    templates: {{code: {{code: SMS_100, params: {{code: "{{code}}"}}}}}}
routing:
  - {{name: otp, when: {{channel: otp}}, providers: [{{use: aliyun}}]}}
failures:
  - {{name: report-failed, scene: callback_failure, action: fail}}
  - {{name: give-up, scene: send_failure, action: fail}}
"""


@pytest.fixture
def vendor() -> Iterator[LoopbackServer]:
    answers: dict[str, Reply] = {BAD.removeprefix("+86"): aliyun_business("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")}
    server = LoopbackServer(aliyun_batch_vendor({AK: SECRET}, answers.get)).start()
    yield server
    server.stop()


@pytest.fixture
def gw(tmp_path: Path, vendor: LoopbackServer) -> Iterator[Gateway]:
    rules = write_rules(tmp_path, RULES.format(ak=AK, secret=SECRET, url=vendor.url, token=TOKEN))
    with gateway(tmp_path, rules, workers=False) as running:
        yield running


def send_batch(gw: Gateway, receivers: list[str]) -> dict[str, Task]:
    """Accept one batch, then let a worker handle everything queued (reading the jobs together, as a worker
    that was busy meanwhile does): the batch's tasks by receiver."""
    answer = gw.call("POST", "/api/v1/messages/batch",
                     {"channel_id": 1, "receivers": receivers, "template_params": {"code": "1"}})
    assert answer["code"] == 0, answer
    Worker(gw.svc, threads=2, name="drain").drain()
    return {task.receiver: task for task in Task.select().where(Task.batch_id == answer["data"]["batch_id"])}


def calls(vendor: LoopbackServer) -> list[list[str]]:
    """The numbers of each SendSms the vendor received."""
    return [request.query["PhoneNumbers"].split(",") for request in vendor.requests]


def report(gw: Gateway, items: list[dict[str, object]]) -> None:
    answer = requests.post(f"{gw.url}/api/callback/aliyun?token={TOKEN}", json=items, timeout=5)
    assert answer.status_code == 200 and answer.json() == {"code": 0, "msg": "接收成功"}, answer.text


def sms_report(biz_id: str, number: str, success: bool) -> dict[str, object]:
    return {"phone_number": number, "send_time": "2026-03-01 16:30:00", "report_time": "2026-03-01 16:30:05",
            "success": success, "err_code": "DELIVERED" if success else "MK:0001",
            "err_msg": "用户接收成功" if success else "空号", "sms_size": "1", "biz_id": biz_id, "out_id": ""}


def test_450_receivers_go_in_the_fewest_calls_under_the_maximum(gw: Gateway, vendor: LoopbackServer) -> None:
    """450 receivers of one text read together are sent in one call (under SendSms's 1000), each number once,
    and each task is sent, known by the call's BizId with its own number."""
    receivers = [f"+86139{n:08d}" for n in range(450)]
    tasks = send_batch(gw, receivers)
    [call] = calls(vendor)
    assert sorted(call) == sorted(r.removeprefix("+86") for r in receivers)
    assert {task.status for task in tasks.values()} == {"sent"}
    biz_id = tasks[receivers[0]].provider_message_id.split(":")[0]
    assert {r: tasks[r].provider_message_id for r in receivers} == {r: f"{biz_id}:{r[3:]}" for r in receivers}


def test_reports_for_two_numbers_of_one_call_settle_their_own_tasks(gw: Gateway, vendor: LoopbackServer) -> None:
    """One SmsReport push names two numbers of one BizId: the delivered one succeeds, the failed one fails under
    the callback_failure rule, the third number of the call still awaits its report; a repeated report is
    recorded as a duplicate and changes nothing, and a number the call did not carry matches no task."""
    receivers = ["+8613800000001", "+8613800000002", "+8613800000003"]
    tasks = send_batch(gw, receivers)
    assert len(vendor.requests) == 1
    biz_id = tasks[receivers[0]].provider_message_id.split(":")[0]
    report(gw, [sms_report(biz_id, "13800000001", True), sms_report(biz_id, "13800000002", False)])
    delivered, failed = gw.wait(tasks[receivers[0]].task_id), gw.wait(tasks[receivers[1]].task_id)
    assert (delivered.status, delivered.callback_status) == ("success", "delivered")
    assert (failed.status, failed.rule, failed.error_code) == ("failed", "report-failed", "MK:0001")
    assert repo.get_task(tasks[receivers[2]].task_id).status == "sent"
    report(gw, [sms_report(biz_id, "13800000001", True), sms_report(biz_id, "13900000009", True)])
    assert repo.get_task(delivered.task_id).status == "success"
    notes = {(c.task_id, c.note) for c in Callback.select()}
    assert notes == {(delivered.task_id, ""), (failed.task_id, ""), (delivered.task_id, "duplicate report"),
                     (None, "unknown provider message id")}


def test_an_illegal_number_fails_alone(gw: Gateway, vendor: LoopbackServer) -> None:
    """A number Aliyun refuses as illegal fails its own task (receiver class); the numbers it shared a call with
    are sent and never twice."""
    receivers = ["+8613800000001", BAD, "+8613800000003", "+8613800000004", "+8613800000005"]
    tasks = send_batch(gw, receivers)
    assert (tasks[BAD].status, tasks[BAD].error_code) == ("failed", "isv.MOBILE_NUMBER_ILLEGAL")
    assert {r: tasks[r].status for r in receivers if r != BAD} == dict.fromkeys(set(receivers) - {BAD}, "sent")
    accepted = [n for call in calls(vendor) if BAD.removeprefix("+86") not in call for n in call]
    assert sorted(accepted) == sorted(r.removeprefix("+86") for r in receivers if r != BAD)


def test_plans_for_an_aliyun_account_are_cut_at_1000() -> None:
    """`batches` puts 2450 plans of one Aliyun account and text in calls of 1000, 1000 and 450."""
    config = {"access_key_id": AK, "access_key_secret": SECRET}

    def plan(n: int) -> delivery.Planned:
        task = SimpleNamespace(task_id=f"t{n}", template="code", template_params="{}", content="x", title="",
                               signature="", receiver=f"+86139{n:08d}")
        return delivery.Planned(task, None, SimpleNamespace(name="otp"),  # type: ignore[arg-type]
                                SimpleNamespace(name="aliyun", type="aliyun_sms", config=config), 1, "r", "v")

    assert [len(group) for group in delivery.batches([plan(n) for n in range(2450)])] == [1000, 1000, 450]


def test_a_single_send_and_its_report_are_unchanged(gw: Gateway, vendor: LoopbackServer) -> None:
    """One message alone goes as a single SendSms, is known by the BizId alone, and its report (which names the
    number too) still settles it."""
    answer = gw.send("otp", "+8613800000007", {"code": "1"})
    Worker(gw.svc, threads=1, name="drain").drain()
    task = repo.get_task(answer["data"]["task_id"])
    assert ":" not in task.provider_message_id and calls(vendor) == [["13800000007"]]
    report(gw, [sms_report(task.provider_message_id, "13800000007", True)])
    assert gw.wait(task.task_id).callback_status == "delivered"
    assert json.loads(vendor.requests[0].query.get("TemplateParam", "{}")) == {"code": "1"}
