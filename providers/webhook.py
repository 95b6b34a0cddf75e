"""The generic webhook provider: POSTs each message as signed JSON to a configured (or receiver) URL."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from providers.base import (
    Account, ConfigField, ConfigSchema, HttpRequest, HttpResponse, Message, Outcome, SendContext,
    SendResult, Undeliverable, classified, http_send, json_object, request_summary, status_class,
)

TYPE = "webhook"
CHANNEL_TYPES = frozenset({"webhook", "sms", "email", "wecom", "dingtalk"})
CONFIG: ConfigSchema = {
    "url": ConfigField(str, required=False, default="", help="target URL; empty: the receiver is the URL"),
    "secret": ConfigField(str, required=False, default="", secret=True, help="signs X-Webhook-Signature"),
    "headers": ConfigField(dict, required=False, default={}, help="extra request headers"),
    "timeout": ConfigField(float, required=False, default=10.0),
}

USER_AGENT = "message-push-webhook/1"


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """POST the message; 2xx is delivered, 408/429/5xx retry, other statuses are permanent."""
    return http_send(build_request, parse_response, message, account, ctx, summarize)


def summarize(request: HttpRequest) -> dict[str, object]:
    """The stored request: the URL without its query (receivers put tokens there), body and timestamp."""
    return {
        **request_summary(request),
        "url": urlunsplit(urlsplit(request.url)._replace(query="")),
        "timestamp": request.headers["X-Webhook-Timestamp"],
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"{timestamp}.{body}"`: what a receiver recomputes to trust the call."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def target_url(message: Message, account: Account) -> str:
    url = str(account.config["url"])
    if url:
        return url
    if message.receiver.startswith(("http://", "https://")):
        return message.receiver
    raise Undeliverable("invalid_receiver", "no url configured and the receiver is not an http(s) URL")


def build_request(message: Message, account: Account, now: datetime) -> HttpRequest:
    body = json.dumps(
        {
            "task_id": message.task_id,
            "attempt": message.attempt,
            "receiver": message.receiver,
            "channel_type": message.channel_type,
            "text": message.text,
            "subject": message.subject,
            "params": dict(message.params),
            "sent_at": now.isoformat(),
        },
        ensure_ascii=False,
    ).encode()
    timestamp = str(int(now.timestamp()))
    headers = {str(k): str(v) for k, v in account.config["headers"].items()}
    headers.update({
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": message.idempotency_key,
        "X-Webhook-Timestamp": timestamp,
    })
    if account.config["secret"]:
        headers["X-Webhook-Signature"] = sign(str(account.config["secret"]), timestamp, body)
    return HttpRequest(
        "POST", target_url(message, account), headers=headers, body=body,
        timeout=float(account.config["timeout"]),
    )


def parse_response(response: HttpResponse) -> SendResult:
    """Any body is accepted; a JSON `id` becomes the provider message id."""
    answer = json_object(response.body) or {}
    summary = {"status": response.status, "body": response.body[:200].decode("utf-8", "replace")}
    error_class = status_class(response.status)
    if error_class == "ok":
        return SendResult(Outcome.OK, provider_message_id=str(answer.get("id") or ""), response_summary=summary)
    return classified(error_class, f"http_{response.status}", f"HTTP {response.status}: {summary['body'][:120]}",
                      response_summary=summary)
