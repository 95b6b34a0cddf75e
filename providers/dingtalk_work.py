"""DingTalk (钉钉) work notifications: access token from app key + secret, then asyncsend_v2."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import urlencode

from providers._chat import own_request, send_in_calls
from providers.base import (
    Account, ConfigField, ConfigSchema, HttpRequest, HttpResponse, Message, SendContext, SendResult,
    TokenSource, Undeliverable, errcode_result, errcode_token, receiver_names,
    request_summary, send_many_with_token, send_with_token, token_cache_key, json_text,
)

TYPE = "dingtalk_work"
CHANNEL_TYPES = frozenset({"dingtalk"})
CONFIG: ConfigSchema = {
    "app_key": ConfigField(str, help="AppKey of the internal application"),
    "app_secret": ConfigField(str, secret=True, help="AppSecret of the internal application"),
    "agent_id": ConfigField(int, help="AgentId of the application"),
    "msgtype": ConfigField(str, required=False, default="text", choices=("text", "markdown")),
    "base_url": ConfigField(str, required=False, default="https://oapi.dingtalk.com"),
    "timeout": ConfigField(float, required=False, default=10.0),
}

STALE_TOKEN = frozenset({"40014", "42001"})  # 不合法的access_token, access_token超时
# Work-notice codes and their classes; unlisted codes are content (failed, not resent).
# https://open.dingtalk.com/document/orgapp/server-api-error-codes-1 (全局错误码)
# https://open.dingtalk.com/document/orgapp/asynchronous-sending-of-enterprise-session-messages (工作通知, 错误码)
CODE_CLASSES: dict[str, str] = {
    "-1": "transient",  # 系统繁忙
    # still stale after the one refresh within the call: the next try fetches another ("access_token超时" is this
    # code's message: a token expiry, never a network timeout)
    "40014": "transient",
    "42001": "transient",
    "90002": "throttled",  # flow control: global, per enterprise, per app
    "90018": "throttled",
    "90019": "throttled",
    "143103": "throttled",  # sending too fast (page not found by search; meaning from the vendor notes)
    "143104": "throttled",  # sending too fast (likewise)
    "88": "account",  # 鉴权异常: credentials or permission, see sub_code (e.g. 60011 没有调用该接口的权限)
    "33001": "account",  # 无效的企业ID
    "90020": "account",  # monthly call quota of the enterprise used up
    # 400002: its page was not found by search; as an unlisted code it is content (failed, not resent)
}
SECRET_PARAMS = ("access_token", "appsecret")

# user ids one asyncsend_v2 takes in `userid_list` (工作通知: 最大用户列表长度100). Some third-party pages say 5000;
# DingTalk's own page says 100, and 100 a call is accepted under either.
BATCH_MAX = 100


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """Send with the cached token; an invalid/expired token is refreshed once within this call."""
    return send_with_token(
        token_source(account), lambda token: build_request(message, account, ctx.now, token), parse_response, ctx,
        summarize,
    )


def batch_size(config: Mapping[str, Any]) -> int:
    return BATCH_MAX


def send_batch(messages: Sequence[Message], account: Account, ctx: SendContext) -> list[SendResult]:
    """The messages (one text) in as few asyncsend_v2 calls as 100 user ids a call allow, no user twice in a
    call. The send is asynchronous: DingTalk answers one task_id for the call, which is each message's result
    (sent, its provider message id the task_id), as it is a single send's; an error of the call is each one's."""
    return send_in_calls(messages, batch_users, BATCH_MAX, lambda message: send(message, account, ctx),
                         lambda chosen, users: _send_call(chosen, users, account, ctx))


def batch_users(message: Message) -> list[str] | None:
    """The user ids a message goes to, or None when it has none (refused alone, before any call)."""
    return receiver_names(message.receiver) or None


def _send_call(messages: Sequence[Message], users: Sequence[Sequence[str]], account: Account,
               ctx: SendContext) -> list[SendResult]:
    everyone = [name for names in users for name in names]
    results = send_many_with_token(
        token_source(account), lambda token: build_request(messages[0], account, ctx.now, token, everyone),
        lambda response: [parse_response(response)] * len(messages), ctx, summarize, len(messages),
    )
    return [own_request(result, "userid_list", names, ",", len(messages)) for result, names in zip(results, users)]


def token_source(account: Account) -> TokenSource:
    return TokenSource(
        token_cache_key(TYPE, str(account.config["app_key"]), str(account.config["agent_id"])),
        build_token_request(account), partial(errcode_token, classes=CODE_CLASSES), STALE_TOKEN,
    )


def summarize(request: HttpRequest) -> dict[str, object]:
    return request_summary(request, *SECRET_PARAMS)


def build_token_request(account: Account) -> HttpRequest:
    query = urlencode({"appkey": account.config["app_key"], "appsecret": account.config["app_secret"]})
    return HttpRequest("GET", f"{account.config['base_url']}/gettoken?{query}", timeout=float(account.config["timeout"]))


def build_request(message: Message, account: Account, now: datetime, token: str,
                  users: Sequence[str] | None = None) -> HttpRequest:
    """asyncsend_v2 of the message's text to its receiver's user ids, or to `users` (a batch) when given."""
    users = list(users) if users is not None else receiver_names(message.receiver)
    if not users:
        raise Undeliverable("invalid_receiver", "empty receiver (give DingTalk user ids, comma-separated)")
    config = account.config
    body = {
        "agent_id": config["agent_id"],
        "userid_list": ",".join(users),
        "msg": _content(message, str(config["msgtype"])),
    }
    url = f"{config['base_url']}/topapi/message/corpconversation/asyncsend_v2?{urlencode({'access_token': token})}"
    return HttpRequest(
        "POST", url, headers={"Content-Type": "application/json; charset=utf-8"},
        body=json_text(body).encode(), timeout=float(config["timeout"]),
    )


def _content(message: Message, msgtype: str) -> dict[str, object]:
    if msgtype == "markdown":
        return {"msgtype": "markdown", "markdown": {"title": message.subject or message.text[:20], "text": message.text}}
    return {"msgtype": "text", "text": {"content": message.text}}


def parse_response(response: HttpResponse) -> SendResult:
    """errcode 0 is accepted; the asynchronous send's task_id is the provider message id."""
    return errcode_result(response, CODE_CLASSES, id_key="task_id")
