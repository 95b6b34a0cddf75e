"""Tencent Cloud SMS: SendSms (2021-01-11) signed TC3-HMAC-SHA256, and its status callbacks."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from providers._sms import (
    as_utc, json_array, json_reply, parse_report_items, report_time, send_sms, without_secrets,
)
from providers.base import (
    Account,
    CallbackReply,
    CallbackRequest,
    CallbackResult,
    ConfigField,
    ConfigSchema,
    DeliveryReport,
    HttpRequest,
    HttpResponse,
    Message,
    Outcome,
    SendContext,
    SendResult,
    TransportError,
    Undeliverable,
    bad_response,
    classified,
    code_class,
    json_object, json_text,
    secret_values,
    transport_failure,
    with_defaults,
)

TYPE = "tencent_sms"
CHANNEL_TYPES = frozenset({"sms"})
CONFIG: ConfigSchema = {
    "secret_id": ConfigField(help="SecretId of a CAM key allowed sms:SendSms"),
    "secret_key": ConfigField(secret=True, help="SecretKey of that key"),
    "sdk_app_id": ConfigField(help="SmsSdkAppId of the SMS application (quote it in YAML: a string)"),
    "region": ConfigField(required=False, default="ap-guangzhou", help="X-TC-Region"),
    "sign_name": ConfigField(required=False, default="", help="SignName used when the message names none"),
    "base_url": ConfigField(
        required=False, default="https://sms.tencentcloudapi.com", help="API endpoint (scheme://host)"
    ),
    "timeout": ConfigField(float, required=False, default=10.0, help="Per-call timeout, seconds"),
}

SERVICE = "sms"
ACTION = "SendSms"
VERSION = "2021-01-11"
ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"
REPLY_OK = json_reply({"result": 0, "errmsg": "OK"})

# SendSms codes and their classes. Unlisted codes go by their prefix, then: transient when Tencent answered 5xx,
# else content (a refusal we cannot read is failed, not resent).
# https://cloud.tencent.com/document/api/382/55981 (SendSms, 错误码) and /382/59177 (短信 API 3.0 发送错误码)
CODE_CLASSES: dict[str, str] = {
    "FailedOperation.InsufficientBalanceInSmsPackage": "account",  # 套餐包余量不足
    "UnauthorizedOperation.SmsSdkAppIdVerifyFail": "account",  # SdkAppId 校验失败
    "UnauthorizedOperation.RequestPermissionDeny": "account",
    "UnauthorizedOperation.RequestIpNotInWhitelist": "account",
    "UnauthorizedOperation.SerivceSuspendDueToArrears": "account",  # (sic) 欠费停服
    "InvalidParameterValue.SdkAppIdNotExist": "account",
    "LimitExceeded.AppDailyLimit": "account",  # the application's own daily limit
    "LimitExceeded.AppGlobalDailyLimit": "account",
    "LimitExceeded.AppMainlandChinaDailyLimit": "account",
    "LimitExceeded.AppCountryOrAreaDailyLimit": "account",
    "InternalError.RequestTimeException": "account",  # our clock is off: every call of this account fails alike
    "FailedOperation.PhoneNumberInBlacklist": "receiver",  # 免打扰名单 (unsubscribed / operator blacklist)
    "InvalidParameterValue.IncorrectPhoneNumber": "receiver",
    "FailedOperation.PhoneNumberParseFail": "receiver",
    "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber": "receiver",
    "UnsupportedOperation.UnsupportedRegion": "receiver",
    "LimitExceeded.PhoneNumberDailyLimit": "receiver",  # per-number limits: this receiver, not the account
    "LimitExceeded.PhoneNumberOneHourLimit": "receiver",
    "LimitExceeded.PhoneNumberSameContentDailyLimit": "receiver",
    "FailedOperation.MarketingSendTimeConstraint": "window",  # marketing SMS only 08:00-22:00 Beijing time
    "LimitExceeded.DeliveryFrequencyLimit": "throttled",
    "LimitExceeded.PhoneNumberThirtySecondLimit": "throttled",  # one number's 30 s limit: a retry clears it
    "FailedOperation.TemplateIncorrectOrUnapproved": "content",
    "FailedOperation.SignatureIncorrectOrUnapproved": "content",
    "FailedOperation.MissingSignature": "content",
    "FailedOperation.ContainSensitiveWord": "content",
    "FailedOperation.FailResolvePacket": "content",
    "InvalidParameterValue.TemplateParameterFormatError": "content",
    "InvalidParameterValue.TemplateParameterLengthLimit": "content",
    "InvalidParameterValue.ContentLengthLimit": "content",
    "LimitExceeded.PhoneNumberCountLimit": "content",  # too many numbers in one call
    "InternalError.SigFieldMissing": "content",
    "InternalError.SigVerificationFail": "content",
    "InternalError.Timeout": "unknown",  # 请求下发短信超时: the send may have happened
    # common API 3.0 codes: https://cloud.tencent.com/document/api/382/38780
    "AuthFailure.SecretIdNotFound": "account",
    "AuthFailure.SignatureFailure": "account",
    "AuthFailure.InvalidSecretId": "account",
    "AuthFailure.UnauthorizedOperation": "account",
    "AuthFailure.SignatureExpire": "account",  # our clock is off
}
CODE_PREFIXES = (
    ("InternalError", "transient"), ("RequestLimitExceeded", "throttled"), ("LimitExceeded.", "throttled"),
    ("AuthFailure", "account"), ("UnauthorizedOperation", "account"),
)


BATCH_MAX = 200  # numbers one SendSms takes (PhoneNumberSet); more is LimitExceeded.PhoneNumberCountLimit


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """Send one templated SMS; the result awaits a delivery report (final=False)."""
    return send_sms(message, account, ctx, CONFIG, build_request, parse_response, request_summary)


def batch_size(config: Mapping[str, Any]) -> int:
    return BATCH_MAX


def send_batch(messages: Sequence[Message], account: Account, ctx: SendContext) -> list[SendResult]:
    """One SendSms for up to 200 numbers of one template and params: each number's result from its entry in
    SendStatusSet, an error of the whole call for each; every result awaits its number's delivery report."""
    config = with_defaults(CONFIG, account.config)
    receivers = [message.receiver for message in messages]
    try:
        request = build_request(messages[0], account, ctx.now, receivers)
    except Undeliverable as exc:
        return [exc.result()] * len(messages)
    try:
        response = ctx.transport(request)
    except TransportError as exc:
        results = [transport_failure(exc)] * len(messages)
    else:
        results = parse_batch_response(response, receivers)
    secrets = secret_values(CONFIG, config)
    return [without_secrets(replace(result, request_summary=request_summary(message, config)), secrets)
            for message, result in zip(messages, results)]


def parse_batch_response(response: HttpResponse, receivers: Sequence[str]) -> list[SendResult]:
    """A result per receiver: its SendStatusSet entry (by PhoneNumber, in E.164); a whole-call error for each;
    a number the answer leaves out is unknown (Tencent took the call, it may have sent it)."""
    body = json_object(response.body)
    answer = body.get("Response") if body is not None else None
    if not isinstance(answer, dict) or "Error" in answer or not isinstance(answer.get("SendStatusSet"), list):
        return [parse_response(response)] * len(receivers)
    by_number = {str(item.get("PhoneNumber")): item for item in answer["SendStatusSet"] if isinstance(item, dict)}
    summary = {"status": response.status, "RequestId": answer.get("RequestId", "")}
    return [_number_result(by_number.get(receiver) or by_number.get(f"+86{receiver}"), summary)
            for receiver in receivers]


def _number_result(status: Mapping[str, Any] | None, summary: Mapping[str, Any]) -> SendResult:
    if status is None:
        return SendResult(Outcome.RETRYABLE, error_code="no_status", error_class="unknown",
                          error_message="Tencent answered without a status for this number", response_summary=summary)
    summary = {**summary, "SendStatus": dict(status)}
    code = str(status.get("Code") or "")
    serial = status.get("SerialNo")
    if code == "Ok" and isinstance(serial, str) and serial:
        return SendResult(Outcome.OK, provider_message_id=serial, final=False, response_summary=summary)
    if code == "Ok":
        return SendResult(Outcome.RETRYABLE, error_code="no_serial_no", error_class="unknown",
                          error_message="Tencent accepted the number without a SerialNo", response_summary=summary)
    return _failure(code, str(status.get("Message") or ""), 200, summary)


def build_request(message: Message, account: Account, now: datetime,
                  receivers: Sequence[str] | None = None) -> HttpRequest:
    """The signed SendSms call (to `receivers` when given, else the message's); raises Undeliverable when the
    message cannot make a valid call."""
    config = with_defaults(CONFIG, account.config)
    payload = json_text(send_sms_payload(message, config, receivers)).encode()
    endpoint = urlsplit(config["base_url"])
    timestamp = int(as_utc(now).timestamp())
    signed = {"content-type": CONTENT_TYPE, "host": endpoint.netloc, "x-tc-action": ACTION}
    authorization = tc3_authorization(
        config["secret_id"], config["secret_key"], SERVICE, timestamp, signed, payload
    )
    headers = {
        "Authorization": authorization,
        "Content-Type": CONTENT_TYPE,
        "Host": endpoint.netloc,
        "X-TC-Action": ACTION,
        "X-TC-Version": VERSION,
        "X-TC-Timestamp": str(timestamp),
        "X-TC-Region": config["region"],
    }
    url = f"{endpoint.scheme}://{endpoint.netloc}/"
    return HttpRequest("POST", url, headers, payload, timeout=float(config["timeout"]))


def send_sms_payload(message: Message, config: Mapping[str, Any], receivers: Sequence[str] | None = None
                     ) -> dict[str, Any]:
    """SendSms parameters: template values in the order the message lists them ({1}, {2}, ...)."""
    numbers = list(receivers) if receivers is not None else [message.receiver]
    if not all(numbers):
        raise Undeliverable("invalid_message", "missing receiver")
    if not message.template_code:
        raise Undeliverable("invalid_message", "missing template_code (the Tencent TemplateId)")
    payload: dict[str, Any] = {
        "PhoneNumberSet": numbers,
        "SmsSdkAppId": config["sdk_app_id"],
        "TemplateId": message.template_code,
        "TemplateParamSet": list(message.params.values()),
        "SessionContext": message.idempotency_key,
    }
    sign_name = message.sign_name or config["sign_name"]
    if sign_name:  # required for mainland China numbers only; Tencent says so itself when missing
        payload["SignName"] = sign_name
    return payload


def tc3_authorization(
    secret_id: str,
    secret_key: str,
    service: str,
    timestamp: int,
    headers: Mapping[str, str],
    payload: bytes,
    method: str = "POST",
    query: str = "",
) -> str:
    """The TC3-HMAC-SHA256 Authorization value; `headers` are the headers to sign (name -> value)."""
    signed = sorted(name.lower() for name in headers)
    values = {name.lower(): value for name, value in headers.items()}
    canonical_headers = "".join(f"{name}:{values[name].strip().lower()}\n" for name in signed)
    signed_headers = ";".join(signed)
    canonical_request = "\n".join(
        [method, "/", query, canonical_headers, signed_headers, hashlib.sha256(payload).hexdigest()]
    )
    date = datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")
    scope = f"{date}/{service}/tc3_request"
    string_to_sign = "\n".join(
        [ALGORITHM, str(timestamp), scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(f"TC3{secret_key}".encode(), date)
    key = _hmac(_hmac(key, service), "tc3_request")
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"


def parse_response(response: HttpResponse) -> SendResult:
    """SendStatusSet[0].Code "Ok" is accepted (SerialNo awaits its report); errors are classified."""
    body = json_object(response.body)
    answer = body.get("Response") if body is not None else None
    if not isinstance(answer, dict):
        return bad_response(response)
    summary = {"status": response.status, **answer}
    error = answer.get("Error")
    if isinstance(error, dict):
        return _failure(str(error.get("Code") or ""), str(error.get("Message") or ""), response.status, summary)
    statuses = answer.get("SendStatusSet")
    if not isinstance(statuses, list) or not statuses or not isinstance(statuses[0], dict):
        return bad_response(response)
    first = statuses[0]
    code = str(first.get("Code") or "")
    if code == "Ok":
        serial = first.get("SerialNo")
        if not isinstance(serial, str) or not serial:
            return bad_response(response)
        return SendResult(Outcome.OK, provider_message_id=serial, final=False, response_summary=summary)
    return _failure(code, str(first.get("Message") or ""), response.status, summary)


def classify(code: str, status: int) -> str:
    """The class of a SendSms error code (see CODE_CLASSES)."""
    return code_class(code, CODE_CLASSES, CODE_PREFIXES, status=status)


def parse_callback(request: CallbackRequest, account: Account, now: datetime) -> CallbackResult:
    """A status callback: a JSON array of reports. Tencent does not sign it: token / allow_ips guard it."""
    return parse_report_items(
        request, account, now, items=json_array, unreadable="body is not a JSON array of status reports",
        report=_report, accepted=REPLY_OK, refusal=_error_reply,
    )


def request_summary(message: Message, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "action": ACTION,
        "phone_number_set": [message.receiver],
        "sms_sdk_app_id": config["sdk_app_id"],
        "sign_name": message.sign_name or config["sign_name"],
        "template_id": message.template_code,
        "template_param_set": list(message.params.values()),
        "session_context": message.idempotency_key,
    }


def _report(item: Any, now: datetime) -> DeliveryReport | str:
    if not isinstance(item, dict):
        return "not an object"
    sid = item.get("sid")
    if not isinstance(sid, str) or not sid:
        return "missing sid"
    delivered = item.get("report_status") == "SUCCESS"
    nationcode = str(item.get("nationcode") or "")
    mobile = str(item.get("mobile") or "")
    return DeliveryReport(
        provider_message_id=sid,
        status="delivered" if delivered else "failed",
        error_code="" if delivered else str(item.get("errmsg") or ""),
        error_message="" if delivered else str(item.get("description") or ""),
        reported_at=report_time(item.get("user_receive_time"), now),
        receiver=f"+{nationcode}{mobile}" if nationcode and mobile else mobile,
    )


def _failure(code: str, message: str, status: int, summary: Mapping[str, Any]) -> SendResult:
    return classified(classify(code, status), code, message, final=False, response_summary=summary)


def _error_reply(status: int, error: str) -> CallbackReply:
    """Tencent's documented refusal: always HTTP 200 with a non-zero `result`; `status` is not sent."""
    return json_reply({"result": 1, "errmsg": error})


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()
