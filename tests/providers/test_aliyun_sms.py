"""Aliyun SMS: ACS3 signing against the published vector, SendSms against a verifying mock, SmsReport."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

import pytest
from dataclasses import replace
from hypothesis import given
from hypothesis import strategies as st

from engine.transport import HttpTransport
from providers import aliyun_sms, registry
from providers.base import Account, CallbackRequest, HttpResponse, Message, Outcome, SendResult
from tests.providers import contract
from tests.providers.sms_mocks import (
    aliyun_batch_vendor, aliyun_business, aliyun_check, aliyun_error, aliyun_vendor, contract_vendor,
)
from tests.providers.sms_support import live_context, push_request, stored_text
from tests.support.loopback import LoopbackServer, Reply, loopback

AK, SECRET = "LTAI5tMockAccessKey", "MockAccessKeySecret0123456789abcd"
NOW = datetime(2026, 3, 1, 8, 30, 0, tzinfo=timezone.utc)
TASK_IDS = itertools.count(1001)
SCRIPTED: dict[str, Reply] = {
    "13800000001": aliyun_business("isv.BUSINESS_LIMIT_CONTROL", "触发号码天级流控Permits:10"),
    "13800000002": aliyun_business("isv.MOBILE_NUMBER_ILLEGAL", "手机号码格式错误"),
    "13800000003": aliyun_business("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板"),
    "13800000004": aliyun_business("isv.AMOUNT_NOT_ENOUGH", "账户余额不足"),
    "13800000005": aliyun_business("isv.SMS_SIGNATURE_ILLEGAL", "该账号下找不到对应签名"),
    "13800000006": aliyun_business("isp.SYSTEM_ERROR", "运营商网关错误"),
    "13800000007": aliyun_error(400, "Throttling.User", "Request was denied due to user flow control."),
    "13800000008": aliyun_error(503, "ServiceUnavailable", "The request has failed due to a temporary failure."),
    "13800000009": Reply(502, "<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"}),
    "13800000010": Reply(200, "OK"),
    "13800000011": Reply(200, json.dumps([{"Code": "OK"}])),
    "13800000012": Reply(200, json.dumps({"Code": "OK", "Message": "OK"})),
    "13800000013": Reply(200, json.dumps({"Code": "OK", "BizId": "1^0"}), delay=1.0),
}


def make_message(receiver: str = "13800138000", attempt: int = 1, **changes: object) -> Message:
    """A fresh task each call, so the shared mock vendor never sees a nonce twice by accident."""
    fields: dict[str, object] = {
        "task_id": f"task-{next(TASK_IDS)}", "attempt": attempt, "receiver": receiver, "channel_type": "sms",
        "text": "您的验证码是123456，5分钟内有效。", "template_code": "SMS_154950909",
        "params": {"code": "123456", "product": "木雷"}, "sign_name": "阿里云短信测试",
    }
    fields.update(changes)
    return Message(**fields)  # type: ignore[arg-type]


def make_account(base_url: str = "https://dysmsapi.aliyuncs.com", secret: str = SECRET, **callback: object) -> Account:
    config = {"access_key_id": AK, "access_key_secret": secret, "base_url": base_url, "timeout": 0.3}
    return Account("aliyun-main", "aliyun_sms", config, callback)


@pytest.fixture(scope="module")
def shared_vendor() -> Iterator[LoopbackServer]:
    with loopback(aliyun_vendor({AK: SECRET}, SCRIPTED.get)) as server:
        yield server


@pytest.fixture
def vendor(shared_vendor: LoopbackServer) -> LoopbackServer:
    shared_vendor.requests.clear()
    return shared_vendor


def send_to(server: LoopbackServer, message: Message, secret: str = SECRET) -> SendResult:
    return aliyun_sms.send(message, make_account(server.url, secret), live_context())


def test_signature_matches_the_published_acs3_vector() -> None:
    """The V3 signature doc's fixed RunInstances example signs to its published value."""
    headers = {
        "host": "ecs.cn-shanghai.aliyuncs.com",
        "x-acs-action": "RunInstances",
        "x-acs-version": "2014-05-26",
        "x-acs-date": "2023-10-26T10:22:32Z",
        "x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
        "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    }
    query = {"ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd", "RegionId": "cn-shanghai"}
    authorization = aliyun_sms.acs3_authorization(
        "YourAccessKeyId", "YourAccessKeySecret", "POST", "/", query, headers, aliyun_sms.EMPTY_SHA256
    )
    assert authorization == (
        "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;"
        "x-acs-date;x-acs-signature-nonce;x-acs-version,"
        "Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    )


def test_headers_differing_only_by_case_merge_their_values_in_order() -> None:
    """`x-acs-test: http` and `x-acs-TEST: https` sign as one header `x-acs-test:http,https`, named once."""
    canonical, signed = aliyun_sms.canonical_headers({"x-acs-test": "http", "x-acs-TEST": " https "})
    assert (canonical, signed) == ("x-acs-test:http,https\n", "x-acs-test")


def test_capitalised_header_names_sign_like_lower_case_ones() -> None:
    """A capitalised name (`Host`) signs without error and exactly as its lower-case spelling."""
    lower = {"host": "dysmsapi.aliyuncs.com", "x-acs-action": "SendSms"}
    capital = {"Host": "dysmsapi.aliyuncs.com", "X-Acs-Action": "SendSms"}
    sign = [aliyun_sms.acs3_authorization(AK, SECRET, "POST", "/", {}, h, aliyun_sms.EMPTY_SHA256)
            for h in (lower, capital)]
    assert sign[0] == sign[1]


_HEADER_NAME = st.text(alphabet="abcdefgxyzABCDEFGXYZ-", min_size=1, max_size=8)


@given(st.lists(st.tuples(_HEADER_NAME, st.text(alphabet="ab c", max_size=5)), min_size=1, max_size=6,
                unique_by=lambda pair: pair[0]))
def test_canonical_headers_are_one_line_per_name_case_insensitively(pairs: list[tuple[str, str]]) -> None:
    """Each distinct lower-cased name gives one sorted line holding its trimmed values in the order given, and the
    signed-header list names exactly those names."""
    canonical, signed = aliyun_sms.canonical_headers(dict(pairs))
    expected: dict[str, list[str]] = {}
    for name, value in pairs:
        expected.setdefault(name.lower(), []).append(value.strip())
    assert signed.split(";") == sorted(expected)
    assert canonical == "".join(f"{name}:{','.join(expected[name])}\n" for name in sorted(expected))


def test_every_header_of_a_sendsms_call_is_signed_or_stated_unsigned() -> None:
    """What build_request puts on a call is exactly its signed headers plus the stated unsigned ones."""
    request = aliyun_sms.build_request(make_message(), make_account(), NOW)
    signed = request.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    sent = {name.lower() for name in request.headers}
    assert sent - set(signed) <= set(aliyun_sms.UNSIGNED_HEADERS) and "content-type" not in sent


def test_the_vendor_refuses_an_unsigned_extra_header(vendor: LoopbackServer) -> None:
    """The mock vendor checks the signed header set: a header on the wire outside it fails the call."""
    request = aliyun_sms.build_request(make_message(), make_account(vendor.url), datetime.now(timezone.utc))
    tampered = replace(request, headers={**request.headers, "x-forwarded-for": "10.0.0.1"})
    answer = json.loads(HttpTransport()(tampered).body)
    assert answer["Code"] == "IncompleteSignature" and "x-forwarded-for" in answer["Message"]


def test_canonical_query_uses_rfc3986_encoding() -> None:
    """Spaces become %20, `*` becomes %2A, `~` stays, and names are sorted."""
    assert aliyun_sms.canonical_query({"b": "a b*c~", "A": "中"}) == "A=%E4%B8%AD&b=a%20b%2Ac~"


@given(st.dictionaries(st.text(min_size=1), st.text()))
def test_canonical_query_round_trips(query: dict[str, str]) -> None:
    """Decoding the canonical query gives back exactly the parameters encoded."""
    assert dict(parse_qsl(aliyun_sms.canonical_query(query), keep_blank_values=True)) == query


def test_build_request_carries_sendsms_parameters_in_the_signed_query() -> None:
    """PhoneNumbers, SignName, TemplateCode, TemplateParam (JSON, in order) and OutId go in the query."""
    request = aliyun_sms.build_request(make_message(task_id="task-1001"), make_account(), NOW)
    query = dict(parse_qsl(urlsplit(request.url).query))
    assert request.method == "POST" and request.body == b"" and request.timeout == 0.3
    assert urlsplit(request.url).netloc == "dysmsapi.aliyuncs.com"
    assert query == {
        "PhoneNumbers": "13800138000", "SignName": "阿里云短信测试", "TemplateCode": "SMS_154950909",
        "TemplateParam": '{"code":"123456","product":"木雷"}', "OutId": "task-1001-1",
    }
    assert request.headers["x-acs-action"] == "SendSms" and request.headers["x-acs-version"] == "2017-05-25"
    assert request.headers["x-acs-date"] == "2026-03-01T08:30:00Z"
    assert request.headers["authorization"].startswith(f"ACS3-HMAC-SHA256 Credential={AK},")


def test_nonce_is_fixed_per_attempt_and_differs_between_attempts() -> None:
    """Rebuilding one attempt repeats its nonce (so Aliyun refuses a replay); a new attempt gets a new one."""
    first = aliyun_sms.build_request(make_message(task_id="t", attempt=1), make_account(), NOW)
    again = aliyun_sms.build_request(make_message(task_id="t", attempt=1), make_account(), NOW + timedelta(seconds=5))
    second = aliyun_sms.build_request(make_message(task_id="t", attempt=2), make_account(), NOW)
    nonce = "x-acs-signature-nonce"
    assert first.headers[nonce] == again.headers[nonce] != second.headers[nonce]


def test_template_param_is_omitted_without_params() -> None:
    """A template without variables sends no TemplateParam at all."""
    request = aliyun_sms.build_request(make_message(params={}), make_account(), NOW)
    assert "TemplateParam" not in dict(parse_qsl(urlsplit(request.url).query))


def test_accepted_send_awaits_its_delivery_report(vendor: LoopbackServer) -> None:
    """Code OK from the verifying mock is ok, not final, with BizId as the provider message id."""
    result = send_to(vendor, make_message())
    assert result.outcome is Outcome.OK and not result.final
    assert result.provider_message_id == "900619746936498440^0"
    assert result.request_summary["template_params"] == {"code": "123456", "product": "木雷"}
    assert result.response_summary["RequestId"] == "F655A8D5-MOCK"
    assert len(vendor.requests) == 1


def test_wrong_secret_is_refused_by_signature_check(vendor: LoopbackServer) -> None:
    """A signature made with the wrong secret comes back SignatureDoesNotMatch, permanent."""
    result = send_to(vendor, make_message(), secret="not-the-secret")
    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "SignatureDoesNotMatch")


def test_replayed_attempt_is_refused_as_nonce_reuse(vendor: LoopbackServer) -> None:
    """Sending the same attempt twice is refused by Aliyun's nonce check, and its outcome is unknown: the first one
    reached Aliyun, so it is never resent blindly."""
    message = make_message()
    assert send_to(vendor, message).ok
    replay = send_to(vendor, message)
    assert (replay.error_class, replay.error_code) == ("unknown", "SignatureNonceUsed")


@pytest.mark.parametrize(
    ("receiver", "outcome", "code", "error_class"),
    [
        ("13800000001", Outcome.RETRYABLE, "isv.BUSINESS_LIMIT_CONTROL", "throttled"),
        ("13800000002", Outcome.PERMANENT, "isv.MOBILE_NUMBER_ILLEGAL", "receiver"),
        ("13800000003", Outcome.PERMANENT, "isv.SMS_TEMPLATE_ILLEGAL", "content"),
        ("13800000004", Outcome.PERMANENT, "isv.AMOUNT_NOT_ENOUGH", "account"),
        ("13800000005", Outcome.PERMANENT, "isv.SMS_SIGNATURE_ILLEGAL", "content"),
        ("13800000006", Outcome.RETRYABLE, "isp.SYSTEM_ERROR", "transient"),
        ("13800000007", Outcome.RETRYABLE, "Throttling.User", "throttled"),
        ("13800000008", Outcome.RETRYABLE, "ServiceUnavailable", "transient"),
    ],
)
def test_vendor_errors_keep_code_and_message_and_are_classified(
    vendor: LoopbackServer, receiver: str, outcome: Outcome, code: str, error_class: str
) -> None:
    """Each vendor error keeps Aliyun's code and message and takes its class from the code table."""
    result = send_to(vendor, make_message(receiver))
    assert (result.outcome, result.error_code, result.error_class) == (outcome, code, error_class)
    assert result.error_message == json.loads(SCRIPTED[receiver].body)["Message"]


@pytest.mark.parametrize("receiver", ["13800000009", "13800000010", "13800000011"])
def test_garbage_answers_are_retryable_bad_responses(vendor: LoopbackServer, receiver: str) -> None:
    """HTML, plain text or a JSON array is a retryable bad_response."""
    result = send_to(vendor, make_message(receiver))
    assert (result.outcome, result.error_code, result.error_class) == (Outcome.RETRYABLE, "bad_response", "transient")


def test_ok_without_bizid_is_of_unknown_outcome(vendor: LoopbackServer) -> None:
    """Code OK without a BizId may have been sent, and SendSms is not idempotent: unknown, never a plain retry."""
    result = send_to(vendor, make_message("13800000012"))
    assert (result.error_class, result.error_code, result.final) == ("unknown", "no_biz_id", False)


def test_slow_vendor_times_out_as_retryable_network_error(vendor: LoopbackServer) -> None:
    """An answer slower than the configured timeout is a retryable network failure."""
    result = send_to(vendor, make_message("13800000013"))
    assert (result.outcome, result.error_code) == (Outcome.RETRYABLE, "network")


@pytest.mark.parametrize(
    "changes", [{"template_code": ""}, {"receiver": ""}, {"sign_name": ""}], ids=["template", "receiver", "sign"]
)
def test_incomplete_message_fails_permanently_without_calling(vendor: LoopbackServer, changes: dict) -> None:
    """A message Aliyun would reject (no template, receiver or sign) is permanent and never sent."""
    result = send_to(vendor, make_message(**changes))
    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "invalid_message")
    assert vendor.requests == []


def test_sign_name_falls_back_to_the_account_default(vendor: LoopbackServer) -> None:
    """Without a sign name on the message, the account's sign_name is used."""
    account = make_account(vendor.url)
    account = Account(account.name, account.type, {**account.config, "sign_name": "木雷"})
    assert aliyun_sms.send(make_message(sign_name=""), account, live_context()).ok
    assert vendor.requests[0].query["SignName"] == "木雷"


def test_secret_never_appears_in_results(vendor: LoopbackServer) -> None:
    """No outcome (accepted, refused, garbage, timeout) stores or reports the AccessKey secret."""
    receivers = ["13800138000", "13800000002", "13800000009", "13800000013"]
    results = [send_to(vendor, make_message(r)) for r in receivers] + [send_to(vendor, make_message(), "x" * 30)]
    for result in results:
        stored = stored_text(result)
        assert SECRET not in stored and "x" * 30 not in stored


def test_parse_response_is_pure_on_a_recorded_answer() -> None:
    """parse_response reads a recorded HTTP answer without any I/O."""
    answer = HttpResponse(200, {}, json.dumps({"Code": "OK", "BizId": "123^0", "RequestId": "r"}).encode())
    assert aliyun_sms.parse_response(answer).provider_message_id == "123^0"


# --- batch sends -------------------------------------------------------------------------------

BATCH_SCRIPTED: dict[str, Reply] = {
    "13800000444": aliyun_business("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号"),
    "13800000555": aliyun_business("isv.AMOUNT_NOT_ENOUGH", "账户余额不足"),
    "13800000666": Reply(200, json.dumps({"RequestId": "r", "Code": "OK", "Message": "OK"})),
}


def send_batch_to(receivers: list[str], secret: str = SECRET) -> tuple[list[SendResult], list[dict[str, str]]]:
    """Send one batch to a fresh verifying batch vendor: the results and the query of each call it received."""
    messages = [make_message(receiver) for receiver in receivers]
    with loopback(aliyun_batch_vendor({AK: SECRET}, BATCH_SCRIPTED.get)) as server:
        results = aliyun_sms.send_batch(messages, make_account(server.url, secret), live_context())
        return results, [request.query for request in server.requests]


def test_a_batch_goes_in_one_signed_call_with_a_comma_separated_list() -> None:
    """Five numbers of one template go in one SendSms the vendor verifies; each number is known by the call's
    BizId with its number, awaits its own report, and is summarised with its own number and no secret."""
    receivers = [f"+861380000000{n}" for n in range(1, 6)]
    results, calls = send_batch_to(receivers)
    assert [call["PhoneNumbers"] for call in calls] == [",".join(r.removeprefix("+86") for r in receivers)]
    biz_id = results[0].response_summary["BizId"]
    assert [r.provider_message_id for r in results] == [f"{biz_id}:{r.removeprefix('+86')}" for r in receivers]
    assert all(r.ok and not r.final for r in results)
    assert [r.request_summary["phone_numbers"] for r in results] == [r.removeprefix("+86") for r in receivers]
    assert all(SECRET not in stored_text(r) for r in results)


def test_aliyun_takes_up_to_1000_numbers_a_call() -> None:
    """The registry offers the engine calls of up to SendSms's documented 1000 numbers for any account."""
    assert aliyun_sms.batch_size({}) == 1000 == registry.batch_size("aliyun_sms", make_account().config)
    assert registry.batch_sender("aliyun_sms") is aliyun_sms.send_batch


def test_a_refusal_of_the_call_is_every_numbers() -> None:
    """A refusal Aliyun answers for the whole call (no balance) is each number's, from one call."""
    results, calls = send_batch_to(["13800000001", "13800000555", "13800000003"])
    assert len(calls) == 1
    assert {(r.error_code, r.error_class) for r in results} == {("isv.AMOUNT_NOT_ENOUGH", "account")}


def test_a_wrong_signature_fails_every_number() -> None:
    """A call signed with the wrong secret is refused by the vendor's check, for every number alike."""
    results, calls = send_batch_to(["13800000001", "13800000002"], secret="not-the-secret")
    assert len(calls) == 1 and {r.error_code for r in results} == {"SignatureDoesNotMatch"}


def test_a_refused_number_is_found_by_halving_the_call() -> None:
    """An illegal number refuses the whole call; the halves that hold it go again until it stands alone, so it
    alone fails (receiver) and every other number is accepted, in far fewer calls than one each."""
    receivers = [f"138000001{n:02d}" for n in range(16)]
    receivers[11] = "13800000444"
    results, calls = send_batch_to(receivers)
    assert [(r.outcome, r.error_class) for r in results].count((Outcome.PERMANENT, "receiver")) == 1
    assert results[11].error_code == "isv.MOBILE_NUMBER_ILLEGAL"
    assert all(r.ok for i, r in enumerate(results) if i != 11)
    assert len(calls) <= 1 + 2 * 4 and len({r.provider_message_id for r in results if r.ok}) == 15
    accepted = sorted(",".join(c["PhoneNumbers"] for c in calls if "13800000444" not in c["PhoneNumbers"]).split(","))
    assert accepted == sorted(r for r in receivers if r != "13800000444")


def test_ok_without_bizid_is_unknown_for_every_number() -> None:
    """Code OK without a BizId may have sent every number of the call: each is unknown, none resent blindly."""
    results, _ = send_batch_to(["13800000001", "13800000666", "13800000003"])
    assert {(r.error_class, r.error_code) for r in results} == {("unknown", "no_biz_id")}


def test_a_batch_call_has_a_nonce_of_its_own_fixed_for_its_attempts() -> None:
    """A batch's nonce is the same when its call is rebuilt and differs from any of its numbers' single sends."""
    messages = [make_message(f"1380000000{n}", task_id=f"t{n}") for n in range(3)]
    nonce = "x-acs-signature-nonce"
    call = aliyun_sms.build_batch_request(messages, make_account(), NOW).headers[nonce]
    again = aliyun_sms.build_batch_request(messages, make_account(), NOW + timedelta(seconds=5)).headers[nonce]
    singles = {aliyun_sms.build_request(m, make_account(), NOW).headers[nonce] for m in messages}
    assert call == again and call not in singles
    assert aliyun_sms.build_batch_request(messages[:1], make_account(), NOW).headers[nonce] in singles


@pytest.mark.parametrize("written", ["13800138000", "+8613800138000", "8613800138000", "008613800138000"])
def test_a_number_is_keyed_the_same_however_it_is_written(written: str) -> None:
    """A mainland number with or without its country code keys one batched id, as SendSms takes it."""
    assert aliyun_sms.batched_id("9^0", written) == "9^0:13800138000"


def test_an_international_number_keeps_its_country_code() -> None:
    """A Hong Kong number is keyed by country code and number, as SendSms takes it."""
    assert aliyun_sms.batched_id("9^0", "+85261234567") == aliyun_sms.batched_id("9^0", "85261234567")
    assert aliyun_sms.batched_id("9^0", "+85261234567") == "9^0:85261234567"


# --- SmsReport ---------------------------------------------------------------------------------

REPORTS = [
    {"phone_number": "13800138000", "send_time": "2026-03-01 16:30:00", "report_time": "2026-03-01 16:30:05",
     "success": True, "err_code": "DELIVERED", "err_msg": "用户接收成功", "sms_size": "1",
     "biz_id": "900619746936498440^0", "out_id": "task-1001-1"},
    {"phone_number": "13800000002", "send_time": "2026-03-01 16:31:00", "report_time": "2026-03-01 16:31:09",
     "success": False, "err_code": "MK:0001", "err_msg": "空号", "sms_size": "1",
     "biz_id": "900619746936498441^0", "out_id": "task-1002-1"},
]


def report_request(body: bytes, token: str = "s3cret-token", client: str = "203.0.113.7") -> CallbackRequest:
    return push_request(body, token, client)


def test_smsreport_items_become_delivery_reports() -> None:
    """Each SmsReport item becomes a report: success -> delivered, else failed with err_code/err_msg."""
    account = make_account(token="s3cret-token")
    result = aliyun_sms.parse_callback(report_request(json.dumps(REPORTS).encode()), account, NOW)
    assert result.verified and result.error == ""
    delivered, failed = result.reports
    assert (delivered.provider_message_id, delivered.status, delivered.receiver) == (
        "900619746936498440^0", "delivered", "13800138000")
    assert delivered.reported_at == datetime(2026, 3, 1, 8, 30, 5, tzinfo=timezone.utc)
    assert (failed.status, failed.error_code, failed.error_message) == ("failed", "MK:0001", "空号")
    assert delivered.message_ids == ("900619746936498440^0", "900619746936498440^0:13800138000")


def test_a_report_without_a_number_names_its_message_by_bizid_alone() -> None:
    """An SmsReport item lacking phone_number can only be matched by its BizId."""
    item = {key: value for key, value in REPORTS[0].items() if key != "phone_number"}
    result = aliyun_sms.parse_callback(report_request(json.dumps([item]).encode()), make_account(token="s3cret-token"),
                                       NOW)
    assert result.reports[0].message_ids == ("900619746936498440^0",)
    assert json.loads(result.reply.body) == {"code": 0, "msg": "接收成功"} and result.reply.status == 200


@pytest.mark.parametrize(
    ("callback", "token", "client"),
    [
        ({"token": "s3cret-token"}, "forged", "203.0.113.7"),
        ({}, "s3cret-token", "203.0.113.7"),
        ({"allow_ips": ["106.11.0.1"]}, "", "203.0.113.7"),
    ],
    ids=["bad-token", "nothing-configured", "address-not-allowed"],
)
def test_unverifiable_report_is_refused(callback: dict, token: str, client: str) -> None:
    """A report without the right token or from outside allow_ips yields nothing and is refused."""
    account = Account("aliyun-main", "aliyun_sms", make_account().config, callback)
    result = aliyun_sms.parse_callback(report_request(json.dumps(REPORTS).encode(), token, client), account, NOW)
    assert (result.reports, result.verified) == ((), False)
    assert result.error and result.reply.status == 403


@pytest.mark.parametrize(
    "body", [b"not json", b'{"biz_id": "1"}', b'[{"success": true}]', b"[1, 2]", b"\xff\xfe"],
    ids=["text", "object", "no-biz-id", "numbers", "binary"],
)
def test_garbage_report_yields_no_reports_and_a_clear_error(body: bytes) -> None:
    """A body that is not an array of SmsReport items gives no reports and says why."""
    result = aliyun_sms.parse_callback(report_request(body), make_account(token="s3cret-token"), NOW)
    assert result.reports == () and result.verified
    assert result.error and result.reply.status == 400


def test_unreadable_report_time_falls_back_to_now() -> None:
    """A report whose report_time cannot be read is still applied, timed at reception."""
    item = {**REPORTS[0], "report_time": "yesterday"}
    request = report_request(json.dumps([item]).encode())
    result = aliyun_sms.parse_callback(request, make_account(token="s3cret-token"), NOW)
    assert result.reports[0].reported_at == NOW


@given(st.binary(max_size=300))
def test_parse_callback_never_raises(body: bytes) -> None:
    """Any body at all is answered: reports or an error, never an exception."""
    result = aliyun_sms.parse_callback(report_request(body), make_account(token="s3cret-token"), NOW)
    assert result.reports or result.error or json.loads(body) == []


# --- shared HTTP provider contract ------------------------------------------------------------

CASE = contract.ProviderCase(
    provider=aliyun_sms,
    config=lambda url: {"access_key_id": AK, "access_key_secret": SECRET, "base_url": url, "timeout": contract.TIMEOUT},
    vendor=contract_vendor(lambda: aliyun_check({AK: SECRET})),
    message=make_message(),
    success=Reply(200, json.dumps({"RequestId": "r", "Code": "OK", "Message": "OK", "BizId": "900619746936498440^0"})),
    vendor_errors=(
        contract.Scenario("throttled", SCRIPTED["13800000001"], Outcome.RETRYABLE, "isv.BUSINESS_LIMIT_CONTROL"),
        contract.Scenario("no-balance", SCRIPTED["13800000004"], Outcome.PERMANENT, "isv.AMOUNT_NOT_ENOUGH"),
    ),
    message_id="900619746936498440^0",
    final=False,
)


@pytest.mark.parametrize("scenario", contract.scenarios(CASE), ids=str)
def test_contract(scenario: contract.Scenario) -> None:
    """The provider meets the shared HTTP provider contract in this scenario."""
    contract.check(CASE, scenario)
