"""Mock SMS vendors for loopback tests: they check each request the way the vendor does.

Each factory returns a `tests.support.loopback` handler. Signatures are recomputed here from the
request as received (written independently of the provider modules), and mismatches are refused
with the vendor's own error codes. Business answers are scripted per receiver number.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from urllib.parse import parse_qsl, quote

from tests.support.loopback import Handler, Recorded, Reply

Answer = Callable[[str], Reply | None]  # receiver -> scripted reply, None for the default success
Check = Callable[[Recorded], Reply | None]  # the vendor's refusal of a request, None when it passes


def contract_vendor(make_check: Callable[[], Check]) -> Callable[[Reply, list[str]], Handler]:
    """Adapt a request check to `tests.providers.contract`: refusals become problems, `reply` is answered."""

    def vendor(reply: Reply, problems: list[str]) -> Handler:
        check = make_check()

        def handle(request: Recorded) -> Reply:
            refused = check(request)
            if refused is not None:
                problems.append(str(refused.body))
            return reply

        return handle

    return vendor


def scripted_vendor(
    check: Check, receiver: Callable[[Recorded], str], answer: Answer, success: Callable[[Recorded], Reply]
) -> Handler:
    """A mock vendor: its refusal when `check` has one, else the answer scripted for the receiver, else `success`."""

    def handle(request: Recorded) -> Reply:
        refused = check(request)
        if refused:
            return refused
        scripted = answer(receiver(request))
        if scripted is not None:
            return scripted
        return success(request)

    return handle


def rfc3986(value: str) -> str:
    return quote(value, safe="-_.~")


# --- Aliyun dysmsapi ---------------------------------------------------------------------------

ALIYUN_AUTH = re.compile(
    r"^ACS3-HMAC-SHA256 Credential=(?P<ak>[^,]+),SignedHeaders=(?P<signed>[^,]+),Signature=(?P<sig>[0-9a-f]{64})$"
)
ALIYUN_REQUIRED_HEADERS = (
    "host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256",
)
# Headers a request may carry unsigned: the signature itself and the body's length. Anything else on the wire
# must be signed, or this vendor refuses the call (stricter than Aliyun, which tolerates unsigned extras: a header a
# proxy could change unseen is a bug of the caller's).
ALIYUN_UNSIGNED_ALLOWED = frozenset({"authorization", "content-length"})


def aliyun_error(status: int, code: str, message: str) -> Reply:
    body = {"RequestId": "7B3C0A0E-MOCK", "HostId": "dysmsapi.aliyuncs.com", "Code": code, "Message": message}
    return Reply(status, json.dumps(body))


def aliyun_business(code: str, message: str) -> Reply:
    """Business failures come back as HTTP 200 with a Code other than OK."""
    return Reply(200, json.dumps({"RequestId": "7B3C0A0E-MOCK", "Code": code, "Message": message}))


def aliyun_check(secrets: Mapping[str, str]) -> Check:
    """dysmsapi's checks: signature (nonces remembered), required parameters, TemplateParam JSON."""
    seen_nonces: set[str] = set()

    def check(request: Recorded) -> Reply | None:
        refused = _aliyun_auth(request, secrets, seen_nonces)
        if refused:
            return refused
        for name in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not request.query.get(name):
                return aliyun_error(400, f"Missing{name}", f"{name} is mandatory for this action.")
        if "TemplateParam" in request.query:
            try:
                json.loads(request.query["TemplateParam"])
            except ValueError:
                return aliyun_business("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        return None

    return check


def aliyun_vendor(secrets: Mapping[str, str], answer: Answer = lambda receiver: None) -> Handler:
    return scripted_vendor(aliyun_check(secrets), lambda request: request.query["PhoneNumbers"], answer, _aliyun_ok)


def aliyun_batch_vendor(secrets: Mapping[str, str], answer: Answer = lambda receiver: None) -> Handler:
    """SendSms to a comma-separated PhoneNumbers list: the same checks (the signature over the query exactly as
    sent), at most 1000 numbers, each of 5 to 15 digits; one Code for the whole call, so a number's scripted
    refusal refuses the call; else OK with a BizId of its own per call."""
    check = aliyun_check(secrets)
    calls = iter(range(1, 1_000_000))

    def handle(request: Recorded) -> Reply:
        refused = check(request)
        if refused:
            return refused
        numbers = request.query["PhoneNumbers"].split(",")
        if len(numbers) > 1000:
            return aliyun_business("isv.MOBILE_COUNT_OVER_LIMIT", "手机号码数量超过限制")
        if not all(number.isdigit() and 5 <= len(number) <= 15 for number in numbers):
            return aliyun_business("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
        for number in numbers:
            scripted = answer(number)
            if scripted is not None:
                return scripted
        biz_id = f"90061974693649{next(calls):04d}^0"
        return Reply(200, json.dumps({"RequestId": "F655A8D5-MOCK", "Code": "OK", "Message": "OK", "BizId": biz_id}))

    return handle


def _aliyun_ok(request: Recorded) -> Reply:
    ok = {"RequestId": "F655A8D5-MOCK", "Code": "OK", "Message": "OK", "BizId": "900619746936498440^0"}
    return Reply(200, json.dumps(ok))


def _aliyun_auth(request: Recorded, secrets: Mapping[str, str], seen_nonces: set[str]) -> Reply | None:
    match = ALIYUN_AUTH.match(request.header("Authorization"))
    if not match:
        return aliyun_error(400, "IncompleteSignature", "The request signature does not conform to Aliyun standards.")
    signed = match["signed"].split(";")
    missing = [name for name in ALIYUN_REQUIRED_HEADERS if name not in signed or not request.header(name)]
    if missing:
        return aliyun_error(400, "IncompleteSignature", f"Headers not signed or missing: {', '.join(missing)}")
    unsigned = sorted({name.lower() for name in request.headers} - set(signed) - ALIYUN_UNSIGNED_ALLOWED)
    if unsigned:
        return aliyun_error(400, "IncompleteSignature", f"Headers sent but not signed: {', '.join(unsigned)}")
    if request.header("x-acs-action") != "SendSms":
        return aliyun_error(404, "InvalidAction.NotFound", "Specified api is not found.")
    if request.header("x-acs-version") != "2017-05-25":
        return aliyun_error(400, "InvalidVersion", "Specified parameter Version is not valid.")
    if match["ak"] not in secrets:
        return aliyun_error(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
    if request.header("x-acs-content-sha256") != hashlib.sha256(request.body).hexdigest():
        return aliyun_error(400, "SignatureDoesNotMatch", "x-acs-content-sha256 does not match the body.")
    sent_at = datetime.strptime(request.header("x-acs-date"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    if abs((datetime.now(timezone.utc) - sent_at).total_seconds()) > 15 * 60:
        return aliyun_error(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
    query = "&".join(f"{rfc3986(k)}={rfc3986(v)}" for k, v in sorted(request.query.items()))
    headers = "".join(f"{name}:{request.header(name).strip()}\n" for name in sorted(signed))
    canonical = "\n".join(
        [request.method, request.path, query, headers, ";".join(sorted(signed)), request.header("x-acs-content-sha256")]
    )
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    expected = hmac.new(secrets[match["ak"]].encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["sig"]):
        return aliyun_error(
            400, "SignatureDoesNotMatch", f"Specified signature is not matched with our calculation. {string_to_sign!r}"
        )
    nonce = request.header("x-acs-signature-nonce")
    if nonce in seen_nonces:
        return aliyun_error(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
    seen_nonces.add(nonce)
    return None


# --- Tencent Cloud SMS -------------------------------------------------------------------------

TENCENT_AUTH = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<service>\w+)/tc3_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<sig>[0-9a-f]{64})$"
)


def tencent_error(code: str, message: str) -> Reply:
    """Tencent answers API errors with HTTP 200 and Response.Error."""
    return Reply(200, json.dumps({"Response": {"Error": {"Code": code, "Message": message}, "RequestId": "mock-req"}}))


def tencent_status(code: str, message: str, receiver: str) -> Reply:
    """A per-number status in SendStatusSet (how Tencent reports a number it did not accept)."""
    status = {"SerialNo": "", "PhoneNumber": receiver, "Fee": 0, "SessionContext": "", "Code": code,
              "Message": message, "IsoCode": "CN"}
    return Reply(200, json.dumps({"Response": {"SendStatusSet": [status], "RequestId": "mock-req"}}))


def tencent_check(secrets: Mapping[str, str]) -> Check:
    """SendSms's checks: TC3 signature, content type, action/version, a JSON body with required fields."""

    def check(request: Recorded) -> Reply | None:
        refused = _tencent_auth(request, secrets)
        if refused:
            return refused
        try:
            body = json.loads(request.body)
        except ValueError:
            return tencent_error("FailedOperation.FailResolvePacket", "请求包解析失败")
        for name in ("PhoneNumberSet", "SmsSdkAppId", "TemplateId"):
            if not body.get(name):
                return tencent_error("MissingParameter", f"The request is missing a required parameter `{name}`.")
        return None

    return check


def tencent_vendor(secrets: Mapping[str, str], answer: Answer = lambda receiver: None) -> Handler:
    return scripted_vendor(tencent_check(secrets), _tencent_receiver, answer, _tencent_ok)


def tencent_batch_vendor(secrets: Mapping[str, str], answer: Callable[[str], tuple[str, str] | None]) -> Handler:
    """SendSms to many numbers: the same checks, at most 200 numbers, a SendStatusSet entry per number (its
    scripted (code, message), else Ok with a SerialNo of its own)."""
    check = tencent_check(secrets)

    def handle(request: Recorded) -> Reply:
        refused = check(request)
        if refused:
            return refused
        body = json.loads(request.body)
        numbers = body["PhoneNumberSet"]
        if len(numbers) > 200:
            return tencent_error("LimitExceeded.PhoneNumberCountLimit", "单次提交的手机号个数超过200个")
        statuses = []
        for index, number in enumerate(numbers):
            code, message = answer(number) or ("Ok", "send success")
            statuses.append({"SerialNo": f"5000:{index:04d}{number[-4:]}" if code == "Ok" else "",
                             "PhoneNumber": number, "Fee": 1 if code == "Ok" else 0,
                             "SessionContext": body.get("SessionContext", ""), "Code": code, "Message": message,
                             "IsoCode": "CN"})
        return Reply(200, json.dumps({"Response": {"SendStatusSet": statuses, "RequestId": "mock-req"}}))

    return handle


def _tencent_receiver(request: Recorded) -> str:
    return json.loads(request.body)["PhoneNumberSet"][0]


def _tencent_ok(request: Recorded) -> Reply:
    body = json.loads(request.body)
    status = {"SerialNo": "5000:1045710669157053657849499619", "PhoneNumber": body["PhoneNumberSet"][0], "Fee": 1,
              "SessionContext": body.get("SessionContext", ""), "Code": "Ok", "Message": "send success",
              "IsoCode": "CN"}
    return Reply(200, json.dumps({"Response": {"SendStatusSet": [status], "RequestId": "mock-req"}}))


def _tencent_auth(request: Recorded, secrets: Mapping[str, str]) -> Reply | None:
    match = TENCENT_AUTH.match(request.header("Authorization"))
    if not match:
        return tencent_error("AuthFailure.InvalidAuthorization", "Authorization header is malformed.")
    signed = match["signed"].split(";")
    if "content-type" not in signed or "host" not in signed:
        return tencent_error("AuthFailure.InvalidAuthorization", "content-type and host must be signed.")
    if not request.header("Content-Type").startswith("application/json"):
        return tencent_error("InvalidParameter", "Content-Type must be application/json for POST.")
    if request.header("X-TC-Action") != "SendSms" or request.header("X-TC-Version") != "2021-01-11":
        return tencent_error("InvalidAction", "The action or version is not valid.")
    if match["id"] not in secrets:
        return tencent_error("AuthFailure.SecretIdNotFound", "The SecretId is not found.")
    timestamp = int(request.header("X-TC-Timestamp") or 0)
    if abs(datetime.now(timezone.utc).timestamp() - timestamp) > 300:
        return tencent_error("AuthFailure.SignatureExpire", "Signature expired.")
    date = datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")
    if match["date"] != date or match["service"] != "sms":
        return tencent_error("AuthFailure.SignatureFailure", "The credential scope does not match the request.")
    headers = "".join(f"{name}:{request.header(name).strip().lower()}\n" for name in signed)
    canonical = "\n".join(
        [request.method, "/", "", headers, match["signed"], hashlib.sha256(request.body).hexdigest()]
    )
    scope = f"{date}/sms/tc3_request"
    string_to_sign = f"TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"TC3{secrets[match['id']]}".encode()
    for part in (date, "sms", "tc3_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["sig"]):
        return tencent_error(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. Please check your signature is correct.",
        )
    return None


# --- Zrwinfo (1cloudsp) ------------------------------------------------------------------------

def zrwinfo_answer(code: str, message: str) -> Reply:
    return Reply(200, json.dumps({"code": code, "msg": message}, ensure_ascii=False))


def zrwinfo_check(credentials: Mapping[str, str]) -> Check:
    """single_send's checks: path, form content type, required fields, accesskey/secret, sign format."""

    def check(request: Recorded) -> Reply | None:
        if request.path != "/api/v2/single_send":
            return Reply(404, "<html><body>404 Not Found</body></html>", {"Content-Type": "text/html"})
        if not request.header("Content-Type").startswith("application/x-www-form-urlencoded"):
            return zrwinfo_answer("9002", "参数未赋值")
        form = dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True))
        for name in ("accesskey", "secret", "sign", "templateId", "mobile"):
            if not form.get(name):
                return zrwinfo_answer("9002", "参数未赋值")
        if credentials.get(form["accesskey"]) != form["secret"]:
            return zrwinfo_answer("9006", "用户accessKey不正确")
        if not form["sign"].startswith("【") and not form["sign"].isdigit():
            return zrwinfo_answer("9001", "签名格式不正确")
        return None

    return check


def zrwinfo_vendor(credentials: Mapping[str, str], answer: Answer = lambda receiver: None) -> Handler:
    return scripted_vendor(zrwinfo_check(credentials), _zrwinfo_receiver, answer, _zrwinfo_ok)


def _zrwinfo_receiver(request: Recorded) -> str:
    return dict(parse_qsl(request.body.decode("utf-8")))["mobile"]


def _zrwinfo_ok(request: Recorded) -> Reply:
    return Reply(200, json.dumps({"code": "0", "msg": "SUCCESS", "smUuid": "16596_1_0_13800138000_1_Ab3cD"}))
