"""WeCom group robots: webhook key, text with @mentions or markdown, errcode mapping."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from providers import wecom_robot
from providers.base import Account, Message, Outcome, with_defaults
from tests.providers import contract
from tests.providers.contract import ProviderCase, Scenario
from tests.support.loopback import Handler, Recorded, Reply

KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
MESSAGE = Message("T9", 1, "wangwu|13800001111", "wecom", "构建失败：main #42")
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def errcode(code: int, message: str) -> Reply:
    return Reply(200, json.dumps({"errcode": code, "errmsg": message}))


def robot(reply: Reply, problems: list[str]) -> Handler:
    """The robot webhook as WeCom checks it: POST, key, JSON, a known msgtype with content."""

    def handle(request: Recorded) -> Reply:
        if (request.method, request.path) != ("POST", "/cgi-bin/webhook/send"):
            problems.append(f"{request.method} {request.path}")
        if request.query.get("key") != KEY:
            return errcode(93000, "invalid webhook url")
        if not request.header("Content-Type").startswith("application/json"):
            problems.append("content type")
        body = json.loads(request.body)
        if body.get("msgtype") not in ("text", "markdown") or not body[body["msgtype"]].get("content"):
            problems.append(f"bad body {body}")
        return reply

    return handle


def config(url: str, **extra: object) -> dict[str, object]:
    return {"key": KEY, "base_url": url, "timeout": contract.TIMEOUT, **extra}


CASE = ProviderCase(
    provider=wecom_robot,
    config=config,
    vendor=robot,
    message=MESSAGE,
    success=errcode(0, "ok"),
    vendor_errors=(
        Scenario("busy", errcode(-1, "system busy"), Outcome.RETRYABLE, "-1"),
        Scenario("frequency-limit", errcode(45009, "api freq out of limit"), Outcome.RETRYABLE, "45009"),
        Scenario("invalid-key", errcode(93000, "invalid webhook url"), Outcome.PERMANENT, "93000"),
        Scenario("too-long", errcode(45002, "content size out of limit"), Outcome.PERMANENT, "45002"),
    ),
)


@pytest.mark.parametrize("scenario", contract.scenarios(CASE), ids=str)
def test_contract(scenario: Scenario) -> None:
    """The WeCom robot provider meets the shared HTTP provider contract in this scenario."""
    contract.check(CASE, scenario)


def account(**extra: object) -> Account:
    return Account("robot", "wecom_robot", with_defaults(wecom_robot.CONFIG, config("http://h", **extra)))


class TestRequest:
    def test_receiver_becomes_user_and_mobile_mentions(self) -> None:
        """Receiver parts are mentioned: user ids in mentioned_list, mobiles in mentioned_mobile_list."""
        body = json.loads(wecom_robot.build_request(MESSAGE, account(mentioned_list=["@all"]), NOW).body)
        assert body == {"msgtype": "text", "text": {
            "content": "构建失败：main #42", "mentioned_list": ["@all", "wangwu"],
            "mentioned_mobile_list": ["13800001111"],
        }}

    def test_empty_receiver_mentions_nobody(self) -> None:
        """With no receiver and no configured mentions the text carries no mention lists."""
        message = Message("T9", 1, "", "wecom", "hi")
        assert json.loads(wecom_robot.build_request(message, account(), NOW).body) == {
            "msgtype": "text", "text": {"content": "hi"},
        }

    def test_markdown(self) -> None:
        """msgtype markdown sends the text as markdown content."""
        body = json.loads(wecom_robot.build_request(MESSAGE, account(msgtype="markdown"), NOW).body)
        assert body == {"msgtype": "markdown", "markdown": {"content": "构建失败：main #42"}}

    def test_key_is_redacted_from_the_summary(self) -> None:
        """The stored request summary shows key=*** instead of the webhook key."""
        request = wecom_robot.build_request(MESSAGE, account(), NOW)
        assert KEY in request.url
        assert KEY not in str(wecom_robot.summarize(request))
