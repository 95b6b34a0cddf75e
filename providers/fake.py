"""The fake provider: answers as its configuration scripts, in process or through a loopback HTTP server.

Used by tests and benchmarks. Outcomes are picked by task id and attempt, never by a shared
counter, so a run is reproducible and safe across threads and processes.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from providers.base import (
    Account, CallbackReply, CallbackRequest, CallbackResult, ConfigField, ConfigSchema,
    DeliveryReport, HttpRequest, HttpResponse, Message, Outcome, SendContext, SendResult,
    ERROR_CLASSES, TransportError, bad_response, classified, parse_json_reports, classify_status, http_send,
    json_object, json_text, request_summary, transport_failure,
)

TYPE = "fake"
CHANNEL_TYPES = frozenset({"sms", "email", "wecom", "dingtalk", "webhook"})
CONFIG: ConfigSchema = {
    "url": ConfigField(str, required=False, default="", help="POST each message here (a loopback server); empty answers in process"),
    "outcomes": ConfigField(list, required=False, default=("ok",), help='cycled per attempt: "ok", "error:CODE:msg", "retry:CODE:msg", "account:CODE:msg" (any error class), "timeout"'),
    "spread": ConfigField(bool, required=False, default=False, help="start each task's cycle at a point derived from its task id"),
    "fail_receivers": ConfigField(dict, required=False, default={}, help="receiver -> outcome entry, checked first"),
    "final": ConfigField(bool, required=False, default=True, help="false: accepted, delivery reported later by callback"),
    "timeout": ConfigField(float, required=False, default=10.0),
    "batch_url": ConfigField(str, required=False, default="", help="POST messages of one text here, up to batch_max a call (bench/mock_vendor.py /batch); empty: one call each"),
    "batch_max": ConfigField(int, required=False, default=200, help="most messages one batch call carries"),
}

# The loopback vendor (bench/mock_vendor.py) delivers each Idempotency-Key once, as a vendor that deduplicates.
DEDUPLICATES = True
SCRIPT_SYNTAX = '"ok", "error:CODE:message", "retry:CODE:message", "CLASS:CODE:message" (an error class) or "timeout"'
REPORT_STATUSES = ("delivered", "failed", "rejected")


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """Answer the scripted outcome; when it is "ok" and `url` is set, let the loopback server answer."""
    config = account.config
    scripted = scripted_result(message, config)
    if scripted is None and config["url"]:
        scripted = http_send(build_request, parse_response, message, account, ctx, request_summary)
    result = scripted or SendResult(Outcome.OK)
    if result.ok:
        result = dataclasses.replace(
            result,
            provider_message_id=result.provider_message_id or message_id(message),
            final=bool(config["final"]),
        )
    return result


def batch_size(config: Mapping[str, Any]) -> int:
    """Messages per call: `batch_max` where a `batch_url` is set, else one."""
    return int(config.get("batch_max", 200)) if config.get("batch_url") else 1


def send_batch(messages: Sequence[Message], account: Account, ctx: SendContext) -> list[SendResult]:
    """Scripted failures first, as `send` does; the rest in one POST to `batch_url`, a result per message."""
    config = account.config
    results: list[SendResult | None] = [scripted_result(message, config) for message in messages]
    unscripted = [index for index, result in enumerate(results) if result is None]
    if unscripted:
        answered = _send_batch([messages[index] for index in unscripted], account, ctx)
        for index, result in zip(unscripted, answered):
            results[index] = result
    return [dataclasses.replace(result, provider_message_id=result.provider_message_id or message_id(message),
                                final=bool(config["final"])) if result.ok else result
            for message, result in zip(messages, results) if result is not None]


def _send_batch(messages: Sequence[Message], account: Account, ctx: SendContext) -> list[SendResult]:
    body = {"messages": [{**_message_body(message, ctx.now), "key": message.idempotency_key} for message in messages]}
    request = HttpRequest("POST", account.config["batch_url"], headers={"Content-Type": "application/json"},
                          body=json_text(body).encode(), timeout=float(account.config["timeout"]))
    try:
        response = ctx.transport(request)
    except TransportError as exc:
        return [transport_failure(exc)] * len(messages)
    return parse_batch_response(response, len(messages))


def parse_batch_response(response: HttpResponse, count: int) -> list[SendResult]:
    """`{"results": [{"code", "message", "id"} per message, in order]}`; a non-2xx answer is every message's
    outcome; a 2xx answer without a result per message may have sent them: unknown for each."""
    parsed = json_object(response.body) if response.body.strip() else None
    if classify_status(response.status) is not Outcome.OK:
        single = parse_response(response)
        return [single] * count
    items = parsed.get("results") if parsed is not None else None
    if not isinstance(items, list) or len(items) != count or not all(isinstance(item, dict) for item in items):
        unreadable = dataclasses.replace(bad_response(response), error_class="unknown")
        return [unreadable] * count
    return [_item_result(item) for item in items]


def _item_result(item: Mapping[str, Any]) -> SendResult:
    code = str(item.get("code", 0))
    if code in ("0", "ok", "OK"):
        return SendResult(Outcome.OK, provider_message_id=str(item.get("id") or ""), response_summary=dict(item))
    outcome = Outcome.RETRYABLE if item.get("retry") else Outcome.PERMANENT
    return SendResult(outcome, error_code=code, error_message=str(item.get("message") or code),
                      response_summary=dict(item))


def reports(config: Mapping[str, Any]) -> bool:
    """Delivery is reported later only when accepted means not yet final."""
    return not config.get("final", True)


def message_id(message: Message) -> str:
    return f"fake-{message.task_id}-{message.attempt}"


def scripted_result(message: Message, config: Mapping[str, Any]) -> SendResult | None:
    """The failure the configuration scripts for this attempt, or None for "ok"."""
    entry = config["fail_receivers"].get(message.receiver)
    if entry is None:
        entry = pick(config["outcomes"], message, spread=bool(config["spread"]))
    return parse_entry(str(entry))


def pick(outcomes: Sequence[Any], message: Message, spread: bool) -> Any:
    """Attempt n takes entry n-1 of the cycle; with `spread` the cycle starts at a per-task offset."""
    if not outcomes:
        return "ok"
    offset = zlib.crc32(message.task_id.encode()) if spread else 0
    return outcomes[(offset + message.attempt - 1) % len(outcomes)]


def parse_entry(entry: str) -> SendResult | None:
    if entry == "ok":
        return None
    if entry == "timeout":
        return SendResult(Outcome.RETRYABLE, error_code="timeout", error_message="scripted timeout")
    kind, _, rest = entry.partition(":")
    code, _, text = rest.partition(":")
    if kind in ("error", "retry") and code:
        outcome = Outcome.PERMANENT if kind == "error" else Outcome.RETRYABLE
        return SendResult(outcome, error_code=code, error_message=text or code)
    if kind in ERROR_CLASSES and kind != "ok" and code:
        return classified(kind, code, text or code)
    return SendResult(
        Outcome.PERMANENT, error_code="fake_script",
        error_message=f"fake outcome {entry!r} is not one of {SCRIPT_SYNTAX}",
    )


def build_request(message: Message, account: Account, now: datetime) -> HttpRequest:
    return HttpRequest(
        "POST", account.config["url"],
        headers={"Content-Type": "application/json", "Idempotency-Key": message.idempotency_key},
        body=json_text(_message_body(message, now)).encode(),
        timeout=float(account.config["timeout"]),
    )


def _message_body(message: Message, now: datetime) -> dict[str, Any]:
    return {
        "task_id": message.task_id,
        "attempt": message.attempt,
        "receiver": message.receiver,
        "channel_type": message.channel_type,
        "text": message.text,
        "subject": message.subject,
        "params": dict(message.params),
        "template_code": message.template_code,
        "sent_at": now.isoformat(),
    }


def parse_response(response: HttpResponse) -> SendResult:
    """Status decides ok/retryable/permanent; a JSON body may add `code`, `message` and `id`."""
    answer: dict[str, Any] = {}
    if response.body.strip():
        parsed = json_object(response.body)
        if parsed is None:
            return bad_response(response)
        answer = parsed
    summary = {"status": response.status, "body": answer}
    outcome = classify_status(response.status)
    code = str(answer.get("code", 0))
    if outcome is Outcome.OK and code in ("0", "ok", "OK"):
        return SendResult(Outcome.OK, provider_message_id=str(answer.get("id") or ""), response_summary=summary)
    if outcome is Outcome.OK:
        outcome = Outcome.PERMANENT
        error_code = code
    else:
        error_code = code if "code" in answer else f"http_{response.status}"
    message = str(answer.get("message") or f"HTTP {response.status}")
    return SendResult(outcome, error_code=error_code, error_message=message, response_summary=summary)


def parse_callback(request: CallbackRequest, account: Account, now: datetime) -> CallbackResult:
    """Reports as JSON `{"id", "status": delivered|failed|rejected, "code", "message"}` (or a list of them)."""
    invalid = f"lack an id or a status in {', '.join(REPORT_STATUSES)}"
    return parse_json_reports(request, account, lambda item: _report(item, now), _reply, invalid)


def _report(item: Any, now: datetime) -> DeliveryReport | None:
    if not isinstance(item, dict) or not item.get("id") or item.get("status") not in REPORT_STATUSES:
        return None
    return DeliveryReport(
        provider_message_id=str(item["id"]),
        status=item["status"],
        error_code=str(item.get("code") or ""),
        error_message=str(item.get("message") or ""),
        reported_at=now,
    )


def _reply(status: int, message: str) -> CallbackReply:
    body = json_text({"code": 0 if status == 200 else status, "message": message})
    return CallbackReply(body, status=status, content_type="application/json")
