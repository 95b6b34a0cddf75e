"""The scheduler's sweep: open tasks whose job Redis lost are queued again, others are left alone."""

from __future__ import annotations

import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from engine import keys, scheduler
from engine.queue import job
from engine.store.models import Task
from tests.support.service import delayed_jobs, gateway, write_rules

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
        gw.svc.redis.delete(*gw.svc.queue.streams)  # Redis lost the stream
        gw.svc.queue.ensure_group()
        stranded, delayed, fresh = ids
        gw.svc.queue.defer(job("send", delayed), datetime.now(UTC).timestamp() + 3600)
        old = datetime.now(UTC) - timedelta(seconds=gw.svc.settings.outbox_grace + 60)
        Task.update(updated_at=old).where(Task.task_id.in_([stranded, delayed])).execute()
        assert scheduler.requeue_stranded(gw.svc, datetime.now(UTC)) == 1
        entries = gw.svc.queue.read("sweep-test", count=10, block_ms=10)
        assert [entry.job for entry in entries] == [job("send", stranded)]


def test_tasks_whose_entries_the_workers_have_not_read_yet_are_not_queued_again(tmp_path: Path) -> None:
    """While the workers are behind, tasks older than the grace whose entries are still unread on the stream
    are left alone; once every entry has been read, the same tasks, still untouched, count as stranded."""
    rules = write_rules(tmp_path, RULES)
    with gateway(tmp_path, rules, workers=False) as gw:
        for i in range(2):
            gw.send("otp", f"1380000000{i}", {"code": "1"})
        later = datetime.now(UTC) + timedelta(seconds=gw.svc.settings.outbox_grace + 60)
        assert scheduler.requeue_stranded(gw.svc, later) == 0
        assert len(gw.svc.queue.read("slow-worker", count=10, block_ms=10)) == 2
        assert gw.svc.queue.oldest_unread() is None
        assert scheduler.requeue_stranded(gw.svc, later) == 2


def test_after_redis_lost_its_data_one_sweep_requeues_every_unfinished_task(tmp_path: Path) -> None:
    """With the epoch key gone, the first process to notice queues pending tasks now, scheduled ones at their
    time and the report timeout of sent ones; any later check finds the epoch and does nothing."""
    rules = write_rules(tmp_path, RULES)
    with gateway(tmp_path, rules, workers=False) as gw:
        due = datetime.now(UTC) + timedelta(hours=1)
        pending = gw.send("otp", "13800000001", {"code": "1"})["data"]["task_id"]
        scheduled = gw.send("otp", "13800000002", {"code": "1"}, scheduled_at=due.isoformat(timespec="seconds"))
        sent = gw.send("otp", "13800000003", {"code": "1"})["data"]["task_id"]
        Task.update(status="sent").where(Task.task_id == sent).execute()
        gw.svc.redis.flushdb()  # Redis lost everything
        now = datetime.now(UTC)
        assert scheduler.recover_lost_data(gw.svc, now) == 3
        assert scheduler.recover_lost_data(gw.svc, now) == 0
        entries = gw.svc.queue.read("sweep-test", count=10, block_ms=10)
        assert [entry.job for entry in entries] == [job("send", pending)]
        delayed = delayed_jobs(gw.svc)
        assert abs(delayed[job("send", scheduled["data"]["task_id"]).encode()] - due.timestamp()) < 1.5
        assert job("timeout", sent).encode() in delayed


def test_a_worker_whose_group_vanished_creates_it_again_and_reads_on(tmp_path: Path) -> None:
    """A read or a reclaim that finds the consumer group gone (NOGROUP) makes it again instead of failing."""
    rules = write_rules(tmp_path, RULES)
    with gateway(tmp_path, rules, workers=False) as gw:
        gw.svc.redis.flushdb()
        assert gw.svc.queue.read("reader", count=10, block_ms=10) == []
        assert gw.svc.queue.reclaim("reclaimer", min_idle_ms=0) == []
        gw.svc.queue.enqueue([job("send", "t1")])
        assert [entry.job for entry in gw.svc.queue.read("reader", count=10, block_ms=10)] == [job("send", "t1")]


def _start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """A redis-server of the test's own (no persistence: its restart stands for one that lost its last writes)."""
    process = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                "--appendonly", "no", "--dir", str(directory)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            return process
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


def test_after_redis_restarted_missing_its_last_writes_the_recently_touched_tasks_are_requeued_once(
        tmp_path: Path) -> None:
    """Redis restarted with its data but without its last writes (the epoch key survived, a fresh task's job
    did not): the first process that saw the old server re-queues the tasks touched shortly before, except
    one whose job waits unread on the stream, and the send jobs read but not acknowledged, however old; a
    task untouched for long is left to its surviving job, and a second process finds the restart claimed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = _start_redis(port, tmp_path)
    try:
        with gateway(tmp_path, write_rules(tmp_path, RULES), workers=False,
                     redis_url=f"redis://127.0.0.1:{port}/0", redis_cluster=False) as gw:
            first, second = scheduler.ServerWatch(), scheduler.ServerWatch()
            scheduler.recover_lost_data(gw.svc, datetime.now(UTC))  # sets the epoch
            assert scheduler.recover_restart(gw.svc, first, datetime.now(UTC)) == 0
            assert scheduler.recover_restart(gw.svc, second, datetime.now(UTC)) == 0
            old, fresh, sent, waiting, read = (gw.send("otp", f"1380000000{i}", {"code": "1"})["data"]["task_id"]
                                               for i in range(5))
            long_ago = datetime.now(UTC) - timedelta(hours=1)
            Task.update(updated_at=long_ago).where(Task.task_id.in_([old, read])).execute()
            Task.update(status="sent").where(Task.task_id == sent).execute()
            epoch = gw.svc.redis.get(keys.EPOCH)
            server.kill()
            server.wait()
            server = _start_redis(port, tmp_path)
            redis.Redis(port=port).set(keys.EPOCH, epoch)  # what the append-only file had kept, with two jobs:
            gw.svc.redis.connection_pool.disconnect()
            gw.svc.queue.ensure_group()
            gw.svc.queue.enqueue([job("send", read)])
            assert [entry.job for entry in gw.svc.queue.read("stuck", count=10, block_ms=10)] == [job("send", read)]
            gw.svc.queue.enqueue([job("send", waiting)])
            assert scheduler.recover_restart(gw.svc, first, datetime.now(UTC)) == 3
            assert scheduler.recover_restart(gw.svc, second, datetime.now(UTC)) == 0
            assert scheduler.recover_restart(gw.svc, first, datetime.now(UTC)) == 0
            entries = gw.svc.queue.read("restart-test", count=10, block_ms=10)
            assert sorted(entry.job for entry in entries) == sorted(job("send", t) for t in (waiting, fresh, read))
            assert list(delayed_jobs(gw.svc)) == [job("timeout", sent).encode()]
    finally:
        server.kill()
        server.wait()
