"""The repository on SQLite, PostgreSQL and MariaDB: apps, tasks, batches, attempts, callbacks, webhooks, stats."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import peewee
import pytest

from engine.store import repo
from engine.store.crypto import SecretError
from engine.store.models import APP_DISABLED, APP_ENABLED, OPEN_TASK_STATUSES, Task

pytestmark = pytest.mark.usefixtures("db")

CHINESE = "您的验证码是123456，5分钟内有效。【木雷】😀"


def task_row(app_id: str = "a" * 16, **fields: Any) -> dict[str, Any]:
    return {"task_id": str(uuid.uuid4()), "app_id": app_id, "receiver": "13800138000", **fields}


def create_task(app_id: str = "a" * 16, **fields: Any) -> Task:
    row = task_row(app_id, **fields)
    repo.create_tasks([row])
    task = repo.get_task(row["task_id"])
    assert task is not None
    return task


def run_together(count: int, work: Any) -> list[Any]:
    """Run `work` in `count` threads released at the same instant; their results in completion order."""
    start = threading.Barrier(count)
    results: list[Any] = []

    def run() -> None:
        start.wait(timeout=10)
        results.append(work())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


# -- applications ---------------------------------------------------------------------------------------------


def test_app_create_returns_a_secret_stored_only_encrypted(key: bytes) -> None:
    """create_app hands out the plaintext once; the row holds ciphertext that decrypts to it with the key."""
    app, secret = repo.create_app("商城", key, webhook_url="https://shop.example/hook", daily_quota=0, rate_limit=5)
    stored = repo.get_app(app.app_id)
    assert stored is not None
    assert secret not in stored.secret
    assert repo.app_secret(stored, key) == secret
    assert (stored.name, stored.status, stored.webhook_url, stored.daily_quota, stored.rate_limit) == (
        "商城", APP_ENABLED, "https://shop.example/hook", 0, 5
    )
    assert stored.created_at.tzinfo is not None


def test_app_secret_with_the_wrong_key_raises(key: bytes) -> None:
    """A stored secret does not open under a different key."""
    app, _ = repo.create_app("shop", key)
    with pytest.raises(SecretError):
        repo.app_secret(app, b"x" * 32)


def test_rotate_secret_replaces_the_old_one(key: bytes) -> None:
    """After rotation the app decrypts to the new secret, not the old one."""
    app, old = repo.create_app("shop", key)
    new = repo.rotate_secret(app.app_id, key)
    assert new != old
    assert repo.app_secret(repo.get_app(app.app_id), key) == new


def test_disable_enable_and_webhook(key: bytes) -> None:
    """Status and webhook URL changes are stored; an unknown app or a bad value is refused and changes nothing."""
    app, _ = repo.create_app("shop", key)
    repo.set_app_status(app.app_id, APP_DISABLED)
    repo.set_webhook(app.app_id, "http://127.0.0.1:9/hook")
    stored = repo.get_app(app.app_id)
    assert (stored.status, stored.webhook_url) == (APP_DISABLED, "http://127.0.0.1:9/hook")
    assert stored.updated_at >= stored.created_at
    with pytest.raises(ValueError, match="1 enabled, 2 disabled"):
        repo.set_app_status(app.app_id, 0)
    with pytest.raises(ValueError, match="http"):
        repo.set_webhook(app.app_id, "ftp://nope")
    with pytest.raises(repo.NotFound):
        repo.set_app_status("0" * 16, APP_ENABLED)
    repo.set_webhook(app.app_id, None)
    assert (repo.get_app(app.app_id).status, repo.get_app(app.app_id).webhook_url) == (APP_DISABLED, None)


@pytest.mark.parametrize(
    "arguments",
    [{"name": ""}, {"name": "x" * 101}, {"daily_quota": -1}, {"rate_limit": "100"}, {"webhook_url": "not a url"}],
)
def test_bad_app_input_is_refused_and_stores_nothing(key: bytes, arguments: dict[str, Any]) -> None:
    """Empty or long names, negative or non-integer limits and non-http webhooks raise ValueError; no row appears."""
    options = {"name": "shop", **arguments}
    with pytest.raises(ValueError):
        repo.create_app(options.pop("name"), key, **options)
    assert repo.list_apps() == []


def test_list_apps_in_creation_order(key: bytes) -> None:
    """list_apps returns every app, oldest first."""
    first, _ = repo.create_app("one", key)
    second, _ = repo.create_app("two", key)
    assert [app.app_id for app in repo.list_apps()] == [first.app_id, second.app_id]


# -- tasks ----------------------------------------------------------------------------------------------------


def test_task_is_visible_only_to_its_app() -> None:
    """get_task with an app id finds only that app's task; without one it finds any task."""
    task = create_task("a" * 16)
    assert repo.get_task(task.task_id, app_id="a" * 16).id == task.id
    assert repo.get_task(task.task_id, app_id="b" * 16) is None
    assert repo.get_task(task.task_id).id == task.id
    assert repo.get_task("missing") is None


def test_chinese_and_emoji_round_trip_everywhere() -> None:
    """Four-byte UTF-8 text survives every text and JSON column unchanged."""
    task = create_task(
        receiver="张三@例子.中国",
        title=CHINESE,
        content=CHINESE * 200,
        template_params={"名字": CHINESE},
        error_message=CHINESE,
        tags=["营销", "😀"],
    )
    assert (task.receiver, task.title, task.content, task.error_message) == (
        "张三@例子.中国", CHINESE, CHINESE * 200, CHINESE
    )
    assert json.loads(task.template_params) == {"名字": CHINESE}
    assert json.loads(task.tags) == ["营销", "😀"]


def test_datetimes_come_back_aware_to_the_microsecond() -> None:
    """A datetime in any zone is stored as the same instant and returned in UTC with its microseconds."""
    moment = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=timezone(timedelta(hours=8)))
    task = create_task(scheduled_at=moment, status="scheduled")
    assert task.scheduled_at == moment
    assert task.scheduled_at.tzinfo == UTC
    assert task.scheduled_at.hour == 0


def test_naive_datetimes_are_refused() -> None:
    """A naive datetime is ambiguous, so storing one raises TypeError and stores nothing."""
    row = task_row(scheduled_at=datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="timezone-aware"):
        repo.create_tasks([row])
    assert repo.get_task(row["task_id"]) is None


def test_idempotency_key_is_unique_per_app() -> None:
    """A repeated key within one app is refused (find_idempotent returns the original); other apps and keyless
    tasks are unaffected."""
    original = create_task("a" * 16, idempotency_key="order-1")
    with pytest.raises(repo.DuplicateTask):
        repo.create_tasks([task_row("a" * 16, idempotency_key="order-1")])
    assert repo.find_idempotent("a" * 16, "order-1").task_id == original.task_id
    other = create_task("b" * 16, idempotency_key="order-1")
    assert repo.find_idempotent("b" * 16, "order-1").task_id == other.task_id
    repo.create_tasks([task_row("a" * 16), task_row("a" * 16), task_row("a" * 16, idempotency_key="")])
    assert repo.task_counts("a" * 16)["pending"] == 4
    assert repo.find_idempotent("a" * 16, "ORDER-1") is None


def test_create_tasks_is_all_or_nothing_across_chunks() -> None:
    """A conflict in the last of several insert chunks leaves none of the rows (nor the batch) stored."""
    existing = create_task()
    rows = [task_row() for _ in range(250)] + [task_row(task_id=existing.task_id)]
    batch_id = str(uuid.uuid4())
    with pytest.raises(repo.DuplicateTask):
        repo.create_tasks(rows, batch={"batch_id": batch_id, "app_id": "a" * 16, "total": len(rows)})
    assert repo.get_tasks([row["task_id"] for row in rows]) == {existing.task_id: repo.get_task(existing.task_id)}
    assert repo.batch_summary(batch_id, "a" * 16) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"colour": "red"}, "unknown task field"),
        ({"status": "lost"}, "unknown task status"),
        ({"receiver": ""}, "receiver"),
        ({"template_params": "{not json"}, "not valid JSON"),
    ],
)
def test_bad_task_rows_are_refused_before_anything_is_stored(fields: dict[str, Any], message: str) -> None:
    """An unknown column or status, a missing receiver or broken JSON text is a ValueError; no row is stored."""
    good = task_row()
    with pytest.raises(ValueError, match=message):
        repo.create_tasks([good, task_row(**fields)])
    assert repo.get_task(good["task_id"]) is None


def test_get_tasks_returns_the_found_ones_by_id() -> None:
    """get_tasks maps each existing id to its task and leaves unknown ids out."""
    first, second = create_task(), create_task()
    found = repo.get_tasks([first.task_id, second.task_id, "missing"])
    assert {task_id: task.id for task_id, task in found.items()} == {first.task_id: first.id, second.task_id: second.id}
    assert repo.get_tasks([]) == {}


def test_update_task_stores_fields_and_moves_updated_at() -> None:
    """update_task writes the given fields and a later updated_at; an unknown task or field is an error."""
    task = create_task()
    repo.update_task(task.task_id, status="sent", provider="aliyun-main", exclude_providers='["tencent-main"]')
    stored = repo.get_task(task.task_id)
    assert (stored.status, stored.provider, stored.exclude_providers) == ("sent", "aliyun-main", '["tencent-main"]')
    assert stored.updated_at > task.updated_at
    with pytest.raises(repo.NotFound):
        repo.update_task("missing", status="failed")
    with pytest.raises(ValueError, match="app_id"):
        repo.update_task(task.task_id, app_id="b" * 16)


def test_mark_status_if_changes_only_from_an_expected_status() -> None:
    """The conditional update applies from an expected status and reports False (changing nothing) otherwise."""
    task = create_task()
    assert repo.mark_status_if(task.task_id, ("pending", "scheduled"), status="processing", rule="otp") is True
    assert repo.mark_status_if(task.task_id, ("pending",), status="processing", rule="other") is False
    assert (repo.get_task(task.task_id).status, repo.get_task(task.task_id).rule) == ("processing", "otp")
    with pytest.raises(ValueError, match="unknown task status"):
        repo.mark_status_if(task.task_id, ("processing",), status="done")
    assert repo.get_task(task.task_id).status == "processing"


def test_mark_status_if_has_one_winner_under_contention() -> None:
    """Of several workers racing to claim a pending task, exactly one succeeds."""
    task = create_task()
    results = run_together(4, lambda: repo.mark_status_if(task.task_id, ("pending",), status="processing"))
    assert sorted(results) == [False, False, False, True]


def test_task_to_public_has_the_reference_shape() -> None:
    """The public view has the reference's fields (JSON strings, RFC 3339 UTC times), ours, and the attempts."""
    task = create_task(template="verify_code", template_params={"code": "123456"}, channel="verify-sms", channel_id=1)
    repo.begin_attempt(task.task_id, 1, "aliyun-main", "otp-china", "v1")
    view = repo.task_to_public(task)
    assert list(view)[:20] == [
        "id", "task_id", "app_id", "channel_id", "message_type", "receiver", "title", "content", "template_code",
        "template_params", "signature", "status", "callback_status", "callback_time", "retry_count", "max_retry",
        "exclude_provider_ids", "scheduled_at", "created_at", "updated_at",
    ]
    assert (view["template_code"], view["template_params"], view["exclude_provider_ids"]) == (
        "verify_code", '{"code":"123456"}', "[]"
    )
    assert view["created_at"].endswith("Z") and datetime.fromisoformat(view["created_at"]) == task.created_at
    assert view["scheduled_at"] is None and view["callback_time"] is None
    assert [(a["number"], a["provider"], a["status"]) for a in view["attempts"]] == [(1, "aliyun-main", "sending")]
    json.dumps(view)


# -- batches --------------------------------------------------------------------------------------------------


def test_batch_summary_counts_its_tasks_by_status() -> None:
    """The summary totals the batch and counts success, failed and still-pending tasks; other apps see nothing."""
    batch_id = str(uuid.uuid4())
    rows = [task_row(status=status) for status in ("success", "success", "failed", "sent", "pending")]
    repo.create_tasks(rows, batch={"batch_id": batch_id, "app_id": "a" * 16, "total": 5})
    create_task()
    summary = repo.batch_summary(batch_id, "a" * 16)
    assert {k: summary[k] for k in ("total_count", "success_count", "failed_count", "pending_count", "status")} == {
        "total_count": 5, "success_count": 2, "failed_count": 1, "pending_count": 2, "status": "processing"
    }
    assert summary["status_counts"] == {
        "pending": 1, "scheduled": 0, "processing": 0, "sent": 1, "success": 2, "failed": 1
    }
    assert repo.get_task(rows[0]["task_id"]).batch_id == batch_id
    assert repo.batch_summary(batch_id, "b" * 16) is None
    for row in rows[3:]:
        repo.update_task(row["task_id"], status="success")
    assert repo.batch_summary(batch_id, "a" * 16)["status"] == "completed"


# -- attempts -------------------------------------------------------------------------------------------------


def test_an_attempt_can_be_begun_only_once() -> None:
    """The second begin_attempt of the same number is refused; the next number is free."""
    task = create_task()
    assert repo.begin_attempt(task.task_id, 1, "aliyun-main", "otp", "v1") is True
    assert repo.begin_attempt(task.task_id, 1, "tencent-main", "otp", "v1") is False
    assert repo.begin_attempt(task.task_id, 2, "tencent-main", "otp", "v1") is True
    attempts = repo.list_attempts(task.task_id)
    assert [(a.number, a.provider) for a in attempts] == [(1, "aliyun-main"), (2, "tencent-main")]


def test_racing_workers_cannot_both_begin_one_attempt() -> None:
    """Threads beginning the same attempt at the same instant: exactly one wins, and one row exists."""
    task = create_task()
    results = run_together(4, lambda: repo.begin_attempt(task.task_id, 1, "aliyun-main", "otp", "v1"))
    assert sorted(results) == [False, False, False, True]
    assert len(repo.list_attempts(task.task_id)) == 1


def test_begin_attempt_inside_a_transaction_keeps_the_transaction_usable(db: peewee.Database) -> None:
    """A refused claim inside an outer transaction does not poison it (PostgreSQL aborts a failed statement's txn)."""
    task = create_task()
    repo.begin_attempt(task.task_id, 1, "aliyun-main", "otp", "v1")
    with db.atomic():
        assert repo.begin_attempt(task.task_id, 1, "aliyun-main", "otp", "v1") is False
        repo.update_task(task.task_id, status="processing")
    assert repo.get_task(task.task_id).status == "processing"


def test_finish_attempt_records_the_outcome_and_callbacks_find_it() -> None:
    """A finished attempt keeps its result and summaries, and find_attempt locates it by provider and vendor id."""
    task = create_task()
    repo.begin_attempt(task.task_id, 1, "aliyun-main", "otp", "v1")
    repo.finish_attempt(
        task.task_id, 1, status="ok", final=False, provider_message_id="biz-1",
        request={"PhoneNumbers": "13800138000"}, response={"Code": "OK", "Message": "成功"}, latency_ms=42,
    )
    attempt = repo.find_attempt("aliyun-main", "biz-1")
    assert attempt is not None and attempt.task_id == task.task_id
    assert (attempt.status, attempt.final, attempt.latency_ms) == ("ok", False, 42)
    assert json.loads(attempt.response) == {"Code": "OK", "Message": "成功"}
    assert attempt.finished_at >= attempt.created_at
    assert repo.find_attempt("tencent-main", "biz-1") is None
    assert repo.find_attempt("aliyun-main", "") is None
    with pytest.raises(ValueError, match="attempt status"):
        repo.finish_attempt(task.task_id, 1, status="great", final=True)
    with pytest.raises(repo.NotFound):
        repo.finish_attempt(task.task_id, 9, status="ok", final=True)


def test_find_attempt_takes_any_of_the_ids_a_report_may_name() -> None:
    """A report naming its message several ways finds the attempt stored under any one of them."""
    task = create_task()
    repo.begin_attempt(task.task_id, 1, "aliyun-main", "otp", "v1")
    repo.finish_attempt(task.task_id, 1, status="ok", final=False, provider_message_id="biz-7:13800138000")
    assert repo.find_attempt("aliyun-main", "biz-7", "biz-7:13800138000").task_id == task.task_id
    assert repo.find_attempt("aliyun-main", "biz-7", "biz-7:13800138001") is None
    assert repo.find_attempt("aliyun-main", "", "") is None


# -- callbacks ------------------------------------------------------------------------------------------------


def test_callback_replay_is_detected_only_after_it_was_applied() -> None:
    """callback_seen is true once an applied report with the same provider, id and status is recorded."""
    assert repo.callback_seen("aliyun-main", "biz-1", "delivered") is False
    report = {"provider": "aliyun-main", "provider_message_id": "biz-1", "status": "delivered"}
    repo.record_callback(**report, raw="[]", applied=False)
    assert repo.callback_seen("aliyun-main", "biz-1", "delivered") is False
    stored = repo.record_callback(**report, verified=True, applied=True, raw=CHINESE)
    assert (stored.verified, stored.applied, stored.raw) == (True, True, CHINESE)
    assert repo.callback_seen("aliyun-main", "biz-1", "delivered") is True
    assert repo.callback_seen("aliyun-main", "biz-1", "failed") is False
    with pytest.raises(ValueError, match="unknown callback field"):
        repo.record_callback(provider="aliyun-main", secret="x")


# -- customer webhooks ----------------------------------------------------------------------------------------


def record_try(delivery_id: int, **outcome: Any) -> Any:
    """record_webhook_try with the fields a test does not care about filled in."""
    defaults = {"status_code": None, "error": "", "latency_ms": 1, "next_at": None}
    return repo.record_webhook_try(delivery_id, **{"delivered": False, "give_up": False, **defaults, **outcome})


def test_webhook_tries_are_logged_until_delivered() -> None:
    """Each try is a numbered row; failures reschedule, success finishes, and the body never changes."""
    body = json.dumps({"event": "delivered", "receiver": CHINESE}, ensure_ascii=False)
    delivery = repo.create_webhook_delivery("t-1", "a" * 16, "delivered", "http://127.0.0.1:9/hook", body)
    later = datetime.now(UTC) + timedelta(seconds=5)
    record_try(delivery.id, status_code=500, error="HTTP 500", next_at=later)
    retried = record_try(delivery.id, error="timeout", latency_ms=5000, next_at=later)
    assert (retried.status, retried.tries, retried.next_at, retried.last_error) == ("pending", 2, later, "timeout")
    done = record_try(delivery.id, status_code=200, delivered=True)
    assert (done.status, done.tries, done.next_at, done.last_status) == ("delivered", 3, None, 200)
    assert repo.get_webhook_delivery(delivery.id).body == body
    assert [(t.number, t.status_code, t.error) for t in repo.list_webhook_tries(delivery.id)] == [
        (1, 500, "HTTP 500"), (2, None, "timeout"), (3, 200, "")
    ]
    with pytest.raises(repo.NotFound):
        record_try(delivery.id, status_code=200, delivered=True)


def test_webhook_gives_up_and_refuses_a_retry_without_a_time() -> None:
    """give_up marks the delivery failed; a failed try that neither gives up nor names next_at is refused."""
    delivery = repo.create_webhook_delivery("t-1", "a" * 16, "failed", "https://shop.example/hook", "{}")
    with pytest.raises(ValueError, match="next_at"):
        record_try(delivery.id, status_code=500)
    assert repo.list_webhook_tries(delivery.id) == []
    failed = record_try(delivery.id, status_code=500, error="HTTP 500", give_up=True)
    assert (failed.status, failed.tries) == ("failed", 1)
    assert repo.get_webhook_delivery(delivery.id + 1000) is None


# -- statistics -----------------------------------------------------------------------------------------------


def test_task_counts_by_app_and_since() -> None:
    """Counts cover every status, filtered by app and by creation time."""
    old = datetime.now(UTC) - timedelta(days=2)
    create_task("a" * 16, created_at=old, updated_at=old)
    create_task("a" * 16, status="success")
    create_task("b" * 16, status="failed")
    none = dict.fromkeys(("pending", "scheduled", "processing", "sent", "success", "failed"), 0)
    assert repo.task_counts() == {**none, "pending": 1, "success": 1, "failed": 1}
    assert repo.task_counts("a" * 16) == {**none, "pending": 1, "success": 1}
    since = datetime.now(UTC) - timedelta(days=1)
    assert repo.task_counts("a" * 16, since=since)["pending"] == 0


def test_stale_open_tasks_lists_only_old_unfinished_ones() -> None:
    """Open tasks not updated since the cutoff are listed oldest first; recent, sent and final ones are not."""
    now = datetime.now(UTC)
    oldest, older = now - timedelta(hours=2), now - timedelta(hours=1)
    second = create_task(status="processing", created_at=older, updated_at=older)
    first = create_task(status="scheduled", created_at=oldest, updated_at=oldest)
    for status in ("sent", "success", "failed"):
        create_task(status=status, created_at=oldest, updated_at=oldest)
    create_task(status="pending")
    cutoff = now - timedelta(minutes=10)
    assert repo.stale_open_tasks(cutoff) == [first.task_id, second.task_id]
    assert repo.stale_open_tasks(cutoff, limit=1) == [first.task_id]


def test_list_tasks_pages_newest_first_with_filters() -> None:
    """The admin task list filters by app, status and batch, pages newest first and counts all matches."""
    first = create_task("a" * 16, status="success")
    second = create_task("a" * 16, status="success")
    create_task("a" * 16, status="failed")
    create_task("b" * 16, status="success")
    total, page = repo.list_tasks(app_id="a" * 16, status="success", page=1, page_size=1)
    assert total == 2 and [task.task_id for task in page] == [second.task_id]
    assert [task.task_id for task in repo.list_tasks(app_id="a" * 16, status="success", page=2, page_size=1)[1]] == [
        first.task_id]
    with pytest.raises(ValueError):
        repo.list_tasks(page_size=101)
    with pytest.raises(ValueError):
        repo.list_tasks(status="lost")


def test_failure_decisions_are_kept_with_their_task_in_order() -> None:
    """Each decision recorded for a task comes back with its scene, rule, class and delay, oldest first."""
    task = create_task()
    repo.record_decision(task.task_id, 1, "send_failure", "retry", rule="network-retry", rule_version="v1",
                         delay_seconds=2.5, provider="a", error_class="transient", error_code="E", error_message=CHINESE)
    repo.record_decision(task.task_id, 2, "unknown_outcome", "fail", rule="(default)", rule_version="v1",
                         error_class="unknown")
    shown = [repo.decision_to_public(d) for d in repo.list_decisions(task.task_id)]
    assert [(d["number"], d["scene"], d["action"], d["rule"], d["error_class"]) for d in shown] == [
        (1, "send_failure", "retry", "network-retry", "transient"), (2, "unknown_outcome", "fail", "(default)", "unknown")]
    assert shown[0]["delay_seconds"] == 2.5 and shown[0]["error_message"] == CHINESE
    assert repo.list_decisions(str(uuid.uuid4())) == []


def test_a_claim_keeps_its_owner_lease_and_key_on_every_database(db: peewee.Database) -> None:
    """Claims, alone or many in one statement, store the owner, the lease and the reused key; renewal moves the
    lease of the owner's sending attempts only, and expiry takes only an expired one, once."""
    tasks = [create_task() for _ in range(3)]
    lease = datetime.now(UTC) + timedelta(seconds=30)
    claims = [repo.AttemptClaim(task.task_id, 1, "aliyun-main", "otp", "v1", owner="w1", lease_until=lease,
                                key_number=None if i else 7) for i, task in enumerate(tasks)]
    assert repo.claim_attempts(claims, OPEN_TASK_STATUSES) == [True, True, True]
    stored = {a.task_id: a for task in tasks for a in repo.list_attempts(task.task_id)}
    assert {(a.owner, a.key_number) for a in stored.values()} == {("w1", 7), ("w1", None)}
    assert all(abs((a.lease_until - lease).total_seconds()) < 1 for a in stored.values())
    later = lease + timedelta(minutes=5)
    assert repo.renew_leases("w1", [t.task_id for t in tasks], later) == 3
    assert repo.renew_leases("w2", [t.task_id for t in tasks], later) == 0
    assert repo.expire_attempt(tasks[0].task_id, 1, lease + timedelta(minutes=1), "lost") is False
    assert repo.expire_attempt(tasks[0].task_id, 1, later + timedelta(seconds=1), "lost") is True
    assert repo.expire_attempt(tasks[0].task_id, 1, later + timedelta(seconds=1), "lost") is False
