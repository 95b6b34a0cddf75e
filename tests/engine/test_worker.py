"""The worker's send pool: a read's attempts handed to the pool one by one, a hung call holding only its slot."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.settings import Settings
from engine.store import repo
from engine.worker import Worker, read_retry_delay
from tests.support.loopback import LoopbackServer, Recorded, Reply
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(60)

RULES = """
templates:
  - {{name: code, variables: [code], text: "code {{code}}"}}
channels:
  - {{id: 1, name: otp, type: sms, template: code}}
providers:
  - {{name: vendor, type: fake, config: {{url: "{url}/send", timeout: 30}}}}
routing:
  - {{name: otp, when: {{channel: otp}}, providers: [{{use: vendor}}]}}
"""


class HangingVendor:
    """Answers at once, except for receivers ending in 9, which wait until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.server = LoopbackServer(self.answer).start()

    def answer(self, request: Recorded) -> Reply:
        if json.loads(request.body)["receiver"].endswith("9"):
            self.release.wait(30)
        return Reply(200, '{"code": 0}')


@pytest.fixture
def vendor() -> Iterator[HangingVendor]:
    hanging = HangingVendor()
    yield hanging
    hanging.release.set()
    hanging.server.stop()


@pytest.fixture
def gw(tmp_path: Path, vendor: HangingVendor) -> Iterator[Gateway]:
    rules = write_rules(tmp_path, RULES.format(url=vendor.server.url))
    with gateway(tmp_path, rules, worker_threads=3, attempt_lease=2.0) as running:
        yield running


def accepted(gw: Gateway, receiver: str) -> str:
    answer = gw.send("otp", receiver, {"code": "1"})
    assert answer["code"] == 0, answer
    return str(answer["data"]["task_id"])


def test_a_hung_call_holds_only_its_own_slot(gw: Gateway, vendor: HangingVendor) -> None:
    """While one vendor call hangs, every other message is delivered by the other slots."""
    hung = accepted(gw, "13800000009")
    gw.wait(hung, ("processing",))
    others = [accepted(gw, f"1380000001{i}") for i in range(8)]
    for task_id in others:
        gw.wait(task_id, ("success",), timeout=10)
    assert repo.get_task(hung).status == "processing"
    vendor.release.set()
    gw.wait(hung, ("success",))


def test_a_call_in_flight_keeps_its_lease(gw: Gateway, vendor: HangingVendor) -> None:
    """The worker renews the lease of an attempt whose call is still running, so no one takes it for lost."""
    hung = accepted(gw, "13800000009")
    gw.wait(hung, ("processing",))
    first = repo.list_attempts(hung)[0].lease_until
    time.sleep(1.5)
    attempt = repo.list_attempts(hung)[0]
    assert attempt.status == "sending" and attempt.lease_until > first
    assert attempt.owner == gw.worker.owner  # type: ignore[union-attr]


def test_a_second_job_for_a_task_in_flight_sends_nothing(gw: Gateway, vendor: HangingVendor) -> None:
    """A job naming a task whose attempt is in flight elsewhere comes back later instead of resending."""
    hung = accepted(gw, "13800000009")
    gw.wait(hung, ("processing",))
    gw.svc.queue.enqueue([f"send:{hung}"])
    time.sleep(1.0)
    assert len([r for r in vendor.server.requests if json.loads(r.body)["task_id"] == hung]) == 1
    assert gw.svc.queue.redis.zscore(gw.svc.queue.delayed_key(f"send:{hung}"), f"send:{hung}") is not None
    vendor.release.set()
    gw.wait(hung, ("success",))
    assert len(repo.list_attempts(hung)) == 1


def test_a_failed_read_is_retried_soon_then_less_often() -> None:
    """After a failed stream read the reader waits 0.1 s, doubling with each failure in a row up to 1 s: a
    restarted Redis is read again within a fraction of a second, a dead one is not hammered."""
    assert [read_retry_delay(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_stream_readers_come_from_the_settings_and_never_outnumber_the_send_threads(tmp_path: Path) -> None:
    """MPUSH_WORKER_READERS (2 by default) readers, or fewer when there are fewer send threads."""
    with gateway(tmp_path, write_rules(tmp_path, CONSOLE_RULES), workers=False) as gw:
        svc = gw.svc
        assert Worker(svc, threads=3).readers == 2 and Worker(svc, threads=1).readers == 1
        assert Worker(svc, threads=3, readers=1).readers == 1
    assert Settings.from_env({"MPUSH_WORKER_READERS": "1"}).worker_readers == 1


def test_the_entries_of_a_worker_whose_heartbeat_ran_out_are_taken_over_at_once(tmp_path: Path) -> None:
    """A worker that read a job and died (its heartbeat expired) has it taken over by a live worker within
    seconds, though the visibility timeout is a minute; the dead worker is then forgotten."""
    with gateway(tmp_path, write_rules(tmp_path, CONSOLE_RULES), workers=False, visibility_timeout=60.0) as gw:
        queue = gw.svc.queue
        answer = gw.send("otp", "13800138000", {"code": "1"})
        (entry,) = queue.read("ghost-0", count=10, block_ms=100)  # read, never acknowledged: then it died
        queue.heartbeat("ghost", time.time() - 1)
        stop = threading.Event()
        live = Worker(gw.svc, threads=2, name="live")
        thread = threading.Thread(target=live.run, args=(stop,))
        thread.start()
        try:
            task = gw.wait(answer["data"]["task_id"], timeout=8)
            deadline = time.monotonic() + 5
            while queue.dead_workers(time.time()) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join(10)
        assert task.status == "success" and entry.ref == task.task_id
        assert queue.dead_workers(time.time() + 60) == []  # the dead one forgotten, the live one retired


def test_a_running_worker_counts_its_successful_calls_without_further_traffic(gw: Gateway) -> None:
    """Successes wait for a stream read to be counted against the account's breaker; once the traffic stops, the
    reader's next read (its block times out after half a second) counts the last of them, none left behind."""
    for task_id in [accepted(gw, f"1380013800{n}") for n in range(5)]:
        assert gw.wait(task_id).status == "success"
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        slots = [slot for slot in gw.svc.selector.breaker("vendor").ring if slot is not None]
        if sum(slot.calls for slot in slots) == 5:
            break
        time.sleep(0.02)
    assert sum(slot.calls for slot in slots) == 5 and not any(slot.failures for slot in slots)
