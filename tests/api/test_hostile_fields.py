"""Hostile fields and headers: each is refused with a client error that names it and changes nothing (no task,
no quota unit, no nonce used), and one request's failure never touches the requests accepted beside it."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from api import public
from engine import intake
from engine.limits import Call
from engine.signing import sign_headers
from engine.store import repo
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(120)

RULES = CONSOLE_RULES + """
quotas:
  - {name: per-receiver, when: {channel: otp}, key: [receiver], limit: 3, per: 1h}
"""

GOOD = {"channel_id": 1, "receiver": "13800138000", "template_params": {"code": "1"}}
DAY = 86_400


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("hostile")
    with gateway(tmp, write_rules(tmp, RULES), workers=False) as running:
        yield running


def post(gw: Gateway, path: str, body: dict[str, Any], nonce: str, extra: dict[str, str] | None = None
         ) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    headers = sign_headers(gw.app_id, gw.secret, "POST", path, raw, now=int(time.time()), nonce=nonce)
    answer = requests.post(gw.url + path, data=raw, timeout=10,
                           headers={"Content-Type": "application/json", **headers, **(extra or {})})
    return dict(answer.json())


def later(days: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + days * DAY))


HOSTILE_FIELDS = {
    "surrogate-receiver": {**GOOD, "receiver": "\ud800"},
    "control-receiver": {**GOOD, "receiver": "138\x00"},
    "superscript-channel": {**GOOD, "channel_id": "²"},
    "huge-channel": {**GOOD, "channel_id": 2**40},
    "year-10000": {**GOOD, "scheduled_at": "9999-12-31T23:59:59-14:00"},
    "beyond-schedule-days": {**GOOD, "scheduled_at": later(91)},
    "long-param": {**GOOD, "template_params": {"code": "x" * 2001}},
    "many-params": {**GOOD, "template_params": {f"p{i}": "1" for i in range(65)}},
    "surrogate-param": {**GOOD, "template_params": {"code": "\udfff"}},
    "many-tags": {**GOOD, "tags": [f"t{i}" for i in range(21)]},
    "long-tag": {**GOOD, "tags": ["t" * 65]},
    "long-signature-name": {**GOOD, "signature_name": "s" * 65},
}


@pytest.mark.parametrize("body", HOSTILE_FIELDS.values(), ids=HOSTILE_FIELDS.keys())
def test_a_hostile_field_is_refused_and_leaves_its_nonce_unused(gw: Gateway, body: dict[str, Any]) -> None:
    """The field is refused with 10001, no task is stored, and the same nonce then carries a good send."""
    before = repo.task_counts()
    nonce = uuid.uuid4().hex
    answer = post(gw, "/api/v1/messages", body, nonce)
    assert answer["code"] == 10001, answer
    assert repo.task_counts() == before
    assert post(gw, "/api/v1/messages", {**GOOD, "receiver": fresh_number()}, nonce)["code"] == 0


def fresh_number() -> str:
    """A mobile number no other test sends to, so the per-receiver quota never refuses it."""
    return "139" + str(uuid.uuid4().int)[:8]


def test_a_batch_without_receivers_is_a_bad_request(gw: Gateway) -> None:
    """`receivers: []` answers 10001 (it used to be an internal error)."""
    body = {"channel_id": 1, "receivers": [], "template_params": {"code": "1"}}
    assert post(gw, "/api/v1/messages/batch", body, uuid.uuid4().hex)["code"] == 10001


def test_a_refused_batch_gives_its_nonce_back(gw: Gateway) -> None:
    """A batch refused after its call was counted leaves the nonce free for the corrected request."""
    nonce = uuid.uuid4().hex
    bad = {"channel_id": 1, "receivers": ["13800138000"], "template_params": {}}
    assert post(gw, "/api/v1/messages/batch", bad, nonce)["code"] == 10001
    good = {**bad, "template_params": {"code": "1"}, "receivers": ["13800138009"]}
    assert post(gw, "/api/v1/messages/batch", good, nonce)["code"] == 0


def test_a_schedule_within_the_limit_is_accepted(gw: Gateway) -> None:
    """A send scheduled 89 days ahead is accepted as scheduled."""
    answer = post(gw, "/api/v1/messages", {**GOOD, "receiver": "13800138001", "scheduled_at": later(89)},
                  uuid.uuid4().hex)
    assert answer["code"] == 0 and answer["data"]["status"] == "scheduled"


@pytest.mark.parametrize("stamp", ["+{now}", "{now}.0", "1 {now}", "²", "١٧٠٠٠٠٠٠٠٠", "-1", "99999999999999999999"])
def test_a_timestamp_not_written_as_plain_digits_is_invalid(gw: Gateway, stamp: str) -> None:
    """X-Timestamp is exactly ASCII decimal digits: a sign, a fraction, spaces or other digits answer 20004."""
    raw = json.dumps(GOOD).encode()
    headers = sign_headers(gw.app_id, gw.secret, "POST", "/api/v1/messages", raw, now=int(time.time()),
                           nonce=uuid.uuid4().hex)
    headers["X-Timestamp"] = stamp.format(now=headers["X-Timestamp"])
    assert raw_post(gw, "/api/v1/messages", raw, list(headers.items()))["code"] == 20004


@pytest.mark.parametrize("nonce", ["a b", "x" * 65, "é", "a,b"])
def test_a_nonce_outside_its_charset_is_unauthorized(gw: Gateway, nonce: str) -> None:
    """X-Nonce is 1-64 URL-safe characters; anything else answers 20001 before the signature is checked."""
    raw = json.dumps(GOOD).encode()
    headers = sign_headers(gw.app_id, gw.secret, "POST", "/api/v1/messages", raw, now=int(time.time()), nonce=nonce)
    answer = raw_post(gw, "/api/v1/messages", raw, list(headers.items()))
    assert answer["code"] == 20001


def raw_post(gw: Gateway, path: str, raw: bytes, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """POST with exactly these header lines (repeats included), which requests cannot send."""
    address = urlsplit(gw.url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    connection.putrequest("POST", path)
    for name, value in [("Content-Type", "application/json"), ("Content-Length", str(len(raw))), *headers]:
        connection.putheader(name, value.encode("utf-8"))
    connection.endheaders(raw)
    result: dict[str, Any] = json.loads(connection.getresponse().read())
    connection.close()
    return result


@pytest.mark.parametrize("path", ["/api/v1/messages", "/api/v1/messages/batch"])
def test_a_repeated_signature_header_is_refused_not_last_wins(gw: Gateway, path: str) -> None:
    """Two X-Signature lines (a wrong one, then the right one) answer 20003 rather than checking the last."""
    body = GOOD if path.endswith("messages") else {**GOOD, "receivers": ["13800138002"]}
    raw = json.dumps(body).encode()
    headers = sign_headers(gw.app_id, gw.secret, "POST", path, raw, now=int(time.time()), nonce=uuid.uuid4().hex)
    lines = [(name, value) for name, value in headers.items() if name != "X-Signature"]
    answer = raw_post(gw, path, raw, [*lines, ("X-Signature", "0" * 64), ("X-Signature", headers["X-Signature"])])
    assert answer["code"] == 20003
    assert raw_post(gw, path, raw, [*lines, ("X-Signature", headers["X-Signature"])])["code"] == 0


def test_the_admin_token_needs_its_bearer_scheme(gw: Gateway) -> None:
    """`Authorization: <token>` without `Bearer ` is refused; with it the same token is accepted."""
    assert requests.get(gw.url + "/api/admin/apps", headers={"Authorization": "admin-token"}, timeout=10).status_code == 401
    assert requests.get(gw.url + "/api/admin/apps", headers={"Authorization": "bearer admin-token"},
                        timeout=10).status_code == 401
    assert requests.get(gw.url + "/api/admin/apps", headers={"Authorization": "Bearer admin-token"},
                        timeout=10).status_code == 200


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/api/admin/apps", {"name": "x", "daily_quota": -1}),
    ("POST", "/api/admin/apps", {"name": "x", "rate_limit": "many"}),
    ("POST", "/api/admin/apps", {"name": "x", "daily_quota": 2**70}),
    ("POST", "/api/admin/apps", {"name": "x", "webhook_url": ["http://a"]}),
    ("GET", "/api/admin/tasks?page=" + "9" * 30, None),
    ("GET", "/api/admin/tasks?page_size=%D9%A1", None),
    ("GET", "/api/admin/tasks/search?page_size=0", None),
])
def test_admin_input_errors_are_400(gw: Gateway, method: str, path: str, body: Any) -> None:
    """A negative quota, a huge page, non-ASCII digits, a list for a URL: 400 naming the field, never 40001."""
    answer = requests.request(method, gw.url + path, json=body, timeout=10,
                              headers={"Authorization": "Bearer admin-token"})
    assert answer.status_code == 400 and answer.json()["code"] == 400, answer.text


def test_a_request_the_database_refuses_fails_alone(gw: Gateway) -> None:
    """In one group of single sends from two apps, a row SQLite cannot store (content with a lone surrogate,
    past parsing) fails its own request; the others are accepted, and its quota unit and nonce are given back."""
    other, _ = repo.create_app("other", gw.svc.key, daily_quota=100, rate_limit=0)
    app = repo.get_app(gw.app_id)
    now = time.time()

    def request(sender: Any, to: str, code: str = "1") -> tuple[Any, intake.SendRequest]:
        return sender, intake.SendRequest(channel=1, receivers=(to,), params={"code": code})

    group = [request(app, "13800138070"), request(other, "13800138073", code="\ud800"),
             request(other, "13800138071"), request(app, "13800138072")]
    calls = [Call(sender.app_id, uuid.uuid4().hex, 0, 600) for sender, _ in group]
    outcomes = intake.accept_many(gw.svc, group, now, calls)
    assert [isinstance(outcome, intake.Accepted) for outcome in outcomes] == [True, False, True, True]
    assert gw.svc.limits.used(intake.app_quota_check(other), now) == 1
    assert gw.svc.limits.admit_calls([calls[1]], now) == ["ok"]  # the refused request's nonce is unused
    assert gw.svc.limits.admit_calls([calls[2]], now) == ["replay"]


def test_one_bad_send_in_a_lane_group_never_fails_its_neighbours(gw: Gateway) -> None:
    """`send_many` with good sends of two apps around hostile ones: every good send is accepted."""
    other, other_secret = repo.create_app("neighbour", gw.svc.key, daily_quota=0, rate_limit=0)
    bodies = [({**GOOD, "receiver": "13800138010"}, gw.app_id, gw.secret),
              ({**GOOD, "receiver": "\ud800"}, other.app_id, other_secret),
              ({**GOOD, "receiver": "13800138011"}, other.app_id, other_secret),
              ({**GOOD, "scheduled_at": "9999-12-31T23:59:59-14:00"}, gw.app_id, gw.secret),
              ({**GOOD, "channel_id": "²"}, other.app_id, other_secret),
              ({**GOOD, "receiver": "13800138012"}, gw.app_id, gw.secret)]
    sends = []
    for body, app_id, secret in bodies:
        raw = json.dumps(body).encode()
        headers = sign_headers(app_id, secret, "POST", "/api/v1/messages", raw, now=int(time.time()),
                               nonce=uuid.uuid4().hex)
        sends.append(public.SignedSend("POST", "/api/v1/messages", {k.lower(): v for k, v in headers.items()},
                                       raw, ""))
    outcomes = public.send_many(gw.svc, sends)
    codes = [0 if isinstance(outcome, dict) else getattr(outcome, "code", 40001) for outcome in outcomes]
    assert codes == [0, 10001, 0, 10001, 10001, 0]


def test_field_limits_follow_their_settings() -> None:
    """MPUSH_MAX_PARAM_CHARS and MPUSH_MAX_SCHEDULE_DAYS move the limits they name."""
    limits = intake.FieldLimits(param_chars=5, schedule_days=1)
    now = time.time()
    body = {"channel_id": 1, "receiver": "1", "template_params": {"code": "123456"}}
    with pytest.raises(intake.Refused, match="template_params.code longer than 5"):
        intake.parse(body, batch=False, now=now, limits=limits)
    body = {**body, "template_params": {"code": "12345"}, "scheduled_at": later(2)}
    with pytest.raises(intake.Refused, match="more than 1 days ahead"):
        intake.parse(body, batch=False, now=now, limits=limits)
    assert intake.parse({**body, "scheduled_at": later(0.5)}, batch=False, now=now, limits=limits).params



def test_a_number_written_another_way_is_the_same_receiver_for_its_quota(gw: Gateway) -> None:
    """Six spellings of one number pass a 3-per-hour per-receiver quota three times, stored in E.164 with the
    spelling the client used kept beside it."""
    forms = ["13900139000", "+8613900139000", "+86 139 0013 9000", "008613900139000", "139-0013-9000",
             "１３９００１３９０００"]
    answers = [post(gw, "/api/v1/messages", {**GOOD, "receiver": form}, uuid.uuid4().hex) for form in forms]
    assert [answer["code"] for answer in answers] == [0, 0, 0, 30002, 30002, 30002]
    tasks = [repo.get_task(answer["data"]["task_id"]) for answer in answers[:3]]
    assert [(task.receiver, task.receiver_as_sent) for task in tasks] == [
        ("+8613900139000", "13900139000"), ("+8613900139000", None), ("+8613900139000", "+86 139 0013 9000")]


def test_text_that_is_no_phone_number_is_refused_on_an_sms_channel(gw: Gateway) -> None:
    """`notaphone` answers 10001 naming the channel type instead of being "delivered"."""
    answer = post(gw, "/api/v1/messages", {**GOOD, "receiver": "notaphone"}, uuid.uuid4().hex)
    assert answer["code"] == 10001 and "sms" in answer["message"] and "phone number" in answer["message"]
