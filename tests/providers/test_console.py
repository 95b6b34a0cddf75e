"""The console provider: one readable log line per message, always delivered."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from providers import console
from providers.base import Account, Message, Outcome, SendContext
from tests.providers import contract
from tests.support.tokens import MemoryTokenCache

CTX = SendContext(contract.TRANSPORT, datetime(2026, 11, 27, tzinfo=timezone.utc), MemoryTokenCache())


def test_logs_one_line_and_reports_delivered(caplog: pytest.LogCaptureFixture) -> None:
    """The message is logged on one line with receiver and subject; the id is console-<task>-<attempt>."""
    message = Message("T5", 2, "dev@example.com", "email", "第一行\n第二行", subject="欢迎")
    with caplog.at_level(logging.INFO, logger="mpush.console"):
        result = console.send(message, Account("demo", "console", {}), CTX)
    assert (result.outcome, result.provider_message_id, result.final) == (Outcome.OK, "console-T5-2", True)
    [record] = caplog.records
    assert record.name == "mpush.console"
    assert record.getMessage() == "email to dev@example.com via demo [欢迎]: 第一行 第二行"


def test_a_subject_with_line_breaks_stays_on_its_line(caplog: pytest.LogCaptureFixture) -> None:
    """A subject rendered from client params cannot start a forged log line."""
    message = Message("T6", 1, "dev@example.com", "email", "hi", subject="ok\nINFO mpush forged line")
    with caplog.at_level(logging.INFO, logger="mpush.console"):
        console.send(message, Account("demo", "console", {}), CTX)
    assert "\n" not in caplog.records[0].getMessage()
