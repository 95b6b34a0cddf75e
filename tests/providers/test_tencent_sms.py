"""Tencent Cloud SMS: TC3 signing against the published example, SendSms against a verifying mock, callbacks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers import tencent_sms
from providers.base import Account, CallbackRequest, HttpResponse, Message, Outcome, SendResult
from tests.providers import contract
from tests.providers.sms_mocks import (
    contract_vendor, tencent_batch_vendor, tencent_check, tencent_error, tencent_status, tencent_vendor,
)
from tests.providers.sms_support import live_context, push_request, stored_text
from tests.support.loopback import LoopbackServer, Reply, loopback

SECRET_ID, SECRET_KEY = "AKIDmockSecretId0123456789", "mockSecretKey0123456789abcdef"
NOW = datetime(2026, 3, 1, 16, 30, 0, tzinfo=timezone.utc)
SCRIPTED: dict[str, Reply] = {
    "+8613800000001": tencent_status(
        "LimitExceeded.PhoneNumberThirtySecondLimit", "单个手机号30秒内下发短信条数超过设定的上限", "+8613800000001"
    ),
    "+8613800000002": tencent_status("InvalidParameterValue.IncorrectPhoneNumber", "手机号格式错误", "+8613800000002"),
    "+8613800000003": tencent_status("FailedOperation.TemplateIncorrectOrUnapproved", "模板未审批或内容不匹配", "+8613800000003"),
    "+8613800000004": tencent_status("FailedOperation.InsufficientBalanceInSmsPackage", "套餐包余量不足", "+8613800000004"),
    "+8613800000005": tencent_status("FailedOperation.SignatureIncorrectOrUnapproved", "签名未审批或格式错误", "+8613800000005"),
    "+8613800000006": tencent_error("InternalError.Timeout", "请求下发短信超时"),
    "+8613800000007": tencent_error("RequestLimitExceeded", "请求的次数超过了频率限制。"),
    "+8613800000008": tencent_error("InternalError.RequestTimeException", "请求发起时间不正常"),
    "+8613800000009": Reply(502, "<html>bad gateway</html>", {"Content-Type": "text/html"}),
    "+8613800000010": Reply(200, json.dumps({"Response": {"SendStatusSet": [], "RequestId": "r"}})),
    "+8613800000011": Reply(200, json.dumps({"Response": "Ok"})),
    "+8613800000012": Reply(200, json.dumps({"Response": {"SendStatusSet": [{"Code": "Ok"}]}})),
    "+8613800000013": Reply(200, "{}", delay=1.0),
}


def make_message(receiver: str = "+8613800138000", **changes: object) -> Message:
    fields: dict[str, object] = {
        "task_id": "task-2001", "attempt": 1, "receiver": receiver, "channel_type": "sms",
        "text": "您的验证码是123456，5分钟内有效。", "template_code": "1110472",
        "params": {"1": "123456", "2": "5"}, "sign_name": "腾讯云",
    }
    fields.update(changes)
    return Message(**fields)  # type: ignore[arg-type]


def make_config(base_url: str = "https://sms.tencentcloudapi.com", secret_key: str = SECRET_KEY) -> dict:
    return {"secret_id": SECRET_ID, "secret_key": secret_key, "sdk_app_id": "1400006666", "base_url": base_url,
            "timeout": 0.3}


def make_account(base_url: str = "https://sms.tencentcloudapi.com", **callback: object) -> Account:
    return Account("tencent-main", "tencent_sms", make_config(base_url), callback)


@pytest.fixture(scope="module")
def shared_vendor() -> Iterator[LoopbackServer]:
    with loopback(tencent_vendor({SECRET_ID: SECRET_KEY}, SCRIPTED.get)) as server:
        yield server


@pytest.fixture
def vendor(shared_vendor: LoopbackServer) -> LoopbackServer:
    shared_vendor.requests.clear()
    return shared_vendor


def send_to(server: LoopbackServer, message: Message, secret_key: str = SECRET_KEY) -> SendResult:
    account = Account("tencent-main", "tencent_sms", make_config(server.url, secret_key))
    return tencent_sms.send(message, account, live_context())


def test_signature_matches_the_published_tc3_example() -> None:
    """The signing doc's DescribeInstances example (fixed keys and timestamp) signs to its published value."""
    payload = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
    headers = {"content-type": "application/json; charset=utf-8", "host": "cvm.tencentcloudapi.com"}
    authorization = tencent_sms.tc3_authorization(
        "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE", "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "cvm", 1551113065, headers, payload
    )
    assert authorization == (
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
    )


def test_build_request_sends_template_values_in_order() -> None:
    """The JSON body names the app, template and receiver, and TemplateParamSet keeps the given order."""
    request = tencent_sms.build_request(make_message(params={"2": "5", "1": "123456"}), make_account(), NOW)
    body = json.loads(request.body)
    assert body == {
        "PhoneNumberSet": ["+8613800138000"], "SmsSdkAppId": "1400006666", "TemplateId": "1110472",
        "TemplateParamSet": ["5", "123456"], "SessionContext": "task-2001-1", "SignName": "腾讯云",
    }
    assert request.url == "https://sms.tencentcloudapi.com/" and request.timeout == 0.3
    assert request.headers["X-TC-Timestamp"] == "1772382600" and request.headers["X-TC-Region"] == "ap-guangzhou"
    assert request.headers["Authorization"].startswith(
        f"TC3-HMAC-SHA256 Credential={SECRET_ID}/2026-03-01/sms/tc3_request, "
        "SignedHeaders=content-type;host;x-tc-action, "
    )


def test_sign_name_is_left_out_when_none_is_set() -> None:
    """International sends need no SignName; without one none is sent."""
    body = json.loads(tencent_sms.build_request(make_message(sign_name=""), make_account(), NOW).body)
    assert "SignName" not in body


def test_accepted_send_awaits_its_delivery_report(vendor: LoopbackServer) -> None:
    """Code Ok from the verifying mock is ok, not final, with SerialNo as the provider message id."""
    result = send_to(vendor, make_message())
    assert result.outcome is Outcome.OK and not result.final
    assert result.provider_message_id == "5000:1045710669157053657849499619"
    assert result.request_summary["template_param_set"] == ["123456", "5"]
    assert len(vendor.requests) == 1


def test_wrong_secret_is_refused_by_signature_check(vendor: LoopbackServer) -> None:
    """A signature made with the wrong SecretKey comes back AuthFailure.SignatureFailure, permanent."""
    result = send_to(vendor, make_message(), secret_key="wrong")
    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "AuthFailure.SignatureFailure")


@pytest.mark.parametrize(
    ("receiver", "outcome", "code"),
    [
        ("+8613800000001", Outcome.RETRYABLE, "LimitExceeded.PhoneNumberThirtySecondLimit"),
        ("+8613800000002", Outcome.PERMANENT, "InvalidParameterValue.IncorrectPhoneNumber"),
        ("+8613800000003", Outcome.PERMANENT, "FailedOperation.TemplateIncorrectOrUnapproved"),
        ("+8613800000004", Outcome.PERMANENT, "FailedOperation.InsufficientBalanceInSmsPackage"),
        ("+8613800000005", Outcome.PERMANENT, "FailedOperation.SignatureIncorrectOrUnapproved"),
        ("+8613800000006", Outcome.RETRYABLE, "InternalError.Timeout"),
        ("+8613800000007", Outcome.RETRYABLE, "RequestLimitExceeded"),
        ("+8613800000008", Outcome.PERMANENT, "InternalError.RequestTimeException"),
    ],
)
def test_vendor_errors_keep_code_and_message_and_are_classified(
    vendor: LoopbackServer, receiver: str, outcome: Outcome, code: str
) -> None:
    """Per-number and API errors keep Tencent's code and message; limits and internal faults retry."""
    result = send_to(vendor, make_message(receiver))
    assert (result.outcome, result.error_code) == (outcome, code)
    answer = json.loads(SCRIPTED[receiver].body)["Response"]
    assert result.error_message == (answer.get("Error") or answer["SendStatusSet"][0])["Message"]


@pytest.mark.parametrize("receiver", ["+8613800000009", "+8613800000010", "+8613800000011", "+8613800000012"])
def test_garbage_answers_are_retryable_bad_responses(vendor: LoopbackServer, receiver: str) -> None:
    """HTML, an empty SendStatusSet, a non-object Response or Ok without SerialNo is a retryable bad_response."""
    result = send_to(vendor, make_message(receiver))
    assert (result.outcome, result.error_code) == (Outcome.RETRYABLE, "bad_response")


def test_slow_vendor_times_out_as_retryable_network_error(vendor: LoopbackServer) -> None:
    """An answer slower than the configured timeout is a retryable network failure."""
    result = send_to(vendor, make_message("+8613800000013"))
    assert (result.outcome, result.error_code) == (Outcome.RETRYABLE, "network")


@pytest.mark.parametrize("changes", [{"template_code": ""}, {"receiver": ""}], ids=["template", "receiver"])
def test_incomplete_message_fails_permanently_without_calling(vendor: LoopbackServer, changes: dict) -> None:
    """A message without template or receiver is permanent and never sent."""
    result = send_to(vendor, make_message(**changes))
    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "invalid_message")
    assert vendor.requests == []


def test_secret_never_appears_in_results(vendor: LoopbackServer) -> None:
    """No outcome (accepted, refused, garbage, timeout, bad signature) stores the SecretKey."""
    receivers = ["+8613800138000", "+8613800000004", "+8613800000009", "+8613800000013"]
    results = [send_to(vendor, make_message(r)) for r in receivers] + [send_to(vendor, make_message(), "y" * 24)]
    for result in results:
        stored = stored_text(result)
        assert SECRET_KEY not in stored and "y" * 24 not in stored


# --- status callbacks --------------------------------------------------------------------------

REPORTS = [
    {"user_receive_time": "2026-03-02 00:30:05", "nationcode": "86", "mobile": "13800138000",
     "report_status": "SUCCESS", "errmsg": "DELIVRD", "description": "用户短信送达成功",
     "sid": "5000:1045710669157053657849499619"},
    {"user_receive_time": "2026-03-02 00:31:00", "nationcode": "86", "mobile": "13800000002",
     "report_status": "FAIL", "errmsg": "MK:0001", "description": "空号", "sid": "5000:104571066915705365784949960"},
]


def report_request(body: bytes, token: str = "cb-token", client: str = "203.0.113.9") -> CallbackRequest:
    return push_request(body, token, client)


def test_status_callback_items_become_delivery_reports() -> None:
    """SUCCESS -> delivered; FAIL -> failed with errmsg as code and description as message; reply result 0."""
    request = report_request(json.dumps(REPORTS).encode())
    result = tencent_sms.parse_callback(request, make_account(token="cb-token"), NOW)
    assert result.verified and result.error == ""
    delivered, failed = result.reports
    assert (delivered.provider_message_id, delivered.status, delivered.receiver) == (
        "5000:1045710669157053657849499619", "delivered", "+8613800138000")
    assert delivered.reported_at == datetime(2026, 3, 1, 16, 30, 5, tzinfo=timezone.utc)
    assert (failed.status, failed.error_code, failed.error_message) == ("failed", "MK:0001", "空号")
    assert json.loads(result.reply.body) == {"result": 0, "errmsg": "OK"}


@pytest.mark.parametrize(
    ("callback", "token", "client"),
    [
        ({"token": "cb-token"}, "guess", "203.0.113.9"),
        ({}, "cb-token", "203.0.113.9"),
        ({"token": "cb-token", "allow_ips": ["119.29.0.1"]}, "cb-token", "203.0.113.9"),
    ],
    ids=["bad-token", "nothing-configured", "address-not-allowed"],
)
def test_unverifiable_callback_is_refused(callback: dict, token: str, client: str) -> None:
    """Without the right token and address, no report is taken and Tencent is told result != 0."""
    account = Account("tencent-main", "tencent_sms", make_config(), callback)
    result = tencent_sms.parse_callback(report_request(json.dumps(REPORTS).encode(), token, client), account, NOW)
    assert (result.reports, result.verified) == ((), False)
    assert result.error and json.loads(result.reply.body)["result"] != 0


@pytest.mark.parametrize("body", [b"<xml/>", b'{"sid": "1"}', b'[{"report_status": "SUCCESS"}]', b"[null]"])
def test_garbage_callback_yields_no_reports_and_a_clear_error(body: bytes) -> None:
    """A body that is not an array of status items gives no reports and says why."""
    result = tencent_sms.parse_callback(report_request(body), make_account(token="cb-token"), NOW)
    assert result.reports == () and result.error
    assert json.loads(result.reply.body)["result"] != 0


def test_one_bad_item_does_not_drop_the_good_ones() -> None:
    """A push mixing a valid report and a broken item applies the valid one and names the broken one."""
    body = json.dumps([REPORTS[0], {"mobile": "138"}]).encode()
    result = tencent_sms.parse_callback(report_request(body), make_account(token="cb-token"), NOW)
    assert [r.provider_message_id for r in result.reports] == [REPORTS[0]["sid"]]
    assert "item 1: missing sid" in result.error


@given(st.binary(max_size=300))
def test_parse_callback_never_raises(body: bytes) -> None:
    """Any body at all is answered: reports or an error, never an exception."""
    result = tencent_sms.parse_callback(report_request(body), make_account(token="cb-token"), NOW)
    assert result.reports or result.error or json.loads(body) == []


# --- shared HTTP provider contract ------------------------------------------------------------

CASE = contract.ProviderCase(
    provider=tencent_sms,
    config=lambda url: {**make_config(url), "timeout": contract.TIMEOUT},
    vendor=contract_vendor(lambda: tencent_check({SECRET_ID: SECRET_KEY})),
    message=make_message(),
    success=Reply(200, json.dumps({"Response": {"SendStatusSet": [
        {"SerialNo": "5000:1", "PhoneNumber": "+8613800138000", "Code": "Ok", "Message": "send success"}
    ], "RequestId": "r"}})),
    vendor_errors=(
        contract.Scenario(
            "throttled", SCRIPTED["+8613800000001"], Outcome.RETRYABLE, "LimitExceeded.PhoneNumberThirtySecondLimit"
        ),
        contract.Scenario(
            "no-balance", SCRIPTED["+8613800000004"], Outcome.PERMANENT, "FailedOperation.InsufficientBalanceInSmsPackage"
        ),
    ),
    message_id="5000:1",
    final=False,
)


@pytest.mark.parametrize("scenario", contract.scenarios(CASE), ids=str)
def test_contract(scenario: contract.Scenario) -> None:
    """The provider meets the shared HTTP provider contract in this scenario."""
    contract.check(CASE, scenario)


BATCH_ANSWERS = {"+8613800000002": ("FailedOperation.PhoneNumberInBlacklist", "手机号在免打扰名单库中"),
                 "+8613800000003": ("LimitExceeded.PhoneNumberThirtySecondLimit", "单个手机号30秒内下发短信条数超过设定的上限")}


def test_a_batch_goes_in_one_call_with_a_result_per_number() -> None:
    """Five numbers of one template in one signed SendSms; each gets its own SerialNo or its own error class."""
    messages = [make_message(f"+861380000000{n}", task_id=f"task-{n}") for n in range(1, 6)]
    with loopback(tencent_batch_vendor({SECRET_ID: SECRET_KEY}, BATCH_ANSWERS.get)) as server:
        results = tencent_sms.send_batch(messages, make_account(server.url), live_context())
        (request,) = server.requests
    assert json.loads(request.body)["PhoneNumberSet"] == [message.receiver for message in messages]
    assert [(r.outcome, r.error_class) for r in results] == [
        (Outcome.OK, "ok"), (Outcome.PERMANENT, "receiver"), (Outcome.RETRYABLE, "throttled"), (Outcome.OK, "ok"),
        (Outcome.OK, "ok")]
    assert len({r.provider_message_id for r in results if r.ok}) == 3 and not any(r.final for r in results)
    assert all(SECRET_KEY not in json.dumps(r.request_summary) for r in results)


def test_a_number_missing_from_the_answer_is_of_unknown_outcome() -> None:
    """Tencent took the call but named no status for a number: it may have been sent, so it is unknown."""
    body = {"Response": {"SendStatusSet": [
        {"SerialNo": "5000:1", "PhoneNumber": "+8613800000001", "Code": "Ok", "Message": "send success"}],
        "RequestId": "r"}}
    response = HttpResponse(200, {}, json.dumps(body).encode())
    results = tencent_sms.parse_batch_response(response, ["+8613800000001", "+8613800000002"])
    assert [(r.outcome, r.error_class) for r in results] == [(Outcome.OK, "ok"), (Outcome.RETRYABLE, "unknown")]


def test_a_whole_call_error_is_every_numbers() -> None:
    """An API error (a bad signature) answers for every number of the call."""
    messages = [make_message(f"+861380000000{n}", task_id=f"task-{n}") for n in range(1, 4)]
    with loopback(tencent_batch_vendor({SECRET_ID: "another"}, BATCH_ANSWERS.get)) as server:
        results = tencent_sms.send_batch(messages, make_account(server.url), live_context())
    assert len({(r.error_code, r.error_class) for r in results}) == 1 and results[0].error_class == "account"
