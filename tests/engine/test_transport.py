"""The provider transport over real loopback HTTP: what it sends, what it returns, how calls fail."""

from __future__ import annotations

import datetime
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from engine.transport import HttpTransport
from providers.base import HttpRequest, TransportError
from tests.support.loopback import Reply, loopback


def test_post_sends_method_headers_and_body_and_returns_the_answer() -> None:
    """A POST arrives with its headers and body; status, headers (lower-cased) and body come back."""
    with loopback(lambda r: Reply(201, '{"ok": true}', headers={"X-Request-Id": "r-1"})) as server:
        response = HttpTransport()(HttpRequest("POST", f"{server.url}/send?a=1", {"X-Sig": "abc"}, b'{"n": 1}', 5.0))
    assert (response.status, response.body, response.headers["x-request-id"]) == (201, b'{"ok": true}', "r-1")
    arrived = server.requests[0]
    assert (arrived.method, arrived.path, arrived.query, arrived.body) == ("POST", "/send", {"a": "1"}, b'{"n": 1}')
    assert arrived.header("X-Sig") == "abc" and arrived.header("Expect") == ""


def test_only_the_requests_headers_and_the_body_length_go_on_the_wire() -> None:
    """The transport adds none of curl's defaults (Accept, form Content-Type, User-Agent): a signed request goes
    out with exactly the headers it signed, plus Host and Content-Length."""
    with loopback(lambda r: Reply(200, "{}")) as server:
        HttpTransport()(HttpRequest("POST", f"{server.url}/", {"x-acs-action": "SendSms"}, b"", 5.0))
    assert {name.lower() for name in server.requests[0].headers} == {"host", "content-length", "x-acs-action"}


def test_a_content_type_the_request_sets_is_sent_as_set() -> None:
    """Suppressing curl's default never drops a Content-Type the provider chose."""
    with loopback(lambda r: Reply(200, "{}")) as server:
        HttpTransport()(HttpRequest("POST", f"{server.url}/", {"Content-Type": "application/json"}, b"{}", 5.0))
    assert server.requests[0].header("content-type") == "application/json"


def test_get_after_post_on_the_same_thread_carries_no_body() -> None:
    """The reused handle forgets the previous request: a GET after a POST is a plain GET."""
    transport = HttpTransport()
    with loopback(lambda r: Reply(200, "{}")) as server:
        transport(HttpRequest("POST", f"{server.url}/a", {}, b"x" * 2000, 5.0))
        transport(HttpRequest("GET", f"{server.url}/b", {}, b"", 5.0))
    assert [(r.method, r.path, len(r.body)) for r in server.requests] == [("POST", "/a", 2000), ("GET", "/b", 0)]


def test_error_statuses_are_answers_not_transport_errors() -> None:
    """A vendor's 500 reaches the provider's parser with its body."""
    with loopback(lambda r: Reply(500, "busy")) as server:
        response = HttpTransport()(HttpRequest("POST", f"{server.url}/x", {}, b"{}", 5.0))
    assert (response.status, response.body) == (500, b"busy")


def test_a_refused_connection_is_a_transport_error() -> None:
    """Nothing listening is a TransportError naming the failure."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransportError, match="curl error 7") as refused:
        HttpTransport()(HttpRequest("POST", f"http://127.0.0.1:{port}/x", {}, b"{}", 2.0))
    assert refused.value.maybe_sent is False  # nothing left: safe to retry


def test_a_slow_answer_times_out_as_a_transport_error() -> None:
    """A vendor slower than the request's timeout is a TransportError, not a hang."""
    with loopback(lambda r: Reply(200, "{}", delay=1.0)) as server:
        with pytest.raises(TransportError, match="curl error 28") as cut_off:
            HttpTransport()(HttpRequest("POST", f"{server.url}/x", {}, b"{}", 0.2))
    assert cut_off.value.maybe_sent is True  # the request had left: the vendor may have acted on it


def test_proxy_settings_of_the_environment_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """http_proxy in the environment does not divert provider calls."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with loopback(lambda r: Reply(200, "{}")) as server:
        assert HttpTransport()(HttpRequest("GET", f"{server.url}/x", {}, b"", 5.0)).status == 200


def test_https_to_an_untrusted_certificate_is_refused() -> None:
    """TLS is verified: a server whose certificate no trusted authority signed is a TransportError."""
    with _tls_server() as port:
        with pytest.raises(TransportError, match="curl error 60"):
            HttpTransport()(HttpRequest("GET", f"https://127.0.0.1:{port}/", {}, b"", 5.0))


def test_threads_share_one_transport() -> None:
    """Concurrent calls from many threads each get their own answer."""
    transport = HttpTransport()
    with loopback(lambda r: Reply(200, r.path)) as server:
        answers: dict[int, bytes] = {}

        def call(n: int) -> None:
            answers[n] = transport(HttpRequest("GET", f"{server.url}/{n}", {}, b"", 5.0)).body

        threads = [threading.Thread(target=call, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert answers == {n: f"/{n}".encode() for n in range(16)}


@contextmanager
def _tls_server() -> Iterator[int]:
    """A TLS listener on loopback with a fresh self-signed certificate; it only answers one handshake."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    with tempfile.TemporaryDirectory() as folder, socket.socket() as listener:
        cert_path, key_path = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def handshake() -> None:
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refuses the certificate mid-handshake

        thread = threading.Thread(target=handshake, daemon=True)
        thread.start()
        yield int(listener.getsockname()[1])
        thread.join(5)
