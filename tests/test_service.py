"""End to end over real HTTP: signed API -> store -> Redis stream -> workers -> fake provider on loopback."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from engine.store import repo
from tests.support.loopback import LoopbackServer, Recorded, Reply
from tests.support.service import Gateway, gateway, write_rules

RULES = """
settings: {{timezone: Asia/Shanghai, default_region: CN}}
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
  - {{id: 2, name: flaky, type: sms, template: code}}
  - {{id: 3, name: broken, type: sms, template: code}}
  - {{id: 4, name: reported, type: sms, template: code}}
  - {{id: 5, name: capped, type: sms, template: code}}
providers:
  - {{name: primary, type: fake, config: {{url: "{url}/primary"}}}}
  - {{name: backup, type: fake, config: {{url: "{url}/backup"}}}}
  - name: flaky
    type: fake
    config: {{url: "{url}/flaky", outcomes: ["retry:busy:system busy", "retry:busy:system busy", "ok"]}}
  - name: broken
    type: fake
    config: {{outcomes: ["retry:down:vendor down"]}}
    circuit: {{failure_ratio: 0.5, min_calls: 3, window: 60s, open_for: 1s, half_open_probes: 1}}
  - name: reporting
    type: fake
    config: {{url: "{url}/reporting", final: false}}
    callback: {{token: cb-token}}
routing:
  - name: otp
    when: {{channel: otp}}
    providers: [{{use: primary}}]
  - name: capped
    when: {{channel: capped}}
    providers: [{{use: primary}}]
  - name: flaky
    when: {{channel: flaky}}
    providers: [{{use: flaky}}]
  - name: broken-then-backup
    when: {{channel: broken}}
    providers: [{{use: broken}}, {{use: backup, tier: 2}}]
  - name: reported
    when: {{channel: reported}}
    providers: [{{use: reporting}}]
quotas:
  - {{name: capped-per-receiver, when: {{channel: capped}}, key: [app, receiver], limit: 2, per: 1h}}
failures:
  - name: busy-retry
    scene: send_failure
    priority: 10
    when: {{error_code: busy}}
    action: retry
    retry: {{max: 3, delay: 0.3s, backoff: 2, max_delay: 5s}}
  - name: down-switch
    scene: send_failure
    priority: 10
    when: {{error_code: down}}
    action: switch_provider
    switch_provider: {{max: 5, delay: 0s}}
  - name: report-failed
    scene: callback_failure
    action: fail
"""


class Vendor:
    """A loopback vendor recording every message; answers each path as scripted (default: ok)."""

    def __init__(self) -> None:
        self.replies: dict[str, list[Reply]] = {}
        self.server = LoopbackServer(self._answer).start()

    def _answer(self, request: Recorded) -> Reply:
        queue = self.replies.get(request.path)
        if queue:
            return queue.pop(0)
        return Reply(200, json.dumps({"code": 0, "id": "v-" + request.header("Idempotency-Key")}))

    def calls(self, path: str) -> list[dict[str, object]]:
        return [json.loads(r.body) for r in self.server.requests if r.path == path]

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def vendor() -> Iterator[Vendor]:
    running = Vendor()
    yield running
    running.server.stop()


@pytest.fixture
def gw(tmp_path: Path, vendor: Vendor) -> Iterator[Gateway]:
    rules = write_rules(tmp_path, RULES.format(url=vendor.url))
    with gateway(tmp_path, rules) as running:
        yield running


def accepted(answer: dict[str, object]) -> str:
    assert answer["code"] == 0, answer
    data = answer["data"]
    assert isinstance(data, dict)
    return str(data["task_id"])


class TestDelivery:
    def test_message_is_delivered_once_and_queryable(self, gw: Gateway, vendor: Vendor) -> None:
        """A signed send is delivered by the routed provider once and the task shows the attempt and rule."""
        task_id = accepted(gw.send("otp", "13800138000", {"code": "123456"}))
        gw.wait(task_id)
        answer = gw.call("GET", f"/api/v1/messages/{task_id}")
        data = answer["data"]
        assert data["status"] == "success" and data["provider"] == "primary" and data["rule"] == "otp"
        assert [a["status"] for a in data["attempts"]] == ["ok"]
        calls = vendor.calls("/primary")
        assert [(c["receiver"], c["text"]) for c in calls] == [("+8613800138000", "code 123456")]

    def test_channel_by_id_and_batch_is_queryable(self, gw: Gateway, vendor: Vendor) -> None:
        """A batch creates one task per receiver and the batch endpoint counts their outcomes."""
        answer = gw.call("POST", "/api/v1/messages/batch",
                         {"channel_id": 1, "receivers": ["13800000001", "13800000002", "13800000003"],
                          "template_params": {"code": "1"}})
        assert answer["code"] == 0 and answer["data"]["total_count"] == 3
        batch_id = answer["data"]["batch_id"]
        deadline = time.monotonic() + 15
        while (summary := gw.call("GET", f"/api/v1/batches/{batch_id}")["data"])["success_count"] < 3:
            assert time.monotonic() < deadline, summary
            time.sleep(0.1)
        assert sorted(c["receiver"] for c in vendor.calls("/primary")) == ["+8613800000001", "+8613800000002",
                                                                              "+8613800000003"]

    def test_scheduled_message_waits_until_due(self, gw: Gateway, vendor: Vendor) -> None:
        """A message scheduled in the future is held (status scheduled) and sent once due."""
        due = datetime.now(UTC) + timedelta(seconds=1.5)
        answer = gw.send("otp", "13800138000", {"code": "1"}, scheduled_at=due.isoformat())
        assert answer["data"]["status"] == "scheduled"
        task_id = accepted(answer)
        time.sleep(0.5)
        assert vendor.calls("/primary") == []
        gw.wait(task_id)
        assert datetime.now(UTC) >= due

    def test_retry_with_backoff_then_success(self, gw: Gateway, vendor: Vendor) -> None:
        """Two retryable failures are retried after 0.3 s then 0.6 s; the third attempt succeeds."""
        task_id = accepted(gw.send("flaky", "13800138000", {"code": "1"}))
        task = gw.wait(task_id)
        attempts = repo.list_attempts(task_id)
        assert task.status == "success" and [a.status for a in attempts] == ["retryable", "retryable", "ok"]
        gaps = [(b.created_at - a.finished_at).total_seconds() for a, b in zip(attempts, attempts[1:])]
        assert gaps[0] >= 0.3 and gaps[1] >= 0.6
        assert {a.rule for a in attempts} == {"flaky"}

    def test_failover_to_tier_two_and_circuit_half_opens(self, gw: Gateway, vendor: Vendor) -> None:
        """A failing tier-1 provider is switched away from, its circuit opens, then half-opens after open_for."""
        first = [accepted(gw.send("broken", f"1380000000{i}", {"code": "1"})) for i in range(4)]
        for task_id in first:
            assert gw.wait(task_id).provider == "backup"
        assert gw.svc.selector.state("broken", time.time()) == "open"
        opened = len([a for t in first for a in repo.list_attempts(t) if a.provider == "broken"])
        later = accepted(gw.send("broken", "13900000000", {"code": "1"}))
        assert [a.provider for a in repo.list_attempts(gw.wait(later).task_id)] == ["backup"]
        time.sleep(1.2)
        probe = accepted(gw.send("broken", "13900000001", {"code": "1"}))
        assert [a.provider for a in repo.list_attempts(gw.wait(probe).task_id)] == ["broken", "backup"]
        assert opened >= 3


class TestAdmission:
    def test_quota_rejects_and_stores_nothing(self, gw: Gateway) -> None:
        """Past the per-receiver quota a send gets 30002 and no task is stored."""
        for _ in range(2):
            accepted(gw.send("capped", "13800138000", {"code": "1"}))
        answer = gw.send("capped", "13800138000", {"code": "1"})
        assert answer["code"] == 30002 and "capped-per-receiver" in answer["message"]
        assert sum(repo.task_counts(gw.app_id).values()) == 2

    def test_idempotency_key_returns_the_first_task(self, gw: Gateway) -> None:
        """A repeated Idempotency-Key returns the original task instead of creating another."""
        headers = {"Idempotency-Key": "order-42"}
        body = {"channel_id": "otp", "receiver": "13800138000", "template_params": {"code": "1"}}
        first = accepted(gw.call("POST", "/api/v1/messages", body, headers))
        second = accepted(gw.call("POST", "/api/v1/messages", body, headers))
        assert first == second and sum(repo.task_counts(gw.app_id).values()) == 1

    @pytest.mark.parametrize("body,message", [
        ({"receiver": "1"}, "channel_id is required"),
        ({"channel_id": 99, "receiver": "1"}, "invalid channel_id: record not found"),
        ({"channel_id": 1, "receiver": "1"}, "missing template params: [code]"),
        ({"channel_id": 1, "receiver": "", "template_params": {"code": "1"}}, "receiver"),
        ({"channel_id": 1, "receiver": "1", "template_params": {"code": {"x": 1}}}, "template_params.code"),
    ])
    def test_invalid_requests_get_10001_and_store_nothing(self, gw: Gateway, body: dict[str, object],
                                                          message: str) -> None:
        """Each validation failure answers 10001 with the reason and creates no task."""
        answer = gw.call("POST", "/api/v1/messages", body)
        assert answer["code"] == 10001 and message in answer["message"]
        assert repo.task_counts(gw.app_id) == {} or sum(repo.task_counts(gw.app_id).values()) == 0


class TestAuthentication:
    BODY = {"channel_id": 1, "receiver": "13800138000", "template_params": {"code": "1"}}

    def _raw(self, gw: Gateway, headers: dict[str, str], body: bytes) -> dict[str, object]:
        answer = requests.post(gw.url + "/api/v1/messages", data=body, timeout=10,
                               headers={"Content-Type": "application/json", **headers})
        assert answer.status_code == 200
        result: dict[str, object] = answer.json()
        return result

    def test_replayed_request_is_refused(self, gw: Gateway) -> None:
        """The same signed request sent twice is accepted once; the replay gets 20003."""
        from engine.signing import sign_headers

        raw = json.dumps(self.BODY).encode()
        headers = sign_headers(gw.app_id, gw.secret, "POST", "/api/v1/messages", raw, now=int(time.time()),
                               nonce="fixed-nonce")
        assert self._raw(gw, headers, raw)["code"] == 0
        replay = self._raw(gw, headers, raw)
        assert replay["code"] == 20003 and "replay" in str(replay["message"])
        assert sum(repo.task_counts(gw.app_id).values()) == 1

    def test_expired_timestamp_wrong_secret_and_malformed_json(self, gw: Gateway) -> None:
        """Old timestamps and wrong secrets get 20003, a non-object body 10001; nothing is stored."""
        assert gw.call("POST", "/api/v1/messages", self.BODY, now=int(time.time()) - 301)["code"] == 20003
        assert gw.call("POST", "/api/v1/messages", self.BODY, secret="0" * 32)["code"] == 20003
        from engine.signing import sign_headers

        raw = b'{"channel_id": 1,'
        headers = sign_headers(gw.app_id, gw.secret, "POST", "/api/v1/messages", b"", now=int(time.time()))
        assert self._raw(gw, headers, raw)["code"] == 10001
        assert self._raw(gw, {"X-App-Id": gw.app_id}, b"{}")["code"] == 20001
        assert gw.call("POST", "/api/v1/messages", self.BODY, app_id="ffffffffffffffff")["code"] == 20002
        assert sum(repo.task_counts(gw.app_id).values()) == 0

    def test_requests_over_the_app_rate_get_30001_and_keep_their_nonce_unused(self, gw: Gateway) -> None:
        """Past its requests per second an app gets 30001 and nothing is stored; the refused request's
        nonce stays unused, so the same signed request is accepted in a later second."""
        from engine.signing import sign_headers

        app, secret = repo.create_app("limited", gw.svc.key, daily_quota=0, rate_limit=2)
        while time.time() % 1 > 0.5:  # the three requests fall in one epoch second
            time.sleep(0.05)
        for index in range(2):
            assert gw.call("POST", "/api/v1/messages", self.BODY, app_id=app.app_id, secret=secret)["code"] == 0
        raw = json.dumps(self.BODY).encode()
        headers = sign_headers(app.app_id, secret, "POST", "/api/v1/messages", raw, now=int(time.time()))
        assert self._raw(gw, headers, raw)["code"] == 30001
        assert sum(repo.task_counts(app.app_id).values()) == 2
        time.sleep(1.0 - time.time() % 1 + 0.01)
        assert self._raw(gw, headers, raw)["code"] == 0

    def test_disabled_app_is_refused(self, gw: Gateway) -> None:
        """A disabled app gets 20006."""
        repo.set_app_status(gw.app_id, 2)
        assert gw.call("POST", "/api/v1/messages", self.BODY)["code"] == 20006

    def test_tasks_are_visible_only_to_their_app(self, gw: Gateway) -> None:
        """Another app querying a task id it did not create gets 'task not found'."""
        task_id = accepted(gw.send("otp", "13800138000", {"code": "1"}))
        other, secret = repo.create_app("other", gw.svc.key, daily_quota=0, rate_limit=0)
        answer = gw.call("GET", f"/api/v1/messages/{task_id}", app_id=other.app_id, secret=secret)
        assert answer["code"] == 10001 and "task not found" in str(answer["message"])


class TestHealth:
    def test_health_reports_database_redis_and_rules(self, gw: Gateway) -> None:
        """GET /health with the admin token is UP with each dependency and the live rule-set version, under a UUIDv7 trace id."""
        response = requests.get(gw.url + "/health", timeout=5, headers={"Authorization": "Bearer admin-token"})
        assert uuid.UUID(response.headers["trace-id"]).version == 7
        answer = response.json()
        services = answer["data"]["services"]
        assert answer["code"] == 0 and services["database"]["status"] == services["redis"]["status"] == "UP"
        assert services["rules"]["version"] == str(gw.svc.rules.current.version)

    def test_openapi_and_metrics_are_served(self, gw: Gateway) -> None:
        """The OpenAPI document lists the send path and /metrics exposes gateway counters."""
        assert "/api/v1/messages" in requests.get(gw.url + "/openapi.json", timeout=5).json()["paths"]
        accepted(gw.send("otp", "13800138000", {"code": "1"}))
        assert "mpush_messages_accepted_total" in requests.get(gw.url + "/metrics", timeout=5).text
