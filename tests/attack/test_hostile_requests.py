"""Hostile requests (any bytes, JSON no encoder writes, odd and repeated headers), signed or not, against a live
gateway: the answer is a 4xx envelope or success, never 40001 or a 5xx, and a refusal stores no task and spends
no nonce (the classes named by issue 11 one by one: test_refusals_change_nothing.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import keys
from engine.store.models import Task
from tests.attack.hostile import (
    BATCH, HOSTILE_LITERALS, SEND, Hostile, good_body, hostile_requests, send_raw, signed_headers,
)
from tests.attack.mix import bad_send_bodies, new_clients, run_mix
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(180)

SETTLED_BAD_SENDS = [("receiver", "NaN"), ("channel_id", '"²"'), ("receiver", "[" * 3000 + "]" * 3000),
                     ("scheduled_at", '"not a date"'), ("template_params", '{"code": 1e400}'), ("tags", '"x"'),
                     ("channel_id", "123456789012345678901234567890"), ("receiver", '"' + "9" * 300_000 + '"')]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("hostile")
    with gateway(tmp, write_rules(tmp, CONSOLE_RULES), workers=False) as running:
        yield running


def envelope(status: int, raw: bytes, request: Hostile) -> dict[str, object]:
    """The answer's envelope, after checking it is one: JSON, an integer code, no 5xx and never 40001."""
    shown = f"{request.path} {request.headers!r} {request.body[:300]!r}"
    assert status < 500, f"HTTP {status} {raw[:300]!r} for {shown}"
    body = json.loads(raw)
    assert isinstance(body, dict) and isinstance(body.get("code"), int), f"not an envelope: {raw[:300]!r}"
    assert body["code"] != 40001, f"40001 for {shown}: {body}"
    assert body["code"] == 0 or body["code"] >= 400, body
    return body


def check_hostile(gw: Gateway, nonces: redis.Redis, request: Hostile, *, nonce_paths: tuple[str, ...]) -> None:
    """Send `request`: an envelope comes back, and a refusal stores no task and (on `nonce_paths`) spends no
    nonce."""
    before = Task.select().count()
    status, raw = send_raw(gw.url, request)
    answer = envelope(status, raw, request)
    if answer["code"] == 0:
        return
    assert Task.select().count() == before, f"refused ({answer}) but a task was stored"
    if request.signed and request.path in nonce_paths:
        assert not nonces.exists(keys.nonce(gw.app_id, request.nonce)), f"refused ({answer}) but the nonce is spent"


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_hostile_requests_get_an_envelope_and_a_refusal_changes_nothing(gw: Gateway, nonces: redis.Redis,
                                                                       data: st.DataObject) -> None:
    """Any hostile request, signed or not, answers success or a client-error envelope; a refused one leaves the
    task table as it was and its nonce unspent."""
    request = data.draw(hostile_requests(gw.app_id, gw.secret, HOSTILE_LITERALS))
    check_hostile(gw, nonces, request, nonce_paths=(SEND, BATCH))


@pytest.mark.parametrize("path", [SEND, BATCH])
def test_a_good_send_passes_the_same_client(gw: Gateway, path: str) -> None:
    """The raw client and signer the generators use get a plain send accepted (so refusals are the input's)."""
    body = json.dumps(good_body(path)).encode()
    request = Hostile(path, body)
    request.header("Content-Type", "application/json")
    for name, value in signed_headers(gw.app_id, gw.secret, path, body).items():
        request.header(name, value)
    status, raw = send_raw(gw.url, request)
    assert envelope(status, raw, request)["code"] == 0


def test_good_sends_are_all_accepted_while_other_apps_send_bad_ones(gw: Gateway) -> None:
    """Three apps sending good messages and three sending refused ones, all at once: every good send is
    accepted, every bad one refused with 10001 (413 for the 300 KB receiver, past the send route's body limit)."""
    good, bad = new_clients(gw, 3, "good"), new_clients(gw, 3, "bad")
    good_answers, bad_answers = run_mix(gw, good, bad, bad_send_bodies(SETTLED_BAD_SENDS), rounds=24)
    assert len(good_answers) == 72 and all(a["code"] == 0 for a in good_answers), \
        [a for a in good_answers if a["code"] != 0][:5]
    assert len(bad_answers) == 72 and {a["code"] for a in bad_answers} == {10001, 413}, \
        {str(a["code"]) + " " + str(a["message"])[:60] for a in bad_answers}
