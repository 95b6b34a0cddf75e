"""Vendor batch sends: messages of one account and one text go in as few calls as the vendor takes, and each
receiver's result is still recorded and decided on its own task — against real Redis, SQLite and a loopback
vendor that caps its calls."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine import delivery
from engine.store import repo
from providers import registry
from tests.providers import test_dingtalk_work, test_wecom_app
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


# --- the chat vendors that take a list of users: WeCom application messages, DingTalk work notices -------------

CHAT_RULES = """
templates:
  - {{name: note, variables: [what], text: "{{what}} done", subject: "note"}}
channels:
  - {{id: 1, name: ops, type: {channel}, template: note}}
providers:
  - {{name: chat, type: {type}, config: {config}}}
routing:
  - {{name: ops, when: {{channel: ops}}, providers: [{{use: chat}}]}}
failures:
  - {{name: slow-down, scene: send_failure, when: {{error_class: throttled}}, action: retry,
      retry: {{max: 3, delay: 0s}}}}
  - {{name: give-up, scene: send_failure, action: fail}}
"""

CHAT = {  # provider type -> (channel type, the mock vendor's module, its send path, the list field, separator)
    "wecom_app": ("wecom", test_wecom_app, "/cgi-bin/message/send", "touser", "|"),
    "dingtalk_work": ("dingtalk", test_dingtalk_work, test_dingtalk_work.SEND_PATH, "userid_list", ","),
}


class FirstCallThrottled:
    """Wraps a mock vendor: its first send call is answered with the vendor's rate-limit code."""

    def __init__(self, handler: Callable[[Recorded], Reply], path: str, code: int) -> None:
        self.handler, self.path, self.code = handler, path, code
        self.throttled = False

    def __call__(self, request: Recorded) -> Reply:
        if request.path == self.path and not self.throttled:
            self.throttled = True
            return Reply(200, json.dumps({"errcode": self.code, "errmsg": "rate limited"}))
        return self.handler(request)


@contextmanager
def chat_gateway(tmp_path: Path, provider: str, handler: Callable[[Recorded], Reply]
                 ) -> Iterator[tuple[Gateway, LoopbackServer]]:
    channel, module, *_ = CHAT[provider]
    server = LoopbackServer(handler).start()
    try:
        config = json.dumps({**module.config(server.url), "timeout": 5.0})
        rules = write_rules(tmp_path, CHAT_RULES.format(channel=channel, type=provider, config=config))
        with gateway(tmp_path, rules, worker_readers=1) as running:
            yield running, server
    finally:
        server.stop()


def send_to(gw: Gateway, receivers: list[str]) -> dict[str, Any]:
    """Send one text to the receivers, due a moment later so the worker reads their jobs together; their tasks
    once final, by receiver."""
    due = datetime.fromtimestamp(time.time() + 1.5, UTC).isoformat()
    answer = gw.call("POST", "/api/v1/messages/batch", {"channel_id": 1, "receivers": receivers,
                                                        "template_params": {"what": "deploy"}, "scheduled_at": due})
    assert answer["code"] == 0, answer
    tasks = [task for page in range(1, len(receivers) // 100 + 2)
             for task in repo.list_tasks(batch_id=answer["data"]["batch_id"], page=page, page_size=100)[1]]
    return {task.receiver: gw.wait(task.task_id) for task in tasks}


def user_lists(server: LoopbackServer, provider: str) -> list[list[str]]:
    _, _, path, field, separator = CHAT[provider]
    return [json.loads(r.body)[field].split(separator) for r in server.requests if r.path == path]


@pytest.mark.parametrize("provider", list(CHAT))
def test_chat_receivers_go_in_the_fewest_calls_the_vendor_allows(tmp_path: Path, provider: str) -> None:
    """250 users of one text are each delivered once, in calls of at most the vendor's maximum (WeCom 1000,
    DingTalk 100), no more calls than a few stream reads can split them into."""
    _, module, *_ = CHAT[provider]
    problems: list[str] = []
    cap = registry.batch_size(provider, {})
    with chat_gateway(tmp_path, provider, module.CASE.vendor(module.CASE.success, problems)) as (gw, server):
        receivers = [f"user{n:03d}" for n in range(250)]
        done = send_to(gw, receivers)
        lists = user_lists(server, provider)
    assert problems == [] and {task.status for task in done.values()} == {"success"}
    assert sorted(user for users in lists for user in users) == receivers
    assert max(map(len, lists)) <= cap and len(lists) <= -(-250 // cap) + 2, [len(users) for users in lists]


def test_wecom_refused_users_fail_alone_and_the_rest_are_delivered(tmp_path: Path) -> None:
    """In one call, the ids WeCom lists as invalid or unlicensed fail with the receiver class (no retry), the
    others of the call are delivered."""
    vendor = test_wecom_app.WeComServer(test_wecom_app.OK, [], invalid=("ghost",), unlicensed=("nolicense",))
    with chat_gateway(tmp_path, "wecom_app", vendor) as (gw, server):
        done = send_to(gw, ["alice", "ghost", "nolicense", "bob"])
        lists = user_lists(server, "wecom_app")
    assert sorted(map(sorted, lists)) == [["alice", "bob", "ghost", "nolicense"]]
    assert {receiver: (task.status, task.error_code) for receiver, task in done.items()} == {
        "alice": ("success", ""), "ghost": ("failed", "invaliduser"), "nolicense": ("failed", "unlicenseduser"),
        "bob": ("success", "")}
    assert [d.error_class for d in repo.list_decisions(done["ghost"].task_id)] == ["receiver"]


@pytest.mark.parametrize(("provider", "code"), [("wecom_app", 45009), ("dingtalk_work", 90018)])
def test_a_throttled_call_retries_each_of_its_tasks(tmp_path: Path, provider: str, code: int) -> None:
    """The vendor's rate limit answering a whole call is each task's: every one is retried and delivered."""
    _, module, path, *_ = CHAT[provider]
    handler = FirstCallThrottled(module.CASE.vendor(module.CASE.success, []), path, code)
    with chat_gateway(tmp_path, provider, handler) as (gw, _):
        done = send_to(gw, ["u1", "u2", "u3"])
    assert {task.status for task in done.values()} == {"success"}
    for task in done.values():
        assert [(a.status, a.error_code) for a in repo.list_attempts(task.task_id)] == [
            ("retryable", str(code)), ("ok", "")]
