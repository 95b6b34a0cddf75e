"""The console provider: writes each rendered message to the log instead of delivering it (demo default)."""

from __future__ import annotations

import logging

from providers.base import Account, ConfigSchema, Message, Outcome, SendContext, SendResult

TYPE = "console"
CHANNEL_TYPES = frozenset({"sms", "email", "wecom", "dingtalk", "webhook"})
CONFIG: ConfigSchema = {}

logger = logging.getLogger("mpush.console")


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """Log one readable line for the message and report it delivered."""
    subject = f" [{_one_line(message.subject)}]" if message.subject else ""
    logger.info(
        "%s to %s via %s%s: %s",
        message.channel_type, message.receiver, account.name, subject, _one_line(message.text),
    )
    return SendResult(
        Outcome.OK,
        provider_message_id=f"console-{message.task_id}-{message.attempt}",
        request_summary={"receiver": message.receiver, "subject": message.subject, "text": message.text},
    )


def _one_line(text: str) -> str:
    """Whitespace, line breaks included, as single spaces: one message, one log line."""
    return " ".join(text.split())
