"""WeCom (企业微信) application messages: access token from corp id + secret, then message/send."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import urlencode

from providers._chat import own_request, send_in_calls
from providers.base import (
    Account, ConfigField, ConfigSchema, HttpRequest, HttpResponse, Message, SendContext,
    SendResult, TokenSource, Undeliverable, classified, errcode_result, errcode_token, json_object,
    receiver_names, request_summary, send_many_with_token, send_with_token, token_cache_key, json_text,
)

TYPE = "wecom_app"
CHANNEL_TYPES = frozenset({"wecom"})
CONFIG: ConfigSchema = {
    "corp_id": ConfigField(str, help="企业ID"),
    "agent_id": ConfigField(int, help="the application's AgentId"),
    "corp_secret": ConfigField(str, secret=True, help="the application's Secret"),
    "msgtype": ConfigField(str, required=False, default="text", choices=("text", "markdown")),
    "safe": ConfigField(bool, required=False, default=False, help="confidential message (text only)"),
    "base_url": ConfigField(str, required=False, default="https://qyapi.weixin.qq.com"),
    "timeout": ConfigField(float, required=False, default=10.0),
}

STALE_TOKEN = frozenset({"40014", "42001"})  # 不合法的access_token, access_token已过期
# Application-message codes and their classes; unlisted codes are content (failed, not resent).
# https://developer.work.weixin.qq.com/document/path/90455 (全局错误码)
# https://developer.work.weixin.qq.com/document/path/90236 (发送应用消息)
CODE_CLASSES: dict[str, str] = {
    "-1": "transient",  # 系统繁忙
    "40014": "transient",  # still stale after the one refresh within the call: the next try fetches another
    "42001": "transient",
    "45009": "throttled",  # 接口调用超过限制
    "45033": "throttled",  # 接口并发调用超过限制
    "40001": "account",  # 不合法的secret参数
    "40013": "account",  # 不合法的CorpID
    "40056": "account",  # 不合法的agentid
    "48002": "account",  # API接口无权限调用
    "60020": "account",  # 不安全的访问IP: the server's address is not in the app's trusted IPs
    "301002": "account",  # 无权操作指定的应用
    "81013": "receiver",  # UserID、部门ID、标签ID全部非法或无权限
    "40003": "receiver",  # 无效的UserID
    "60111": "receiver",  # UserID不存在
    "40008": "content",  # 不合法的msgtype参数
    "44004": "content",  # 文本内容为空
    "45002": "content",  # 消息内容超过限制
}
SECRET_PARAMS = ("access_token", "corpsecret")

BATCH_MAX = 1000  # user ids one message/send takes in `touser` (90236: 最多支持1000个)
# Lists of an errcode-0 answer naming users the call did not reach (90236): not found or outside the app's
# visible range; in the visible range without a license for the API. Ids come back lowercased.
REFUSED_LISTS: dict[str, str] = {
    "invaliduser": "WeCom refused this user id: unknown, or outside the application's visible range",
    "unlicenseduser": "this user has no license (基础接口权限) for the application's messages",
}


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """Send with the cached token; an invalid/expired token is refreshed once within this call."""
    return send_with_token(
        token_source(account), lambda token: build_request(message, account, ctx.now, token), parse_response, ctx,
        summarize,
    )


def batch_size(config: Mapping[str, Any]) -> int:
    return BATCH_MAX


def send_batch(messages: Sequence[Message], account: Account, ctx: SendContext) -> list[SendResult]:
    """The messages (one text) in as few message/send calls as 1000 user ids a call allow, no user twice in a
    call; each message's result from the answer: failed (receiver) when all its users are in `invaliduser` or
    `unlicenseduser`, else sent; an error of the whole call is each one's. `@all` and empty receivers go alone."""
    return send_in_calls(messages, batch_users, BATCH_MAX, lambda message: send(message, account, ctx),
                         lambda chosen, users: _send_call(chosen, users, account, ctx), key=str.lower)


def batch_users(message: Message) -> list[str] | None:
    """The user ids a message goes to, or None when it goes alone (no user: refused; @all: not a list)."""
    names = receiver_names(message.receiver)
    return names if names and "@all" not in names else None


def _send_call(messages: Sequence[Message], users: Sequence[Sequence[str]], account: Account,
               ctx: SendContext) -> list[SendResult]:
    everyone = [name for names in users for name in names]
    results = send_many_with_token(
        token_source(account), lambda token: build_request(messages[0], account, ctx.now, token, everyone),
        lambda response: parse_batch_response(response, users), ctx, summarize, len(messages),
    )
    return [own_request(result, "touser", names, "|", len(messages)) for result, names in zip(results, users)]


def token_source(account: Account) -> TokenSource:
    return TokenSource(
        token_cache_key(TYPE, str(account.config["corp_id"]), str(account.config["agent_id"])),
        build_token_request(account), partial(errcode_token, classes=CODE_CLASSES), STALE_TOKEN,
    )


def summarize(request: HttpRequest) -> dict[str, object]:
    return request_summary(request, *SECRET_PARAMS)


def build_token_request(account: Account) -> HttpRequest:
    query = urlencode({"corpid": account.config["corp_id"], "corpsecret": account.config["corp_secret"]})
    return HttpRequest(
        "GET", f"{account.config['base_url']}/cgi-bin/gettoken?{query}", timeout=float(account.config["timeout"]),
    )


def build_request(message: Message, account: Account, now: datetime, token: str,
                  users: Sequence[str] | None = None) -> HttpRequest:
    """message/send of the message's text to its receiver, or to `users` (a batch) when given."""
    if not message.receiver.strip():
        raise Undeliverable("invalid_receiver", "empty receiver (give user ids, `a|b`, or @all explicitly)")
    config = account.config
    body: dict[str, object] = {
        "touser": "|".join(users) if users is not None else message.receiver.replace(",", "|"),
        "msgtype": config["msgtype"],
        "agentid": config["agent_id"],
        config["msgtype"]: {"content": message.text},
        "safe": int(bool(config["safe"])),
    }
    return HttpRequest(
        "POST", f"{config['base_url']}/cgi-bin/message/send?{urlencode({'access_token': token})}",
        headers={"Content-Type": "application/json; charset=utf-8"},
        body=json_text(body).encode(),
        timeout=float(config["timeout"]),
    )


def parse_response(response: HttpResponse) -> SendResult:
    """errcode 0 is delivered (msgid is the id); other codes by WeCom's global error code table."""
    return errcode_result(response, CODE_CLASSES, id_key="msgid")


def parse_batch_response(response: HttpResponse, users: Sequence[Sequence[str]]) -> list[SendResult]:
    """A result per message of a call (`users`: each one's user ids): an error of the whole call for each; on
    errcode 0 a message whose users are all listed as refused fails (receiver), the others are sent (msgid)."""
    answer = errcode_result(response, CODE_CLASSES, id_key="msgid")
    if not answer.ok:
        return [answer] * len(users)
    body = json_object(response.body) or {}
    refused = {user: field for field in reversed(REFUSED_LISTS) for user in _listed(body.get(field))}
    shared = {key: value for key, value in answer.response_summary.get("body", {}).items() if key not in REFUSED_LISTS}
    return [_user_result(answer, names, refused, shared) for names in users]


def _listed(value: object) -> list[str]:
    return [name.strip().lower() for name in value.split("|") if name.strip()] if isinstance(value, str) else []


def _user_result(answer: SendResult, names: Sequence[str], refused: Mapping[str, str],
                 shared: Mapping[str, Any]) -> SendResult:
    """Sent unless every one of the message's users was refused (as a single send to them would be 81013)."""
    ids = list(dict.fromkeys(name.lower() for name in names))
    own: dict[str, list[str]] = {}
    for user in ids:
        if user in refused:
            own.setdefault(refused[user], []).append(user)
    summary = {"status": answer.response_summary.get("status"),
               "body": {**shared, **{field: "|".join(users) for field, users in own.items()}}}
    if sum(map(len, own.values())) < len(ids):
        return SendResult(answer.outcome, provider_message_id=answer.provider_message_id, response_summary=summary)
    field = next(iter(own))
    return classified("receiver", field, REFUSED_LISTS[field], response_summary=summary)
