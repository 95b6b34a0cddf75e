"""The scheduler's sweep: open tasks whose job Redis lost are queued again, others are left alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine import scheduler
from engine.queue import job
from engine.store.models import Task
from tests.support.service import gateway, write_rules

RULES = """
templates: [{name: code, variables: [code], text: "code {code}"}]
channels: [{id: 1, name: otp, type: sms, template: code}]
providers: [{name: fake, type: fake, config: {}}]
routing: [{name: otp, when: {channel: otp}, providers: [{use: fake}]}]
"""


def test_stranded_open_tasks_are_requeued_once(tmp_path: Path) -> None:
    """A pending task untouched for longer than the threshold with no delayed job goes back on the
    stream; one that still has its delayed job, and a fresh one, do not."""
    rules = write_rules(tmp_path, RULES)
    with gateway(tmp_path, rules, workers=False) as gw:
        ids = [gw.send("otp", f"1380000000{i}", {"code": "1"})["data"]["task_id"] for i in range(3)]
        gw.svc.redis.delete(gw.svc.queue.stream)  # Redis lost the stream
        gw.svc.queue.ensure_group()
        stranded, delayed, fresh = ids
        gw.svc.queue.defer(job("send", delayed), datetime.now(UTC).timestamp() + 3600)
        old = datetime.now(UTC) - scheduler.STRANDED_AFTER - timedelta(minutes=1)
        Task.update(updated_at=old).where(Task.task_id.in_([stranded, delayed])).execute()
        assert scheduler.requeue_stranded(gw.svc, datetime.now(UTC)) == 1
        entries = gw.svc.queue.read("sweep-test", count=10, block_ms=10)
        assert [entry.job for entry in entries] == [job("send", stranded)]
