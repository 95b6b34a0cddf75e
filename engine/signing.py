"""Request and webhook signatures: the reference service's HMAC scheme, byte for byte.

A request is signed as hex HMAC-SHA256(app secret, METHOD + PATH + CANON + TS + NONCE), where
CANON is the body parsed as a JSON object and re-serialised the way the reference's Go
`encoding/json.Marshal` does it (Go 1.22+, the toolchain the reference builds with). The PHP
SDK canonicalises differently (no `<>&` escaping, numbers as PHP printed them, `ksort` key
order); `verify` accepts that form too, and the pre-1.22 Go form of `\\b` / `\\f`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

HEADER_APP_ID = "X-App-Id"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_NONCE = "X-Nonce"
HEADER_SIGNATURE = "X-Signature"


class BodyError(ValueError):
    """The request body is neither empty, `null`, nor a valid JSON object."""


class _Number(str):
    """A JSON number kept as its literal text, so each dialect can print it its own way."""


@dataclass(frozen=True, slots=True)
class _Dialect:
    escapes: dict[int, str]
    number: Callable[[_Number], str]
    order: Callable[[Iterable[str]], list[str]]


# --- parsing -----------------------------------------------------------------------------------


def _number(literal: str) -> _Number:
    value = float(literal)
    if math.isinf(value):  # Go's Unmarshal refuses numbers outside float64
        raise BodyError(f"number out of range: {literal[:40]}")
    return _Number(literal)


def _reject_constant(name: str) -> Any:
    raise BodyError(f"not JSON: {name}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Go replaces invalid UTF-8 and lone surrogates in keys too; equal keys then collapse, last wins.
    return {_scalar_text(key): value for key, value in pairs}


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _scalar_text(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text)


_LITERAL_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_int=_number, parse_float=_number,
                                    parse_constant=_reject_constant)


def _parse(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when empty / `null`; BodyError otherwise."""
    if not body:
        return None
    # surrogateescape turns each invalid UTF-8 byte into one lone surrogate, which then becomes
    # one U+FFFD — exactly what Go's decoder does per invalid byte.
    text = body.decode("utf-8", "surrogateescape")
    try:
        doc = _LITERAL_DECODER.decode(text)
    except BodyError:
        raise
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"invalid JSON: {exc}") from None
    if doc is not None and not isinstance(doc, dict):
        raise BodyError("request body must be a JSON object")
    return doc


# --- printing ----------------------------------------------------------------------------------


def _escape_table(*, html: bool, short_b_f: bool) -> dict[int, str]:
    table = {c: f"\\u{c:04x}" for c in range(0x20)}
    table.update({ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
    table.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
    if short_b_f:
        table.update({ord("\b"): "\\b", ord("\f"): "\\f"})
    if html:
        table.update({ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"})
    table.update({c: "\ufffd" for c in range(0xD800, 0xE000)})
    return table


def go_float(value: float) -> str:
    """A float64 as Go's encoding/json prints it: shortest round-trip digits, ES6 layout."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    _, digit_tuple, raw_exponent = Decimal(repr(magnitude)).normalize().as_tuple()
    digits, exponent = "".join(map(str, digit_tuple)), int(raw_exponent)
    if magnitude < 1e-6 or magnitude >= 1e21:
        scientific = exponent + len(digits) - 1
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'+' if scientific >= 0 else '-'}{abs(scientific)}"
    if exponent >= 0:
        return sign + digits + "0" * exponent
    point = len(digits) + exponent
    if point > 0:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    return f"{sign}0.{'0' * -point}{digits}"


def _go_number(literal: _Number) -> str:
    return go_float(float(literal))


def _go_order(keys: Iterable[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"))


_PHP_NUMERIC = re.compile(r"[ \t\n\r\v\f]*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[ \t\n\r\v\f]*")
_PHP_INTEGER = re.compile(r"[+-]?\d+")


def _php_numeric(key: str) -> int | float | None:
    if not _PHP_NUMERIC.fullmatch(key):
        return None
    stripped = key.strip(" \t\n\r\v\f")
    return int(stripped) if _PHP_INTEGER.fullmatch(stripped) else float(stripped)


def _php_compare(a: str, b: str) -> int:
    """PHP 8 `ksort` (SORT_REGULAR): two numeric keys compare as numbers, anything else as bytes."""
    x, y = _php_numeric(a), _php_numeric(b)
    if x is not None and y is not None:
        return (x > y) - (x < y)
    p, q = a.encode("utf-8"), b.encode("utf-8")
    return (p > q) - (p < q)


def _php_order(keys: Iterable[str]) -> list[str]:
    return sorted(keys, key=functools.cmp_to_key(_php_compare))


GO = _Dialect(_escape_table(html=True, short_b_f=True), _go_number, _go_order)
GO_BEFORE_1_22 = _Dialect(_escape_table(html=True, short_b_f=False), _go_number, _go_order)
PHP = _Dialect(_escape_table(html=False, short_b_f=True), str, _php_order)


def _write(value: Any, out: list[str], dialect: _Dialect) -> None:
    if isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(dialect.order(value)):
            if i:
                out.append(",")
            out.append(f'"{key.translate(dialect.escapes)}":')
            _write(value[key], out, dialect)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, dialect)
        out.append("]")
    elif isinstance(value, _Number):
        out.append(dialect.number(value))
    elif isinstance(value, str):
        out.append(f'"{value.translate(dialect.escapes)}"')
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    else:
        out.append("null")


def _render(doc: dict[str, Any] | None, dialect: _Dialect) -> str:
    if not doc:
        return ""
    out: list[str] = []
    _write(doc, out, dialect)
    return "".join(out)


def canonical_body(body: bytes) -> str:
    """The reference's canonical JSON of a request body ("" for empty, `{}` and `null`)."""
    quick = _go_form_by_json_module(body)
    return quick if quick is not None else _render(_parse(body), GO)


class _NotPlain(Exception):
    pass


def _plain_int(literal: str) -> int:
    if literal == "-0" or len(literal.lstrip("-")) > 15:
        raise _NotPlain  # Go prints -0; past 15 digits float64 may round
    return int(literal)


def _not_plain(_: str) -> Any:
    raise _NotPlain


# Built once: json.loads and json.dumps build a new decoder or encoder per call when given any option.
_PLAIN_DECODER = json.JSONDecoder(parse_int=_plain_int, parse_float=_not_plain, parse_constant=_not_plain)
_SORTED_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
_GO_EXTRA_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                     ("\u2029", "\\u2029"))


def _go_form_by_json_module(body: bytes) -> str | None:
    """The Go form printed by the json module's C encoder, for the bodies where it prints what Go prints: a
    JSON object in valid UTF-8 without lone surrogates whose numbers are integers of at most 15 digits (all
    the reference's send bodies). None for any other body, which takes `_render`.

    Its escapes are Go's once `<>&` and U+2028/9 are escaped too, and sorting by code point is sorting by
    UTF-8 bytes. A fifth of the cost of `_render`, which matters at one verification per message.
    """
    try:
        doc = _PLAIN_DECODER.decode(body.decode("utf-8"))
    except (_NotPlain, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    text = _SORTED_ENCODER.encode(doc) if doc else ""
    if _LONE_SURROGATE.search(text):
        return None
    for char, escape in _GO_EXTRA_ESCAPES:
        text = text.replace(char, escape)
    return text


def canonical_body_php(body: bytes) -> str:
    """The PHP SDK's canonical JSON: `ksort` order, `<>&` unescaped, numbers as written."""
    return _render(_parse(body), PHP)


# --- signing -----------------------------------------------------------------------------------


def sign_content(method: str, path: str, canon: str, ts: int, nonce: str) -> bytes:
    return f"{method}{path}{canon}{ts:d}{nonce}".encode()


def _hmac_hex(secret: str, content: bytes) -> str:
    return hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def signature(secret: str, method: str, path: str, body: bytes, ts: int, nonce: str) -> str:
    """Lowercase hex HMAC-SHA256 of the request, as the reference computes it."""
    return _hmac_hex(secret, sign_content(method, path, canonical_body(body), ts, nonce))


def _same(expected: str, given: str) -> bool:
    return given.isascii() and hmac.compare_digest(expected.encode(), given.encode())


def verify(secret: str, method: str, path: str, body: bytes, ts: int, nonce: str, given: str) -> bool:
    """True when `given` signs the request in the Go form, the PHP SDK form, or the pre-1.22 Go form.

    Raises BodyError for a body the reference would refuse (it answers 10001 before checking).
    """
    go = canonical_body(body)
    if _same(_hmac_hex(secret, sign_content(method, path, go, ts, nonce)), given):
        return True
    doc = _parse(body)
    # Only now the rarer forms. Timing then tells which form matched: the client knows that already.
    others = {_render(doc, PHP), _render(doc, GO_BEFORE_1_22)} - {go}
    return any(_same(_hmac_hex(secret, sign_content(method, path, canon, ts, nonce)), given) for canon in others)


def sign_headers(
    app_id: str, secret: str, method: str, path: str, body: bytes, *, now: int, nonce: str | None = None
) -> dict[str, str]:
    """The four authentication headers a client sends (nonce: 32 random hex chars by default)."""
    nonce = nonce if nonce is not None else secrets.token_hex(16)
    return {
        HEADER_APP_ID: app_id,
        HEADER_TIMESTAMP: str(now),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature(secret, method, path, body, now, nonce),
    }


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """`X-Webhook-Signature` of a customer webhook: hex HMAC-SHA256(secret, "<timestamp>." + body)."""
    return _hmac_hex(secret, f"{timestamp:d}.".encode() + body)


def verify_webhook(secret: str, timestamp: int, body: bytes, given: str) -> bool:
    return _same(webhook_signature(secret, timestamp, body), given)
