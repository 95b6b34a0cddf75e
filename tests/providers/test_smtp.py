"""SMTP email against a real aiosmtpd server on loopback: AUTH, STARTTLS, implicit TLS, Chinese headers,
reply-code mapping, and bounce reports."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from providers import smtp
from providers.base import Account, CallbackRequest, Message, Outcome, SendContext, with_defaults
from tests.providers import contract
from tests.support.tokens import MemoryTokenCache

# aiosmtpd warns in its own thread on every connection (AUTH without TLS, intended on loopback) and on
# every successful AUTH (it sets its own deprecated Session.login_data). Warning filters are process-wide,
# so without these the server thread turns them into errors and drops the connection.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
    pytest.mark.filterwarnings("ignore:Session.login_data is deprecated:DeprecationWarning"),
]

USER, PASSWORD = "mailer", "smtp-pass-6d6d6d"
NOW = dt.datetime(2026, 11, 27, 8, 30, tzinfo=dt.timezone.utc)
CTX = SendContext(contract.TRANSPORT, NOW, MemoryTokenCache())
MESSAGE = Message("T20", 1, "user@example.com", "email", "您的订单已发货。", subject="订单通知：已发货",
                  html="<p>您的订单<b>已发货</b>。</p>")


class Inbox:
    """An aiosmtpd handler that keeps what it receives and refuses scripted recipients."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.startswith("full@"):
            return "452 4.2.2 Mailbox full"
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted"

    def parsed(self) -> EmailMessage:
        content = self.envelopes[-1].content
        assert isinstance(content, bytes)
        return message_from_bytes(content, policy=policy.default)  # type: ignore[return-value]


def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def running(inbox: Inbox, **options: Any) -> Controller:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # module fixtures start outside the test's marks
        controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                                auth_require_tls=False, **options)
        controller.start()
    return controller


@pytest.fixture(scope="module")
def plain() -> Iterator[tuple[Controller, Inbox]]:
    """A plain SMTP server requiring AUTH."""
    inbox = Inbox()
    controller = running(inbox, auth_required=True)
    yield controller, inbox
    controller.stop()


@pytest.fixture(scope="module")
def starttls(certificate: tuple[Path, Path]) -> Iterator[tuple[Controller, Inbox]]:
    """A server that requires STARTTLS before anything else."""
    inbox = Inbox()
    controller = running(inbox, tls_context=server_context(certificate), require_starttls=True)
    yield controller, inbox
    controller.stop()


@pytest.fixture(scope="module")
def implicit_tls(certificate: tuple[Path, Path]) -> Iterator[tuple[Controller, Inbox]]:
    """A server speaking TLS from the first byte (port 465 style)."""
    inbox = Inbox()
    controller = running(inbox, ssl_context=server_context(certificate))
    yield controller, inbox
    controller.stop()


def account(controller: Controller, **config: Any) -> Account:
    raw = {"host": "127.0.0.1", "port": controller.port, "security": "none", "username": USER,
           "password": PASSWORD, "from_address": "noreply@mulei.example", "from_name": "木雷消息服务",
           "reply_to": "support@mulei.example", "timeout": 5.0, **config}
    return Account("mail", "smtp", with_defaults(smtp.CONFIG, raw))


class TestDelivery:
    def test_chinese_subject_and_sender_name_survive_the_wire(self, plain: tuple[Controller, Inbox]) -> None:
        """The server receives RFC 2047 encoded headers that parse back to the same subject and name."""
        controller, inbox = plain
        result = smtp.send(MESSAGE, account(controller), CTX)
        assert result.ok and result.final
        raw = inbox.envelopes[-1].content
        assert isinstance(raw, bytes) and "订单通知".encode() not in raw.split(b"\r\n\r\n")[0]
        received = inbox.parsed()
        assert received["Subject"] == "订单通知：已发货"
        assert received["From"].addresses[0].display_name == "木雷消息服务"
        assert received["From"].addresses[0].addr_spec == "noreply@mulei.example"
        assert received["Reply-To"] == "support@mulei.example"
        assert inbox.envelopes[-1].rcpt_tos == ["user@example.com"]

    def test_plain_and_html_alternatives_date_and_message_id(self, plain: tuple[Controller, Inbox]) -> None:
        """The message is multipart/alternative with both bodies, a Date and the attempt's Message-ID."""
        controller, inbox = plain
        result = smtp.send(MESSAGE, account(controller), CTX)
        received = inbox.parsed()
        assert received.get_content_type() == "multipart/alternative"
        assert received.get_body(("plain",)).get_content().strip() == "您的订单已发货。"  # type: ignore[union-attr]
        assert "<b>已发货</b>" in received.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert received["Date"].datetime == NOW
        assert received["Message-ID"] == "<T20.1@mulei.example>"
        assert result.provider_message_id == "T20.1@mulei.example"

    def test_default_subject_when_template_has_none(self, plain: tuple[Controller, Inbox]) -> None:
        """Without a subject the configured default (通知) is used."""
        controller, inbox = plain
        smtp.send(Message("T21", 1, "user@example.com", "email", "hi"), account(controller), CTX)
        assert inbox.parsed()["Subject"] == "通知"

    def test_starttls_with_verified_certificate(self, starttls: tuple[Controller, Inbox],
                                                certificate: tuple[Path, Path]) -> None:
        """security starttls upgrades the connection, verifying the server against ca_file."""
        controller, inbox = starttls
        result = smtp.send(MESSAGE, account(controller, security="starttls", username="", ca_file=str(certificate[0])), CTX)
        assert result.ok, result
        assert inbox.parsed()["Subject"] == "订单通知：已发货"

    def test_implicit_tls(self, implicit_tls: tuple[Controller, Inbox], certificate: tuple[Path, Path]) -> None:
        """security ssl speaks TLS from the first byte."""
        controller, inbox = implicit_tls
        result = smtp.send(MESSAGE, account(controller, security="ssl", username="", ca_file=str(certificate[0])), CTX)
        assert result.ok, result
        assert len(inbox.envelopes) == 1


class TestFailures:
    def test_wrong_password_is_permanent_and_never_stored(self, plain: tuple[Controller, Inbox]) -> None:
        """A refused AUTH is permanent and the password appears nowhere in the result."""
        controller, _ = plain
        result = smtp.send(MESSAGE, account(controller, password="not-the-password"), CTX)
        assert (result.outcome, result.error_code, result.error_class) == (Outcome.PERMANENT, "auth_failed", "account")
        assert "not-the-password" not in f"{result.error_message}{result.request_summary}{result.response_summary}"

    def test_mailbox_full_4xx_retries(self, plain: tuple[Controller, Inbox]) -> None:
        """A 4xx recipient reply is retryable with the SMTP code."""
        controller, _ = plain
        result = smtp.send(Message("T22", 1, "full@example.com", "email", "x"), account(controller), CTX)
        assert (result.outcome, result.error_code, result.error_class) == (Outcome.RETRYABLE, "smtp_452", "throttled")
        assert "Mailbox full" in result.error_message

    def test_unknown_user_5xx_is_permanent(self, plain: tuple[Controller, Inbox]) -> None:
        """A 5xx recipient reply is permanent."""
        controller, _ = plain
        result = smtp.send(Message("T23", 1, "nobody@example.com", "email", "x"), account(controller), CTX)
        assert (result.outcome, result.error_code, result.error_class) == (Outcome.PERMANENT, "smtp_550", "receiver")

    def test_auth_required_but_not_configured_is_permanent(self, plain: tuple[Controller, Inbox]) -> None:
        """Sending without AUTH to a server requiring it fails with the server's 5xx."""
        controller, _ = plain
        result = smtp.send(MESSAGE, account(controller, username=""), CTX)
        assert result.outcome is Outcome.PERMANENT and result.error_code.startswith("smtp_5")

    def test_starttls_missing_on_server_is_permanent(self, plain: tuple[Controller, Inbox]) -> None:
        """Asking for STARTTLS from a server that does not offer it is a configuration error."""
        controller, _ = plain
        result = smtp.send(MESSAGE, account(controller, security="starttls"), CTX)
        assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "smtp_unsupported")

    def test_untrusted_certificate_is_permanent(self, starttls: tuple[Controller, Inbox]) -> None:
        """A certificate that does not verify is refused, not retried."""
        controller, _ = starttls
        result = smtp.send(MESSAGE, account(controller, security="starttls", username=""), CTX)
        assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "tls_verify")

    def test_connection_refused_retries(self) -> None:
        """Nobody listening is a retryable network failure."""
        raw = {"host": "127.0.0.1", "port": free_port(), "security": "none", "from_address": "a@b.c", "timeout": 0.3}
        result = smtp.send(MESSAGE, Account("mail", "smtp", with_defaults(smtp.CONFIG, raw)), CTX)
        assert (result.outcome, result.error_code) == (Outcome.RETRYABLE, "network")

    def test_silent_server_times_out_and_retries(self) -> None:
        """A server that accepts but never greets times out quickly as a retryable failure."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            accepted: list[socket.socket] = []
            thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
            thread.start()
            raw = {"host": "127.0.0.1", "port": listener.getsockname()[1], "security": "none",
                   "from_address": "a@b.c", "timeout": 0.3}
            result = smtp.send(MESSAGE, Account("mail", "smtp", with_defaults(smtp.CONFIG, raw)), CTX)
            thread.join(2)
            for sock in accepted:
                sock.close()
        assert (result.outcome, result.error_code) == (Outcome.RETRYABLE, "network")
        assert "timed out" in result.error_message

    def test_connection_cut_after_data_is_of_unknown_outcome(self) -> None:
        """A server that takes the whole message and then drops the line may have accepted it: unknown, so it is
        never resent blindly; a refused connection is transient."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            thread = threading.Thread(target=_drop_after_data, args=(listener,), daemon=True)
            thread.start()
            raw = {"host": "127.0.0.1", "port": listener.getsockname()[1], "security": "none",
                   "from_address": "a@b.c", "timeout": 2.0}
            result = smtp.send(MESSAGE, Account("mail", "smtp", with_defaults(smtp.CONFIG, raw)), CTX)
            thread.join(2)
        assert (result.error_class, result.error_code) == ("unknown", "network")
        refused = {"host": "127.0.0.1", "port": free_port(), "security": "none", "from_address": "a@b.c",
                   "timeout": 0.3}
        assert smtp.send(MESSAGE, Account("mail", "smtp", with_defaults(smtp.CONFIG, refused)), CTX).error_class \
            == "transient"

    @pytest.mark.parametrize("receiver", ["not-an-address", "a@b.com\r\nBcc: victim@x.com", "a@b.com, c@d.com", ""])
    def test_invalid_receiver_is_permanent_before_connecting(self, receiver: str) -> None:
        """Receivers that are not one plain address (including header injection) are refused up front."""
        raw = {"host": "127.0.0.1", "port": free_port(), "from_address": "a@b.c", "timeout": 0.3}
        result = smtp.send(Message("T24", 1, receiver, "email", "x"), Account("m", "smtp", with_defaults(smtp.CONFIG, raw)), CTX)
        assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "invalid_receiver")


def _drop_after_data(listener: socket.socket) -> None:
    """Speak SMTP up to the end of the message body, then close without the final reply."""
    conn = listener.accept()[0]
    with conn, conn.makefile("rwb") as line:
        line.write(b"220 mock ESMTP\r\n")
        line.flush()
        while command := line.readline():
            if command.upper().startswith(b"DATA"):
                line.write(b"354 go ahead\r\n")
                line.flush()
                while line.readline() not in (b".\r\n", b""):
                    pass
                return
            line.write(b"250 ok\r\n")
            line.flush()


def bounce(body: object, token: str = "bounce-token") -> CallbackRequest:
    return CallbackRequest("POST", {"token": token}, {"content-type": "application/json"}, json.dumps(body).encode())


class TestBounces:
    ACCOUNT = Account("mail", "smtp", {}, callback={"token": "bounce-token"})

    def test_bounce_complaint_and_delivery_statuses(self) -> None:
        """bounced -> failed, complained -> rejected, delivered -> delivered; ids lose their angle brackets."""
        result = smtp.parse_callback(bounce([
            {"message_id": "<T20.1@mulei.example>", "email": "user@example.com", "status": "bounced",
             "bounce_type": "hard", "error_code": "5.1.1", "error_message": "user unknown", "timestamp": 1795000000},
            {"message_id": "T21.1@mulei.example", "status": "complained"},
            {"message_id": "T22.1@mulei.example", "status": "delivered", "timestamp": "2026-11-27T08:31:00+00:00"},
        ]), self.ACCOUNT, NOW)
        assert result.verified and json.loads(result.reply.body)["status"] == "ok"
        assert [(r.provider_message_id, r.status) for r in result.reports] == [
            ("T20.1@mulei.example", "failed"), ("T21.1@mulei.example", "rejected"), ("T22.1@mulei.example", "delivered"),
        ]
        first = result.reports[0]
        assert (first.error_code, first.error_message, first.receiver) == ("5.1.1", "user unknown", "user@example.com")
        assert first.reported_at == dt.datetime.fromtimestamp(1795000000, tz=dt.timezone.utc)
        assert result.reports[1].reported_at == NOW

    def test_forged_bounce_changes_nothing(self) -> None:
        """A bounce without the account's token is unverified and yields no reports."""
        result = smtp.parse_callback(bounce({"message_id": "x", "status": "bounced"}, token="forged"), self.ACCOUNT, NOW)
        assert (result.verified, result.reports, result.reply.status) == (False, (), 403)

    def test_unknown_status_is_not_applied(self) -> None:
        """An item with a status outside the known ones is reported as an error, not guessed."""
        result = smtp.parse_callback(bounce({"message_id": "x", "status": "opened"}), self.ACCOUNT, NOW)
        assert result.reports == () and result.error

    def test_raw_text_is_rejected(self) -> None:
        """A non-JSON body (a forwarded DSN) carries no message id and is refused with a reason."""
        request = CallbackRequest("POST", {"token": "bounce-token"}, {}, b"Delivery Status Notification (Failure)")
        result = smtp.parse_callback(request, self.ACCOUNT, NOW)
        assert result.reports == () and result.reply.status == 400
