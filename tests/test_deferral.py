"""Deferral end to end: quiet-hours routing and quotas with on_exceed: defer hold messages durably."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from engine.queue import job
from engine.store import repo
from tests.support.service import delayed_jobs, gateway, write_rules

RULES = """
settings: {timezone: Asia/Shanghai}
templates:
  - {name: promo, variables: [text], text: "{text}"}
channels:
  - {id: 1, name: quiet, type: sms, template: promo}
  - {id: 2, name: capped, type: sms, template: promo}
providers:
  - {name: fake, type: fake, config: {}}
routing:
  - {name: always-quiet, priority: 10, when: {channel: quiet, local_hour: {gte: 0}}, defer_until: "09:00"}
  - {name: capped, when: {channel: capped}, providers: [{use: fake}]}
quotas:
  - {name: one-a-day, when: {channel: capped}, key: [receiver], limit: 1, per: 1d, on_exceed: defer}
"""


def test_quiet_hours_and_deferring_quota_hold_messages_in_the_delayed_set(tmp_path: Path) -> None:
    """A quiet-hours route schedules the task for 09:00 local; a quota past its limit with on_exceed
    defer accepts the message and schedules it for local midnight, both as durable delayed jobs."""
    rules = write_rules(tmp_path, RULES)
    zone = ZoneInfo("Asia/Shanghai")
    with gateway(tmp_path, rules) as gw:
        quiet = gw.send("quiet", "13800138000", {"text": "sale"})["data"]["task_id"]
        task = gw.wait(quiet, ("scheduled",))
        local = task.scheduled_at.astimezone(zone)
        assert (local.hour, local.minute) == (9, 0) and task.rule == "always-quiet"
        assert timedelta(0) < task.scheduled_at - datetime.now(zone) <= timedelta(days=1)

        first = gw.send("capped", "13800138000", {"text": "a"})["data"]
        second = gw.send("capped", "13800138000", {"text": "b"})["data"]
        assert first["status"] == "pending" and second["status"] == "scheduled"
        held = repo.get_task(second["task_id"]).scheduled_at.astimezone(zone)
        assert (held.hour, held.minute) == (0, 0) and held.date() == (datetime.now(zone) + timedelta(days=1)).date()
        delayed = delayed_jobs(gw.svc)
        assert {job("send", quiet).encode(), job("send", second["task_id"]).encode()} <= set(delayed)
