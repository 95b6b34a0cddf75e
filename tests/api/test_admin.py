"""The admin API over real HTTP: token, rule set status, reload, dry-run explain, apps, tasks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from engine.store import queries, repo
from tests.console.conftest import OPERATOR, PASSWORD, Console
from tests.support.loopback import LoopbackServer, Reply
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    rules = write_rules(tmp_path, CONSOLE_RULES)
    with gateway(tmp_path, rules) as running:
        yield running


def admin(gw: Gateway, method: str, path: str, body: Any = None, token: str = "admin-token") -> requests.Response:
    return requests.request(method, gw.url + "/api/admin" + path, json=body, timeout=10,
                            headers={"Authorization": f"Bearer {token}"})


class TestAdmin:
    def test_token_is_required(self, gw: Gateway) -> None:
        """Without the admin token every admin route answers 401."""
        assert admin(gw, "GET", "/rules", token="wrong").status_code == 401
        assert requests.get(gw.url + "/api/admin/apps", timeout=5).status_code == 401

    def test_broken_reload_keeps_the_running_rule_set(self, gw: Gateway) -> None:
        """A reload of a broken file answers 400 with file:line errors; the live version stays and says why."""
        before = admin(gw, "GET", "/rules").json()["data"]["version"]
        rules_file = gw.svc.settings.rules_dir / "rules.yaml"
        rules_file.write_text(CONSOLE_RULES.replace("use: console", "use: nobody"), encoding="utf-8")
        answer = admin(gw, "POST", "/rules/reload")
        assert answer.status_code == 400
        assert any("rules.yaml:" in line and "nobody" in line for line in answer.json()["data"]["errors"])
        status = admin(gw, "GET", "/rules").json()["data"]
        assert status["version"] == before and "nobody" in status["last_error"]
        assert "mpush_rules_last_reload_ok 0.0" in requests.get(gw.url + "/metrics", timeout=5).text
        rules_file.write_text(CONSOLE_RULES.replace("code {code}", "your code {code}"), encoding="utf-8")
        assert admin(gw, "POST", "/rules/reload").json()["data"]["version"] != before

    def test_explain_live_and_posted_rules(self, gw: Gateway) -> None:
        """Explain traces a fact through the live rules, or through posted files without making them live."""
        live = admin(gw, "POST", "/rules/explain", {"fact": {"channel": "otp", "receiver": "13800138000"}})
        assert "WIN  otp" in live.json()["data"]["explanation"]
        posted = CONSOLE_RULES.replace("name: otp, when", "name: other, when")
        dry = admin(gw, "POST", "/rules/explain",
                    {"fact": {"channel": "otp", "receiver": "1"}, "rules": {"r.yaml": posted}})
        assert "WIN  other" in dry.json()["data"]["explanation"]
        assert dry.json()["data"]["version"] != admin(gw, "GET", "/rules").json()["data"]["version"]
        broken = admin(gw, "POST", "/rules/explain", {"fact": {"channel": "otp"}, "rules": {"r.yaml": "routing: 3"}})
        assert broken.status_code == 400 and "r.yaml:1" in broken.json()["message"]
        assert admin(gw, "POST", "/rules/explain", {"fact": {"channel": "nope"}}).status_code == 400

    def test_app_lifecycle(self, gw: Gateway) -> None:
        """Apps are created with a one-time secret, disabled (20006), re-enabled and given a new secret."""
        created = admin(gw, "POST", "/apps", {"name": "shop", "daily_quota": 0, "rate_limit": 0}).json()["data"]
        body = {"channel_id": 1, "receiver": "13800138000", "template_params": {"code": "1"}}
        send = lambda secret: gw.call("POST", "/api/v1/messages", body, app_id=created["app_id"], secret=secret)
        assert send(created["app_secret"])["code"] == 0
        admin(gw, "POST", f"/apps/{created['app_id']}/disable")
        assert send(created["app_secret"])["code"] == 20006
        admin(gw, "POST", f"/apps/{created['app_id']}/enable")
        rotated = admin(gw, "POST", f"/apps/{created['app_id']}/rotate-secret").json()["data"]["app_secret"]
        assert send(created["app_secret"])["code"] == 20003 and send(rotated)["code"] == 0
        listed = [app["app_id"] for app in admin(gw, "GET", "/apps").json()["data"]["items"]]
        assert created["app_id"] in listed and "app_secret" not in str(admin(gw, "GET", "/apps").json())

    def test_any_task_and_stats(self, gw: Gateway) -> None:
        """The admin sees any app's task with its attempts, and counts by status."""
        task_id = gw.send("otp", "13800138000", {"code": "1"})["data"]["task_id"]
        gw.wait(task_id)
        task = admin(gw, "GET", f"/tasks/{task_id}").json()["data"]
        assert task["status"] == "success" and len(task["attempts"]) == 1
        assert admin(gw, "GET", "/stats").json()["data"]["tasks"]["success"] >= 1
        assert admin(gw, "GET", "/tasks/no-such-task").status_code == 404

    def test_tasks_are_listed_newest_first_with_filters_and_paging(self, gw: Gateway) -> None:
        """The task list pages newest first and filters by app and status; bad paging is a 400."""
        ids = [gw.send("otp", f"1380000000{i}", {"code": "1"})["data"]["task_id"] for i in range(3)]
        for task_id in ids:
            gw.wait(task_id)
        page = admin(gw, "GET", f"/tasks?app_id={gw.app_id}&status=success&page=1&page_size=2").json()["data"]
        assert page["total"] == 3 and [item["task_id"] for item in page["items"]] == ids[::-1][:2]
        assert admin(gw, "GET", "/tasks?status=failed").json()["data"]["total"] == 0
        assert admin(gw, "GET", "/tasks?page_size=1000").status_code == 400
        assert admin(gw, "GET", "/tasks?status=lost").status_code == 400

    def test_task_detail_shows_reports_and_webhook_tries(self, gw: Gateway) -> None:
        """A task's detail lists the delivery reports recorded for it and every try of its webhook event."""
        receiver = LoopbackServer(lambda request: Reply(200, "{}")).start()
        try:
            repo.set_webhook(gw.app_id, receiver.url + "/events")
            task_id = gw.send("otp", "13800138000", {"code": "1"})["data"]["task_id"]
            gw.wait(task_id)
            deadline = time.monotonic() + 10
            while not (detail := admin(gw, "GET", f"/tasks/{task_id}").json()["data"])["webhooks"] or \
                    not detail["webhooks"][0]["tries"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            [hook] = detail["webhooks"]
            assert hook["event"] == "delivered" and [t["status_code"] for t in hook["tries"]] == [200]
            assert detail["callbacks"] == []
        finally:
            receiver.stop()


def test_explain_accepts_a_bare_fact(gw: Gateway) -> None:
    """The dry run takes the fact itself as the body, as well as wrapped in {"fact": ...}."""
    bare = admin(gw, "POST", "/rules/explain", {"channel": "otp", "receiver": "13800138000"})
    assert bare.status_code == 200 and "WIN  otp" in bare.json()["data"]["explanation"]


def test_health_counts_are_numbers(gw: Gateway) -> None:
    """/health gives the reload counts as JSON numbers, not text."""
    rules = requests.get(gw.url + "/health", timeout=5,
                         headers={"Authorization": "Bearer admin-token"}).json()["data"]["services"]["rules"]
    assert rules["reloads"] == 0 and rules["failures"] == 0


def test_a_crash_behind_the_admin_api_or_the_console_is_a_500_not_a_success_status(
        gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception behind an admin route answers HTTP 500 with 40001 (so an operator's tools count
    it as a failure), and behind a console page an HTML 500 page; the wire API keeps its HTTP 200 with 40001."""
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("store exploded")

    queries.create_operator(OPERATOR, PASSWORD)
    console = Console(gw.url)
    assert console.sign_in().url.endswith("/console/")
    monkeypatch.setattr(repo, "list_apps", broken)
    monkeypatch.setattr(repo, "get_task", broken)
    answer = admin(gw, "GET", "/apps")
    page = console.get("/console/apps")
    wire = gw.request("GET", "/api/v1/messages/nothing")
    assert (answer.status_code, answer.json()["code"]) == (500, 40001)
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    assert "store exploded" not in page.text and "store exploded" not in answer.text
    assert (wire.status_code, wire.json()["code"]) == (200, 40001)
