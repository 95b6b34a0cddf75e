"""Aliyun SMS: SendSms (dysmsapi 2017-05-25) signed ACS3-HMAC-SHA256, and its SmsReport pushes."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from providers._sms import (
    as_utc,
    digits_only_number,
    json_array,
    json_reply,
    parse_report_items,
    report_time,
    send_sms,
    without_secrets,
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
    TRANSPORT_HEADERS,
    TransportError,
    Undeliverable,
    bad_response,
    classified,
    code_class,
    json_object,
    secret_values,
    transport_failure,
    with_defaults,
)

TYPE = "aliyun_sms"
CHANNEL_TYPES = frozenset({"sms"})
CONFIG: ConfigSchema = {
    "access_key_id": ConfigField(help="AccessKey ID of a RAM user allowed dysms:SendSms"),
    "access_key_secret": ConfigField(secret=True, help="AccessKey secret of that user"),
    "sign_name": ConfigField(required=False, default="", help="SignName used when the message names none"),
    "base_url": ConfigField(
        required=False, default="https://dysmsapi.aliyuncs.com", help="API endpoint (scheme://host)"
    ),
    "timeout": ConfigField(float, required=False, default=10.0, help="Per-call timeout, seconds"),
}

ACTION = "SendSms"
VERSION = "2017-05-25"
ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
REPLY_OK = json_reply({"code": 0, "msg": "接收成功"})
# Every header of a SendSms call is signed but these: the Authorization that carries the signature, and the body
# framing the transport adds (the body is empty and its hash is signed in x-acs-content-sha256).
UNSIGNED_HEADERS = ("authorization", *TRANSPORT_HEADERS)

# SendSms codes and their classes. Unlisted codes: transient when Aliyun answered 5xx, else content (a refusal we
# cannot read is failed, not resent: a resend spends quota and rules can still match the `error_code`).
# https://help.aliyun.com/zh/sms/developer-reference/api-error-codes (doc-detail 101346, "API错误码")
CODE_CLASSES: dict[str, str] = {
    "isv.AMOUNT_NOT_ENOUGH": "account",  # 账户余额不足
    "isv.OUT_OF_SERVICE": "account",  # 业务停机 (balance below zero)
    "isp.RAM_PERMISSION_DENY": "account",  # RAM权限不足
    "isv.PRODUCT_UN_SUBSCRIPT": "account",  # 未开通云通信产品
    "isv.PRODUCT_UNSUBSCRIBE": "account",  # 产品未开通
    "isv.ACCOUNT_NOT_EXISTS": "account",
    "isv.ACCOUNT_ABNORMAL": "account",
    "isv.DENY_IP_RANGE": "account",  # the caller's address is outside mainland China
    "isv.DAY_LIMIT_CONTROL": "account",  # the account's own daily limit (console setting)
    "isv.MONTH_LIMIT_CONTROL": "account",  # the account's own monthly limit
    "isv.MOBILE_NUMBER_ILLEGAL": "receiver",  # 非法手机号
    "isv.BLACK_KEY_CONTROL_LIMIT": "content",  # 黑名单管控: a blocked keyword
    "isv.MOBILE_COUNT_OVER_LIMIT": "content",  # too many numbers in one call
    "isv.DOMESTIC_NUMBER_NOT_SUPPORTED": "content",  # an international template for a mainland number
    "isv.SMS_TEMPLATE_ILLEGAL": "content",
    "isv.SMS_SIGNATURE_ILLEGAL": "content",
    "isv.SMS_SIGNATURE_SCENE_ILLEGAL": "content",
    "isv.SIGN_STATE_ILLEGAL": "content",
    "isv.SMS_SIGN_ILLEGAL": "content",
    "isv.SMS_CONTENT_ILLEGAL": "content",
    "isv.TEMPLATE_MISSING_PARAMETERS": "content",
    "isv.INVALID_PARAMETERS": "content",
    "isv.INVALID_JSON_PARAM": "content",
    "isv.PARAM_LENGTH_LIMIT": "content",
    "isv.PARAM_NOT_SUPPORT_URL": "content",
    "isv.EXTEND_CODE_ERROR": "content",
    "isv.BUSINESS_LIMIT_CONTROL": "throttled",  # 业务限流 (per-number minute / hour / day flow control)
    "isp.SYSTEM_ERROR": "transient",
    "isp.GATEWAY_ERROR": "transient",
    # OpenAPI gateway codes: https://help.aliyun.com/zh/sdk/product-overview/v3-request-structure-and-signature
    "SignatureDoesNotMatch": "account",  # our secret does not match the key: every call will fail alike
    "IncompleteSignature": "account",
    "InvalidTimeStamp.Expired": "account",  # our clock is off: every call of this account fails alike
    "ServiceUnavailable": "transient",
    "InternalError": "transient",
    "UnknownError": "transient",
    # this very attempt (its nonce) already reached Aliyun: it may have been sent, so it is never resent blindly
    "SignatureNonceUsed": "unknown",
}
CODE_PREFIXES = (("Throttling", "throttled"), ("InvalidAccessKeyId", "account"), ("Forbidden", "account"))


# Numbers one SendSms takes in PhoneNumbers (comma-separated, one TemplateParam for all): "单次最多支持 1000 个
# 手机号" (https://help.aliyun.com/document_detail/55284.html, SendSms); more is isv.MOBILE_COUNT_OVER_LIMIT.
BATCH_MAX = 1000


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """Send one templated SMS; the result awaits a delivery report (final=False)."""
    return send_sms(message, account, ctx, CONFIG, build_request, parse_response, request_summary)


def batch_size(config: Mapping[str, Any]) -> int:
    return BATCH_MAX


def send_batch(messages: Sequence[Message], account: Account, ctx: SendContext) -> list[SendResult]:
    """One SendSms for up to 1000 numbers of one template and params. Aliyun answers one Code and one BizId for
    the call, so each accepted number's message id is the BizId with its number (`batched_id`), which is how its
    own delivery report (biz_id and phone_number) finds it; a refusal of the call is each number's."""
    config = with_defaults(CONFIG, account.config)
    results = _send_numbers(messages, account, ctx)
    secrets = secret_values(CONFIG, config)
    return [without_secrets(replace(result, request_summary=request_summary(message, config)), secrets)
            for message, result in zip(messages, results)]


def _send_numbers(messages: Sequence[Message], account: Account, ctx: SendContext) -> list[SendResult]:
    """A result per message of one call to all their numbers.

    SendSms answers for the call, never per number (Code, Message, BizId, RequestId: doc 55284 above), and
    Aliyun does not document how one bad number in a list is treated; a Code other than OK refuses the request,
    so nothing was sent. Any refusal is therefore every number's, except one of class receiver
    (isv.MOBILE_NUMBER_ILLEGAL) in a call of several numbers, which names no number: then each half goes again in
    a call of its own (its nonce comes from its own attempts, so it is no replay) until the refused numbers stand
    alone. One bad number among 1000 costs about 20 more calls; however many are bad, at most 2n - 1 in all."""
    try:
        request = build_batch_request(messages, account, ctx.now)
    except Undeliverable as exc:
        return [exc.result()] * len(messages)
    try:
        response = ctx.transport(request)
    except TransportError as exc:
        return [transport_failure(exc)] * len(messages)
    results = parse_batch_response(response, [message.receiver for message in messages])
    if len(messages) > 1 and results[0].error_class == "receiver":
        half = len(messages) // 2
        return _send_numbers(messages[:half], account, ctx) + _send_numbers(messages[half:], account, ctx)
    return results


def parse_batch_response(response: HttpResponse, receivers: Sequence[str]) -> list[SendResult]:
    """The call's result for each receiver: accepted ones known by `batched_id(BizId, number)`; Code OK without
    a BizId stays unknown for every number, as does any answer we cannot read."""
    result = parse_response(response)
    if not result.ok:
        return [result] * len(receivers)
    return [replace(result, provider_message_id=batched_id(result.provider_message_id, receiver))
            for receiver in receivers]


def batched_id(biz_id: str, receiver: str) -> str:
    """The message id of one number of a call to several: Aliyun's BizId names the call, its reports name the
    number too (`phone_number`)."""
    return f"{biz_id}:{number_key(receiver)}"


def number_key(number: str) -> str:
    """A number as digits the way SendSms takes it, whichever way it was written (`+86`, `0086`, `86` or none for a
    mainland number), so a report's `phone_number` and our receiver compare equal."""
    digits = "".join(ch for ch in number if ch.isdigit()).removeprefix("00")
    return digits[2:] if len(digits) == 13 and digits.startswith("86") else digits


def build_request(message: Message, account: Account, now: datetime) -> HttpRequest:
    """The signed SendSms call; the nonce comes from the attempt id so a replayed attempt is refused."""
    return build_batch_request([message], account, now)


def build_batch_request(messages: Sequence[Message], account: Account, now: datetime) -> HttpRequest:
    """The signed SendSms call to the messages' numbers (all of one template and params: the first's are sent);
    the nonce comes from their attempt ids, so a replayed call is refused."""
    config = with_defaults(CONFIG, account.config)
    query = send_sms_query(messages[0], config, [message.receiver for message in messages])
    endpoint = urlsplit(config["base_url"])
    path = endpoint.path or "/"
    headers = {
        "host": endpoint.netloc,
        "x-acs-action": ACTION,
        "x-acs-version": VERSION,
        "x-acs-date": as_utc(now).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "x-acs-signature-nonce": signature_nonce(messages),
        "x-acs-content-sha256": EMPTY_SHA256,
    }
    headers["authorization"] = acs3_authorization(
        config["access_key_id"], config["access_key_secret"], "POST", path, query, headers, EMPTY_SHA256
    )
    url = f"{endpoint.scheme}://{endpoint.netloc}{path}?{canonical_query(query)}"
    return HttpRequest("POST", url, headers, b"", timeout=float(config["timeout"]))


def send_sms_query(message: Message, config: Mapping[str, Any], receivers: Sequence[str] | None = None
                   ) -> dict[str, str]:
    """SendSms parameters (to `receivers` when given, else the message's; OutId names the first attempt: Aliyun
    takes one a call); raises Undeliverable when the message cannot make a valid call."""
    sign_name = message.sign_name or config["sign_name"]
    numbers = list(receivers) if receivers is not None else [message.receiver]
    if not all(numbers):
        raise Undeliverable("invalid_message", "missing receiver")
    if not message.template_code:
        raise Undeliverable("invalid_message", "missing template_code (the Aliyun template, e.g. SMS_123456)")
    if not sign_name:
        raise Undeliverable("invalid_message", "missing sign_name (set it on the message or in the account config)")
    query = {"PhoneNumbers": ",".join(map(digits_only_number, numbers)), "SignName": sign_name,
             "TemplateCode": message.template_code}
    if message.params:
        query["TemplateParam"] = json.dumps(dict(message.params), ensure_ascii=False, separators=(",", ":"))
    query["OutId"] = message.idempotency_key
    return query


def signature_nonce(messages: Sequence[Message]) -> str:
    """Fixed per call: made from its attempts' keys (for one message, its own key as a single send makes it)."""
    keys = ",".join(message.idempotency_key for message in messages)
    return hashlib.sha256(f"aliyun-sms:{keys}".encode()).hexdigest()[:32]


def acs3_authorization(
    access_key_id: str,
    access_key_secret: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_sha256: str,
) -> str:
    """The ACS3-HMAC-SHA256 Authorization value; `headers` are the headers to sign, names in any case."""
    canonical, signed_headers = canonical_headers(headers)
    canonical_request = "\n".join(
        [method, path, canonical_query(query), canonical, signed_headers, payload_sha256]
    )
    string_to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    signature = hmac.new(access_key_secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={access_key_id},SignedHeaders={signed_headers},Signature={signature}"


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """(CanonicalHeaders, SignedHeaders) as ACS3 defines them: names lower-cased and sorted, values trimmed, and
    the values of names that differ only by case joined by commas in the order given."""
    merged: dict[str, list[str]] = {}
    for name, value in headers.items():
        merged.setdefault(name.strip().lower(), []).append(value.strip())
    names = sorted(merged)
    return "".join(f"{name}:{','.join(merged[name])}\n" for name in names), ";".join(names)


def canonical_query(query: Mapping[str, str]) -> str:
    """Sorted `name=value` pairs, each side percent-encoded per RFC 3986 (space %20, `~` kept)."""
    return "&".join(f"{_encode(name)}={_encode(query[name])}" for name in sorted(query))


def parse_response(response: HttpResponse) -> SendResult:
    """Code "OK" is accepted (BizId awaits its report); other codes map to retryable or permanent."""
    body = json_object(response.body)
    if body is None or not isinstance(body.get("Code"), str):
        return bad_response(response)
    summary = {"status": response.status, **body}
    code = body["Code"]
    if code == "OK":
        biz_id = body.get("BizId")
        if not isinstance(biz_id, str) or not biz_id:
            # accepted without an id to match a report to: it may be sent, and SendSms is not idempotent
            return classified("unknown", "no_biz_id", "Code OK without a BizId: the message may have been sent",
                              final=False, response_summary=summary)
        return SendResult(Outcome.OK, provider_message_id=biz_id, final=False, response_summary=summary)
    return classified(classify(code, response.status), code, str(body.get("Message") or ""), final=False,
                      response_summary=summary)


def classify(code: str, status: int) -> str:
    """The class of a SendSms error code (see CODE_CLASSES)."""
    return code_class(code, CODE_CLASSES, CODE_PREFIXES, status=status)


def parse_callback(request: CallbackRequest, account: Account, now: datetime) -> CallbackResult:
    """An SmsReport push: a JSON array of reports. Aliyun does not sign it: token / allow_ips guard it."""
    return parse_report_items(
        request, account, now, items=json_array, unreadable="body is not a JSON array of SmsReport items",
        report=_report, accepted=REPLY_OK, refusal=_error_reply,
    )


def request_summary(message: Message, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "action": ACTION,
        "phone_numbers": digits_only_number(message.receiver),
        "sign_name": message.sign_name or config["sign_name"],
        "template_code": message.template_code,
        "template_params": dict(message.params),
        "out_id": message.idempotency_key,
    }


def _report(item: Any, now: datetime) -> DeliveryReport | str:
    if not isinstance(item, dict):
        return "not an object"
    biz_id = item.get("biz_id")
    if not isinstance(biz_id, str) or not biz_id:
        return "missing biz_id"
    delivered = item.get("success") in (True, "true")
    number = str(item.get("phone_number") or "")
    return DeliveryReport(
        provider_message_id=biz_id,
        alternate_ids=(batched_id(biz_id, number),) if number else (),
        status="delivered" if delivered else "failed",
        error_code="" if delivered else str(item.get("err_code") or ""),
        error_message="" if delivered else str(item.get("err_msg") or ""),
        reported_at=report_time(item.get("report_time"), now),
        receiver=str(item.get("phone_number") or ""),
    )


def _error_reply(status: int, error: str) -> CallbackReply:
    return json_reply({"code": status, "msg": error}, status)


def _encode(value: str) -> str:
    return quote(value, safe="")
