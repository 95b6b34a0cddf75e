"""Vendor batch sends: messages of one account and one text go in as few calls as the vendor takes, and each
receiver's result is still recorded and decided on its own task — against real Redis, SQLite and a loopback
vendor that caps its calls."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import delivery
from engine.store import repo
from tests.support.loopback import LoopbackServer, Recorded, Reply
from tests.support.service import Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(90)

CAP = 200
RULES = """
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
providers:
  - {{name: vendor, type: fake, config: {{url: "{url}/send", batch_url: "{url}/batch", batch_max: {cap}}}}}
routing:
  - {{name: otp, when: {{channel: otp}}, providers: [{{use: vendor}}]}}
failures:
  - {{name: retry, scene: send_failure, when: {{error_code: busy}}, action: retry, retry: {{max: 3, delay: 0s}}}}
  - {{name: give-up, scene: send_failure, action: fail}}
"""

BAD = "+8613800000444"  # the vendor refuses this receiver for good
BUSY = "+8613800000555"  # and answers "busy" for this one at its first attempt


class Vendor:
    """Answers `/batch` with a result per message, refusing calls over CAP as a real vendor does."""

    def __init__(self) -> None:
        self.server = LoopbackServer(self.answer).start()
        self.seen: set[str] = set()

    def answer(self, request: Recorded) -> Reply:
        if request.path != "/batch":
            return Reply(200, '{"code": 0}')
        messages = json.loads(request.body)["messages"]
        if len(messages) > CAP:
            return Reply(400, json.dumps({"code": "too_many", "message": f"at most {CAP}"}))
        return Reply(200, json.dumps({"results": [self.result(message) for message in messages]}))

    def result(self, message: dict[str, str]) -> dict[str, object]:
        if message["receiver"] == BAD:
            return {"code": "bad_number", "message": "receiver refused"}
        if message["receiver"] == BUSY and message["key"] not in self.seen:
            self.seen.add(message["key"])
            return {"code": "busy", "message": "try later", "retry": True}
        return {"code": 0, "id": f"v-{message['key']}"}

    def batch_sizes(self) -> list[int]:
        return [len(json.loads(r.body)["messages"]) for r in self.server.requests if r.path == "/batch"]

    def single_calls(self) -> int:
        return sum(1 for r in self.server.requests if r.path == "/send")


@pytest.fixture
def vendor() -> Iterator[Vendor]:
    served = Vendor()
    yield served
    served.server.stop()


@pytest.fixture
def gw(tmp_path: Path, vendor: Vendor) -> Iterator[Gateway]:
    rules = write_rules(tmp_path, RULES.format(url=vendor.server.url, cap=CAP))
    with gateway(tmp_path, rules, worker_readers=1) as running:
        yield running


def test_a_large_batch_goes_out_in_calls_of_at_most_the_vendors_cap(gw: Gateway, vendor: Vendor) -> None:
    """450 receivers of one text are delivered once each in a few calls, none over the vendor's 200 (a group
    left with one message goes as a single send)."""
    receivers = [f"+86139{n:08d}" for n in range(450)]
    answer = gw.call("POST", "/api/v1/messages/batch",
                     {"channel_id": 1, "receivers": receivers, "template_params": {"code": "1"}})
    assert answer["code"] == 0, answer
    deadline = time.monotonic() + 30
    while sum(vendor.batch_sizes()) + vendor.single_calls() < 450 and time.monotonic() < deadline:
        time.sleep(0.05)
    sizes = vendor.batch_sizes()
    assert sum(sizes) + vendor.single_calls() == 450 and max(sizes) <= CAP, sizes
    assert len(sizes) + vendor.single_calls() <= 6, (sizes, vendor.single_calls())
    summary = gw.call("GET", f"/api/v1/batches/{answer['data']['batch_id']}")["data"]
    deadline = time.monotonic() + 10
    while summary["success_count"] < 450 and time.monotonic() < deadline:
        time.sleep(0.1)
        summary = gw.call("GET", f"/api/v1/batches/{answer['data']['batch_id']}")["data"]
    assert summary["success_count"] == 450


def test_each_receivers_result_decides_its_own_task(gw: Gateway, vendor: Vendor) -> None:
    """In one call, a refused receiver fails, a busy one is retried alone and delivered, the rest succeed."""
    receivers = ["+8613800000111", BAD, BUSY, "+8613800000222"]
    answer = gw.call("POST", "/api/v1/messages/batch",
                     {"channel_id": 1, "receivers": receivers, "template_params": {"code": "1"}})
    assert answer["code"] == 0, answer
    tasks = {task.receiver: task for task in repo.list_tasks(batch_id=answer["data"]["batch_id"], page_size=10)[1]}
    done = {receiver: gw.wait(task.task_id) for receiver, task in tasks.items()}
    assert {receiver: task.status for receiver, task in done.items()} == {
        "+8613800000111": "success", BAD: "failed", BUSY: "success", "+8613800000222": "success"}
    assert done[BAD].error_code == "bad_number"
    assert [attempt.status for attempt in repo.list_attempts(done[BUSY].task_id)] == ["retryable", "ok"]


def test_one_receiver_goes_once_in_a_call() -> None:
    """Two tasks for the same receiver (a batch naming it twice) go in different calls: vendors answer per
    receiver, so one result could not be told from the other."""
    def plan(receiver: str) -> delivery.Planned:
        task = SimpleNamespace(task_id=receiver + str(id(object())), template="code", template_params="{}",
                               content="x", title="", signature="", receiver=receiver)
        config = {"url": "http://x", "batch_url": "http://x/batch", "batch_max": 10}
        return delivery.Planned(task, None, SimpleNamespace(name="otp"),  # type: ignore[arg-type]
                                SimpleNamespace(name="a", type="fake", config=config), 1, "r", "v")

    groups = delivery.batches([plan("+861"), plan("+862"), plan("+861"), plan("+863")])
    assert [[p.task.receiver for p in group] for group in groups] == [["+861", "+862"], ["+861", "+863"]]


def test_plans_are_grouped_by_account_and_text_and_resends_go_alone() -> None:
    """`batches` puts together only plans of one account and one message, splits at the batch size, and
    leaves a resend (which reuses an earlier key) on its own."""
    receivers = iter(range(100))
    def plan(account: str, content: str, key_number: int | None = None, size: int = 2) -> delivery.Planned:
        task = SimpleNamespace(task_id=f"{account}-{content}-{key_number}", template="code", template_params="{}",
                               content=content, title="", signature="", receiver=str(next(receivers)))
        config = {"url": "http://x", "batch_url": "http://x/batch", "batch_max": size}
        return delivery.Planned(task, None, SimpleNamespace(name="otp"),  # type: ignore[arg-type]
                                SimpleNamespace(name=account, type="fake", config=config),
                                1, "r", "v", key_number)

    plans = [plan("a", "x"), plan("a", "x"), plan("a", "x"), plan("b", "x"), plan("a", "y"), plan("a", "x", 1)]
    groups = [[(p.account.name, p.task.content, p.key_number) for p in group] for group in delivery.batches(plans)]
    assert sorted(groups, key=str) == sorted([[("a", "x", None), ("a", "x", None)], [("a", "x", None)], [("b", "x", None)],
                                     [("a", "y", None)], [("a", "x", 1)]], key=str)
