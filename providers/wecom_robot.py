"""WeCom (企业微信) group robots: POST to the robot's webhook key, text with @mentions or markdown."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode

from providers.base import (
    Account, ConfigField, ConfigSchema, HttpRequest, HttpResponse, Message, SendContext, SendResult,
    MOBILE, errcode_result, http_send, receiver_names, request_summary, json_text,
)

TYPE = "wecom_robot"
CHANNEL_TYPES = frozenset({"wecom"})
CONFIG: ConfigSchema = {
    "key": ConfigField(str, secret=True, help="the key=... part of the robot's webhook URL"),
    "msgtype": ConfigField(str, required=False, default="text", choices=("text", "markdown")),
    "mentioned_list": ConfigField(list, required=False, default=(), help="user ids (or @all) to mention"),
    "mentioned_mobile_list": ConfigField(list, required=False, default=(), help="mobile numbers to mention"),
    "base_url": ConfigField(str, required=False, default="https://qyapi.weixin.qq.com"),
    "timeout": ConfigField(float, required=False, default=10.0),
}

# Robot codes and their classes; unlisted codes are content (failed, not resent).
# https://developer.work.weixin.qq.com/document/path/90455 (全局错误码)
# https://developer.work.weixin.qq.com/document/path/91770 (群机器人配置说明)
CODE_CLASSES: dict[str, str] = {
    "-1": "transient",  # 系统繁忙
    "45009": "throttled",  # 接口调用超过限制 (a robot takes 20 messages a minute)
    "45033": "throttled",  # 接口并发调用超过限制
    "93000": "account",  # invalid webhook url / key: this robot cannot send
    "93004": "account",  # 机器人被停用
    "40008": "content",  # 不合法的msgtype
    "44004": "content",  # 文本内容为空
    "45002": "content",  # 消息内容超过限制
}


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """POST the message to the robot; errcode 0 is delivered."""
    return http_send(build_request, parse_response, message, account, ctx, summarize)


def summarize(request: HttpRequest) -> dict[str, object]:
    return request_summary(request, "key")


def mentions(receiver: str) -> tuple[list[str], list[str]]:
    """Split the receiver (`a|b` or `a,b`) into user ids and mobile numbers to @mention."""
    names = receiver_names(receiver)
    return [n for n in names if not MOBILE.match(n)], [n for n in names if MOBILE.match(n)]


def build_request(message: Message, account: Account, now: datetime) -> HttpRequest:
    config = account.config
    if config["msgtype"] == "markdown":
        body: dict[str, object] = {"msgtype": "markdown", "markdown": {"content": message.text}}
    else:
        users, mobiles = mentions(message.receiver)
        text: dict[str, object] = {"content": message.text}
        if users or config["mentioned_list"]:
            text["mentioned_list"] = [*config["mentioned_list"], *users]
        if mobiles or config["mentioned_mobile_list"]:
            text["mentioned_mobile_list"] = [*config["mentioned_mobile_list"], *mobiles]
        body = {"msgtype": "text", "text": text}
    return HttpRequest(
        "POST", f"{config['base_url']}/cgi-bin/webhook/send?{urlencode({'key': config['key']})}",
        headers={"Content-Type": "application/json; charset=utf-8"},
        body=json_text(body).encode(), timeout=float(config["timeout"]),
    )


def parse_response(response: HttpResponse) -> SendResult:
    return errcode_result(response, CODE_CLASSES)
