"""Generators of hostile requests to the public API and a raw HTTP client that sends them exactly as generated."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hypothesis import strategies as st

from engine.signing import BodyError, sign_headers

SEND = "/api/v1/messages"
BATCH = "/api/v1/messages/batch"
GOOD_RECEIVER = "13800138000"

# JSON texts no JSON encoder writes, spliced in where a value goes
HOSTILE_LITERALS = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "123456789012345678901234567890", '"\\ud800"', '"\\udfff x"',
    '"\\u0000"', "[" * 40 + "]" * 40, "[" * 3000 + "]" * 3000, '"' + "x" * 300_000 + '"', "[]", "{}", "null", "true",
    '"²"', '"١"', '"9999-12-31T23:59:59-14:00"', '"0000-01-01T00:00:00Z"', '"not a date"', "-1", "0", "1.5",
    '"+8613800138000"', '"a\\nb"', '"\\u202e"', '" "', '""', '{"a": {"b": {"c": NaN}}}', " \n ", "\t",
]
FIELDS = ["channel_id", "receiver", "receivers", "template_params", "scheduled_at", "tags", "signature_name"]
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "", "application/json; charset=latin-1", "application/xml", "*/*", "application/json, text/plain"]
ODD_TIMESTAMPS = ["+{now}", " {now}", "{now} ", "²", "١٧٠٠٠٠٠٠٠٠", "1e9", "-1", "99999999999999999999", "",
                  "{now}.0", "0x1", "NaN"]


@dataclass
class Hostile:
    """One request: path, body bytes, the headers in the order sent (repeats allowed) and what was signed."""

    path: str
    body: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    nonce: str = ""
    signed: bool = False

    def header(self, name: str, value: str | bytes) -> None:
        self.headers.append((name, value if isinstance(value, bytes) else value.encode("utf-8")))


def send_raw(url: str, request: Hostile, method: str = "POST") -> tuple[int, bytes]:
    """Send `request` byte for byte (duplicate headers kept, no encoding of values); the status and body."""
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=30)
    try:
        conn.putrequest(method, request.path, skip_accept_encoding=True)
        for name, value in request.headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(request.body)))
        conn.endheaders(request.body)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def signed_headers(app_id: str, secret: str, path: str, body: bytes, *, now: int | None = None) -> dict[str, str]:
    """The four signature headers over `body`; a body no SDK could sign gets the signature of `{}`, which still
    carries it past the app-id lookup to the parser."""
    stamp = int(time.time()) if now is None else now
    if body.count(b"[") + body.count(b"{") > 64:  # refused for its depth before any signature check; parsing it
        body = b"{}"  # here would raise RecursionError in json, after which CPython 3.11's ast (pytest) can fail
    try:
        return sign_headers(app_id, secret, "POST", path, body, now=stamp, nonce=uuid.uuid4().hex)
    except BodyError:
        return sign_headers(app_id, secret, "POST", path, b"{}", now=stamp, nonce=uuid.uuid4().hex)


def good_body(path: str) -> dict[str, Any]:
    base: dict[str, Any] = {"channel_id": 1, "template_params": {"code": "123456"}}
    if path == BATCH:
        return {**base, "receivers": [GOOD_RECEIVER]}
    return {**base, "receiver": GOOD_RECEIVER}


@st.composite
def json_bodies(draw: st.DrawFn, path: str, literals: list[str]) -> bytes:
    """A send body with one to three fields replaced by hostile JSON text (or a hostile whole body)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(literals)).encode()
    body: dict[str, Any] = good_body(path)
    spliced = {}
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        spliced[name] = draw(st.sampled_from(literals))
        body[name] = f"@@{name}@@"
    text = json.dumps(body)
    for name, literal in spliced.items():
        text = text.replace(f'"@@{name}@@"', literal)
    return text.encode()


@st.composite
def bodies(draw: st.DrawFn, path: str, literals: list[str]) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "json", "json", "text"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "text":
        return draw(st.text(max_size=500)).encode("utf-8", "surrogatepass")
    return draw(json_bodies(path, literals))


@st.composite
def hostile_requests(draw: st.DrawFn, app_id: str, secret: str, literals: list[str] = HOSTILE_LITERALS,
                     paths: tuple[str, ...] = (SEND, BATCH)) -> Hostile:
    """A hostile request to a send route, signed (with odd headers on top) or not."""
    path = draw(st.sampled_from(paths))
    body = draw(bodies(path, literals))
    request = Hostile(path, body)
    request.header("Content-Type", draw(st.sampled_from(CONTENT_TYPES)))
    signed = draw(st.booleans())
    if signed:
        headers = signed_headers(app_id, secret, path, body)
        request.signed, request.nonce = True, headers["X-Nonce"]
        odd = draw(st.sampled_from(["none", "none", "dup-signature", "dup-nonce", "timestamp", "big", "unicode"]))
        now = headers["X-Timestamp"]
        if odd == "timestamp":
            headers["X-Timestamp"] = draw(st.sampled_from(ODD_TIMESTAMPS)).format(now=now)
        if odd == "big":
            name = draw(st.sampled_from(["X-Nonce", "X-App-Id", "X-Signature", "X-Extra"]))
            headers[name] = "a" * draw(st.integers(200, 6000))
        if odd == "unicode":
            headers[draw(st.sampled_from(["X-Nonce", "X-App-Id", "X-Timestamp"]))] = draw(st.sampled_from(["²", "١", "é"]))
        for name, value in headers.items():
            request.header(name, value if odd != "unicode" else value.encode("utf-8"))
        request.nonce = headers["X-Nonce"]
        if odd == "dup-signature":
            request.header("X-Signature", "0" * 64)
        if odd == "dup-nonce":
            request.header("X-Nonce", uuid.uuid4().hex)
            request.nonce = ""  # which of the two a server reads is its choice; neither may be spent on a refusal
    else:
        for name in draw(st.lists(st.sampled_from(["X-App-Id", "X-Timestamp", "X-Nonce", "X-Signature"]), unique=True)):
            request.header(name, draw(st.sampled_from([app_id, "nope", "", str(int(time.time())), "0" * 64])))
    return request
