"""DingTalk (钉钉) custom group robots: webhook access token, optional timestamp+secret signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, quote_plus

from providers.base import (
    Account, ConfigField, ConfigSchema, HttpRequest, HttpResponse, Message, SendContext, SendResult,
    MOBILE, errcode_result, http_send, receiver_names, request_summary, json_text,
)

TYPE = "dingtalk_robot"
CHANNEL_TYPES = frozenset({"dingtalk"})
CONFIG: ConfigSchema = {
    "access_token": ConfigField(str, secret=True, help="the access_token=... part of the robot's webhook URL"),
    "secret": ConfigField(str, required=False, default="", secret=True, help="the SEC... signing secret; empty for keyword/IP robots"),
    "msgtype": ConfigField(str, required=False, default="text", choices=("text", "markdown")),
    "at_all": ConfigField(bool, required=False, default=False),
    "base_url": ConfigField(str, required=False, default="https://oapi.dingtalk.com"),
    "timeout": ConfigField(float, required=False, default=10.0),
}

# Robot codes and their classes; unlisted codes are content (failed, not resent).
# https://open.dingtalk.com/document/orgapp/custom-robots-send-group-messages (自定义机器人发送群消息, 错误码)
# https://open.dingtalk.com/document/orgapp/server-api-error-codes-1 (全局错误码)
CODE_CLASSES: dict[str, str] = {
    "-1": "transient",  # 系统繁忙
    "130101": "throttled",  # send too fast, exceed 20 times per minute (then limited for 10 minutes)
    "410100": "throttled",  # 发送速度太快而限流 (page not found by search; meaning as the robot FAQ lists it)
    "90030": "throttled",  # over the webhook's call limit (page not found by search; as first documented here)
    "310000": "content",  # keywords not in content / sign not match / ip not in whitelist (security settings)
    "300001": "account",  # token is not exist: the robot's webhook is gone
    "400101": "account",  # access_token 不存在
    "400102": "account",  # 机器人已停用
    "400013": "account",  # 群已被解散
    "400105": "content",  # 不支持的消息类型
    "430101": "content",  # 含有不安全的外链
    "430102": "content",  # 含有不合适的文本
    "430103": "content",  # 含有不合适的图片
    "430104": "content",  # 含有不合适的内容
}


def send(message: Message, account: Account, ctx: SendContext) -> SendResult:
    """POST the message to the robot; errcode 0 is delivered."""
    return http_send(build_request, parse_response, message, account, ctx, summarize)


def summarize(request: HttpRequest) -> dict[str, object]:
    return request_summary(request, "access_token", "sign")


def sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's robot signature: urlencode(base64(HMAC-SHA256(secret, f"{timestamp}\\n{secret}")))."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


def build_request(message: Message, account: Account, now: datetime) -> HttpRequest:
    config = account.config
    url = f"{config['base_url']}/robot/send?access_token={quote(str(config['access_token']), safe='')}"
    if config["secret"]:
        timestamp = int(now.timestamp() * 1000)
        url += f"&timestamp={timestamp}&sign={sign(str(config['secret']), timestamp)}"
    return HttpRequest(
        "POST", url, headers={"Content-Type": "application/json; charset=utf-8"},
        body=json_text(payload(message, config)).encode(), timeout=float(config["timeout"]),
    )


def payload(message: Message, config: Mapping[str, Any]) -> dict[str, object]:
    """The robot message: text or markdown, with receivers (`a|b`, user ids or mobiles) @mentioned."""
    names = receiver_names(message.receiver)
    at = {
        "atMobiles": [n for n in names if MOBILE.match(n)],
        "atUserIds": [n for n in names if not MOBILE.match(n) and n != "@all"],
        "isAtAll": bool(config["at_all"]) or "@all" in names,
    }
    if config["msgtype"] == "markdown":
        title = message.subject or message.text[:20]
        return {"msgtype": "markdown", "markdown": {"title": title, "text": message.text}, "at": at}
    return {"msgtype": "text", "text": {"content": message.text}, "at": at}


def parse_response(response: HttpResponse) -> SendResult:
    return errcode_result(response, CODE_CLASSES)
