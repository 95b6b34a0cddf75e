"""Hostile delivery reports: any body, content type and query string posted to the callback URL of each SMS
vendor account (past its token check, so the vendor's parser reads it) answers without a 5xx or 40001."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.attack.hostile import HOSTILE_LITERALS, Hostile, send_raw
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(180)

ACCOUNTS = {
    "ali": ("aliyun_sms", "{access_key_id: a, access_key_secret: b}"),
    "tc": ("tencent_sms", "{secret_id: a, secret_key: b, sdk_app_id: '1400000000'}"),
    "zr": ("zrwinfo_sms", "{accesskey: a, secret: b}"),
}
TOKEN = "t0ken"
CONSOLE = "  - {name: console, type: console}\n"
RULES = CONSOLE_RULES.replace(CONSOLE, CONSOLE + "".join(
    f"  - {{name: {name}, type: {kind}, config: {config}, templates: {{code: '1'}}, callback: {{token: {TOKEN}}}}}\n"
    for name, (kind, config) in ACCOUNTS.items()))
REPORT_SHAPES = [  # what the vendors post, with hostile values spliced in
    '[{"phone_number": @@, "send_time": @@, "report_time": @@, "success": @@, "err_code": @@, "biz_id": @@}]',
    '[{"mobile": @@, "report_status": @@, "errmsg": @@, "sid": @@, "user_receive_time": @@}]',
    '{"data": [{"mobile": @@, "status": @@, "msgId": @@}]}', "@@", "[@@]", '{"a": @@}',
]
CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x",
                 ""]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("callbacks")
    with gateway(tmp, write_rules(tmp, RULES), workers=False) as running:
        yield running


@st.composite
def reports(draw: st.DrawFn) -> Hostile:
    account = draw(st.sampled_from([*ACCOUNTS, "console", "nope", "%00", "..%2f..%2fadmin"]))
    query = draw(st.sampled_from([f"token={TOKEN}", f"token={TOKEN}&token=x", "", "token=", f"token={TOKEN}&a=%ff"]))
    if draw(st.booleans()):
        body = draw(st.binary(max_size=1500))
    else:
        shape = draw(st.sampled_from(REPORT_SHAPES))
        while "@@" in shape:
            shape = shape.replace("@@", draw(st.sampled_from([*HOSTILE_LITERALS[:30], '"13800138000"', '"DELIVRD"'])), 1)
        body = shape.encode()
    request = Hostile(f"/api/callback/{account}?{query}", body)
    request.header("Content-Type", draw(st.sampled_from(CONTENT_TYPES)))
    return request


@settings(max_examples=int(os.environ.get("MPUSH_FUZZ_EXAMPLES", "300")), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(request=reports())
def test_hostile_reports_answer_without_a_fault(gw: Gateway, request: Hostile) -> None:
    """Any report body, content type and query, for a real account or not, answers below 500 and never 40001."""
    for method in ("POST", "GET"):
        status, raw = send_raw(gw.url, request, method)
        assert status < 500, f"HTTP {status} {raw[:200]!r} for {method} {request.path} {request.body[:200]!r}"
        try:
            answer = json.loads(raw)
        except ValueError:
            continue  # a vendor's own reply format
        assert not (isinstance(answer, dict) and answer.get("code") == 40001), f"40001 for {request.path}"


@pytest.mark.parametrize("account", sorted(ACCOUNTS))
def test_a_deeply_nested_report_is_refused_as_not_json(gw: Gateway, account: str) -> None:
    """A 3000-deep JSON report, past the account's token check, is answered as unreadable in the vendor's reply
    format (zrwinfo's is HTTP 200 with result 1), not with 40001."""
    request = Hostile(f"/api/callback/{account}?token={TOKEN}", b"[" * 3000 + b"]" * 3000)
    request.header("Content-Type", "application/json")
    status, raw = send_raw(gw.url, request)
    assert status < 500 and b"40001" not in raw and b"internal" not in raw, (status, raw[:200])


REPORTS_WITH_A_SURROGATE = {
    "ali": b'[{"phone_number": "13800138000", "success": true, "err_code": "DELIVERED", "biz_id": "\\ud800"}]',
    "tc": b'[{"mobile": "13800138000", "report_status": "SUCCESS", "sid": "\\udfff"}]',
    "zr": b'{"data": [{"mobile": "13800138000", "status": "DELIVRD", "msgId": "\\ud800x"}]}',
}


@pytest.mark.parametrize("account", sorted(REPORTS_WITH_A_SURROGATE))
def test_a_report_with_a_lone_surrogate_is_refused_as_not_json(gw: Gateway, account: str) -> None:
    """A report whose message id is a lone surrogate (valid JSON, not storable text) is refused, not 40001."""
    request = Hostile(f"/api/callback/{account}?token={TOKEN}", REPORTS_WITH_A_SURROGATE[account])
    request.header("Content-Type", "application/json")
    status, raw = send_raw(gw.url, request)
    assert status < 500 and b"40001" not in raw and b"internal" not in raw, (status, raw[:200])


def test_read_json_refuses_what_json_lets_through() -> None:
    """The providers' JSON reader raises ValueError for nesting past 64 levels (before parsing: json itself
    raises RecursionError near 1000) and for lone surrogates, like any bad JSON; surrogate pairs and plain text read as before."""
    from providers.base import read_json

    with pytest.raises(ValueError, match="nested deeper than 64"):
        read_json(b"[" * 100_000 + b"]" * 100_000)
    assert read_json(b"[" * 64 + b"]" * 64) is not None
    with pytest.raises(ValueError, match="lone surrogate"):
        read_json('{"id": "\\ud800"}')
    assert read_json(b'[{"a": "\\ud83d\\ude00"}]') == [{"a": "\U0001f600"}]
