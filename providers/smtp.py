"""SMTP email: composes a MIME message (UTF-8, RFC 2047 names) and delivers it over its own smtplib connection.

STARTTLS, implicit TLS or plain; AUTH when a username is set. Bounce reports come back through
the callback endpoint as JSON, checked against the account's shared secret.
"""

from __future__ import annotations

import dataclasses
import re
import smtplib
import ssl
from collections.abc import Mapping
from datetime import datetime, timezone
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from providers.base import (
    Account, CallbackReply, CallbackRequest, CallbackResult, ConfigField, ConfigSchema, DeliveryReport,
    Message, Outcome, SendContext, SendResult, Undeliverable, classified, parse_json_reports, redact, json_text,
)

TYPE = "smtp"
CHANNEL_TYPES = frozenset({"email"})
CONFIG: ConfigSchema = {
    "host": ConfigField(str),
    "port": ConfigField(int, required=False, default=587),
    "security": ConfigField(str, required=False, default="starttls", choices=("starttls", "ssl", "none")),
    "username": ConfigField(str, required=False, default="", help="AUTH user; empty sends without AUTH"),
    "password": ConfigField(str, required=False, default="", secret=True),
    "from_address": ConfigField(str, help="envelope and header sender, e.g. noreply@example.com"),
    "from_name": ConfigField(str, required=False, default="", help="display name, any language"),
    "reply_to": ConfigField(str, required=False, default=""),
    "default_subject": ConfigField(str, required=False, default="通知", help="used when the template has none"),
    "tls_verify": ConfigField(bool, required=False, default=True, help="verify the server certificate"),
    "ca_file": ConfigField(str, required=False, default="", help="extra CA bundle, e.g. for a private relay"),
    "timeout": ConfigField(float, required=False, default=10.0),
}

FAILED_STATUSES = frozenset({"bounced", "failed", "hard_bounce", "soft_bounce"})
REJECTED_STATUSES = frozenset({"complained", "rejected"})
DELIVERED_STATUSES = frozenset({"delivered", "sent", "success"})
UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """Compose and hand the message to the SMTP server; the server accepting it is final."""
    config = account.config
    try:
        email = compose(message, config, ctx.now)
    except Undeliverable as exc:
        return exc.result()
    summary = {
        "host": config["host"], "port": config["port"], "security": config["security"],
        "from": email["From"], "to": message.receiver, "subject": email["Subject"],
        "message_id": email["Message-ID"],
    }
    try:
        deliver(email, config)
    except (smtplib.SMTPException, OSError, CutAfterData) as exc:
        failure = classify_error(exc)
        return dataclasses.replace(failure, error_message=redact(failure.error_message, [str(config["password"])]),
                                   request_summary=summary)
    return SendResult(
        Outcome.OK, provider_message_id=email["Message-ID"].strip("<>"),
        request_summary=summary, response_summary={"accepted": True},
    )


def compose(message: Message, config: Mapping[str, Any], now: datetime) -> EmailMessage:
    """The MIME message: From (with display name), To, Reply-To, Subject, Date, Message-ID, text (+ HTML)."""
    email = EmailMessage()
    email["From"] = Address(display_name=str(config["from_name"]), addr_spec=str(config["from_address"]))
    email["To"] = receiver_address(message.receiver)
    if config["reply_to"]:
        email["Reply-To"] = str(config["reply_to"])
    email["Subject"] = message.subject or str(config["default_subject"])
    email["Date"] = format_datetime(now if now.tzinfo else now.replace(tzinfo=timezone.utc))
    email["Message-ID"] = message_id(message, str(config["from_address"]))
    email.set_content(message.text)
    if message.html:
        email.add_alternative(message.html, subtype="html")
    return email


def receiver_address(receiver: str) -> Address:
    if not receiver.strip():
        raise Undeliverable("invalid_receiver", "empty receiver")
    try:
        address = Address(addr_spec=receiver.strip())
    except (ValueError, HeaderParseError) as exc:
        raise Undeliverable("invalid_receiver", f"{receiver!r} is not an email address: {exc}") from None
    if not address.domain:
        raise Undeliverable("invalid_receiver", f"{receiver!r} is not an email address: no domain")
    return address


def message_id(message: Message, from_address: str) -> str:
    """A stable Message-ID per attempt: bounces name it, and it never changes on a reclaimed entry."""
    local = UNSAFE_ID_CHARS.sub("_", f"{message.task_id}.{message.attempt}")
    return f"<{local}@{from_address.rpartition('@')[2] or 'localhost'}>"


class _DataTracking(smtplib.SMTP):
    """Remembers that DATA began: a connection cut after it may have left the message with the server."""

    data_started = False

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.data_started = True
        return super().data(msg)


class _SMTP(_DataTracking):
    pass


class _SMTPSSL(_DataTracking, smtplib.SMTP_SSL):
    pass


class CutAfterData(Exception):
    """The connection failed once the message was being handed over: the server may have accepted it."""


def deliver(email: EmailMessage, config: Mapping[str, Any]) -> None:
    host, port, timeout = str(config["host"]), int(config["port"]), float(config["timeout"])
    if config["security"] == "ssl":
        client: _DataTracking = _SMTPSSL(host, port, timeout=timeout, context=tls_context(config))
    else:
        client = _SMTP(host, port, timeout=timeout)
    with client:
        if config["security"] == "starttls":
            client.starttls(context=tls_context(config))
        if config["username"]:
            client.login(str(config["username"]), str(config["password"]))
        try:
            client.send_message(email)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if client.data_started:
                raise CutAfterData(f"{type(exc).__name__}: {exc}") from exc
            raise


def tls_context(config: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(config["ca_file"]) or None)
    if not config["tls_verify"]:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# Reply codes and their classes (RFC 5321 section 4.2.3; enhanced status codes RFC 3463: X.1.x addressing,
# X.7.x policy). https://www.rfc-editor.org/rfc/rfc5321#section-4.2.3 and https://www.rfc-editor.org/rfc/rfc3463
REPLY_CLASSES: dict[int, str] = {
    421: "throttled",  # service not available, closing channel (also "too many connections / messages")
    450: "transient",  # mailbox unavailable for now (busy, greylisted)
    451: "transient",  # local error in processing
    452: "throttled",  # insufficient system storage / too many recipients
    535: "account",  # authentication credentials invalid
    550: "receiver",  # mailbox unavailable / not found
    551: "receiver",  # user not local
    553: "receiver",  # mailbox name not allowed
    552: "content",  # exceeded storage allocation (message too big)
    554: "content",  # transaction failed (usually rejected as spam / by policy)
}
ENHANCED_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def classify_error(exc: BaseException) -> SendResult:
    """A failed SMTP exchange in one class: reply codes by REPLY_CLASSES (a 5.1.x enhanced status is the receiver,
    other 4xx transient, other 5xx content); a cut after DATA unknown; no connection transient; AUTH, TLS and
    server features account."""
    if isinstance(exc, CutAfterData):
        return classified("unknown", "network", f"connection lost after DATA: {exc}")
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return _reply_failure("account", "auth_failed", exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(exc.recipients.values()), (550, b"recipient refused"))
        return _reply_failure(reply_class(code, reply), f"smtp_{code}", code, reply)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply_failure(reply_class(exc.smtp_code, exc.smtp_error), f"smtp_{exc.smtp_code}", exc.smtp_code,
                              exc.smtp_error)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return classified("transient", "network", f"server disconnected: {exc}")
    if isinstance(exc, smtplib.SMTPException):
        return classified("account", "smtp_unsupported", str(exc))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return classified("account", "tls_verify", str(exc))
    return classified("transient", "network", f"{type(exc).__name__}: {exc}")


def reply_class(code: int, reply: bytes | str) -> str:
    """The class of an SMTP reply: a 5.1.x enhanced status (bad address) is the receiver's whatever the code."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    status = ENHANCED_STATUS.search(text)
    if status is not None and status.group(1) == "5" and status.group(2) == "1":
        return "receiver"
    if code in REPLY_CLASSES:
        return REPLY_CLASSES[code]
    return "transient" if 400 <= code < 500 or code < 0 else "content"


def _reply_failure(error_class: str, error_code: str, code: int, reply: bytes | str) -> SendResult:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return classified(error_class, error_code, f"{code} {text}", response_summary={"code": code, "reply": text})


def parse_callback(request: CallbackRequest, account: Account, now: datetime) -> CallbackResult:
    """Bounce reports as JSON `{message_id, email, status, bounce_type, error_code, error_message, timestamp}`.

    One object or a list. bounced/failed -> failed, complained/rejected -> rejected,
    delivered/sent/success -> delivered; items with another status are not applied.
    """
    invalid = "without a message_id or with an unknown status"
    return parse_json_reports(request, account, lambda item: bounce_report(item, now), _reply, invalid)


def bounce_report(item: Any, now: datetime) -> DeliveryReport | None:
    if not isinstance(item, dict) or not item.get("message_id"):
        return None
    status = str(item.get("status") or "").lower()
    if status in FAILED_STATUSES:
        mapped = "failed"
    elif status in REJECTED_STATUSES:
        mapped = "rejected"
    elif status in DELIVERED_STATUSES:
        mapped = "delivered"
    else:
        return None
    return DeliveryReport(
        provider_message_id=str(item["message_id"]).strip().strip("<>"),
        status=mapped,
        error_code=str(item.get("error_code") or item.get("bounce_type") or ""),
        error_message=str(item.get("error_message") or ""),
        reported_at=_reported_at(item.get("timestamp"), now),
        receiver=str(item.get("email") or ""),
    )


def _reported_at(value: Any, now: datetime) -> datetime:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return now
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return now


def _reply(status: int, message: str) -> CallbackReply:
    body = json_text({"status": "ok" if status == 200 else "error", "message": message})
    return CallbackReply(body, status=status, content_type="application/json")
