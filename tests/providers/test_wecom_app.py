"""WeCom application messages: token fetch and cache, one refresh on a stale token, errcode mapping."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from datetime import datetime, timezone

import pytest

from providers import registry, wecom_app
from providers.base import Account, Message, Outcome, SendContext, SendResult, with_defaults
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


USER_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")  # WeCom userids: letters, digits and _-.@, at most 64


class WeComServer:
    """qyapi.weixin.qq.com on loopback: issues tokens and checks message/send as WeCom does. A success `reply`
    is answered the way WeCom answers a `touser` list: ids it cannot reach (`invalid`, `unlicensed`, or not
    shaped as a userid) listed lowercased in `invaliduser` / `unlicenseduser`, and 81013 when that is all of them;
    more than 1000 ids is refused."""

    def __init__(self, reply: Reply, problems: list[str], tokens: list[str] | None = None,
                 invalid: tuple[str, ...] = (), unlicensed: tuple[str, ...] = ()) -> None:
        self.reply, self.problems = reply, problems
        self.tokens = list(tokens or [ISSUED])  # issued in order, the last one repeats
        self.valid: set[str] = set()
        self.invalid = {user.lower() for user in invalid}
        self.unlicensed = {user.lower() for user in unlicensed}
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
        users = [user.lower() for user in str(body.get("touser", "")).split("|")]
        if len(users) > 1000:
            return errcode(40058, "invalid Request Parameter: touser exceeds 1000 ids")
        if len(set(users)) < len(users):  # WeCom would send once; results could not be told apart
            self.problems.append("a user twice in one call")
        return self.answer(users)

    def answer(self, users: list[str]) -> Reply:
        try:
            reply = json.loads(self.reply.body)
        except ValueError:
            return self.reply  # a scripted garbage answer
        if not isinstance(reply, dict) or reply.get("errcode") != 0 or users == ["@all"]:
            return self.reply
        invalid = [user for user in users if user in self.invalid or not USER_ID.match(user)]
        unlicensed = [user for user in users if user in self.unlicensed and user not in invalid]
        lists = {"invaliduser": "|".join(invalid), "unlicenseduser": "|".join(unlicensed)}
        if len(invalid) + len(unlicensed) == len(users):
            reply = {"errcode": 81013, "errmsg": "user & party & tag all invalid"}
        return dataclasses.replace(self.reply, body=json.dumps({**reply, **lists}))


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


def batch(receivers: list[str]) -> list[Message]:
    return [Message(f"T-{n}", 1, receiver, "wecom", "服务器重启完成") for n, receiver in enumerate(receivers)]


def send_batch(server_handler: WeComServer, messages: list[Message],
               tokens: MemoryTokenCache | None = None) -> tuple[list[SendResult], list[Recorded]]:
    with contract.vendor(server_handler) as server:
        results = wecom_app.send_batch(messages, account(server.url),
                                       SendContext(contract.TRANSPORT, NOW, tokens or MemoryTokenCache()))
        return results, [r for r in server.requests if r.path == "/cgi-bin/message/send"]


class TestBatch:
    def test_registry_batches_up_to_the_documented_1000_ids(self) -> None:
        """The engine groups up to 1000 WeCom messages of one text: the most ids `touser` takes."""
        assert registry.batch_size("wecom_app", {}) == 1000 and registry.batch_sender("wecom_app") is not None

    def test_250_users_go_in_one_call_each_with_its_own_result(self) -> None:
        """250 receivers of one text are one message/send to `a|b|...`; each is sent, with the call's msgid,
        and stores a request summary naming only its own user."""
        problems: list[str] = []
        messages = batch([f"user{n:03d}" for n in range(250)])
        results, sends = send_batch(WeComServer(OK, problems), messages)
        assert problems == [] and len(sends) == 1
        assert json.loads(sends[0].body)["touser"] == "|".join(m.receiver for m in messages)
        assert all(r.ok and r.provider_message_id == "MSGID-1" for r in results)
        assert [r.request_summary["body"]["touser"] for r in results] == [m.receiver for m in messages]
        assert {r.request_summary["batch_size"] for r in results} == {250}

    def test_more_than_1000_users_are_split_at_the_vendors_maximum(self) -> None:
        """1200 receivers go in two calls, 1000 and 200 ids: WeCom refuses a longer `touser`."""
        problems: list[str] = []
        results, sends = send_batch(WeComServer(OK, problems), batch([f"u{n}" for n in range(1200)]))
        assert problems == [] and all(r.ok for r in results)
        assert [len(json.loads(s.body)["touser"].split("|")) for s in sends] == [1000, 200]

    def test_refused_users_fail_as_receivers_and_the_rest_are_sent(self) -> None:
        """Ids WeCom lists as `invaliduser` (lowercased: matched whatever their case) or `unlicenseduser` fail
        with the receiver class and say which list named them; the others of the call are sent."""
        vendor = WeComServer(OK, [], invalid=("ghost",), unlicensed=("nolicense",))
        results, sends = send_batch(vendor, batch(["alice", "Ghost", "nolicense", "bob"]))
        assert len(sends) == 1
        assert [(r.outcome, r.error_class, r.error_code) for r in results] == [
            (Outcome.OK, "ok", ""), (Outcome.PERMANENT, "receiver", "invaliduser"),
            (Outcome.PERMANENT, "receiver", "unlicenseduser"), (Outcome.OK, "ok", "")]
        assert results[1].response_summary["body"]["invaliduser"] == "ghost"
        assert "invaliduser" not in results[0].response_summary["body"]

    def test_a_message_to_several_users_fails_only_when_all_are_refused(self) -> None:
        """A task to `a|b` in a batch is sent when one of its users is reached, as its single send would be."""
        vendor = WeComServer(OK, [], invalid=("ghost", "phantom", "wraith"))
        results, sends = send_batch(vendor, batch(["alice|ghost", "phantom|wraith", "carol"]))
        assert len(sends) == 1
        assert [(r.ok, r.error_code) for r in results] == [(True, ""), (False, "invaliduser"), (True, "")]

    def test_all_users_refused_is_81013_for_each(self) -> None:
        """When no user of the call can be reached WeCom answers 81013: each message fails as a receiver."""
        results, _ = send_batch(WeComServer(OK, [], invalid=("x1", "x2")), batch(["x1", "x2"]))
        assert {(r.outcome, r.error_class, r.error_code) for r in results} == {
            (Outcome.PERMANENT, "receiver", "81013")}

    @pytest.mark.parametrize(("code", "error_class"), [(45009, "throttled"), (45033, "throttled"), (-1, "transient"),
                                                       (60020, "account")])
    def test_a_whole_call_error_is_each_messages(self, code: int, error_class: str) -> None:
        """A rate limit, a busy vendor or an account refusal answers for every message of the call, in its
        class, so each task is retried or failed over on its own."""
        results, sends = send_batch(WeComServer(errcode(code, "refused"), []), batch(["a", "b", "c"]))
        assert len(sends) == 1
        assert [(r.error_code, r.error_class) for r in results] == [(str(code), error_class)] * 3

    def test_a_stale_token_is_refreshed_once_for_the_whole_call(self) -> None:
        """A cached token WeCom no longer takes is replaced and the call made once more: all sent."""
        tokens = MemoryTokenCache()
        tokens.set(wecom_app.token_cache_key("wecom_app", CORP_ID, str(AGENT_ID)), "expired-token", 100)
        results, sends = send_batch(WeComServer(OK, [], tokens=["fresh-token"]), batch(["a", "b"]), tokens)
        assert all(r.ok for r in results)
        assert [s.query["access_token"] for s in sends] == ["expired-token", "fresh-token"]

    def test_overlapping_users_and_at_all_go_in_separate_calls(self) -> None:
        """No user is named twice in a call (WeCom ids ignore case), and @all or an empty receiver never joins
        a list: each still gets its result."""
        problems: list[str] = []
        results, sends = send_batch(WeComServer(OK, problems), batch(["a|b", "B", "c", "@all", " "]))
        assert problems == []
        assert sorted(json.loads(s.body)["touser"] for s in sends) == ["@all", "B", "a|b|c"]
        assert [r.error_code for r in results] == ["", "", "", "", "invalid_receiver"]

    def test_single_sends_are_unchanged(self) -> None:
        """`send` still makes one call to the message's own receiver, `a,b` written as `a|b`."""
        with contract.vendor(WeComServer(OK, [])) as server:
            result = wecom_app.send(Message("T9", 1, "a,b", "wecom", "x"), account(server.url),
                                    SendContext(contract.TRANSPORT, NOW, MemoryTokenCache()))
            [sent] = [r for r in server.requests if r.path == "/cgi-bin/message/send"]
        assert result.ok and json.loads(sent.body)["touser"] == "a|b" and "batch_size" not in result.request_summary
