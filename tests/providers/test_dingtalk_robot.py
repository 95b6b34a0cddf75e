"""DingTalk custom robots: the timestamp+secret signature, keyword-only robots, @mentions, errcode mapping."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone

import pytest

from providers import dingtalk_robot
from providers.base import Account, Message, Outcome, with_defaults
from tests.providers import contract
from tests.providers.contract import ProviderCase, Scenario
from tests.support.loopback import Handler, Recorded, Reply

TOKEN = "50cb6e954c89afa14fb97754eafd886d658fcda27d05015a26b474e7bd2f0a59"
SECRET = "SEC5a3ecf88f2b3eb50db30ecfc00f53033ac909c99bf7f88fd612bda89d7f3a9dc"
MESSAGE = Message("T13", 1, "13900002222|manager01", "dingtalk", "监控告警：CPU 95%", subject="告警")
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def errcode(code: int, message: str) -> Reply:
    return Reply(200, json.dumps({"errcode": code, "errmsg": message}))


def robot(reply: Reply, problems: list[str], secret: str = SECRET) -> Handler:
    """oapi.dingtalk.com/robot/send as DingTalk checks it, signature recomputed from the secret."""

    def handle(request: Recorded) -> Reply:
        if (request.method, request.path) != ("POST", "/robot/send"):
            problems.append(f"{request.method} {request.path}")
        if request.query.get("access_token") != TOKEN:
            return errcode(300001, "token is not exist")
        if secret:
            timestamp = request.query.get("timestamp", "0")
            digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
            if request.query.get("sign") != base64.b64encode(digest).decode():
                return errcode(310000, "sign not match")
            if abs(int(timestamp) - time.time() * 1000) > 3600_000:
                return errcode(310000, "timestamp is out of range")
        body = json.loads(request.body)
        if body.get("msgtype") not in ("text", "markdown"):
            problems.append(f"bad body {body}")
        return reply

    return handle


def config(url: str, **extra: object) -> dict[str, object]:
    return {"access_token": TOKEN, "secret": SECRET, "base_url": url, "timeout": contract.TIMEOUT, **extra}


CASE = ProviderCase(
    provider=dingtalk_robot,
    config=config,
    vendor=robot,
    message=MESSAGE,
    success=errcode(0, "ok"),
    vendor_errors=(
        Scenario("busy", errcode(-1, "系统繁忙"), Outcome.RETRYABLE, "-1"),
        Scenario("too-fast", errcode(130101, "send too fast, exceed 20 times per minute"), Outcome.RETRYABLE, "130101"),
        Scenario("keyword-missing", errcode(310000, "keywords not in content"), Outcome.PERMANENT, "310000"),
    ),
)


@pytest.mark.parametrize("scenario", contract.scenarios(CASE), ids=str)
def test_contract(scenario: Scenario) -> None:
    """The DingTalk robot provider meets the shared HTTP provider contract in this scenario."""
    contract.check(CASE, scenario)


def keyword_robot(reply: Reply, problems: list[str]) -> Handler:
    """A robot without a signing secret: a timestamp or sign in the URL would be a mistake."""
    check = robot(reply, problems, secret="")

    def handle(request: Recorded) -> Reply:
        if {"timestamp", "sign"} & set(request.query):
            problems.append("signature parameters sent to a robot without a secret")
        return check(request)

    return handle


KEYWORD_ROBOT = ProviderCase(
    provider=dingtalk_robot,
    config=lambda url: {"access_token": TOKEN, "base_url": url, "timeout": contract.TIMEOUT},
    vendor=keyword_robot,
    message=MESSAGE,
    success=errcode(0, "ok"),
)


def test_keyword_robot_without_secret_delivers() -> None:
    """A robot secured by keywords (no secret) gets neither timestamp nor sign, and delivers."""
    assert contract.check(KEYWORD_ROBOT, contract.scenarios(KEYWORD_ROBOT)[0]).ok


def account(**extra: object) -> Account:
    return Account("robot", "dingtalk_robot", with_defaults(dingtalk_robot.CONFIG, config("http://h", **extra)))


class TestSignature:
    def test_known_answer(self) -> None:
        """Matches the vector of an independent implementation (docs.rs crate `dingding`, signature.rs)."""
        assert dingtalk_robot.sign("secret", 1700000000000) == "OuzzJR5%2BxZ4%2FEYwqtNt6sMYZQMTa%2FHEGvc9miJe7XzY%3D"

    def test_request_carries_millisecond_timestamp_and_encoded_sign(self) -> None:
        """The URL carries access_token, timestamp in ms and the URL-encoded signature, exactly once encoded."""
        request = dingtalk_robot.build_request(MESSAGE, account(), NOW)
        timestamp = int(NOW.timestamp() * 1000)
        assert request.url == (
            f"http://h/robot/send?access_token={TOKEN}&timestamp={timestamp}&sign={dingtalk_robot.sign(SECRET, timestamp)}"
        )

    def test_token_and_sign_are_redacted_from_the_summary(self) -> None:
        """Neither the access token nor the signature is stored."""
        request = dingtalk_robot.build_request(MESSAGE, account(), NOW)
        summary = str(dingtalk_robot.summarize(request))
        assert TOKEN not in summary and dingtalk_robot.sign(SECRET, int(NOW.timestamp() * 1000)) not in summary


class TestPayload:
    def test_receivers_become_mentions(self) -> None:
        """Mobile numbers go to atMobiles, other ids to atUserIds."""
        body = json.loads(dingtalk_robot.build_request(MESSAGE, account(), NOW).body)
        assert body == {
            "msgtype": "text", "text": {"content": "监控告警：CPU 95%"},
            "at": {"atMobiles": ["13900002222"], "atUserIds": ["manager01"], "isAtAll": False},
        }

    def test_at_all_from_config_or_receiver(self) -> None:
        """isAtAll is set by `at_all: true` or an `@all` receiver."""
        everyone = Message("T14", 1, "@all", "dingtalk", "x")
        assert json.loads(dingtalk_robot.build_request(everyone, account(), NOW).body)["at"]["isAtAll"] is True
        assert json.loads(dingtalk_robot.build_request(MESSAGE, account(at_all=True), NOW).body)["at"]["isAtAll"] is True

    def test_markdown_uses_the_subject_as_title(self) -> None:
        """Markdown messages carry the subject as title."""
        body = json.loads(dingtalk_robot.build_request(MESSAGE, account(msgtype="markdown"), NOW).body)
        assert body["markdown"] == {"title": "告警", "text": "监控告警：CPU 95%"}
