"""A test message through one provider account of the live rules, outside any task (console and admin API)."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from engine import delivery
from engine.services import Services
from providers import registry
from providers.base import Message


@dataclass(frozen=True, slots=True)
class TrialSend:
    """What went out and what came back."""

    account: str
    receiver: str
    outcome: str
    ok: bool
    latency_ms: int
    provider_message_id: str
    error_code: str
    error_message: str
    request: dict[str, Any]
    response: dict[str, Any]

    def to_public(self) -> dict[str, Any]:
        return asdict(self)


def message_types(provider_type: str) -> list[str]:
    """What the provider sends, SMS first (the usual test), then by name."""
    return sorted(registry.get(provider_type).CHANNEL_TYPES, key=lambda kind: (kind != "sms", kind))


def send_test_message(svc: Services, name: str, receiver: str, text: str, channel_type: str = "") -> TrialSend:
    """Send through the account's real provider code; LookupError for an account not in the live rules,
    ValueError for a message type its provider does not send or an empty receiver."""
    account = svc.rules.current.providers.get(name)
    if account is None:
        raise LookupError(f"no provider account {name!r} in the live rules")
    kinds = message_types(account.type)
    channel_type = channel_type or kinds[0]
    if channel_type not in kinds:
        raise ValueError(f"{account.type} does not send {channel_type!r} messages (it sends {', '.join(kinds)})")
    if not receiver.strip():
        raise ValueError("a test message needs a receiver")
    message = Message(task_id=f"test-{uuid.uuid4()}", attempt=1, receiver=receiver.strip(),
                      channel_type=channel_type, text=text or "mpush test message", subject="mpush test")
    result, latency_ms = delivery.send(svc, account, message, time.time())
    return TrialSend(name, message.receiver, result.outcome.value, result.ok, latency_ms, result.provider_message_id,
                    result.error_code, result.error_message, dict(result.request_summary),
                    dict(result.response_summary))
