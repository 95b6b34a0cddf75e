"""WeCom (企业微信) application messages: access token from corp id + secret, then message/send."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from urllib.parse import urlencode

from providers.base import (
    Account, ConfigField, ConfigSchema, HttpRequest, HttpResponse, Message, SendContext,
    SendResult, TokenSource, Undeliverable, errcode_result, errcode_token, request_summary,
    send_with_token, token_cache_key, json_text,
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


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """Send with the cached token; an invalid/expired token is refreshed once within this call."""
    source = TokenSource(
        token_cache_key(TYPE, str(account.config["corp_id"]), str(account.config["agent_id"])),
        build_token_request(account), partial(errcode_token, classes=CODE_CLASSES), STALE_TOKEN,
    )
    return send_with_token(
        source, lambda token: build_request(message, account, ctx.now, token), parse_response, ctx, summarize,
    )


def summarize(request: HttpRequest) -> dict[str, object]:
    return request_summary(request, *SECRET_PARAMS)


def build_token_request(account: Account) -> HttpRequest:
    query = urlencode({"corpid": account.config["corp_id"], "corpsecret": account.config["corp_secret"]})
    return HttpRequest(
        "GET", f"{account.config['base_url']}/cgi-bin/gettoken?{query}", timeout=float(account.config["timeout"]),
    )


def build_request(message: Message, account: Account, now: datetime, token: str) -> HttpRequest:
    if not message.receiver.strip():
        raise Undeliverable("invalid_receiver", "empty receiver (give user ids, `a|b`, or @all explicitly)")
    config = account.config
    body: dict[str, object] = {
        "touser": message.receiver.replace(",", "|"),
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
