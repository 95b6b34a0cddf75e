"""The `alert` failure action: the alert webhook hears of the failure and the task ends failed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.loopback import LoopbackServer, Reply
from tests.support.service import gateway, write_rules

RULES = """
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
providers:
  - {{name: broke, type: fake, config: {{outcomes: ["error:isv.AMOUNT_NOT_ENOUGH:账户余额不足"]}}}}
routing:
  - {{name: otp, when: {{channel: otp}}, providers: [{{use: broke}}]}}
failures:
  - name: balance-alert
    scene: send_failure
    when: {{error_message: {{contains_any: [余额不足]}}}}
    action: alert
    alert: {{webhook: "{url}/alerts", level: critical}}
"""


def test_alert_action_posts_the_alert_and_fails_the_task(tmp_path: Path) -> None:
    """A failure matching an alert rule posts the reference's alert payload, then fails the task under that rule."""
    receiver = LoopbackServer(lambda request: Reply(200, "{}")).start()
    try:
        rules = write_rules(tmp_path, RULES.format(url=receiver.url))
        with gateway(tmp_path, rules) as gw:
            task_id = gw.send("otp", "13800138000", {"code": "1"})["data"]["task_id"]
            task = gw.wait(task_id)
            assert (task.status, task.rule, task.error_code) == ("failed", "balance-alert", "isv.AMOUNT_NOT_ENOUGH")
            deadline = time.monotonic() + 5
            while not receiver.requests:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            [alert] = receiver.requests
            payload = json.loads(alert.body)
            assert alert.path == "/alerts" and alert.header("User-Agent") == "MessagePush-Alert/1.0"
            assert (payload["alert_type"], payload["alert_level"], payload["task_id"]) == (
                "message_push_failure", "critical", task_id)
            assert payload["provider"] == "broke" and payload["error_msg"] == "账户余额不足"
    finally:
        receiver.stop()


SWITCH_RULES = """
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
providers:
  - {{name: broke, type: fake, config: {{outcomes: ["account:isv.AMOUNT_NOT_ENOUGH:账户余额不足"]}}}}
  - {{name: backup, type: fake}}
routing:
  - {{name: otp, when: {{channel: otp}}, providers: [{{use: broke}}, {{use: backup, tier: 2}}]}}
failures:
  - name: balance-alert
    scene: send_failure
    when: {{error_class: account}}
    action: switch_provider
    switch_provider: {{max: 2, delay: 0s}}
    alert: {{webhook: "{url}/alerts", level: critical}}
"""


def test_an_alert_beside_a_switch_posts_and_the_message_still_goes_out(tmp_path: Path) -> None:
    """A rule that switches provider and alerts: the alert webhook hears of the empty account, and the message is
    delivered by the next account."""
    receiver = LoopbackServer(lambda request: Reply(200, "{}")).start()
    try:
        with gateway(tmp_path, write_rules(tmp_path, SWITCH_RULES.format(url=receiver.url))) as gw:
            task = gw.wait(gw.send("otp", "13800138000", {"code": "1"})["data"]["task_id"])
            assert (task.status, task.provider) == ("success", "backup")
            deadline = time.monotonic() + 5
            while not receiver.requests:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            payload = json.loads(receiver.requests[0].body)
            assert (payload["alert_level"], payload["provider"]) == ("critical", "broke")
    finally:
        receiver.stop()
