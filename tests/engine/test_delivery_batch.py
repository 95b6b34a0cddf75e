"""Delivering a stream read as a batch, against real Redis, SQLite and a loopback vendor."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any
from pathlib import Path

import pytest

from engine import delivery
from engine.store import repo
from tests.support.loopback import LoopbackServer, Reply
from tests.support.service import Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(60)

RULES = """
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
providers:
  - {{name: vendor, type: fake, config: {{url: "{url}/send"}}}}
routing:
  - {{name: otp, when: {{channel: otp}}, providers: [{{use: vendor}}]}}
failures:
  - {{name: give-up, scene: send_failure, action: fail}}
"""


@pytest.fixture
def vendor() -> Iterator[LoopbackServer]:
    """A vendor that fails receivers ending in 9 with a 500 and accepts the others."""
    server = LoopbackServer(lambda request: Reply(500, '{"code": 1}') if json.loads(request.body)["receiver"][-1] == "9"
                            else Reply(200, '{"code": 0}')).start()
    yield server
    server.stop()


@pytest.fixture
def gw(tmp_path: Path, vendor: LoopbackServer) -> Iterator[Gateway]:
    rules = write_rules(tmp_path, RULES.format(url=vendor.url))
    with gateway(tmp_path, rules, workers=False) as running:
        yield running


def accepted(gw: Gateway, receiver: str) -> str:
    answer = gw.send("otp", receiver, {"code": "1"})
    assert answer["code"] == 0, answer
    return str(answer["data"]["task_id"])


def test_a_batch_delivers_each_task_and_labels_every_entry(gw: Gateway, vendor: LoopbackServer) -> None:
    """Each task of a read is sent once; failures follow the failure rules; unknown and repeated ids are labelled."""
    ok = [accepted(gw, f"1380000000{i}") for i in range(4)]
    failing = accepted(gw, "13800000009")
    labels = delivery.deliver_many(gw.svc, [*ok, failing, "no-such-task", ok[0]], time.time())
    assert labels == ["success"] * 4 + ["failed", "missing", "done"]
    assert len(vendor.requests) == 5
    assert {repo.get_task(task_id).status for task_id in ok} == {"success"}
    assert repo.get_task(failing).error_code != ""
    assert [attempt.status for attempt in repo.list_attempts(failing)] == ["retryable"]


def test_an_attempt_claimed_elsewhere_meanwhile_is_lost_alone(gw: Gateway, vendor: LoopbackServer) -> None:
    """When another worker begins a planned attempt between planning and its call, only that task is busy and
    its vendor is not called."""
    first, second = accepted(gw, "13800000001"), accepted(gw, "13800000002")
    labels, plans = delivery.plan(gw.svc, [first, second], time.time())
    assert labels == {} and [plan.task.task_id for plan in plans] == [first, second]
    assert repo.begin_attempt(second, 1, "vendor", "otp", "elsewhere")
    assert [delivery.carry_out(gw.svc, plan) for plan in plans] == ["success", "busy"]
    assert [json.loads(request.body)["task_id"] for request in vendor.requests] == [first]
    assert [attempt.rule_version for attempt in repo.list_attempts(second)] == ["elsewhere"]


def test_provider_calls_go_through_the_given_mapper(gw: Gateway) -> None:
    """The send stage hands every planned attempt to the mapper in one call (a pool's map sends them at once)."""
    task_ids = [accepted(gw, f"1380000000{i}") for i in range(3)]
    seen: list[int] = []

    def mapper(fn, items):  # type: ignore[no-untyped-def]
        seen.append(len(items))
        return [fn(item) for item in items]

    assert delivery.deliver_many(gw.svc, task_ids, time.time(), mapper) == ["success"] * 3
    assert seen == [3]


def test_a_reload_during_the_sends_leaves_the_attempt_on_its_version(gw: Gateway) -> None:
    """The failure of an attempt routed under one rule-set version is decided by that version, even when
    the rules were reloaded while the provider call was in flight."""
    task_id = accepted(gw, "13800000009")
    rules_file = gw.svc.settings.rules_dir / "rules.yaml"
    routed_version = str(gw.svc.rules.current.version)

    def reload_then_send(send: Any, plans: Sequence[Any]) -> list[Any]:
        rules_file.write_text(rules_file.read_text(encoding="utf-8").replace("give-up", "newer-rule"), "utf-8")
        assert not isinstance(gw.svc.rules.reload(), Exception)
        return [send(plan) for plan in plans]

    assert delivery.deliver_many(gw.svc, [task_id], time.time(), mapper=reload_then_send) == ["failed"]
    task = repo.get_task(task_id)
    assert (task.rule, task.rule_version) == ("give-up", routed_version)
    assert str(gw.svc.rules.current.version) != routed_version
