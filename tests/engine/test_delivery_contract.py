"""The delivery contract: leases over in-flight attempts, unknown outcomes never resent blindly, bounded failure
handling and scheduled sends never early — against real Redis, SQLite and a loopback vendor."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine import delivery
from engine.queue import job
from engine.store import repo
from engine.store.db import StoreUnavailable
from engine.store.models import OPEN_TASK_STATUSES
from tests.engine.store.conftest import scratch_database
from tests.support.loopback import LoopbackServer, Recorded, Reply
from tests.support.service import Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(60)

RULES = """
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
  - {{id: 2, name: notice, type: webhook, template: code}}
providers:
  - {{name: vendor, type: fake, config: {{url: "{url}/send", timeout: 1}}}}
  - {{name: plain, type: webhook, config: {{url: "{url}/hook", timeout: 1}}}}
routing:
  - {{name: otp, when: {{channel: otp}}, providers: [{{use: vendor}}]}}
  - {{name: notice, when: {{channel: notice}}, providers: [{{use: plain}}]}}
failures:
  - {{name: resend-unknown, scene: unknown_outcome, action: retry, retry: {{max: 3, delay: 0s}}}}
  - {{name: retry-a-while, scene: send_failure, action: retry, retry: {{max: 4, delay: 0s}}}}
"""


class Vendor:
    """Accepts every request; receivers ending in 8 get an answer only after the caller's timeout."""

    def __init__(self) -> None:
        self.server = LoopbackServer(self.answer).start()

    def answer(self, request: Recorded) -> Reply:
        body = json.loads(request.body)
        receiver = body.get("receiver") or body.get("message", {}).get("receiver", "")
        return Reply(200, '{"code": 0}', delay=1.5 if str(receiver).endswith("8") else 0.0)

    def keys(self, task_id: str) -> list[str]:
        return [request.header("Idempotency-Key") for request in self.server.requests
                if task_id in request.body.decode()]


@pytest.fixture
def vendor() -> Iterator[Vendor]:
    served = Vendor()
    yield served
    served.server.stop()


@pytest.fixture
def gw(tmp_path: Path, vendor: Vendor) -> Iterator[Gateway]:
    rules = write_rules(tmp_path, RULES.format(url=vendor.server.url))
    with gateway(tmp_path, rules, workers=False) as running:
        yield running


def accepted(gw: Gateway, receiver: str, channel: str = "otp", **extra: object) -> str:
    answer = gw.send(channel, receiver, {"code": "1"}, **extra)
    assert answer["code"] == 0, answer
    return str(answer["data"]["task_id"])


def claim_elsewhere(task_id: str, lease_seconds: float, provider: str = "vendor") -> None:
    lease_until = datetime.now(UTC) + timedelta(seconds=lease_seconds)
    claim = repo.AttemptClaim(task_id, 1, provider, "otp", "v", owner="other-worker", lease_until=lease_until)
    assert repo.claim_attempts([claim], OPEN_TASK_STATUSES) == [True]


def test_an_attempt_under_a_live_lease_is_left_to_its_owner(gw: Gateway, vendor: Vendor) -> None:
    """A job for a task whose attempt another worker holds sends nothing and comes back when the lease ends."""
    task_id = accepted(gw, "13800000001")
    claim_elsewhere(task_id, 30)
    assert delivery.deliver(gw.svc, task_id, time.time()) == "busy"
    assert vendor.keys(task_id) == []
    assert [attempt.status for attempt in repo.list_attempts(task_id)] == ["sending"]
    due = gw.svc.queue.redis.zscore(gw.svc.queue.delayed_key(job("send", task_id)), job("send", task_id))
    assert due is not None and due > time.time() + 25


def test_a_lost_attempt_is_resent_under_its_own_key_where_the_vendor_deduplicates(gw: Gateway,
                                                                                  vendor: Vendor) -> None:
    """Once the lease expired, the attempt is unknown; the resend goes to the same account with the same key."""
    task_id = accepted(gw, "13800000001")
    claim_elsewhere(task_id, -1)
    assert delivery.deliver(gw.svc, task_id, time.time()) == "retried"
    assert delivery.deliver(gw.svc, task_id, time.time()) == "success"
    attempts = repo.list_attempts(task_id)
    assert [(a.status, a.error_code, a.key_number) for a in attempts] == [("unknown", "worker_lost", None),
                                                                          ("ok", "", 1)]
    assert vendor.keys(task_id) == [f"{task_id}-1"]
    assert [d.scene for d in repo.list_decisions(task_id)] == ["unknown_outcome"]


def test_a_lost_attempt_is_never_resent_where_the_vendor_cannot_deduplicate(gw: Gateway, vendor: Vendor) -> None:
    """Though the rules say retry, an unknown outcome on a provider without deduplication fails, saying why."""
    task_id = accepted(gw, "https://example.test/hook", channel="notice")
    claim_elsewhere(task_id, -1, provider="plain")
    assert delivery.deliver(gw.svc, task_id, time.time()) == "failed"
    task = repo.get_task(task_id)
    assert "not resent" in task.error_message and vendor.server.requests == []
    assert [d.action for d in repo.list_decisions(task_id)] == ["fail"]


def test_two_workers_finding_the_same_lost_attempt_decide_once(gw: Gateway) -> None:
    """Only one of two expiries of the same lost attempt wins, so its outcome is decided once."""
    task_id = accepted(gw, "13800000001")
    claim_elsewhere(task_id, -1)
    now = datetime.now(UTC)
    assert [repo.expire_attempt(task_id, 1, now, "lost"), repo.expire_attempt(task_id, 1, now, "lost")] == [True,
                                                                                                          False]


def test_an_expired_lease_never_rewrites_a_recorded_attempt(gw: Gateway) -> None:
    """An attempt its worker already recorded stays as recorded, lease or not."""
    task_id = accepted(gw, "13800000001")
    assert delivery.deliver(gw.svc, task_id, time.time()) == "success"
    assert repo.expire_attempt(task_id, 1, datetime.now(UTC) + timedelta(hours=1), "lost") is False
    assert repo.list_attempts(task_id)[0].status == "ok"


def test_a_call_cut_off_after_the_request_left_is_unknown(gw: Gateway, vendor: Vendor) -> None:
    """A vendor answering after the timeout may have sent the message: the attempt is unknown and the resend
    carries the same key."""
    task_id = accepted(gw, "13800000008")
    assert delivery.deliver(gw.svc, task_id, time.time()) == "retried"
    assert [a.status for a in repo.list_attempts(task_id)] == ["unknown"]
    delivery.deliver(gw.svc, task_id, time.time())
    assert set(vendor.keys(task_id)) == {f"{task_id}-1"}


def test_a_scheduled_task_is_never_sent_before_its_time(gw: Gateway, vendor: Vendor) -> None:
    """A job for a scheduled task that arrives early (a sweep, a reclaim) goes back to the delayed set."""
    due = datetime.now(UTC) + timedelta(minutes=50)
    task_id = accepted(gw, "13800000001", scheduled_at=due.isoformat(timespec="seconds"))
    assert delivery.deliver(gw.svc, task_id, time.time()) == "early"
    assert vendor.keys(task_id) == [] and repo.list_attempts(task_id) == []
    score = gw.svc.queue.redis.zscore(gw.svc.queue.delayed_key(job("send", task_id)), job("send", task_id))
    assert abs(score - due.timestamp()) < 1.5


def test_a_retry_never_goes_before_its_delay(tmp_path: Path, vendor: Vendor) -> None:
    """An extra job for a task waiting out its retry delay (a sweep's, a reclaim's) goes back to the delayed set."""
    slow_retry = RULES.format(url=vendor.server.url).replace("{max: 4, delay: 0s}", "{max: 4, delay: 30s}")
    rules = write_rules(tmp_path, slow_retry)
    with gateway(tmp_path, rules, workers=False) as gw:
        task_id = accepted(gw, "13800000001")
        repo.update_task(task_id, exclude_providers=json.dumps(["vendor"]))
        assert delivery.deliver(gw.svc, task_id, time.time()) == "retried"
        assert delivery.deliver(gw.svc, task_id, time.time()) == "early"
        score = gw.svc.queue.redis.zscore(gw.svc.queue.delayed_key(job("send", task_id)), job("send", task_id))
        assert score is not None and score > time.time() + 25
        assert len(repo.list_decisions(task_id)) == 1


def test_a_job_arriving_while_a_failure_is_decided_waits(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a failed attempt's record and its decision, another job for the task sends nothing."""
    task_id = accepted(gw, "13800000008")
    decide = delivery.on_failure
    meanwhile: list[str] = []

    def second_job_first(*args: object, **kwargs: object) -> str:
        meanwhile.append(delivery.deliver(gw.svc, task_id, time.time()))
        return decide(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(delivery, "on_failure", second_job_first)
    assert delivery.deliver(gw.svc, task_id, time.time()) == "retried"
    assert meanwhile == ["early"]
    assert [attempt.number for attempt in repo.list_attempts(task_id)] == [1]


def test_a_plan_made_from_a_stale_read_sends_nothing(gw: Gateway, vendor: Vendor) -> None:
    """A duplicate job that read the task while it was still open plans a next attempt; once the task is
    delivered that claim is lost, nothing is sent and no attempt row stays."""
    task_id = accepted(gw, "13800000001")
    stale = repo.get_task(task_id)
    assert delivery.deliver(gw.svc, task_id, time.time()) == "success"
    routed = delivery.route(gw.svc, stale, repo.list_attempts(task_id), time.time())
    (planned,) = delivery.select(gw.svc, [routed], {}, time.time())  # type: ignore[list-item]
    calls = len(vendor.server.requests)
    assert delivery.carry_out(gw.svc, planned) == "busy"
    assert len(vendor.server.requests) == calls and len(repo.list_attempts(task_id)) == 1


def test_no_provider_available_counts_as_a_try(gw: Gateway) -> None:
    """With every account excluded, each failed choice moves the task on, so the retry limit ends it."""
    task_id = accepted(gw, "13800000001")
    repo.update_task(task_id, exclude_providers=json.dumps(["vendor"]))
    labels = [delivery.deliver(gw.svc, task_id, time.time()) for _ in range(6)]
    assert labels[:4] == ["retried"] * 4 and labels[4] == "failed"
    assert repo.get_task(task_id).status == "failed"


def test_failure_decisions_are_capped_whatever_the_rules(tmp_path: Path, vendor: Vendor) -> None:
    """A task whose failures were decided MPUSH_MAX_FAILURE_DECISIONS times fails, saying so."""
    rules = write_rules(tmp_path, RULES.format(url=vendor.server.url).replace("max: 4", "max: 50"))
    with gateway(tmp_path, rules, workers=False, max_failure_decisions=3) as gw:
        task_id = accepted(gw, "13800000001")
        repo.update_task(task_id, exclude_providers=json.dumps(["vendor"]))
        labels = [delivery.deliver(gw.svc, task_id, time.time()) for _ in range(4)]
        assert labels == ["retried", "retried", "retried", "failed"]
        assert "gave up after 3 failure decisions" in repo.get_task(task_id).error_message


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mpush.db'}"
        return
    with scratch_database(request.param) as url:
        yield url


def test_a_claim_whose_reply_was_lost_is_given_back_and_sent_once(tmp_path: Path, vendor: Vendor, database_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim committed but answered with a store error (the connection cut before the reply) was never sent:
    the worker gives it back and the message goes out once, as attempt 1, long before the lease would have run
    out and found it lost, of unknown outcome (which fails the message where the vendor cannot deduplicate)."""
    claim, lost = repo.claim_attempts, []

    def reply_lost(claims: list[repo.AttemptClaim], expected: tuple[str, ...]) -> list[bool]:
        won = claim(claims, expected)
        if not lost:
            lost.append(won)
            raise StoreUnavailable("server closed the connection unexpectedly")
        return won

    monkeypatch.setattr(repo, "claim_attempts", reply_lost)
    rules = write_rules(tmp_path, RULES.format(url=vendor.server.url))
    with gateway(tmp_path, rules, database_url=database_url, attempt_lease=30.0) as gw:
        started = time.monotonic()
        task_id = accepted(gw, "13800000001")
        assert gw.wait(task_id, timeout=20).status == "success"
        elapsed = time.monotonic() - started
        attempts = [(a.number, a.status, a.key_number) for a in repo.list_attempts(task_id)]
        released = gw.worker.counters["released"] if gw.worker else 0
    assert lost == [[True]] and released == 1
    assert attempts == [(1, "ok", None)] and vendor.keys(task_id) == [f"{task_id}-1"]
    assert elapsed < 10, f"delivered after {elapsed:.1f} s: the claim was left to its 30 s lease"
