"""The console's pages over real HTTP against a running gateway, without a browser."""

from __future__ import annotations

import re
from pathlib import Path

from api.console import pages
from tests.console.conftest import Console
from tests.support.service import Gateway


def _failed_over(gw: Gateway, receiver: str = "13800138000") -> str:
    answer = gw.send("otp", receiver, {"code": "4321"})
    task_id = answer["data"]["task_id"]
    assert gw.wait(task_id).status == "success"
    return str(task_id)


def test_search_by_receiver_finds_the_message(console: Console, gw: Gateway) -> None:
    """A message sent through the API is found by its receiver, in the form typed or as E.164."""
    task_id = _failed_over(gw)
    for typed in ("13800138000", "+8613800138000"):
        page = console.get("/console/messages", receiver=typed).text
        assert task_id in page
    assert task_id not in console.get("/console/messages", receiver="13900000000").text


def test_search_filters_combine_and_refuse_nonsense(console: Console, gw: Gateway) -> None:
    """Status, channel and time filters narrow the list; an unknown status or a bad time is a 400 page."""
    task_id = _failed_over(gw)
    assert task_id in console.get("/console/messages", status="success", channel="otp").text
    assert task_id not in console.get("/console/messages", status="failed").text
    assert task_id not in console.get("/console/messages", since="2999-01-01T00:00").text
    assert console.get("/console/messages", status="bogus").status_code == 400
    assert console.get("/console/messages", since="yesterday").status_code == 400
    assert console.get("/console/messages", after="garbage").status_code == 400


def test_search_pages_older_with_a_cursor(console: Console, gw: Gateway) -> None:
    """With more matches than a page, an "older" link leads to the rest, none repeated."""
    ids = [gw.send("otp", "13700000000", {"code": "1"})["data"]["task_id"] for _ in range(3)]
    first = console.get("/console/messages", receiver="13700000000")
    assert all(task_id in first.text for task_id in ids)
    from engine.store import queries

    page = queries.search_tasks(queries.TaskFilter(receiver="13700000000"), page_size=2)
    assert len(page.tasks) == 2 and page.next is not None
    rest = queries.search_tasks(queries.TaskFilter(receiver="13700000000"), after=page.next, page_size=2)
    assert [t.task_id for t in page.tasks + rest.tasks] == list(reversed(ids)) and rest.next is None


def test_timeline_shows_routing_rule_attempts_failover_and_decision(console: Console, gw: Gateway) -> None:
    """The detail page tells the whole story: accepted, routed by its rule with the tiers, the failed attempt,
    the decision that switched provider, and the delivered attempt, each attempt naming its account's tier."""
    task_id = _failed_over(gw)
    page = console.get(f"/console/messages/{task_id}").text
    kinds = re.findall(r'<span class="kind">(\w+)</span>', page)
    assert kinds[:2] == ["accepted", "routed"] and kinds.count("attempt") == 2 and "decision" in kinds
    assert "routed by rule otp-failover" in page and "tier 2" in page and "steady (weight 1)" in page
    assert "attempt 1 via flaky: retryable" in page and "vendor busy" in page
    assert "send_failure: switch_provider by rule switch-on-error" in page
    assert "attempt 2 via steady: ok" in page and "steady (tier 2)" in page and "flaky (tier 1)" in page


def test_unknown_task_is_a_404_page(console: Console) -> None:
    """A task id that does not exist answers 404 with a page saying so."""
    answer = console.get("/console/messages/nope")
    assert answer.status_code == 404 and "No message has this task id" in answer.text


def test_page_text_is_escaped(console: Console, gw: Gateway) -> None:
    """Message text holding markup is shown as text, never as markup."""
    answer = gw.send("otp", "13800138000", {"code": "<script>alert(1)</script>"})
    task_id = answer["data"]["task_id"]
    page = console.get(f"/console/messages/{task_id}").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_dashboard_counts_today_and_shows_accounts_queue_and_rules(console: Console, gw: Gateway) -> None:
    """The dashboard counts the day's messages, draws the attempts chart and lists breakers and the rule set."""
    _failed_over(gw)
    page = console.get("/console/").text
    assert re.search(r'<div class="value">1</div><div class="label">delivered</div>', page)
    assert "<svg" in page and "Attempts per minute" in page
    assert "flaky" in page and "steady" in page and "otp-failover · 1: 1" in page
    assert "delayed jobs" in page and gw.svc.rules.status()["version"] in page
    assert console.get("/console/", hours="99").status_code == 400


def test_batches_list_and_show_counts(console: Console, gw: Gateway) -> None:
    """A batch sent through the API is listed, and its page counts its tasks by status."""
    answer = gw.call("POST", "/api/v1/messages/batch",
                     {"channel_id": "otp", "receivers": ["13600000001", "13600000002"],
                      "template_params": {"code": "1"}})
    batch_id = answer["data"]["batch_id"]
    assert batch_id in console.get("/console/batches").text
    page = console.get(f"/console/batches/{batch_id}").text
    assert "13600000001" in page and "13600000002" in page
    assert console.get("/console/batches/none").status_code == 404


def test_app_secret_is_shown_once_then_rotated(console: Console, gw: Gateway) -> None:
    """Creating an app shows its secret on that answer only; rotating shows a new one, and the old stops working."""
    created = console.post("/console/apps", {"name": "billing", "daily_quota": "50", "rate_limit": "5"})
    secret = re.search(r'<span class="secret" id="secret">([0-9a-f]{32})</span>', created.text).group(1)
    app_id = re.search(r"App id <span class=\"mono\">([0-9a-f]{16})</span>", created.text).group(1)
    assert secret not in console.get("/console/apps").text
    rotated = console.post(f"/console/apps/{app_id}/rotate-secret")
    new_secret = re.search(r'id="secret">([0-9a-f]{32})<', rotated.text).group(1)
    assert new_secret != secret
    refused = gw.call("POST", "/api/v1/messages",
                      {"channel_id": "otp", "receiver": "1", "template_params": {"code": "1"}},
                      app_id=app_id, secret=secret)
    assert refused["code"] != 0
    accepted = gw.call("POST", "/api/v1/messages", {"channel_id": "otp", "receiver": "13500000000",
                                                   "template_params": {"code": "1"}}, app_id=app_id, secret=new_secret)
    assert accepted["code"] == 0
    assert "1 / 50" in console.get("/console/apps").text  # the day's quota used


def test_app_disable_enable_and_webhook(console: Console, gw: Gateway) -> None:
    """Disable, enable and set a webhook from the list; a bad webhook URL is a 400 page and changes nothing."""
    page = console.post(f"/console/apps/{gw.app_id}/disable")
    assert "is disabled" in page.text and "Enable" in page.text
    assert "is enabled" in console.post(f"/console/apps/{gw.app_id}/enable").text
    assert "hooks.example/in" in console.post(f"/console/apps/{gw.app_id}/webhook",
                                              {"webhook_url": "https://hooks.example/in"}).text
    assert console.post(f"/console/apps/{gw.app_id}/webhook", {"webhook_url": "ftp://x"}).status_code == 400
    assert console.post("/console/apps/nope/disable").status_code == 404


def test_rules_page_shows_files_with_line_numbers_and_counts(console: Console, gw: Gateway) -> None:
    """The rules page shows the live version, each file line by line, and how often each rule fired."""
    _failed_over(gw)
    page = console.get("/console/rules").text
    assert gw.svc.rules.status()["version"] in page
    assert 'id="rules.yaml-L7"' in page
    row = re.search(r"<td>routing</td><td>otp-failover</td><td class=\"mono\">[^<]+</td><td class=\"num\">(\d+)", page)
    assert row and int(row.group(1)) >= 2
    assert re.search(r"<td>send_failure</td><td>switch-on-error</td>.*?<td class=\"num\">(\d+)", page).group(1) == "1"


def test_reload_with_a_broken_file_shows_file_and_line(console: Console, gw: Gateway) -> None:
    """Reloading a broken file keeps the running version and shows the error with file:line, linked to the line."""
    before = gw.svc.rules.status()["version"]
    rules_file = gw.svc.settings.rules_dir / "rules.yaml"
    rules_file.write_text(rules_file.read_text().replace("{use: steady, tier: 2}", "{use: nobody, tier: 2}"))
    page = console.post("/console/rules/reload").text
    assert "Reload rejected" in page and "rules.yaml:" in page and "nobody" in page
    assert 'href="#rules.yaml-L' in page and gw.svc.rules.status()["version"] == before


def test_dry_run_against_live_and_pasted_rules(console: Console) -> None:
    """The dry-run form traces a fact through the live rules, or through a pasted file; bad input says why."""
    live = console.post("/console/rules/dry-run", {"fact": '{"channel": "otp", "receiver": "13800138000"}'}).text
    assert "WIN  otp-failover" in live
    pasted = console.post("/console/rules/dry-run", {
        "fact": '{"channel": "otp", "receiver": "1"}',
        "rules": "templates:\n  - {name: code, variables: [code], text: \"c {code}\"}\nchannels:\n"
                 "  - {id: 1, name: otp, type: sms, template: code}\nproviders:\n  - {name: c, type: console}\n"
                 "routing:\n  - {name: pasted-route, when: {channel: otp}, providers: [{use: c}]}\n"}).text
    assert "WIN  pasted-route" in pasted
    assert "not valid JSON" in console.post("/console/rules/dry-run", {"fact": "{"}).text
    assert "unknown channel" in console.post("/console/rules/dry-run", {"fact": '{"channel": "nope"}'}).text


def test_providers_page_and_test_send(console: Console, gw: Gateway) -> None:
    """Accounts are listed with their breaker, disabled ones by name, and a test send goes through the real
    provider code."""
    page = console.get("/console/providers").text
    assert 'id="flaky"' in page and 'id="steady"' in page and "circuit closed" in page
    assert '<span class="status">spare</span>' in page and 'id="spare"' not in page
    ok = console.post("/console/providers/steady/test", {"to": "13800138000", "text": "hello", "channel_type": "sms"})
    assert "Test send through steady to 13800138000" in ok.text and 'class="status ok">ok<' in ok.text
    failed = console.post("/console/providers/flaky/test", {"to": "13800138000", "channel_type": "sms"})
    assert "retryable" in failed.text and "vendor busy" in failed.text
    assert console.post("/console/providers/nobody/test", {"to": "1"}).status_code == 404
    assert console.post("/console/providers/steady/test", {"to": "1", "channel_type": "fax"}).status_code == 400


def test_secret_provider_settings_are_masked() -> None:
    """Settings a provider declares secret are replaced by a mask; the others are shown."""
    shown = pages.masked_config("aliyun_sms", {"access_key_id": "LTAI-id", "access_key_secret": "hush"})
    assert shown == {"access_key_id": "LTAI-id", "access_key_secret": pages.MASK}


def test_error_anchors_name_the_file_under_the_rules_directory(tmp_path: Path) -> None:
    """A reload error's file:line links to that line of that file, by its path under the rules directory."""
    root = tmp_path / "rules"
    assert pages._anchor(str(root / "tests" / "cases.yaml"), "3", root) == "tests/cases.yaml-L3"
    assert pages._anchor("/elsewhere/rules.yaml", "3", root) is None


def test_test_sends_offer_sms_first() -> None:
    """The test-send form offers SMS first when the provider sends it, the other types by name after it."""
    from engine.provider_test import message_types

    kinds = message_types("console")
    assert kinds[0] == "sms" and kinds[1:] == sorted(kinds[1:])
