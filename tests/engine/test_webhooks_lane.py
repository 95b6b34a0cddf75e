"""Customer webhooks run in their own lane: a hanging endpoint delays neither deliveries nor other apps' webhooks."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from engine import webhooks
from engine.queue import Entry, Queue
from engine.store import repo
from engine.webhook_lane import WebhookLane
from tests.support.loopback import Reply, loopback
from tests.support.service import CONSOLE_RULES, gateway, write_rules

RUN = uuid.uuid4().hex[:8]


def test_a_hanging_endpoint_delays_no_other_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While one app's webhook endpoint accepts connections and never answers, another app's messages are
    delivered, and its webhook events arrive, within a second or two (on the old code: after the hanging calls)."""
    monkeypatch.setattr(webhooks, "TIMEOUT_SECONDS", 4.0)
    with loopback(lambda _: Reply(200, "{}", delay=30)) as hanging, loopback(lambda _: Reply(200, "{}")) as fine:
        with gateway(tmp_path, write_rules(tmp_path, CONSOLE_RULES), webhook_url=hanging.url + "/hook") as gw:
            for _ in range(12):
                gw.send("otp", "13800138000", {"code": "1"})
            deadline = time.monotonic() + 5
            while len(hanging.requests) < 2:  # the lane has both of the hanging app's slots taken
                assert time.monotonic() < deadline
                time.sleep(0.02)
            other, secret = repo.create_app("other", gw.svc.key, webhook_url=fine.url + "/events", daily_quota=0,
                                            rate_limit=0)
            started = time.monotonic()
            task_ids = [gw.call("POST", "/api/v1/messages", {"channel_id": "otp", "receiver": "13900139000",
                                                             "template_params": {"code": "2"}},
                                app_id=other.app_id, secret=secret)["data"]["task_id"] for _ in range(5)]
            for task_id in task_ids:
                assert gw.wait(task_id, timeout=2.0).status == "success"
            delivered = time.monotonic() - started
            while len(fine.requests) < 5:
                assert time.monotonic() - started < 3.0, f"{len(fine.requests)} of 5 webhook events in 3 s"
                time.sleep(0.02)
            assert delivered < 2.0
            assert len(hanging.requests) <= gw.svc.settings.webhook_per_app  # the cap holds while the calls hang


@pytest.fixture
def queue(client: redis.Redis) -> Queue:
    stream = f"mpush-test:{RUN}:{uuid.uuid4().hex[:6]}"
    created = Queue(client, base=stream, group="g")
    created.ensure_group()
    return created


def test_a_job_over_its_apps_cap_is_deferred_never_dropped(queue: Queue) -> None:
    """With one slot per app and no room to wait in memory, a second job of the same app goes to the delayed set
    (due later) and may be acknowledged; another app's job starts at once; the jobs run are acknowledged only
    when they finish."""
    release, ran = threading.Event(), list[str]()

    def handle(entry: Entry, now: float) -> bool:
        ran.append(entry.job)
        release.wait(5)
        return True

    queue.enqueue(["webhook:app-a:1", "webhook:app-a:2", "webhook:app-b:3"])
    entries = queue.read("c", count=3, block_ms=100)
    lane = WebhookLane(queue, handle, threads=4, per_app=1, waiting_per_app=0)
    now = time.time()
    acknowledged_now = lane.take(entries, now)
    assert acknowledged_now == [entries[1].id]
    assert queue.redis.zscore(queue.delayed, "webhook:app-a:2") >= now + 0.2
    time.sleep(0.1)
    assert sorted(ran) == ["webhook:app-a:1", "webhook:app-b:3"] and lane.holds(entries[0].id)
    assert queue.pending() == 3
    queue.ack(acknowledged_now)
    release.set()
    lane.shutdown()
    assert queue.pending() == 0 and not lane.busy()


def test_deferred_jobs_of_a_slow_app_come_back_no_faster_than_it_answers(queue: Queue) -> None:
    """Once an app's calls are seen to take 0.3 s, its deferred jobs are due 0.3 s / per_app apart, so a slow
    endpoint's backlog comes back as fast as the endpoint can take it, instead of churning through the stream."""
    release = threading.Event()

    def handle(entry: Entry, now: float) -> bool:
        time.sleep(0.3) if entry.job == "webhook:slow:1" else release.wait(5)
        return True

    lane = WebhookLane(queue, handle, threads=4, per_app=1, waiting_per_app=0)
    queue.enqueue(["webhook:slow:1", "webhook:slow:2"])
    [first, second] = queue.read("c", count=2, block_ms=100)
    lane.take([first], time.time())
    while lane.busy():
        time.sleep(0.01)
    lane.take([second], time.time())
    queue.enqueue([f"webhook:slow:{n}" for n in range(10, 16)])
    assert len(lane.take(queue.read("c", count=6, block_ms=100), time.time())) == 6
    dues = sorted(score for _, score in queue.redis.zrange(queue.delayed, 0, -1, withscores=True))
    release.set()
    lane.shutdown()
    assert len(dues) == 6 and all(0.3 <= b - a < 0.45 for a, b in zip(dues, dues[1:]))


def test_a_fast_apps_burst_waits_in_the_lane_and_runs_in_turn(queue: Queue) -> None:
    """Jobs of an app whose calls are quick wait in memory for their turn instead of going round the delayed set:
    all run, at most per_app at once, each acknowledged, none deferred."""
    lock, running, most = threading.Lock(), [0], [0]

    def handle(entry: Entry, now: float) -> bool:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return True

    lane = WebhookLane(queue, handle, threads=8, per_app=2, waiting_per_app=100)
    queue.enqueue([f"webhook:fast:{n}" for n in range(40)])
    assert lane.take(queue.read("c", count=40, block_ms=100), time.time()) == []
    while lane.busy():
        time.sleep(0.01)
    lane.shutdown()
    assert most[0] == 2 and queue.pending() == 0 and queue.delayed_count() == 0


def test_jobs_waiting_in_the_lane_are_not_reclaimed_by_another_worker(queue: Queue) -> None:
    """`keep` resets the idle time of the entries the lane holds, so another worker's reclaimer, which takes
    entries idle longer than the visibility timeout, leaves a job alone while it waits for its turn."""
    release = threading.Event()
    lane = WebhookLane(queue, lambda entry, now: release.wait(5), threads=2, per_app=1)
    queue.enqueue(["webhook:app:1", "webhook:app:2"])
    lane.take(queue.read("c", count=2, block_ms=100), time.time())
    time.sleep(0.3)
    lane.keep("c-webhooks")
    assert queue.reclaim("other-worker", min_idle_ms=200) == []
    time.sleep(0.3)
    assert len(queue.reclaim("other-worker", min_idle_ms=200)) == 2  # without `keep`, both would be taken
    release.set()
    lane.shutdown()


def test_a_final_status_event_is_written_and_sent_once_however_often_its_job_runs(tmp_path: Path) -> None:
    """A finished task's event travels in its job as it was at the finish (a later change of the task does not
    alter it); the lane writes it down and tries it at once, and the same job run again (as after a worker
    died before acknowledging it) finds it written and sends nothing more."""
    with loopback(lambda _: Reply(200, "{}")) as receiver:
        rules = write_rules(tmp_path, CONSOLE_RULES)
        with gateway(tmp_path, rules, workers=False, webhook_url=receiver.url + "/hook") as gw:
            task_id = gw.send("otp", "13800138000", {"code": "1"})["data"]["task_id"]
            repo.update_task(task_id, status="success")
            webhooks.notify(gw.svc, repo.get_task(task_id))
            repo.update_task(task_id, status="failed")
            [entry] = [e for e in gw.svc.queue.read("t", count=10, block_ms=100) if e.kind == "webhook_event"]
            assert [webhooks.announce(gw.svc, entry.ref, time.time()) for _ in range(2)] == ["delivered", "done"]
            [delivery] = repo.list_webhook_deliveries(task_id)
            assert (delivery.event, delivery.status, delivery.tries) == ("delivered", "delivered", 1)
        assert len(receiver.requests) == 1
        assert json.loads(receiver.requests[0].body)["status"] == "success"
