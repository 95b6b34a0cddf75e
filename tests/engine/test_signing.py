"""Request signatures byte-exact with the reference, its PHP SDK variant, and webhook signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import signing
from engine.signing import BodyError, canonical_body, canonical_body_php, go_float, signature, verify

SECRET = "secret123456"
SEND_BODY = b'{"channel_id":1,"receiver":"13800138000","template_params":{"code":"123456"}}'
TASK_PATH = "/api/v1/messages/550e8400-e29b-41d4-a716-446655440000"


def test_known_answer_vector_post() -> None:
    """The §2.4 POST vector (the example of the reference's API docs) signs and verifies."""
    expected = "7a1afc75536cb239791d1e5849d82c07893cb05712fe7b71de251ca2fa7bfce5"
    assert signature(SECRET, "POST", "/api/v1/messages", SEND_BODY, 1700000000, "abc123") == expected
    assert verify(SECRET, "POST", "/api/v1/messages", SEND_BODY, 1700000000, "abc123", expected)


def test_known_answer_vector_get_without_body() -> None:
    """The §2.4 GET vector (empty body) signs and verifies."""
    expected = "c6aaad8717fe9545981951a3979e60083ffc429c7982cff8494b6c34fd4ab868"
    assert signature(SECRET, "GET", TASK_PATH, b"", 1700000000, "abc123") == expected
    assert verify(SECRET, "GET", TASK_PATH, b"", 1700000000, "abc123", expected)


def test_sign_content_layout() -> None:
    """SignContent is METHOD+PATH+CANON+TS+NONCE with no separators and the timestamp re-printed."""
    assert signing.sign_content("POST", "/p", '{"a":1}', 1700000000, "n") == b'POST/p{"a":1}1700000000n'


@pytest.mark.parametrize(
    ("body", "canon"),
    [
        (b"", ""),
        (b"null", ""),
        (b"{}", ""),
        (b' { } ', ""),
        (b'{"a":1.0}', '{"a":1}'),
        (b'{"a":1e21}', '{"a":1e+21}'),
        (b'{"a":1e-7}', '{"a":1e-7}'),
        (b'{"a":1.5E-7}', '{"a":1.5e-7}'),
        (b'{"a":0.000001}', '{"a":0.000001}'),
        (b'{"a":123456789012345678}', '{"a":123456789012345680}'),
        (b'{"a":1e20}', '{"a":100000000000000000000}'),
        (b'{"a":-0}', '{"a":-0}'),
        (b'{"a":-12.50}', '{"a":-12.5}'),
        (b'{"a":5e-324}', '{"a":5e-324}'),
        (b'{"a":"<a&b>"}', '{"a":"\\u003ca\\u0026b\\u003e"}'),
        (b'{"a":"\\u2028\\u2029"}', '{"a":"\\u2028\\u2029"}'),
        (b'{"a":"\\u0001\\u001f\\u007f"}', '{"a":"\\u0001\\u001f\x7f"}'),
        (b'{"a":"\\b\\f\\n\\r\\t"}', '{"a":"\\b\\f\\n\\r\\t"}'),
        (b'{"a":"\\"\\\\\\/"}', '{"a":"\\"\\\\/"}'),
        ('{"a":"é中\\u00e9😀"}'.encode(), '{"a":"é中é😀"}'),
        (b'{"a":"\\ud800x"}', '{"a":"\ufffdx"}'),
        (b'{"a":"\xff\xe2\x82"}', '{"a":"\ufffd\ufffd\ufffd"}'),
        (b'{"<":1}', '{"\\u003c":1}'),
        (b'{"b":{"d":[3,{"f":1,"e":2}],"c":null},"a":[true,false]}',
         '{"a":[true,false],"b":{"c":null,"d":[3,{"e":2,"f":1}]}}'),
        (b'{"a":1,"a":2}', '{"a":2}'),
        (b'{"a":{}, "b":[]}', '{"a":{},"b":[]}'),
        ('{"é":1,"z":2,"Z":3,"😀":4,"\uff5e":5}'.encode(), '{"Z":3,"z":2,"é":1,"\uff5e":5,"😀":4}'),
    ],
)
def test_canonical_body_matches_go_marshal(body: bytes, canon: str) -> None:
    """Each body canonicalises to exactly what Go 1.22+ json.Marshal emits for the generic map."""
    assert canonical_body(body) == canon


@pytest.mark.parametrize(
    "body",
    [b"[1]", b'"x"', b"1", b"true", b"{", b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1e400}', b"   ", b'{"a":1} x',
     b'{"a":"\x01"}', b"\xef\xbb\xbf{}", b'{"a":01}'],
)
def test_bodies_the_reference_refuses_raise_body_error(body: bytes) -> None:
    """Anything but an empty body, `null` or a JSON object is a BodyError (the API's 10001)."""
    with pytest.raises(BodyError):
        canonical_body(body)
    with pytest.raises(BodyError):
        verify(SECRET, "POST", "/p", body, 1, "n", "0" * 64)


def test_deep_nesting_is_a_body_error_not_a_crash() -> None:
    """A pathologically deep body is refused cleanly."""
    with pytest.raises(BodyError):
        canonical_body(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@pytest.mark.parametrize(
    ("body", "canon"),
    [
        (b'{"a":"<a&b>/"}', '{"a":"<a&b>/"}'),
        (b'{"a":1.0,"b":100}', '{"a":1.0,"b":100}'),
        (b'{"a":123456789012345678}', '{"a":123456789012345678}'),
        (b'{"10":"x","9":"y","a":"z","1e1":"w"}', '{"9":"y","10":"x","1e1":"w","a":"z"}'),
        (b'{"a":"\\u2028\\u0001"}', '{"a":"\\u2028\\u0001"}'),
    ],
)
def test_canonical_body_php_matches_the_php_sdk(body: bytes, canon: str) -> None:
    """The PHP form keeps `<>&` and `/` raw, numbers as written, and ksort's numeric key order."""
    assert canonical_body_php(body) == canon


def test_php_sdk_signature_with_html_characters_verifies() -> None:
    """A signature the PHP SDK computed over unescaped `<>&` is accepted; the reference would refuse it."""
    body = b'{"channel_id":1,"receiver":"a@b.c","template_params":{"name":"<Tom & Jerry>"}}'
    php_canon = canonical_body_php(body)
    assert "<Tom & Jerry>" in php_canon
    php_sig = signing._hmac_hex(SECRET, signing.sign_content("POST", "/api/v1/messages", php_canon, 5, "n"))
    assert php_sig != signature(SECRET, "POST", "/api/v1/messages", body, 5, "n")
    assert verify(SECRET, "POST", "/api/v1/messages", body, 5, "n", php_sig)


def test_pre_go_1_22_escapes_of_backspace_and_formfeed_verify() -> None:
    """A client built with Go before 1.22 (\\u0008, \\u000c) is accepted alongside the current form."""
    body = b'{"a":"x\\by\\f"}'
    old = signing._hmac_hex(SECRET, signing.sign_content("POST", "/p", '{"a":"x\\u0008y\\u000c"}', 5, "n"))
    assert verify(SECRET, "POST", "/p", body, 5, "n", old)


@pytest.mark.parametrize(
    ("change", "value"),
    [("secret", "other"), ("method", "GET"), ("path", "/api/v1/messagez"), ("ts", 1700000001), ("nonce", "abc124"),
     ("body", b'{"channel_id":2,"receiver":"13800138000","template_params":{"code":"123456"}}')],
)
def test_any_changed_part_fails_verification(change: str, value: Any) -> None:
    """Changing the secret, method, path, timestamp, nonce or body invalidates the signature."""
    args = {"secret": SECRET, "method": "POST", "path": "/api/v1/messages", "body": SEND_BODY, "ts": 1700000000,
            "nonce": "abc123"}
    good = signature(**args)
    args[change] = value
    assert not verify(**args, given=good)


@pytest.mark.parametrize(
    "given", ["", "7A1AFC75536CB239791D1E5849D82C07893CB05712FE7B71DE251CA2FA7BFCE5", "é" * 64, "0" * 64]
)
def test_malformed_or_wrong_signatures_are_rejected(given: str) -> None:
    """Empty, uppercase (the reference compares case-sensitively), non-ASCII and wrong values fail."""
    assert not verify(SECRET, "POST", "/api/v1/messages", SEND_BODY, 1700000000, "abc123", given)


def test_sign_headers_produce_a_verifiable_request() -> None:
    """sign_headers returns the four headers, with a fresh 32-hex nonce, that verify on the server side."""
    headers = signing.sign_headers("app1", SECRET, "POST", "/api/v1/messages", SEND_BODY, now=1700000000)
    assert set(headers) == {"X-App-Id", "X-Timestamp", "X-Nonce", "X-Signature"}
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Nonce"])
    assert headers["X-Timestamp"] == "1700000000"
    assert verify(SECRET, "POST", "/api/v1/messages", SEND_BODY, 1700000000, headers["X-Nonce"], headers["X-Signature"])
    fixed = signing.sign_headers("app1", SECRET, "POST", "/api/v1/messages", SEND_BODY, now=1700000000, nonce="abc123")
    assert fixed["X-Signature"] == "7a1afc75536cb239791d1e5849d82c07893cb05712fe7b71de251ca2fa7bfce5"


def test_webhook_signature_signs_timestamp_dot_body() -> None:
    """The webhook signature is HMAC-SHA256 over "<ts>.<raw body>" and verifies only unchanged."""
    body = b'{"event":"delivered"}'
    expected = hmac.new(b"whsec", b'1700000000.{"event":"delivered"}', hashlib.sha256).hexdigest()
    assert signing.webhook_signature("whsec", 1700000000, body) == expected
    assert signing.verify_webhook("whsec", 1700000000, body, expected)
    assert not signing.verify_webhook("whsec", 1700000001, body, expected)
    assert not signing.verify_webhook("whsec", 1700000000, body + b" ", expected)


# --- property: canonical form of arbitrary nested objects --------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8) | st.sampled_from(
    ["<", ">", "&", "\u2028", "\u2029", "\x00", "\b", "\f", "\x1f", "\x7f", "é", "/", "\\", '"']
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**25), max_value=10**25)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(10**6), max_value=10**6).map(float)
    | _text
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                       max_leaves=20)
_objects = st.dictionaries(_text, _values, min_size=1, max_size=5)


def _go_view(value: Any) -> Any:
    """What the reference sees after unmarshalling: every number a float64."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [_go_view(v) for v in value]
    return {k: _go_view(v) for k, v in value.items()}


def _same_json(a: Any, b: Any) -> bool:
    """Equality that does not let True pass for 1.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _keys_sorted_everywhere(value: Any) -> bool:
    if isinstance(value, dict):
        keys = [k.encode() for k in value]
        return keys == sorted(keys) and all(_keys_sorted_everywhere(v) for v in value.values())
    if isinstance(value, list):
        return all(_keys_sorted_everywhere(v) for v in value)
    return True


def _shuffled(value: Any, seed: int) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        items = items[seed % len(items):] + items[: seed % len(items)] if items else items
        return {k: _shuffled(v, seed + 1) for k, v in reversed(items)}
    if isinstance(value, list):
        return [_shuffled(v, seed) for v in value]
    return value


def _strip_strings(canon: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', canon)


@settings(max_examples=300, deadline=None)
@given(obj=_objects, seed=st.integers(0, 10), ensure_ascii=st.booleans(), spaced=st.booleans())
def test_canonical_body_is_the_go_view_whatever_the_formatting(
    obj: dict[str, Any], seed: int, ensure_ascii: bool, spaced: bool
) -> None:
    """For any nested object and any serialisation of it, the canonical form is the same Go-shaped text."""
    separators = (", ", ": ") if spaced else (",", ":")
    one = json.dumps(obj, ensure_ascii=ensure_ascii, separators=separators).encode()
    other = json.dumps(_shuffled(obj, seed), ensure_ascii=not ensure_ascii, indent=2 if spaced else None).encode()
    canon = canonical_body(one)
    assert canonical_body(other) == canon
    assert _same_json(json.loads(canon, parse_int=float), _go_view(obj))
    assert not re.search(r"\s", _strip_strings(canon))
    assert _keys_sorted_everywhere(json.loads(canon))
    assert not re.search(r"[<>&\u2028\u2029\x00-\x1f]", canon)
    assert canonical_body(canon.encode()) == canon


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_go_float_round_trips_and_uses_exponent_only_outside_go_range(value: float) -> None:
    """go_float prints a number that parses back to the same float64, in exponent form iff |x|<1e-6 or ≥1e21."""
    text = go_float(value)
    assert float(text) == value
    assert ("e" in text) == (value != 0 and (abs(value) < 1e-6 or abs(value) >= 1e21))
    assert "e0" not in text and "e+0" not in text and "e-0" not in text and not text.endswith(".0")


_plain_objects = st.dictionaries(_text, st.recursive(
    st.none() | st.booleans() | st.integers(-(10**15) + 1, 10**15 - 1) | _text | st.sampled_from(["\ud800", "x\udfff"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4), max_leaves=20), max_size=5)


@settings(max_examples=500, deadline=None)
@given(obj=_plain_objects | _objects, ensure_ascii=st.booleans(), noise=st.sampled_from([b"", b" ", b"\xff", b"]"]))
def test_the_quick_go_form_is_the_full_one_or_steps_aside(obj: dict[str, Any], ensure_ascii: bool,
                                                          noise: bytes) -> None:
    """The json-module shortcut prints exactly what the full Go printer does, or declines (None) and leaves it."""
    body = json.dumps(obj, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass") + noise
    quick = signing._go_form_by_json_module(body)
    try:
        full = signing._render(signing._parse(body), signing.GO)
    except BodyError:
        assert quick is None
        return
    assert quick in (None, full)


def test_send_bodies_take_the_quick_go_form() -> None:
    """A send body of the reference's SDKs (integers, strings, `<>&`, Chinese) takes the shortcut."""
    body = '{"channel_id": 3, "receiver": "a<b>&c", "template_params": {"name": "张三", "n": 12}}'.encode()
    assert signing._go_form_by_json_module(body) == canonical_body(body)
    assert canonical_body(body) == '{"channel_id":3,"receiver":"a\\u003cb\\u003e\\u0026c","template_params":{"n":12,"name":"张三"}}'
