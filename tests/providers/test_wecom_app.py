"""WeCom application messages: token fetch and cache, one refresh on a stale token, errcode mapping."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

import pytest

from providers import wecom_app
from providers.base import Account, Message, Outcome, SendContext, with_defaults
from tests.providers import contract
from tests.providers.contract import ProviderCase, Scenario
from tests.support.loopback import Recorded, Reply
from tests.support.tokens import MemoryTokenCache

CORP_ID, CORP_SECRET, AGENT_ID = "ww1234567890abcd", "corp-secret-9f8e7d", 1000002
ISSUED = "wecom-token-5a5a5a"
MESSAGE = Message("T7", 1, "zhangsan|lisi", "wecom", "服务器重启完成")
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def errcode(code: int, message: str, **extra: object) -> Reply:
    return Reply(200, json.dumps({"errcode": code, "errmsg": message, **extra}))


OK = errcode(0, "ok", msgid="MSGID-1", invaliduser="")


class WeComServer:
    """qyapi.weixin.qq.com on loopback: issues tokens and checks message/send as WeCom does."""

    def __init__(self, reply: Reply, problems: list[str], tokens: list[str] | None = None) -> None:
        self.reply, self.problems = reply, problems
        self.tokens = list(tokens or [ISSUED])  # issued in order, the last one repeats
        self.valid: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, request: Recorded) -> Reply:
        if request.path == "/cgi-bin/gettoken":
            return self.gettoken(request)
        if request.path == "/cgi-bin/message/send" and request.method == "POST":
            return self.message_send(request)
        self.problems.append(f"unexpected {request.method} {request.path}")
        return Reply(404, "")

    def gettoken(self, request: Recorded) -> Reply:
        if request.method != "GET" or request.query != {"corpid": CORP_ID, "corpsecret": CORP_SECRET}:
            return errcode(40001, "invalid credential")
        with self.lock:
            token = self.tokens.pop(0) if len(self.tokens) > 1 else self.tokens[0]
            self.valid.add(token)
        return Reply(200, json.dumps({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}))

    def message_send(self, request: Recorded) -> Reply:
        if request.query.get("access_token") not in self.valid:
            return errcode(40014, "invalid access_token")
        if not request.header("Content-Type").startswith("application/json"):
            self.problems.append("content type")
        body = json.loads(request.body)
        if body.get("agentid") != AGENT_ID or not body.get("touser") or body.get("msgtype") not in ("text", "markdown"):
            self.problems.append(f"bad body {body}")
        elif not body.get(body["msgtype"], {}).get("content"):
            self.problems.append("no content")
        return self.reply


def config(url: str, **extra: object) -> dict[str, object]:
    return {"corp_id": CORP_ID, "corp_secret": CORP_SECRET, "agent_id": AGENT_ID,
            "base_url": url, "timeout": contract.TIMEOUT, **extra}


CASE = ProviderCase(
    provider=wecom_app,
    config=config,
    vendor=WeComServer,
    message=MESSAGE,
    success=OK,
    message_id="MSGID-1",
    hidden=(ISSUED,),
    vendor_errors=(
        Scenario("busy", errcode(-1, "system busy"), Outcome.RETRYABLE, "-1"),
        Scenario("frequency-limit", errcode(45009, "api freq out of limit"), Outcome.RETRYABLE, "45009"),
        Scenario("invalid-users", errcode(81013, "user & party & tag all invalid"), Outcome.PERMANENT, "81013"),
        Scenario("ip-not-allowed", errcode(60020, "not allow to access from your ip"), Outcome.PERMANENT, "60020"),
        Scenario("no-permission", errcode(301002, "not allow operate another agent"), Outcome.PERMANENT, "301002"),
        Scenario("token-stays-invalid", errcode(42001, "access_token expired"), Outcome.RETRYABLE, "42001"),
    ),
)


@pytest.mark.parametrize("scenario", contract.scenarios(CASE), ids=str)
def test_contract(scenario: Scenario) -> None:
    """The WeCom application provider meets the shared HTTP provider contract in this scenario."""
    contract.check(CASE, scenario)


def account(url: str, **extra: object) -> Account:
    return Account("wecom", "wecom_app", with_defaults(wecom_app.CONFIG, config(url, **extra)))


class TestToken:
    def test_token_is_fetched_once_and_cached_under_a_digest(self) -> None:
        """Two sends share one gettoken; the cache key holds no secret and the TTL leaves a margin."""
        tokens = MemoryTokenCache()
        with contract.vendor(WeComServer(OK, [])) as server:
            ctx = SendContext(contract.TRANSPORT, NOW, tokens)
            first = wecom_app.send(MESSAGE, account(server.url), ctx)
            second = wecom_app.send(MESSAGE, account(server.url), ctx)
            paths = [r.path for r in server.requests]
        assert first.ok and second.ok
        assert paths == ["/cgi-bin/gettoken", "/cgi-bin/message/send", "/cgi-bin/message/send"]
        [key] = tokens.keys()
        assert CORP_SECRET not in key and CORP_ID not in key and key.startswith("wecom_app:")
        assert tokens.ttls[key] == 7200 - 300

    def test_stale_cached_token_is_refreshed_once_and_the_message_resent(self) -> None:
        """A cached token the vendor no longer accepts is dropped, fetched anew, and the send repeated once."""
        tokens = MemoryTokenCache()
        with contract.vendor(WeComServer(OK, [], tokens=["fresh-token"])) as server:
            url = server.url
            tokens.set(wecom_app.token_cache_key("wecom_app", CORP_ID, str(AGENT_ID)), "expired-token", 100)
            result = wecom_app.send(MESSAGE, account(url), SendContext(contract.TRANSPORT, NOW, tokens))
            sent_with = [r.query.get("access_token") for r in server.requests if r.path.endswith("/send")]
        assert result.ok and result.provider_message_id == "MSGID-1"
        assert sent_with == ["expired-token", "fresh-token"]
        assert tokens.get(tokens.keys()[0]) == "fresh-token"

    def test_refresh_happens_at_most_once_per_send(self) -> None:
        """When even the new token is refused, the send stops after one refresh with a retryable result."""
        server_handler = WeComServer(errcode(42001, "access_token expired"), [])
        with contract.vendor(server_handler) as server:
            result = wecom_app.send(MESSAGE, account(server.url), SendContext(contract.TRANSPORT, NOW, MemoryTokenCache()))
            paths = [r.path for r in server.requests]
        assert (result.outcome, result.error_code) == (Outcome.RETRYABLE, "42001")
        assert paths.count("/cgi-bin/gettoken") == 2 and paths.count("/cgi-bin/message/send") == 2

    def test_wrong_secret_is_permanent_and_not_stored(self) -> None:
        """gettoken answering 40001 fails permanently; the secret is redacted from the stored URL."""
        with contract.vendor(WeComServer(OK, [])) as server:
            result = wecom_app.send(
                MESSAGE, account(server.url, corp_secret="wrong-secret"),
                SendContext(contract.TRANSPORT, NOW, MemoryTokenCache()),
            )
        assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "40001")
        assert "wrong-secret" not in str(result.request_summary)
        assert "corpsecret=***" in result.request_summary["url"]


class TestRequest:
    def test_text_message_body(self) -> None:
        """The body is WeCom's text message: touser a|b, agentid as a number, content, safe 0."""
        request = wecom_app.build_request(MESSAGE, account("http://h"), NOW, "tok")
        assert request.url == "http://h/cgi-bin/message/send?access_token=tok"
        assert json.loads(request.body) == {
            "touser": "zhangsan|lisi", "msgtype": "text", "agentid": AGENT_ID,
            "text": {"content": "服务器重启完成"}, "safe": 0,
        }

    def test_markdown_when_configured(self) -> None:
        """msgtype markdown sends the text as markdown content."""
        request = wecom_app.build_request(MESSAGE, account("http://h", msgtype="markdown"), NOW, "tok")
        body = json.loads(request.body)
        assert body["msgtype"] == "markdown" and body["markdown"] == {"content": "服务器重启完成"}

    def test_empty_receiver_is_refused_rather_than_broadcast(self) -> None:
        """An empty receiver fails permanently instead of reaching @all."""
        empty = Message("T8", 1, " ", "wecom", "hi")
        with contract.vendor(WeComServer(OK, [])) as server:
            result = wecom_app.send(empty, account(server.url), SendContext(contract.TRANSPORT, NOW, MemoryTokenCache()))
            sends = [r for r in server.requests if r.path.endswith("/send")]
        assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "invalid_receiver")
        assert sends == []
