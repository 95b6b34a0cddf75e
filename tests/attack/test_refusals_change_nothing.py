"""The hostile-request classes of issue 11 items 1 and 2: lone surrogates, far-future `scheduled_at`, `receivers:
[]`, blank bodies answer 10001 (never 40001), never fail their concurrent neighbours, and a refused request spends
no nonce and no quota unit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
import requests

from tests.attack.hostile import BATCH, SEND, Hostile, send_raw, signed_headers
from tests.attack.mix import bad_send_bodies, new_clients, run_mix
from tests.attack.test_hostile_requests import check_hostile
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(180)

FAILING_SENDS = [("receiver", '"\\ud800"'), ("signature_name", '"\\udfff x"'),
                 ("scheduled_at", '"9999-12-31T23:59:59-14:00"')]
QUOTA_RULES = CONSOLE_RULES + """
quotas:
  - {name: otp-per-receiver, when: {channel: otp}, key: [app, receiver], limit: 3, per: 1h}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("pending")
    with gateway(tmp, write_rules(tmp, QUOTA_RULES), workers=False) as running:
        yield running


@pytest.mark.parametrize(("path", "field", "literal"), [
    (SEND, "receiver", '"\\ud800"'), (SEND, "signature_name", '"\\ud800"'),
    (SEND, "scheduled_at", '"9999-12-31T23:59:59-14:00"'), (BATCH, "receivers", "[]"),
    (BATCH, "receivers", '["\\ud800"]'), (BATCH, "scheduled_at", '"9999-12-31T23:59:59-14:00"'),
    (BATCH, "channel_id", '"²"'),
])
def test_each_known_input_is_refused_with_10001_and_its_nonce_unspent(gw: Gateway, nonces: redis.Redis, path: str,
                                                                      field: str, literal: str) -> None:
    """Each input the issue names answers 10001 (not 40001), stores no task and spends no nonce."""
    body = {"channel_id": 1, "template_params": {"code": "1"},
            **({"receivers": ["13800138000"]} if path == BATCH else {"receiver": "13800138000"}), field: "@@"}
    raw = json.dumps(body).replace('"@@"', literal).encode()
    request = Hostile(path, raw)
    request.header("Content-Type", "application/json")
    headers = signed_headers(gw.app_id, gw.secret, path, raw)
    request.signed, request.nonce = True, headers["X-Nonce"]
    for name, value in headers.items():
        request.header(name, value)
    check_hostile(gw, nonces, request, nonce_paths=(SEND, BATCH))
    status, answer = send_raw(gw.url, request)  # the same nonce again: refused the same way, not as a replay
    assert json.loads(answer)["code"] == 10001, answer


@pytest.mark.parametrize("path", [SEND, BATCH])
@pytest.mark.parametrize("body", [b" ", b" \n ", b"\t\r\n", b"\x0b", b"\x0c"],
                         ids=["space", "newline", "tab", "vertical-tab", "form-feed"])
def test_a_blank_body_is_a_bad_request(gw: Gateway, path: str, body: bytes) -> None:
    """A whitespace-only body with a known app id (any signature) answers 10001, never 40001 (the signature
    check's canonical form raises BodyError on it, and nothing turns that into a refusal)."""
    request = Hostile(path, body)
    request.header("Content-Type", "application/json")
    for name, value in signed_headers(gw.app_id, gw.secret, path, body).items():
        request.header(name, value)
    status, answer = send_raw(gw.url, request)
    assert json.loads(answer)["code"] == 10001, answer


def test_good_sends_are_all_accepted_while_other_apps_send_failing_ones(gw: Gateway) -> None:
    """Three apps sending good messages while three send inputs that used to raise: every good send accepted."""
    good, bad = new_clients(gw, 3, "good"), new_clients(gw, 3, "bad")
    good_answers, bad_answers = run_mix(gw, good, bad, bad_send_bodies(FAILING_SENDS), rounds=24)
    assert all(a["code"] == 0 for a in good_answers), \
        f"{sum(a['code'] != 0 for a in good_answers)} of {len(good_answers)} good sends refused: " \
        f"{ {str(a['code']) + ' ' + str(a['message']) for a in good_answers if a['code'] != 0} }"
    assert {a["code"] for a in bad_answers} == {10001}, {str(a["code"]) for a in bad_answers}


def test_refused_sends_use_no_quota_unit(gw: Gateway) -> None:
    """Five sends refused after the quota was counted leave the receiver's 3-per-hour quota untouched."""
    client = new_clients(gw, 1, "quota")[0]
    receiver = "13900139000"
    for literal in ['"\\ud800"'] * 5:
        body = json.dumps({"channel_id": 1, "receiver": receiver, "template_params": {"code": "1"},
                           "signature_name": "@@"}).replace('"@@"', literal).encode()
        status, raw = send_raw(gw.url, _signed(client.app_id, client.secret, body))
        assert json.loads(raw)["code"] != 0
    for _ in range(3):
        body = json.dumps({"channel_id": 1, "receiver": receiver, "template_params": {"code": "1"}}).encode()
        status, raw = send_raw(gw.url, _signed(client.app_id, client.secret, body))
        assert json.loads(raw)["code"] == 0, raw


def _signed(app_id: str, secret: str, body: bytes) -> Hostile:
    request = Hostile(SEND, body)
    request.header("Content-Type", "application/json")
    for name, value in signed_headers(app_id, secret, SEND, body).items():
        request.header(name, value)
    return request


@pytest.mark.parametrize("query", ["page=461168601842738792", "page=99999999999999999999", "page_size=99999999999"])
def test_an_admin_page_past_any_table_is_a_bad_request(gw: Gateway, query: str) -> None:
    """A page number or size no table can reach answers 400 (issue 11 item 10), not 40001 (found by schemathesis)."""
    answer = requests.get(f"{gw.url}/api/admin/tasks?{query}", headers={"Authorization": "Bearer admin-token"},
                          timeout=10)
    assert answer.status_code == 400 and answer.json()["code"] == 400, answer.text
