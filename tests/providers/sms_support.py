"""What the SMS provider tests share besides the mock vendors: a live send context, report pushes, stored text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone

from engine.transport import HttpTransport
from providers.base import CallbackRequest, SendContext, SendResult


class NoTokens:
    """SMS providers never use the token cache; any use is a bug the test should see."""

    def get(self, key: str) -> str | None:
        raise AssertionError("SMS providers do not use access tokens")

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        raise AssertionError("SMS providers do not use access tokens")

    def delete(self, key: str) -> None:
        raise AssertionError("SMS providers do not use access tokens")


def live_context() -> SendContext:
    """Real HTTP over loopback, the wall clock (vendors check request times), no token cache."""
    return SendContext(HttpTransport(), datetime.now(timezone.utc), NoTokens())


def push_request(
    body: bytes,
    token: str,
    client: str,
    content_type: str = "application/json",
    method: str = "POST",
    query: Mapping[str, str] | None = None,
) -> CallbackRequest:
    """A report push as the gateway receives it: `?token=` (plus any other query) from address `client`."""
    return CallbackRequest(method, {"token": token, **(query or {})}, {"Content-Type": content_type}, body, client)


def stored_text(result: SendResult) -> str:
    """Everything of a result that gets stored or logged, as one string to search for secrets."""
    return json.dumps([result.error_message, result.request_summary, result.response_summary])
