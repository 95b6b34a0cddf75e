"""Outgoing notifications: signed customer webhooks (durable, retried) and rule alerts."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from engine import metrics
from engine.queue import job
from engine.signing import webhook_signature
from engine.store import repo
from engine.store.models import Application, Task, WebhookDelivery
from providers.base import HttpRequest, TransportError

if TYPE_CHECKING:
    from engine.services import Services

log = logging.getLogger("mpush.webhooks")

USER_AGENT = "MessagePush-Webhook/1.0"
MAX_TRIES = 8
TIMEOUT_SECONDS = 10.0
BACKOFF_SECONDS = (2, 4, 8, 16, 60, 300, 900)
EVENTS = {"success": "delivered", "failed": "failed"}
# What the app's records say of any call that got no HTTP answer: a refused target, a refused connection, a
# timeout and a failed lookup read the same, so the recorded errors cannot map the network. The log says which.
NO_ANSWER = "no answer from the webhook endpoint"


def event_body(task: Task, now: datetime) -> dict[str, object]:
    """The JSON event for a task's final status (the reference's fields, plus ours under `extra`)."""
    event = "rejected" if task.callback_status == "rejected" else EVENTS.get(task.status, task.status)
    return {
        "event": event,
        "task_id": task.task_id,
        "app_id": task.app_id,
        "status": task.status,
        "receiver": task.receiver,
        "error_code": task.error_code or "",
        "error_msg": task.error_message or "",
        "timestamp": int(now.timestamp()),
        "extra": {
            "provider": task.provider or "",
            "provider_id": task.provider_message_id or "",
            "callback_status": task.callback_status or "",
            "batch_id": task.batch_id or "",
            "rule": task.rule or "",
            "rule_version": task.rule_version or "",
            "attempts": task.retry_count,
        },
    }


def notify(svc: Services, task: Task) -> None:
    """Queue the final-status event of a task for its app's webhook. The job carries the event as it is now;
    the webhook lane writes it down and sends it (`announce`), so the delivery that finished the task pays a
    read and a stream append for it, not the database writes."""
    current = repo.get_task(task.task_id)
    if current is None:
        return
    event = event_body(current, datetime.now(UTC))
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    svc.queue.enqueue([job("webhook_event", f"{task.app_id}:{task.task_id}:{event['event']}:{body}")])


def announce(svc: Services, ref: str, now: float) -> str:
    """Write down a task's final-status event (`<app>:<task>:<event>:<body>`) for its app's webhook, once however
    often this runs (a reclaimed job finds it written), and make its first try."""
    app_id, task_id, event, body = ref.split(":", 3)
    app = repo.get_app(app_id)
    if app is None or not app.webhook_url:
        return "done"
    delivery = next((d for d in repo.list_webhook_deliveries(task_id) if d.event == event), None)
    if delivery is None:
        delivery = repo.create_webhook_delivery(task_id, app_id, event, app.webhook_url, body)
    return _try(svc, delivery, app, now) if delivery.status == "pending" else "done"


def webhook_job(delivery: WebhookDelivery) -> str:
    """`webhook:<app id>:<delivery id>`: the app named, so the webhook lane can cap it without a lookup."""
    return job("webhook", f"{delivery.app_id}:{delivery.id}")


def deliver_webhook(svc: Services, ref: str, now: float) -> str:
    """One try of a customer webhook; a failure is retried later from the delayed set."""
    delivery = repo.get_webhook_delivery(int(ref.rpartition(":")[2]))
    if delivery is None or delivery.status != "pending":
        return "done"
    app = repo.get_app(delivery.app_id)
    return "done" if app is None else _try(svc, delivery, app, now)


def _try(svc: Services, delivery: WebhookDelivery, app: Application, now: float) -> str:
    request = _signed_request(delivery, repo.app_secret(app, svc.key), int(now))
    started = time.perf_counter()
    status_code, error = _post(svc, request, delivery.id)
    delivered = 200 <= status_code < 300
    tries = delivery.tries + 1
    give_up = not delivered and tries >= MAX_TRIES
    next_at = None if delivered or give_up else now + _backoff(tries)
    repo.record_webhook_try(delivery.id, status_code=status_code, error=error,
                            latency_ms=round((time.perf_counter() - started) * 1000), delivered=delivered,
                            next_at=datetime.fromtimestamp(next_at, UTC) if next_at else None, give_up=give_up)
    result = "delivered" if delivered else "gave_up" if give_up else "retry"
    metrics.WEBHOOKS.labels(result).inc()
    log.info("webhook.try id=%s task=%s try=%d result=%s status=%s", delivery.id, delivery.task_id, tries,
             result, status_code or error)
    if next_at is not None:
        svc.queue.defer(webhook_job(delivery), next_at)
    return result


def _signed_request(delivery: WebhookDelivery, secret: str, stamp: int) -> HttpRequest:
    body = delivery.body.encode()
    return HttpRequest("POST", delivery.url, {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Webhook-Id": str(delivery.id),
        "X-Webhook-Event": delivery.event,
        "X-Webhook-Timestamp": str(stamp),
        "X-Webhook-Signature": webhook_signature(secret, stamp, body),
    }, body, timeout=TIMEOUT_SECONDS)


def _post(svc: Services, request: HttpRequest, delivery_id: int) -> tuple[int, str]:
    """The receiver's status code (0 when unreachable) and what went wrong, empty when it answered 2xx."""
    status_code, error = 0, ""
    try:
        status_code = svc.outbound(request).status
    except TransportError as exc:
        log.warning("webhook.unreachable id=%s: %s", delivery_id, exc)
        error = NO_ANSWER
    if not 200 <= status_code < 300 and not error:
        error = f"HTTP {status_code}"
    return status_code, error


def _backoff(tries: int) -> int:
    return BACKOFF_SECONDS[min(tries - 1, len(BACKOFF_SECONDS) - 1)]


def send_alert(svc: Services, url: str, level: str, task: Task, *, provider: str, error_code: str,
               error_message: str) -> bool:
    """POST a failure alert (the reference's payload); returns whether the receiver took it."""
    if not url:
        log.warning("alert.skipped task=%s: no alert webhook configured", task.task_id)
        return False
    payload = {
        "alert_type": "message_push_failure", "alert_level": level, "task_id": task.task_id,
        "app_id": task.app_id, "receiver": task.receiver, "message_type": task.message_type,
        "provider": provider, "error_code": error_code, "error_msg": error_message, "timestamp": int(time.time()),
    }
    request = HttpRequest("POST", url, {"Content-Type": "application/json", "User-Agent": "MessagePush-Alert/1.0"},
                          json.dumps(payload, ensure_ascii=False).encode(), timeout=TIMEOUT_SECONDS)
    try:
        ok = 200 <= svc.outbound(request).status < 300
    except TransportError as exc:
        log.warning("alert.failed task=%s: %s", task.task_id, exc)
        return False
    log.info("alert.sent task=%s level=%s ok=%s", task.task_id, level, ok)
    return ok
