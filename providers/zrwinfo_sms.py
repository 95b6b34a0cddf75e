"""Zrwinfo (掌榕网, api.1cloudsp.com) SMS: the v2 single_send form API and its status report pushes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from providers._sms import digits_only_number, json_reply, json_value, parse_report_items, report_time, send_sms
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
    Undeliverable,
    bad_response,
    classified,
    code_class,
    json_object,
    with_defaults,
)

TYPE = "zrwinfo_sms"
CHANNEL_TYPES = frozenset({"sms"})
CONFIG: ConfigSchema = {
    "accesskey": ConfigField(help="accesskey from the console's 我的秘钥 page"),
    "secret": ConfigField(secret=True, help="secret from the same page (sent in the request body)"),
    "sign_name": ConfigField(
        required=False, default="", help="Sign (text or sign id) used when the message names none"
    ),
    "base_url": ConfigField(
        required=False, default="https://api.1cloudsp.com", help="API endpoint; keep https: the secret is in the body"
    ),
    "timeout": ConfigField(float, required=False, default=10.0, help="Per-call timeout, seconds"),
}

PATH = "/api/v2/single_send"
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
SEPARATORS = ("##", "$$")  # the vendor splits template values on either
REPLY_OK = json_reply({"code": "0", "msg": "SUCCESS"})

# single_send codes and their classes, as documented on the vendor's API page (https://www.1cloudsp.com, API文档 >
# 返回码; that page was not found by search, so these follow the codes the module was first written against).
# Unlisted codes: transient when the vendor answered 5xx, else content.
CODE_CLASSES: dict[str, str] = {
    "9001": "content",  # sign invalid
    "9003": "receiver",  # number invalid
    "9006": "account",  # accesskey / secret invalid
    "9007": "account",  # the caller's IP is not allowed
    "9010": "account",  # balance too low
    "9016": "content",  # sign not approved
    "9017": "content",  # template not approved / not matching
    "9023": "receiver",  # number blacklisted
    "10001": "content",  # sensitive words
    "9024": "throttled",  # per-number sending frequency: clears with time
}


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """Send one templated SMS; the result awaits a delivery report (final=False)."""
    return send_sms(message, account, ctx, CONFIG, build_request, parse_response, request_summary)


def build_request(message: Message, account: Account, now: datetime) -> HttpRequest:
    """The single_send form post (credentials ride in the body: Zrwinfo has no request signing)."""
    config = with_defaults(CONFIG, account.config)
    form = {
        "accesskey": config["accesskey"],
        "secret": config["secret"],
        **single_send_fields(message, config),
    }
    url = config["base_url"].rstrip("/") + PATH
    headers = {"Content-Type": CONTENT_TYPE, "Accept": "application/json"}
    return HttpRequest("POST", url, headers, urlencode(form).encode(), timeout=float(config["timeout"]))


def single_send_fields(message: Message, config: Mapping[str, Any]) -> dict[str, str]:
    """The non-secret form fields; raises Undeliverable when the message cannot make a valid call."""
    if not message.receiver:
        raise Undeliverable("invalid_message", "missing receiver")
    if not message.template_code:
        raise Undeliverable("invalid_message", "missing template_code (the Zrwinfo templateId)")
    sign = sign_field(message.sign_name or config["sign_name"])
    if not sign:
        raise Undeliverable("invalid_message", "missing sign_name (set it on the message or in the account config)")
    for name, value in message.params.items():
        if any(separator in value for separator in SEPARATORS):
            raise Undeliverable(
                "invalid_message", f"template value {name!r} contains '##' or '$$', which Zrwinfo splits on"
            )
    return {
        "sign": sign,
        "templateId": message.template_code,
        "mobile": digits_only_number(message.receiver),
        "content": "##".join(message.params.values()),
    }


def sign_field(sign_name: str) -> str:
    """A sign text goes as 【text】; a numeric sign id or an already bracketed sign goes as given."""
    if not sign_name or sign_name.isdigit() or sign_name.startswith("【"):
        return sign_name
    return f"【{sign_name}】"


def parse_response(response: HttpResponse) -> SendResult:
    """code "0" is accepted (smUuid awaits its report); other codes map to retryable or permanent."""
    body = json_object(response.body)
    if body is None or not isinstance(body.get("code"), (str, int)):
        return bad_response(response)
    summary = {"status": response.status, **body}
    code = str(body["code"])
    if code == "0":
        sm_uuid = body.get("smUuid")
        if not isinstance(sm_uuid, str) or not sm_uuid:
            return bad_response(response)
        return SendResult(Outcome.OK, provider_message_id=sm_uuid, final=False, response_summary=summary)
    return classified(classify(code, response.status), code, str(body.get("msg") or ""), final=False,
                      response_summary=summary)


def classify(code: str, status: int) -> str:
    """The class of a single_send code (see CODE_CLASSES)."""
    return code_class(code, CODE_CLASSES, status=status)


def parse_callback(request: CallbackRequest, account: Account, now: datetime) -> CallbackResult:
    """A status push: form fields smUuid, mobile, deliverResult, deliverTime, batchId (or the same
    keys as a JSON object or array). Zrwinfo does not sign it: token / allow_ips guard it."""
    return parse_report_items(
        request, account, now, items=_items,
        unreadable="body is neither report form fields nor a JSON report object or array",
        report=_report, accepted=REPLY_OK, refusal=_error_reply,
    )


def request_summary(message: Message, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "mobile": digits_only_number(message.receiver),
        "sign": sign_field(message.sign_name or config["sign_name"]),
        "templateId": message.template_code,
        "content": "##".join(message.params.values()),
    }


def _items(request: CallbackRequest) -> list[Any] | None:
    """Report items from a JSON body, else from form fields, else from the query string (GET)."""
    stripped = request.body.strip()
    if stripped[:1] in (b"{", b"["):
        parsed = json_value(stripped)
        if isinstance(parsed, dict):
            return [parsed]
        return parsed if isinstance(parsed, list) else None
    try:
        form = dict(parse_qsl(stripped.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        return None
    fields = form if "smUuid" in form else dict(request.query)
    return [fields] if "smUuid" in fields else None


def _report(item: Any, now: datetime) -> DeliveryReport | str:
    if not isinstance(item, dict):
        return "not an object"
    sm_uuid = item.get("smUuid")
    if not isinstance(sm_uuid, str) or not sm_uuid:
        return "missing smUuid"
    result = str(item.get("deliverResult") or "")
    delivered = result == "DELIVRD"
    return DeliveryReport(
        provider_message_id=sm_uuid,
        status="delivered" if delivered else "failed",
        error_code="" if delivered else result,
        error_message="",
        reported_at=report_time(item.get("deliverTime"), now),
        receiver=str(item.get("mobile") or ""),
    )


def _error_reply(status: int, error: str) -> CallbackReply:
    return json_reply({"code": "1", "msg": error}, status)
