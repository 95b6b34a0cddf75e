"""What the SMS providers share: secret-free send results and the reading of their report pushes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from providers.base import (
    Account,
    CallbackReply,
    CallbackRequest,
    CallbackResult,
    ConfigSchema,
    DeliveryReport,
    HttpRequest,
    HttpResponse,
    Message,
    SendContext,
    SendResult,
    check_shared_secret,
    http_send,
    read_json,
    redact,
    secret_values,
    with_defaults, json_text,
)

BEIJING = ZoneInfo("Asia/Shanghai")  # Chinese SMS vendors time their reports in Beijing wall-clock time


def digits_only_number(receiver: str) -> str:
    """A number as the Chinese vendors document it: a mainland number as its 11 digits, any other as country
    code and number without the `+` (Aliyun's `852000012****`). The gateway stores numbers in E.164."""
    if receiver.startswith("+86"):
        return receiver[3:]
    return receiver.removeprefix("+")


def send_sms(
    message: Message,
    account: Account,
    ctx: SendContext,
    schema: ConfigSchema,
    build: Callable[[Message, Account, datetime], HttpRequest],
    parse: Callable[[HttpResponse], SendResult],
    summarize: Callable[[Message, Mapping[str, Any]], Mapping[str, Any]],
) -> SendResult:
    """`http_send`, with the request summarized from the message and every config secret scrubbed."""
    config = with_defaults(schema, account.config)
    result = http_send(build, parse, message, account, ctx)
    result = replace(result, request_summary=summarize(message, config))
    return without_secrets(result, secret_values(schema, config))


def without_secrets(result: SendResult, secrets: list[str]) -> SendResult:
    """The result with every secret replaced by `***` in its error message and summaries."""
    return replace(
        result,
        error_message=redact(result.error_message, secrets),
        request_summary=_scrub(result.request_summary, secrets),
        response_summary=_scrub(result.response_summary, secrets),
    )


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {key: _scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub(item, secrets) for item in value]
    return value


def parse_report_items(
    request: CallbackRequest,
    account: Account,
    now: datetime,
    *,
    items: Callable[[CallbackRequest], list[Any] | None],
    unreadable: str,
    report: Callable[[Any, datetime], DeliveryReport | str],
    accepted: CallbackReply,
    refusal: Callable[[int, str], CallbackReply],
) -> CallbackResult:
    """A report push behind the shared-secret check, read item by item.

    `items` finds the report items (None when the body holds none: `unreadable` says so);
    `report` turns one into a report or the reason it cannot. Usable items are kept and
    `accepted` is answered when any is usable; the problems are named in `error` either way.
    """
    refused = check_shared_secret(request, account.callback or {})
    if refused:
        return CallbackResult((), refusal(403, refused), verified=False, error=refused)
    found = items(request)
    if found is None:
        return CallbackResult((), refusal(400, unreadable), error=unreadable)
    reports: list[DeliveryReport] = []
    problems: list[str] = []
    for index, item in enumerate(found):
        read = report(item, now)
        if isinstance(read, str):
            problems.append(f"item {index}: {read}")
        else:
            reports.append(read)
    error = "; ".join(problems)
    if problems and not reports:
        return CallbackResult((), refusal(400, error), error=error)
    return CallbackResult(tuple(reports), accepted, error=error)


def json_array(request: CallbackRequest) -> list[Any] | None:
    """The request body as a JSON array, or None when it is not one."""
    value = json_value(request.body)
    return value if isinstance(value, list) else None


def json_value(body: bytes) -> Any:
    """The body parsed as JSON, or None when it is not JSON."""
    try:
        return read_json(body)
    except ValueError:
        return None


def json_reply(payload: Mapping[str, Any], status: int = 200) -> CallbackReply:
    """A JSON answer to a report push, non-ASCII text kept as is."""
    return CallbackReply(json_text(payload), status, "application/json")


def report_time(value: Any, now: datetime) -> datetime:
    """A `YYYY-mm-dd HH:MM:SS` Beijing report time; `now` (reception) when it cannot be read."""
    try:
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    except ValueError:
        return now


def as_utc(now: datetime) -> datetime:
    """The time in UTC; a naive time is taken to be UTC already."""
    return now.astimezone(timezone.utc) if now.tzinfo else now.replace(tzinfo=timezone.utc)
