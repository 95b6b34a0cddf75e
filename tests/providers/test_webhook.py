"""The generic webhook provider: signed JSON POST, receiver-as-URL, idempotency key, status mapping."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone

import pytest

from providers import webhook
from providers.base import Account, Message, Outcome, SendContext, with_defaults
from tests.providers import contract
from tests.providers.contract import ProviderCase, Scenario
from tests.support.loopback import Handler, Recorded, Reply
from tests.support.tokens import MemoryTokenCache

SECRET = "whsec-7f3a9b"
MESSAGE = Message("T100", 2, "ops", "webhook", "磁盘快满了", subject="告警", params={"disk": "/data"})
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def receiver(reply: Reply, problems: list[str]) -> Handler:
    """A customer endpoint that verifies the signature the documented way before answering."""

    def handle(request: Recorded) -> Reply:
        timestamp = request.header("X-Webhook-Timestamp")
        expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
        if request.method != "POST" or request.path != "/hooks/mpush":
            problems.append(f"{request.method} {request.path}")
        if not hmac.compare_digest(request.header("X-Webhook-Signature"), expected):
            problems.append("signature does not verify")
        if not request.header("Content-Type").startswith("application/json"):
            problems.append("content type")
        if request.header("Idempotency-Key") != "T100-2":
            problems.append("idempotency key")
        body = json.loads(request.body)
        if {"task_id", "attempt", "receiver", "channel_type", "text", "subject", "params", "sent_at"} - set(body):
            problems.append(f"fields missing from {sorted(body)}")
        return reply

    return handle


CASE = ProviderCase(
    provider=webhook,
    config=lambda url: {"url": f"{url}/hooks/mpush", "secret": SECRET, "timeout": contract.TIMEOUT},
    vendor=receiver,
    message=MESSAGE,
    success=Reply(200, '{"id": "evt-9"}'),
    message_id="evt-9",
    garbage=Outcome.OK,
    vendor_errors=(
        Scenario("http-404", Reply(404, "no such hook"), Outcome.PERMANENT, "http_404"),
        Scenario("http-401", Reply(401, "bad signature"), Outcome.PERMANENT, "http_401"),
        Scenario("http-408", Reply(408, ""), Outcome.RETRYABLE, "http_408"),
    ),
)


@pytest.mark.parametrize("scenario", contract.scenarios(CASE), ids=str)
def test_contract(scenario: Scenario) -> None:
    """The webhook provider meets the shared HTTP provider contract in this scenario."""
    contract.check(CASE, scenario)


def account(**config: object) -> Account:
    return Account("hook", "webhook", with_defaults(webhook.CONFIG, {"timeout": contract.TIMEOUT, **config}))


class TestRequest:
    def test_body_carries_the_rendered_message_as_utf8_json(self) -> None:
        """The JSON body holds task, attempt, receiver, text, subject, params and the send time, unescaped."""
        request = webhook.build_request(MESSAGE, account(url="http://h/x"), NOW)
        assert "磁盘快满了".encode() in request.body
        assert json.loads(request.body) == {
            "task_id": "T100", "attempt": 2, "receiver": "ops", "channel_type": "webhook",
            "text": "磁盘快满了", "subject": "告警", "params": {"disk": "/data"}, "sent_at": NOW.isoformat(),
        }

    def test_signature_is_hmac_of_timestamp_dot_body(self) -> None:
        """X-Webhook-Signature is hex HMAC-SHA256(secret, "{timestamp}.{body}") with the sent timestamp."""
        request = webhook.build_request(MESSAGE, account(url="http://h/x", secret="k"), NOW)
        timestamp = request.headers["X-Webhook-Timestamp"]
        assert timestamp == str(int(NOW.timestamp()))
        signed = f"{timestamp}.".encode() + request.body
        assert request.headers["X-Webhook-Signature"] == hmac.new(b"k", signed, hashlib.sha256).hexdigest()

    def test_unsigned_without_secret(self) -> None:
        """Without a secret no signature header is sent."""
        request = webhook.build_request(MESSAGE, account(url="http://h/x"), NOW)
        assert "X-Webhook-Signature" not in request.headers

    def test_configured_headers_cannot_override_protocol_headers(self) -> None:
        """Extra headers are sent, but never replace the signature, timestamp or idempotency key."""
        request = webhook.build_request(
            MESSAGE, account(url="http://h/x", secret="k", headers={"X-Team": "ops", "Idempotency-Key": "x"}), NOW,
        )
        assert request.headers["X-Team"] == "ops"
        assert request.headers["Idempotency-Key"] == "T100-2"

    def test_receiver_is_the_url_when_none_configured(self) -> None:
        """With no configured url an http(s) receiver is the target."""
        message = Message("T1", 1, "https://example.com/in", "webhook", "hi")
        assert webhook.build_request(message, account(), NOW).url == "https://example.com/in"


class TestSend:
    def test_no_url_anywhere_is_permanent(self) -> None:
        """A receiver that is not a URL, with no configured url, fails permanently before any request."""
        ctx = SendContext(contract.TRANSPORT, NOW, MemoryTokenCache())
        result = webhook.send(MESSAGE, account(), ctx)
        assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "invalid_receiver")

    def test_summary_drops_the_url_query(self) -> None:
        """Tokens in a receiver's URL query are not stored in the request summary."""
        with contract.vendor(lambda r: Reply(204)) as server:
            ctx = SendContext(contract.TRANSPORT, NOW, MemoryTokenCache())
            result = webhook.send(MESSAGE, account(url=f"{server.url}/in?token=abc123"), ctx)
            assert server.requests[0].query == {"token": "abc123"}
        assert result.ok
        assert "abc123" not in str(result.request_summary)
