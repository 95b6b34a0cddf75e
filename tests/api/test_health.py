"""/health over real HTTP: the status alone without the admin token, DEGRADED after a hostile reload, no secret shown."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.engine.policy.rulekit import BILLION_LAUGHS
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

SECRET = "s3cret-admin-value"


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    rules = write_rules(tmp_path, CONSOLE_RULES)
    with gateway(tmp_path, rules, workers=False, rule_env={"MPUSH_ADMIN_TOKEN": SECRET, "HOME": SECRET}) as running:
        yield running


def health(gw: Gateway, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(gw.url + "/health", headers=headers, timeout=5)


def wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_status_alone_without_the_admin_token(gw: Gateway) -> None:
    """Without (or with a wrong) admin token /health says only UP; with it, the checks and the rule version too."""
    for token in (None, "wrong"):
        answer = health(gw, token)
        assert answer.status_code == 200 and answer.json() == {"code": 0, "message": "success", "data": {"status": "UP"}}
    data = health(gw, "admin-token").json()["data"]
    assert data["status"] == "UP" and data["services"]["redis"] == {"status": "UP"}
    assert data["services"]["rules"]["version"] == str(gw.svc.rules.current.version)


def test_hostile_hot_reload_fails_fast_and_health_degrades(gw: Gateway) -> None:
    """Billion laughs dropped into rules/ under the watcher: the reload fails at once without growing the process,
    the running rules stay, /health says DEGRADED (no detail) and the admin detail names the file:line."""
    threading.Thread(target=gw.svc.rules.watch, args=(gw.stop,), name="watcher", daemon=True).start()
    time.sleep(0.5)  # the watcher is watching
    before = gw.svc.rules.current.version
    process = psutil.Process()
    rss = process.memory_info().rss
    (gw.svc.settings.rules_dir / "laughs.yaml").write_text(BILLION_LAUGHS, encoding="utf-8")
    wait_for(lambda: gw.svc.rules.failures == 1, timeout=5)
    assert process.memory_info().rss - rss < 64 * 1024 * 1024
    assert gw.svc.rules.current.version == before
    assert health(gw).json()["data"] == {"status": "DEGRADED"}
    rules = health(gw, "admin-token").json()["data"]["services"]["rules"]
    assert rules["status"] == "DEGRADED" and "laughs.yaml:5: l4: more than 50000 values" in rules["last_error"]


def test_failed_reload_names_variables_never_values(gw: Gateway) -> None:
    """A reload refused for ${MPUSH_ADMIN_TOKEN} / ${HOME} names the variables; no answer carries their values."""
    rule = CONSOLE_RULES + '  - {name: leak, reject: "home ${HOME}"}\n'
    rule = rule.replace("type: console}", 'type: console, callback: {token: "${MPUSH_ADMIN_TOKEN}"}}')
    (gw.svc.settings.rules_dir / "rules.yaml").write_text(rule, encoding="utf-8")
    answer = requests.post(gw.url + "/api/admin/rules/reload", timeout=10, headers={"Authorization": "Bearer admin-token"})
    assert answer.status_code == 400
    errors = answer.json()["data"]["errors"]
    assert any("${MPUSH_ADMIN_TOKEN} is a setting of the gateway itself" in line for line in errors)
    assert any("${HOME}: environment references are allowed only" in line for line in errors)
    for text in (answer.text, health(gw).text, health(gw, "admin-token").text):
        assert SECRET not in text


def test_dry_run_resolves_no_environment(gw: Gateway) -> None:
    """Posted rule files read no server environment (HOME is set there): a reference without a default is refused
    as unset, by name, and one with a default takes the default."""
    posted = CONSOLE_RULES.replace("type: console}", 'type: console, callback: {token: "${HOME}"}}')
    answer = requests.post(gw.url + "/api/admin/rules/explain", timeout=10, headers={"Authorization": "Bearer admin-token"},
                           json={"fact": {"channel": "otp", "receiver": "13800138000"}, "rules": {"r.yaml": posted}})
    assert answer.status_code == 400 and "r.yaml:7: providers[0].callback.token: environment variable HOME is not set" in answer.text
    assert SECRET not in answer.text
    with_default = posted.replace("${HOME}", "${HOME:-placeholder}")
    answer = requests.post(gw.url + "/api/admin/rules/explain", timeout=10, headers={"Authorization": "Bearer admin-token"},
                           json={"fact": {"channel": "otp", "receiver": "13800138000"}, "rules": {"r.yaml": with_default}})
    assert answer.status_code == 200 and "WIN  otp" in answer.json()["data"]["explanation"]


def test_dry_run_keeps_the_event_loop_free(gw: Gateway) -> None:
    """While a dry run with a ReDoS-shaped pattern and a long receiver runs, /health/simple still answers at once."""
    posted = CONSOLE_RULES.replace("when: {channel: otp}", "when: {channel: otp, receiver: {matches: '(a+)+$'}}")
    body = {"fact": {"channel": "otp", "receiver": "a" * 50_000 + "!"}, "rules": {"r.yaml": posted}}
    answers: list[requests.Response] = []
    runner = threading.Thread(target=lambda: answers.append(requests.post(
        gw.url + "/api/admin/rules/explain", json=body, timeout=30, headers={"Authorization": "Bearer admin-token"})))
    runner.start()
    started = time.perf_counter()
    assert requests.get(gw.url + "/health/simple", timeout=5).status_code == 200
    assert time.perf_counter() - started < 1.0
    runner.join()
    assert answers[0].status_code == 200 and "otp" in answers[0].json()["data"]["explanation"]
