"""Error classes: one vocabulary shared by provider results and failure rules, with a default per outcome."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.policy.decisions import ERROR_CLASSES as RULE_CLASSES
from providers import aliyun_sms, dingtalk_robot, dingtalk_work, smtp, tencent_sms, wecom_app, wecom_robot, zrwinfo_sms
from providers.base import ERROR_CLASSES, HttpResponse, Outcome, SendResult


def test_providers_and_rules_speak_the_same_classes() -> None:
    """The classes a provider may return are exactly those a failure rule may name."""
    assert ERROR_CLASSES == RULE_CLASSES


@pytest.mark.parametrize(("outcome", "expected"), [(Outcome.OK, "ok"), (Outcome.RETRYABLE, "transient"),
                                                   (Outcome.PERMANENT, "content")])
def test_a_result_without_a_class_takes_its_outcomes_usual_class(outcome: Outcome, expected: str) -> None:
    """A provider that names no class gets the usual one of its outcome."""
    assert SendResult(outcome).error_class == expected


def test_a_named_class_is_kept_and_an_unknown_one_refused() -> None:
    """An explicit class wins over the outcome's; a word outside the vocabulary is a provider bug."""
    assert SendResult(Outcome.RETRYABLE, error_class="throttled").error_class == "throttled"
    with pytest.raises(ValueError, match="unknown error class"):
        SendResult(Outcome.PERMANENT, error_class="bogus")


# --- each vendor's documented codes, read from answers shaped as the vendor sends them -------------------------

def _aliyun(code: str, message: str, status: int = 200) -> HttpResponse:
    return HttpResponse(status, {}, json.dumps({"RequestId": "A1", "Code": code, "Message": message}).encode())


def _tencent(code: str, message: str) -> HttpResponse:
    return HttpResponse(200, {}, json.dumps({"Response": {"Error": {"Code": code, "Message": message},
                                                          "RequestId": "T1"}}).encode())


def _tencent_status(code: str, message: str) -> HttpResponse:
    status = {"SerialNo": "", "PhoneNumber": "+8613800000000", "Fee": 0, "SessionContext": "", "Code": code,
              "Message": message, "IsoCode": "CN"}
    return HttpResponse(200, {}, json.dumps({"Response": {"SendStatusSet": [status], "RequestId": "T2"}}).encode())


def _errcode(code: int, message: str) -> HttpResponse:
    return HttpResponse(200, {}, json.dumps({"errcode": code, "errmsg": message}).encode())


ALIYUN = [
    ("isv.AMOUNT_NOT_ENOUGH", "账户余额不足", 200, "account"),
    ("isv.OUT_OF_SERVICE", "业务停机", 200, "account"),
    ("isp.RAM_PERMISSION_DENY", "RAM权限DENY", 200, "account"),
    ("isv.PRODUCT_UN_SUBSCRIPT", "未开通云通信产品的阿里云客户", 200, "account"),
    ("SignatureDoesNotMatch", "Specified signature is not matched with our calculation.", 400, "account"),
    ("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404, "account"),
    ("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号", 200, "receiver"),
    ("isv.BLACK_KEY_CONTROL_LIMIT", "黑名单管控", 200, "content"),
    ("isv.MOBILE_COUNT_OVER_LIMIT", "手机号码数量超过限制", 200, "content"),
    ("isv.BUSINESS_LIMIT_CONTROL", "触发号码天级流控Permits:10", 200, "throttled"),
    ("Throttling.User", "Request was denied due to user flow control.", 400, "throttled"),
    ("isp.SYSTEM_ERROR", "系统错误", 200, "transient"),
    ("ServiceUnavailable", "The request has failed due to a temporary failure of the server.", 503, "transient"),
    ("isv.SMS_TEMPLATE_ILLEGAL", "模板不合法(不存在或被拉黑)", 200, "content"),
    ("isv.SMS_SIGNATURE_ILLEGAL", "签名不合法(不存在或被拉黑)", 200, "content"),
    ("isv.TEMPLATE_MISSING_PARAMETERS", "模板缺少变量", 200, "content"),
    ("isv.SOMETHING_NEW", "an unlisted business code", 200, "content"),
    ("SomethingNew", "an unlisted code on a 5xx answer", 500, "transient"),
]


@pytest.mark.parametrize(("code", "message", "status", "expected"), ALIYUN)
def test_aliyun_codes_take_their_documented_class(code: str, message: str, status: int, expected: str) -> None:
    """Each Aliyun SendSms code named in docs/providers.md has its class; unlisted ones a conservative one."""
    result = aliyun_sms.parse_response(_aliyun(code, message, status))
    assert (result.error_code, result.error_class) == (code, expected)


def test_aliyun_ok_without_bizid_is_unknown_and_not_retried() -> None:
    """`Code: OK` without a BizId may have been sent: unknown, never a plain retry."""
    result = aliyun_sms.parse_response(HttpResponse(200, {}, b'{"RequestId": "A1", "Code": "OK", "Message": "OK"}'))
    assert result.error_class == "unknown"


TENCENT = [
    ("FailedOperation.InsufficientBalanceInSmsPackage", "insufficient balance in SMS package", "account"),
    ("AuthFailure.SecretIdNotFound", "The SecretId is not found, please ensure that your SecretId is correct.",
     "account"),
    ("AuthFailure.SignatureFailure", "The provided credentials could not be validated.", "account"),
    ("UnauthorizedOperation.SmsSdkAppIdVerifyFail", "SmsSdkAppId verify fail.", "account"),
    ("LimitExceeded.AppDailyLimit", "the number of SMS messages sent per day exceeds the limit", "account"),
    ("FailedOperation.PhoneNumberInBlacklist", "the phone number is in blacklist", "receiver"),
    ("InvalidParameterValue.IncorrectPhoneNumber", "incorrect phone number", "receiver"),
    ("UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber",
     "contain domestic and international phone number", "receiver"),
    ("LimitExceeded.PhoneNumberDailyLimit", "the number of SMS messages sent to a phone number exceeds the limit",
     "receiver"),
    ("FailedOperation.MarketingSendTimeConstraint", "marketing sms send time constraint", "window"),
    ("LimitExceeded.DeliveryFrequencyLimit", "delivery frequency limit", "throttled"),
    ("RequestLimitExceeded", "Your current request times equals to `21` in a second", "throttled"),
    ("InternalError.OtherError", "other error", "transient"),
    ("FailedOperation.TemplateIncorrectOrUnapproved", "template is not approved or request content does not match",
     "content"),
    ("FailedOperation.SignatureIncorrectOrUnapproved", "signature format is incorrect or signature is not approved",
     "content"),
    ("InvalidParameterValue.TemplateParameterFormatError", "verification code template parameter format error",
     "content"),
]


@pytest.mark.parametrize(("code", "message", "expected"), TENCENT)
def test_tencent_codes_take_their_documented_class(code: str, message: str, expected: str) -> None:
    """Each Tencent SendSms code, as a request error or as a per-number status, has its documented class."""
    for answer in (_tencent(code, message), _tencent_status(code, message)):
        result = tencent_sms.parse_response(answer)
        assert (result.error_code, result.error_class) == (code, expected)


ERRCODES = [
    (wecom_robot, 93000, "invalid webhook url, hint: [1722318462280092145815], from ip: 1.2.3.4", "account"),
    (wecom_robot, 45009, "api freq out of limit", "throttled"),
    (wecom_app, 81013, "user & party & tag all invalid", "receiver"),
    (wecom_app, 45033, "api concurrent out of limit", "throttled"),
    (wecom_app, 60020, "not allow to access from your ip, from ip: 1.2.3.4", "account"),
    (wecom_app, 40014, "invalid access_token", "transient"),
    (wecom_app, 42001, "access_token expired", "transient"),
    (dingtalk_robot, 310000, "keywords not in content", "content"),
    (dingtalk_robot, 130101, "send too fast, exceed 20 times per minute", "throttled"),
    (dingtalk_robot, 410100, "发送速度太快而限流", "throttled"),
    (dingtalk_work, 143103, "发送太快", "throttled"),
    (dingtalk_work, 143104, "发送太快", "throttled"),
    (dingtalk_work, 88, "ding talk error[subcode=60011,submsg=没有调用该接口的权限]", "account"),
    (dingtalk_work, 42001, "access_token超时", "transient"),
]


@pytest.mark.parametrize(("module", "code", "message", "expected"), ERRCODES,
                         ids=[f"{m.TYPE}-{c}" for m, c, _, _ in ERRCODES])
def test_wecom_and_dingtalk_codes_take_their_documented_class(module: Any, code: int, message: str,
                                                              expected: str) -> None:
    """Each WeCom / DingTalk errcode named in docs/providers.md has its class."""
    result = module.parse_response(_errcode(code, message))
    assert (result.error_code, result.error_class) == (str(code), expected)


@pytest.mark.parametrize(("code", "reply", "expected"), [
    (421, "4.7.0 Too many connections, try again later", "throttled"),
    (450, "4.2.1 Mailbox busy", "transient"),
    (451, "4.3.0 Local error in processing", "transient"),
    (452, "4.2.2 Mailbox full", "throttled"),
    (550, "5.1.1 No such user", "receiver"),
    (553, "5.1.3 Bad recipient address syntax", "receiver"),
    (554, "5.1.1 Recipient address rejected: User unknown", "receiver"),
    (535, "5.7.8 Authentication credentials invalid", "account"),
    (552, "5.3.4 Message size exceeds fixed limit", "content"),
    (554, "5.7.1 Message rejected as spam", "content"),
])
def test_smtp_replies_take_their_class(code: int, reply: str, expected: str) -> None:
    """SMTP replies: 4xx slow down or retry, 5.1.x is the receiver, 535 the account, 552/554 the content."""
    assert smtp.reply_class(code, reply.encode()) == expected


DOCS = Path(__file__).resolve().parents[2] / "docs" / "providers.md"


@pytest.mark.parametrize("module", [aliyun_sms, tencent_sms, zrwinfo_sms, dingtalk_robot, dingtalk_work, wecom_robot,
                                    wecom_app], ids=lambda module: module.TYPE)
def test_docs_list_every_classified_code_under_its_class(module: Any) -> None:
    """docs/providers.md shows, in the provider's section, every code of its table on the row of its class."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split(f"\n## {module.TYPE}\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    missing = [(code, error_class) for code, error_class in module.CODE_CLASSES.items()
               if f"`{code}`" not in rows.get(error_class, "")]
    assert missing == []
