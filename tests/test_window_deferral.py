"""Send-time windows end to end: a vendor refusing a send outside its window defers the task to the window's
opening, on the rule's clock, and the deferred attempt is not counted as a try."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from engine.store import repo
from tests.providers.sms_mocks import tencent_status, tencent_vendor
from tests.providers.test_tencent_sms import SECRET_ID, SECRET_KEY
from tests.support.loopback import LoopbackServer, Reply
from tests.support.service import gateway, write_rules

BEIJING = ZoneInfo("Asia/Shanghai")
RULES = """
templates:
  - {{name: promo, variables: [code], text: "活动{{code}}"}}
channels:
  - {{id: 1, name: promo, type: sms, template: promo}}
providers:
  - name: tencent
    type: tencent_sms
    config: {{secret_id: {secret_id}, secret_key: {secret_key}, sdk_app_id: "1400006666", base_url: "{url}",
             timeout: 5.0}}
    templates: {{promo: {{code: "1234", params: {{code: "{{code}}"}}}}}}
routing:
  - {{name: promo, when: {{channel: promo}}, providers: [{{use: tencent}}]}}
failures:
  - name: window
    scene: send_failure
    when: {{error_class: window}}
    action: defer
    defer: {defer}
  - name: once
    scene: send_failure
    action: retry
    retry: {{max: 1, delay: 0s}}
"""
OUTSIDE = "marketing sms send time constraint"


def _rules(tmp: Path, url: str, defer: str) -> Path:
    return write_rules(tmp, RULES.format(secret_id=SECRET_ID, secret_key=SECRET_KEY, url=url, defer=defer))


def test_a_marketing_send_at_night_waits_for_eight_in_beijing(tmp_path: Path) -> None:
    """Tencent's MarketingSendTimeConstraint schedules the task for the next 08:00 Beijing time, with the
    decision on record, instead of failing it."""
    vendor = LoopbackServer(tencent_vendor({SECRET_ID: SECRET_KEY}, lambda receiver: tencent_status(
        "FailedOperation.MarketingSendTimeConstraint", OUTSIDE, receiver))).start()
    try:
        rules = _rules(tmp_path, vendor.url, '{until: "08:00", timezone: Asia/Shanghai}')
        with gateway(tmp_path, rules) as gw:
            task_id = gw.send("promo", "+8613800138000", {"code": "8"})["data"]["task_id"]
            task = gw.wait(task_id, ("scheduled", "failed"))
            decided = datetime.now(BEIJING)
            opening = datetime.combine(decided.date() + timedelta(days=decided.hour >= 8), datetime.min.time(),
                                       BEIJING).replace(hour=8)
            assert task.status == "scheduled", task.error_message
            assert abs(task.scheduled_at.timestamp() - opening.timestamp()) < 2
            assert [(d.scene, d.action, d.rule, d.error_class) for d in repo.list_decisions(task_id)] == [
                ("send_failure", "defer", "window", "window")]
    finally:
        vendor.stop()


def test_the_deferred_send_goes_again_and_is_not_counted_as_a_try(tmp_path: Path) -> None:
    """After the deferral the task is sent again; its later failure still has the one retry its rule allows, as the
    deferred attempt did not spend it."""
    answers = iter([("FailedOperation.MarketingSendTimeConstraint", OUTSIDE), ("InternalError.OtherError", "other error")])

    def answer(receiver: str) -> Reply | None:
        scripted = next(answers, None)
        return None if scripted is None else tencent_status(*scripted, receiver)

    vendor = LoopbackServer(tencent_vendor({SECRET_ID: SECRET_KEY}, answer)).start()
    try:
        with gateway(tmp_path, _rules(tmp_path, vendor.url, "{delay: 0s}")) as gw:
            task_id = gw.send("promo", "+8613800138000", {"code": "8"})["data"]["task_id"]
            task = gw.wait(task_id, ("sent", "success", "failed"))
            actions = [d.action for d in repo.list_decisions(task_id)]
        assert (task.status, actions, len(vendor.requests)) == ("sent", ["defer", "retry"], 3)
    finally:
        vendor.stop()
