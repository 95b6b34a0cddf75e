"""DingTalk work notifications: token fetch and cache, one refresh, asyncsend_v2 body, errcode mapping."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import datetime, timezone

import pytest

from providers import dingtalk_work, registry
from providers.base import (
    Account, Message, Outcome, SendContext, SendResult, token_cache_key, with_defaults,
)
from tests.providers import contract
from tests.providers.contract import ProviderCase, Scenario
from tests.support.loopback import Recorded, Reply
from tests.support.tokens import MemoryTokenCache

APP_KEY, APP_SECRET, AGENT_ID = "dingabcdefghijk", "app-secret-3c3c3c", 987654321
ISSUED = "dingtalk-token-7b7b7b"
MESSAGE = Message("T11", 1, "user001|user002", "dingtalk", "审批已通过", subject="审批")
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
SEND_PATH = "/topapi/message/corpconversation/asyncsend_v2"


def errcode(code: int, message: str, **extra: object) -> Reply:
    return Reply(200, json.dumps({"errcode": code, "errmsg": message, **extra}))


OK = errcode(0, "ok", task_id=256271667526, request_id="4jzllmte0wau")


class DingTalkServer:
    """oapi.dingtalk.com on loopback: issues tokens and checks asyncsend_v2 as DingTalk does; `numbered` gives
    each accepted call a task_id of its own (1, 2, ...) instead of the scripted one."""

    def __init__(self, reply: Reply, problems: list[str], tokens: list[str] | None = None,
                 numbered: bool = False) -> None:
        self.reply, self.problems = reply, problems
        self.numbered = numbered
        self.task_ids = 0
        self.tokens = list(tokens or [ISSUED])
        self.valid: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, request: Recorded) -> Reply:
        if request.path == "/gettoken" and request.method == "GET":
            if request.query != {"appkey": APP_KEY, "appsecret": APP_SECRET}:
                return errcode(40089, "不合法的corpid或corpsecret")
            with self.lock:
                token = self.tokens.pop(0) if len(self.tokens) > 1 else self.tokens[0]
                self.valid.add(token)
            return errcode(0, "ok", access_token=token, expires_in=7200)
        if request.path == SEND_PATH and request.method == "POST":
            if request.query.get("access_token") not in self.valid:
                return errcode(40014, "不合法的access_token")
            body = json.loads(request.body)
            if body.get("agent_id") != AGENT_ID or not body.get("userid_list") or "msgtype" not in body.get("msg", {}):
                self.problems.append(f"bad body {body}")
            return self.userid_list(str(body.get("userid_list", "")))
        self.problems.append(f"unexpected {request.method} {request.path}")
        return Reply(404, "")

    def userid_list(self, value: str) -> Reply:
        """`userid_list` is user ids joined by commas, at most 100 (the answer to more is the mock's: DingTalk's
        page names no code for it)."""
        users = value.split(",")
        if any(not user or "|" in user or user != user.strip() for user in users):
            self.problems.append(f"userid_list is not comma-separated ids: {value[:80]!r}")
        if len(users) > 100:
            return errcode(40035, "不合法的参数: userid_list 超过100个")
        if len(set(users)) < len(users):  # DingTalk would notify once; results could not be told apart
            self.problems.append("a user twice in one call")
        if not self.numbered:
            return self.reply
        with self.lock:
            self.task_ids += 1
            task_id = self.task_ids
        reply = json.loads(self.reply.body)
        return dataclasses.replace(self.reply, body=json.dumps({**reply, "task_id": task_id}))


def config(url: str, **extra: object) -> dict[str, object]:
    return {"app_key": APP_KEY, "app_secret": APP_SECRET, "agent_id": AGENT_ID,
            "base_url": url, "timeout": contract.TIMEOUT, **extra}


CASE = ProviderCase(
    provider=dingtalk_work,
    config=config,
    vendor=DingTalkServer,
    message=MESSAGE,
    success=OK,
    message_id="256271667526",
    hidden=(ISSUED,),
    vendor_errors=(
        Scenario("busy", errcode(-1, "系统繁忙"), Outcome.RETRYABLE, "-1"),
        Scenario("flow-control", errcode(90018, "请求频率超过限制"), Outcome.RETRYABLE, "90018"),
        Scenario("no-permission", errcode(88, "ding talk error[subcode=60011,submsg=没有调用该接口的权限]"),
                 Outcome.PERMANENT, "88"),
        Scenario("monthly-quota", errcode(90020, "您的企业本月api调用量已超过限制"), Outcome.PERMANENT, "90020"),
    ),
)


@pytest.mark.parametrize("scenario", contract.scenarios(CASE), ids=str)
def test_contract(scenario: Scenario) -> None:
    """The DingTalk work notification provider meets the shared HTTP provider contract in this scenario."""
    contract.check(CASE, scenario)


def account(url: str, **extra: object) -> Account:
    return Account("ding", "dingtalk_work", with_defaults(dingtalk_work.CONFIG, config(url, **extra)))


class TestToken:
    def test_token_cached_across_sends(self) -> None:
        """Two sends share one gettoken, cached under a digest of app key and agent id."""
        tokens = MemoryTokenCache()
        with contract.vendor(DingTalkServer(OK, [])) as server:
            ctx = SendContext(contract.TRANSPORT, NOW, tokens)
            assert dingtalk_work.send(MESSAGE, account(server.url), ctx).ok
            assert dingtalk_work.send(MESSAGE, account(server.url), ctx).ok
            assert [r.path for r in server.requests].count("/gettoken") == 1
        assert tokens.keys() == [token_cache_key("dingtalk_work", APP_KEY, str(AGENT_ID))]

    def test_expired_token_refreshed_once(self) -> None:
        """A cached token answered with 40014 is replaced and the message sent again within the call."""
        tokens = MemoryTokenCache()
        tokens.set(token_cache_key("dingtalk_work", APP_KEY, str(AGENT_ID)), "old-token", 100)
        with contract.vendor(DingTalkServer(OK, [], tokens=["new-token"])) as server:
            result = dingtalk_work.send(MESSAGE, account(server.url), SendContext(contract.TRANSPORT, NOW, tokens))
            used = [r.query["access_token"] for r in server.requests if r.path == SEND_PATH]
        assert result.ok and used == ["old-token", "new-token"]


    def test_token_timeout_after_the_refresh_is_a_token_failure_not_a_network_one(self) -> None:
        """"access_token超时" (42001) even after the refresh is the token class (transient: the next try fetches
        another), never a network timeout."""
        with contract.vendor(DingTalkServer(errcode(42001, "access_token超时"), [])) as server:
            result = dingtalk_work.send(MESSAGE, account(server.url),
                                        SendContext(contract.TRANSPORT, NOW, MemoryTokenCache()))
            sends = [r for r in server.requests if r.path == SEND_PATH]
        assert (result.error_code, result.error_class, len(sends)) == ("42001", "transient", 2)

    def test_sending_too_fast_is_throttled_and_retried(self) -> None:
        """Work-notice 143103 (sending too fast) slows down and retries instead of failing the message."""
        with contract.vendor(DingTalkServer(errcode(143103, "发送太快"), [])) as server:
            result = dingtalk_work.send(MESSAGE, account(server.url),
                                        SendContext(contract.TRANSPORT, NOW, MemoryTokenCache()))
        assert (result.outcome, result.error_class) == (Outcome.RETRYABLE, "throttled")


class TestRequest:
    def test_asyncsend_body(self) -> None:
        """agent_id as a number, receivers comma-joined, a text message."""
        request = dingtalk_work.build_request(MESSAGE, account("http://h"), NOW, "tok")
        assert request.url == f"http://h{SEND_PATH}?access_token=tok"
        assert json.loads(request.body) == {
            "agent_id": AGENT_ID, "userid_list": "user001,user002",
            "msg": {"msgtype": "text", "text": {"content": "审批已通过"}},
        }

    def test_markdown_uses_the_subject_as_title(self) -> None:
        """msgtype markdown sends title (the subject) and text."""
        body = json.loads(dingtalk_work.build_request(MESSAGE, account("http://h", msgtype="markdown"), NOW, "t").body)
        assert body["msg"] == {"msgtype": "markdown", "markdown": {"title": "审批", "text": "审批已通过"}}

    def test_empty_receiver_is_permanent(self) -> None:
        """No user ids means nothing is sent and the failure is permanent."""
        with contract.vendor(DingTalkServer(OK, [])) as server:
            result = dingtalk_work.send(
                Message("T12", 1, " , ", "dingtalk", "x"), account(server.url),
                SendContext(contract.TRANSPORT, NOW, MemoryTokenCache()),
            )
        assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "invalid_receiver")


def batch(receivers: list[str]) -> list[Message]:
    return [Message(f"T-{n}", 1, receiver, "dingtalk", "审批已通过", subject="审批") for n, receiver in enumerate(receivers)]


def send_batch(server_handler: DingTalkServer, messages: list[Message],
               tokens: MemoryTokenCache | None = None) -> tuple[list[SendResult], list[Recorded]]:
    with contract.vendor(server_handler) as server:
        results = dingtalk_work.send_batch(messages, account(server.url),
                                           SendContext(contract.TRANSPORT, NOW, tokens or MemoryTokenCache()))
        return results, [r for r in server.requests if r.path == SEND_PATH]


class TestBatch:
    def test_registry_batches_up_to_100_ids(self) -> None:
        """The engine groups up to 100 DingTalk messages of one text: the most ids `userid_list` takes."""
        assert registry.batch_size("dingtalk_work", {}) == 100 and registry.batch_sender("dingtalk_work") is not None

    def test_250_users_go_in_three_calls_of_at_most_100(self) -> None:
        """250 receivers of one text are three asyncsend_v2 calls (100, 100, 50 comma-joined ids); each message is
        sent with its own call's task_id and a request summary naming only its own user."""
        problems: list[str] = []
        messages = batch([f"user{n:03d}" for n in range(250)])
        results, sends = send_batch(DingTalkServer(OK, problems, numbered=True), messages)
        assert problems == []
        lists = [json.loads(s.body)["userid_list"].split(",") for s in sends]
        assert [len(ids) for ids in lists] == [100, 100, 50]
        assert [user for ids in lists for user in ids] == [m.receiver for m in messages]
        assert [r.provider_message_id for r in results] == ["1"] * 100 + ["2"] * 100 + ["3"] * 50
        assert all(r.ok and r.final for r in results)
        assert [r.request_summary["body"]["userid_list"] for r in results] == [m.receiver for m in messages]

    @pytest.mark.parametrize(("code", "error_class"), [(90018, "throttled"), (143104, "throttled"),
                                                       (-1, "transient"), (88, "account")])
    def test_a_whole_call_error_is_each_messages(self, code: int, error_class: str) -> None:
        """An error of the call answers for every message in it, in its class, each task then retried or failed
        over on its own."""
        results, sends = send_batch(DingTalkServer(errcode(code, "refused"), []), batch(["a", "b", "c"]))
        assert len(sends) == 1
        assert [(r.error_code, r.error_class) for r in results] == [(str(code), error_class)] * 3

    def test_a_stale_token_is_refreshed_once_for_the_whole_call(self) -> None:
        """A cached token DingTalk no longer takes is replaced and the call made once more: all sent."""
        tokens = MemoryTokenCache()
        tokens.set(token_cache_key("dingtalk_work", APP_KEY, str(AGENT_ID)), "old-token", 100)
        results, sends = send_batch(DingTalkServer(OK, [], tokens=["new-token"]), batch(["a", "b"]), tokens)
        assert all(r.ok for r in results)
        assert [s.query["access_token"] for s in sends] == ["old-token", "new-token"]

    def test_overlapping_users_go_in_separate_calls_and_an_empty_receiver_alone(self) -> None:
        """No user is named twice in a call; a receiver without ids is refused before any call."""
        problems: list[str] = []
        results, sends = send_batch(DingTalkServer(OK, problems), batch(["a|b", "b", "c", " , "]))
        assert problems == []
        assert sorted(json.loads(s.body)["userid_list"] for s in sends) == ["a,b,c", "b"]
        assert [r.error_code for r in results] == ["", "", "", "invalid_receiver"]

    def test_the_mock_refuses_more_than_100_ids_as_dingtalk_does(self) -> None:
        """A single send naming 101 users is refused by the vendor (the provider never batches past 100)."""
        with contract.vendor(DingTalkServer(OK, [])) as server:
            result = dingtalk_work.send(Message("T13", 1, ",".join(f"u{n}" for n in range(101)), "dingtalk", "x"),
                                        account(server.url), SendContext(contract.TRANSPORT, NOW, MemoryTokenCache()))
        assert not result.ok and result.error_code == "40035"
