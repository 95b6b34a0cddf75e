"""Account-class failures end to end: a vendor answering "no balance" opens that account's circuit at once, and
traffic moves to the next tier's account."""

from __future__ import annotations

import time
from pathlib import Path

from engine.store import repo
from tests.providers.sms_mocks import aliyun_business, aliyun_vendor
from tests.providers.test_aliyun_sms import AK, SECRET
from tests.support.loopback import LoopbackServer
from tests.support.service import gateway, write_rules

RULES = """
templates:
  - {{name: code, variables: [code], text: "您的验证码是{{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
providers:
  - name: broke
    type: aliyun_sms
    config: {{access_key_id: {ak}, access_key_secret: {secret}, base_url: "{broke}", timeout: 5.0}}
    templates: {{code: {{code: SMS_100, params: {{code: "{{code}}"}}}}}}
    signatures: {{default: 木雷}}
    circuit: {{failure_ratio: 0.5, min_calls: 20, window: 60s, open_for: 600s}}
  - name: backup
    type: aliyun_sms
    config: {{access_key_id: {ak}, access_key_secret: {secret}, base_url: "{backup}", timeout: 5.0}}
    templates: {{code: {{code: SMS_100, params: {{code: "{{code}}"}}}}}}
    signatures: {{default: 木雷}}
routing:
  - name: otp
    when: {{channel: otp}}
    providers: [{{use: broke, tier: 1}}, {{use: backup, tier: 2}}]
failures:
  - name: account-switch
    scene: send_failure
    when: {{error_class: account}}
    action: switch_provider
    switch_provider: {{max: 2, delay: 0s, exclude_current: true}}
"""


def test_an_account_without_balance_sends_traffic_to_the_next_tier(tmp_path: Path) -> None:
    """The first message meets "账户余额不足" on tier 1, switches to tier 2 and is sent; the tier-1 circuit is then
    open (though far below min_calls), so the next messages go straight to tier 2 and tier 1 hears nothing."""
    broke = LoopbackServer(aliyun_vendor({AK: SECRET}, lambda receiver: aliyun_business(
        "isv.AMOUNT_NOT_ENOUGH", "账户余额不足"))).start()
    backup = LoopbackServer(aliyun_vendor({AK: SECRET})).start()
    try:
        rules = write_rules(tmp_path, RULES.format(ak=AK, secret=SECRET, broke=broke.url, backup=backup.url))
        with gateway(tmp_path, rules) as gw:
            first = gw.send("otp", "13800138000", {"code": "123456"})["data"]["task_id"]
            task = gw.wait(first, ("sent", "success", "failed"))
            assert (task.status, task.provider) == ("sent", "backup"), task.error_message
            assert [(a.provider, a.error_code) for a in repo.list_attempts(first)] == [
                ("broke", "isv.AMOUNT_NOT_ENOUGH"), ("backup", "")]
            assert gw.svc.selector.state("broke", time.time()) == "open"
            later = [gw.send("otp", f"1380013800{i}", {"code": "654321"})["data"]["task_id"] for i in range(3)]
            for task_id in later:
                assert gw.wait(task_id, ("sent", "success", "failed")).status == "sent"
                assert [a.provider for a in repo.list_attempts(task_id)] == ["backup"]
        assert (len(broke.requests), len(backup.requests)) == (1, 4)
    finally:
        broke.stop()
        backup.stop()
