"""Zrwinfo (1cloudsp) SMS: single_send form posts against a checking mock, and its status pushes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers import zrwinfo_sms
from providers.base import Account, CallbackRequest, Message, Outcome, SendResult
from tests.providers import contract
from tests.providers.sms_mocks import contract_vendor, zrwinfo_answer, zrwinfo_check, zrwinfo_vendor
from tests.providers.sms_support import live_context, push_request, stored_text
from tests.support.loopback import LoopbackServer, Recorded, Reply, loopback

ACCESSKEY, SECRET = "QUG8vMockAccessKey", "ciKkzMockSecret0123456789abcdefg"
NOW = datetime(2026, 3, 1, 8, 30, 0, tzinfo=timezone.utc)
SCRIPTED: dict[str, Reply] = {
    "13800000001": zrwinfo_answer("9024", "手机号码超频"),
    "13800000002": zrwinfo_answer("9003", "手机号码格式不正确"),
    "13800000003": zrwinfo_answer("9017", "无效的模板ID"),
    "13800000004": zrwinfo_answer("9010", "用户短信余额不足"),
    "13800000005": zrwinfo_answer("9016", "无效的签名或者签名ID"),
    "13800000006": Reply(503, "<html>503 Service Unavailable</html>", {"Content-Type": "text/html"}),
    "13800000007": Reply(200, "success"),
    "13800000008": Reply(200, json.dumps({"code": "0", "msg": "SUCCESS"})),
    "13800000009": Reply(200, json.dumps({"code": "0", "smUuid": "1_1"}), delay=1.0),
}


def make_message(receiver: str = "13800138000", **changes: object) -> Message:
    fields: dict[str, object] = {
        "task_id": "task-3001", "attempt": 1, "receiver": receiver, "channel_type": "sms",
        "text": "先生您好，您的订单于9:40已通过快递公司发货", "template_code": "171823",
        "params": {"1": "先生", "2": "9:40", "3": "快递公司"}, "sign_name": "测试签名",
    }
    fields.update(changes)
    return Message(**fields)  # type: ignore[arg-type]


def make_config(base_url: str = "https://api.1cloudsp.com", secret: str = SECRET) -> dict:
    return {"accesskey": ACCESSKEY, "secret": secret, "base_url": base_url, "timeout": 0.3}


def make_account(base_url: str = "https://api.1cloudsp.com", **callback: object) -> Account:
    return Account("zrwinfo-backup", "zrwinfo_sms", make_config(base_url), callback)


@pytest.fixture(scope="module")
def shared_vendor() -> Iterator[LoopbackServer]:
    with loopback(zrwinfo_vendor({ACCESSKEY: SECRET}, SCRIPTED.get)) as server:
        yield server


@pytest.fixture
def vendor(shared_vendor: LoopbackServer) -> LoopbackServer:
    shared_vendor.requests.clear()
    return shared_vendor


def send_to(server_url: str, message: Message, secret: str = SECRET) -> SendResult:
    account = Account("zrwinfo-backup", "zrwinfo_sms", make_config(server_url, secret))
    return zrwinfo_sms.send(message, account, live_context())


def test_build_request_posts_the_documented_form() -> None:
    """single_send gets accesskey, secret, 【sign】, templateId, mobile and ##-joined values in order."""
    request = zrwinfo_sms.build_request(make_message(), make_account(), NOW)
    assert (request.method, request.url) == ("POST", "https://api.1cloudsp.com/api/v2/single_send")
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded; charset=utf-8"
    assert dict(parse_qsl(request.body.decode())) == {
        "accesskey": ACCESSKEY, "secret": SECRET, "sign": "【测试签名】", "templateId": "171823",
        "mobile": "13800138000", "content": "先生##9:40##快递公司",
    }


@pytest.mark.parametrize(("given_sign", "sent"), [("木雷", "【木雷】"), ("【木雷】", "【木雷】"), ("141125", "141125")])
def test_sign_is_bracketed_unless_it_is_an_id_or_already_bracketed(given_sign: str, sent: str) -> None:
    """A sign text is wrapped in 【】; a numeric sign id or a bracketed sign is sent as given."""
    assert zrwinfo_sms.sign_field(given_sign) == sent


def test_accepted_send_awaits_its_delivery_report(vendor: LoopbackServer) -> None:
    """code 0 from the checking mock is ok, not final, with smUuid as the provider message id."""
    result = send_to(vendor.url, make_message())
    assert result.outcome is Outcome.OK and not result.final
    assert result.provider_message_id == "16596_1_0_13800138000_1_Ab3cD"
    assert result.request_summary["content"] == "先生##9:40##快递公司"
    assert len(vendor.requests) == 1


def test_wrong_secret_is_refused(vendor: LoopbackServer) -> None:
    """Credentials the vendor does not know come back 9006, permanent."""
    result = send_to(vendor.url, make_message(), secret="not-the-secret")
    assert (result.outcome, result.error_code, result.error_message) == (Outcome.PERMANENT, "9006", "用户accessKey不正确")


@pytest.mark.parametrize(
    ("receiver", "outcome", "code"),
    [
        ("13800000001", Outcome.RETRYABLE, "9024"),
        ("13800000002", Outcome.PERMANENT, "9003"),
        ("13800000003", Outcome.PERMANENT, "9017"),
        ("13800000004", Outcome.PERMANENT, "9010"),
        ("13800000005", Outcome.PERMANENT, "9016"),
    ],
)
def test_vendor_errors_keep_code_and_message_and_are_classified(
    vendor: LoopbackServer, receiver: str, outcome: Outcome, code: str
) -> None:
    """Each vendor code is kept with its message; only the per-number frequency limit is retryable."""
    result = send_to(vendor.url, make_message(receiver))
    assert (result.outcome, result.error_code) == (outcome, code)
    assert result.error_message == json.loads(SCRIPTED[receiver].body)["msg"]


@pytest.mark.parametrize("receiver", ["13800000006", "13800000007", "13800000008"])
def test_garbage_answers_are_retryable_bad_responses(vendor: LoopbackServer, receiver: str) -> None:
    """An HTML 503, plain text or code 0 without smUuid is a retryable bad_response."""
    result = send_to(vendor.url, make_message(receiver))
    assert (result.outcome, result.error_code) == (Outcome.RETRYABLE, "bad_response")


def test_slow_vendor_times_out_as_retryable_network_error(vendor: LoopbackServer) -> None:
    """An answer slower than the configured timeout is a retryable network failure."""
    result = send_to(vendor.url, make_message("13800000009"))
    assert (result.outcome, result.error_code) == (Outcome.RETRYABLE, "network")


@pytest.mark.parametrize(
    "changes",
    [{"template_code": ""}, {"receiver": ""}, {"sign_name": ""}, {"params": {"1": "a##b"}}, {"params": {"1": "$$"}}],
    ids=["template", "receiver", "sign", "hash-separator", "dollar-separator"],
)
def test_message_zrwinfo_would_misread_fails_permanently_without_calling(vendor: LoopbackServer, changes: dict) -> None:
    """A missing field, or a value containing the vendor's ## / $$ separator, is permanent and never sent."""
    result = send_to(vendor.url, make_message(**changes))
    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "invalid_message")
    assert vendor.requests == []


def test_secret_never_appears_in_results_even_when_the_vendor_echoes_it() -> None:
    """The secret travels in the body; a vendor echoing the request back still never gets it stored."""

    def echo(request: Recorded) -> Reply:
        return Reply(200, json.dumps({"code": "9002", "msg": f"参数未赋值: {request.body.decode()}"}))

    with loopback(echo) as server:
        echoed = send_to(server.url, make_message())
    assert echoed.error_code == "9002" and "accesskey" in echoed.error_message
    stored = stored_text(echoed)
    assert SECRET not in stored and "***" in stored


# --- status pushes -----------------------------------------------------------------------------

DELIVERED = {"smUuid": "16596_1_0_13800138000_1_Ab3cD", "mobile": "13800138000", "batchId": "",
             "deliverResult": "DELIVRD", "deliverTime": "2026-03-01 16:30:05"}
FAILED = {"smUuid": "16596_1_0_13800000002_1_Xy9Z", "mobile": "13800000002", "batchId": "",
          "deliverResult": "MK:0001", "deliverTime": "2026-03-01 16:31:00"}


def push(body: bytes, token: str = "zr-token", client: str = "203.0.113.5", method: str = "POST",
         query: dict[str, str] | None = None) -> CallbackRequest:
    return push_request(body, token, client, "application/x-www-form-urlencoded", method, query)


def test_form_push_becomes_a_delivery_report() -> None:
    """A form push with deliverResult DELIVRD is delivered; the vendor gets {"code":"0","msg":"SUCCESS"}."""
    result = zrwinfo_sms.parse_callback(push(urlencode(DELIVERED).encode()), make_account(token="zr-token"), NOW)
    (report,) = result.reports
    assert (report.provider_message_id, report.status) == (DELIVERED["smUuid"], "delivered")
    assert report.receiver == "13800138000"
    assert report.reported_at == datetime(2026, 3, 1, 8, 30, 5, tzinfo=timezone.utc)
    assert json.loads(result.reply.body) == {"code": "0", "msg": "SUCCESS"} and result.verified


def test_failed_result_is_the_error_code() -> None:
    """Any deliverResult other than DELIVRD is a failure carrying that result as its code."""
    result = zrwinfo_sms.parse_callback(push(urlencode(FAILED).encode()), make_account(token="zr-token"), NOW)
    assert (result.reports[0].status, result.reports[0].error_code) == ("failed", "MK:0001")


def test_json_array_and_get_query_pushes_are_read_too() -> None:
    """The same fields as a JSON array, or as GET query parameters, give the same reports."""
    account = make_account(token="zr-token")
    as_json = zrwinfo_sms.parse_callback(push(json.dumps([DELIVERED, FAILED]).encode()), account, NOW)
    as_query = zrwinfo_sms.parse_callback(push(b"", method="GET", query=DELIVERED), account, NOW)
    assert [r.status for r in as_json.reports] == ["delivered", "failed"]
    assert as_query.reports[0].provider_message_id == DELIVERED["smUuid"]


@pytest.mark.parametrize(
    ("callback", "token", "client"),
    [
        ({"token": "zr-token"}, "", "203.0.113.5"),
        ({}, "zr-token", "203.0.113.5"),
        ({"allow_ips": ["47.96.0.1"]}, "zr-token", "203.0.113.5"),
    ],
    ids=["missing-token", "nothing-configured", "address-not-allowed"],
)
def test_forged_push_is_refused(callback: dict, token: str, client: str) -> None:
    """A push without the right token or from outside allow_ips is not taken."""
    account = Account("zrwinfo-backup", "zrwinfo_sms", make_config(), callback)
    result = zrwinfo_sms.parse_callback(push(urlencode(DELIVERED).encode(), token, client), account, NOW)
    assert (result.reports, result.verified) == ((), False)
    assert result.error and result.reply.status == 403


@pytest.mark.parametrize("body", [b"hello=world", b"{not json", b'{"mobile": "1"}', b"\xff\xfe\xfd"])
def test_garbage_push_yields_no_reports_and_a_clear_error(body: bytes) -> None:
    """A push without smUuid, or unreadable, gives no reports and says why."""
    result = zrwinfo_sms.parse_callback(push(body), make_account(token="zr-token"), NOW)
    assert result.reports == () and result.error and result.reply.status == 400


@given(st.binary(max_size=300))
def test_parse_callback_never_raises(body: bytes) -> None:
    """Any body at all is answered: reports or an error, never an exception."""
    result = zrwinfo_sms.parse_callback(push(body), make_account(token="zr-token"), NOW)
    assert result.reports or result.error or json.loads(body) == []


# --- shared HTTP provider contract ------------------------------------------------------------

CASE = contract.ProviderCase(
    provider=zrwinfo_sms,
    config=lambda url: {**make_config(url), "timeout": contract.TIMEOUT},
    vendor=contract_vendor(lambda: zrwinfo_check({ACCESSKEY: SECRET})),
    message=make_message(),
    success=Reply(200, json.dumps({"code": "0", "msg": "SUCCESS", "smUuid": "1_1_0_13800138000_1_a"})),
    vendor_errors=(
        contract.Scenario("throttled", SCRIPTED["13800000001"], Outcome.RETRYABLE, "9024"),
        contract.Scenario("no-balance", SCRIPTED["13800000004"], Outcome.PERMANENT, "9010"),
    ),
    message_id="1_1_0_13800138000_1_a",
    final=False,
)


@pytest.mark.parametrize("scenario", contract.scenarios(CASE), ids=str)
def test_contract(scenario: contract.Scenario) -> None:
    """The provider meets the shared HTTP provider contract in this scenario."""
    contract.check(CASE, scenario)
