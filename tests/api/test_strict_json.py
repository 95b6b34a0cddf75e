"""Client JSON is read strictly: NaN, Infinity, numbers beyond a float and deep nesting are a 400-class refusal
(10001) before anything else happens, never an internal error."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from api.errors import MAX_JSON_DEPTH, strict_json
from engine.signing import sign_headers
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(120)

HOSTILE = [b'{"channel_id": 1, "receiver": NaN}', b'{"channel_id": Infinity}', b'{"x": 1e400}',
           b'{"x": -1e400}', b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
           b'{"receiver": "\xff\xfe"}']


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("strict")
    with gateway(tmp, write_rules(tmp, CONSOLE_RULES), workers=False) as running:
        yield running


def post_signed(gw: Gateway, body: bytes) -> dict[str, object]:
    """The body with a real app id and signature headers (signed over `{}`: the body is read before the
    signature is checked, so only an app id is needed to reach the parser)."""
    headers = sign_headers(gw.app_id, gw.secret, "POST", "/api/v1/messages", b"{}", now=int(time.time()),
                           nonce=uuid.uuid4().hex)
    answer = requests.post(gw.url + "/api/v1/messages", data=body, timeout=10,
                           headers={"Content-Type": "application/json", **headers})
    return dict(answer.json())


@pytest.mark.parametrize("body", HOSTILE, ids=["nan", "infinity", "huge", "huge-negative", "deep-array",
                                               "deep-object", "not-utf8"])
def test_hostile_json_is_a_bad_request_signed_or_not(gw: Gateway, body: bytes) -> None:
    """Each hostile body answers 10001 and never 40001; the admin API answers 400 to the same."""
    assert post_signed(gw, body)["code"] == 10001
    admin = requests.post(gw.url + "/api/admin/rules/explain", data=body, timeout=10,
                          headers={"Authorization": "Bearer admin-token"})
    assert admin.json()["code"] == 400


def test_depth_up_to_the_limit_is_read() -> None:
    """Nesting to exactly MAX_JSON_DEPTH levels parses; one more is refused."""
    ok = b'{"a":' * (MAX_JSON_DEPTH - 1) + b"[1]" + b"}" * (MAX_JSON_DEPTH - 1)
    assert strict_json(ok)
    with pytest.raises(ValueError):
        strict_json(b"[" + ok + b"]")


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=20))
def test_strict_json_reads_what_the_standard_library_writes(value: object) -> None:
    """Any finite JSON value within the depth limit reads back equal, brackets inside strings included."""
    text = json.dumps(value, ensure_ascii=False).encode()
    assert strict_json(text) == value
