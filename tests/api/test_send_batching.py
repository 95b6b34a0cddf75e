"""Single sends answered together: each request still gets its own verdict, replays and bad ones included."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from engine.signing import sign_headers
from engine.store import repo
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(60)

@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    rules = write_rules(tmp_path, CONSOLE_RULES)
    with gateway(tmp_path, rules, workers=False) as running:
        yield running


def post_all(gw: Gateway, bodies: list[tuple[bytes, dict[str, str]]]) -> list[dict[str, Any]]:
    """POST every (body, headers) at the same instant from its own thread; the answers in order."""
    start = threading.Barrier(len(bodies))
    answers: list[dict[str, Any]] = [{}] * len(bodies)

    def post(index: int) -> None:
        raw, headers = bodies[index]
        start.wait(5)
        answers[index] = requests.post(gw.url + "/api/v1/messages", data=raw, timeout=10,
                                       headers={"Content-Type": "application/json", **headers}).json()

    threads = [threading.Thread(target=post, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    return answers


def signed(gw: Gateway, receiver: str, *, nonce: str | None = None, secret: str | None = None,
           channel: object = "otp") -> tuple[bytes, dict[str, str]]:
    raw = json.dumps({"channel_id": channel, "receiver": receiver, "template_params": {"code": "1"}}).encode()
    return raw, sign_headers(gw.app_id, secret or gw.secret, "POST", "/api/v1/messages", raw,
                             now=int(time.time()), nonce=nonce or uuid.uuid4().hex)


def test_concurrent_sends_each_get_their_own_task(gw: Gateway) -> None:
    """Twenty simultaneous sends get twenty distinct stored tasks for the right receivers."""
    answers = post_all(gw, [signed(gw, f"1380000{i:04d}") for i in range(20)])
    assert [answer["code"] for answer in answers] == [0] * 20
    tasks = [repo.get_task(answer["data"]["task_id"]) for answer in answers]
    assert [task.receiver for task in tasks] == [f"+861380000{i:04d}" for i in range(20)]


def test_a_replay_sent_alongside_its_original_is_refused_once(gw: Gateway) -> None:
    """Of several simultaneous copies of one signed request exactly one is accepted; the rest are replays."""
    copy = signed(gw, "13800000001", nonce="same-nonce")
    answers = post_all(gw, [copy] * 5)
    assert sorted(answer["code"] for answer in answers) == [0, 20003, 20003, 20003, 20003]
    assert sum("replay" in answer["message"] for answer in answers) == 4


def test_bad_requests_among_good_ones_are_refused_and_store_nothing(gw: Gateway) -> None:
    """A wrong signature and an unknown channel get their own codes; the good sends around them are stored."""
    bodies = [signed(gw, "13800000001"), signed(gw, "13800000002", secret="0" * 32),
              signed(gw, "13800000003", channel=99), signed(gw, "13800000004")]
    answers = post_all(gw, bodies)
    assert [answer["code"] for answer in answers] == [0, 20003, 10001, 0]
    assert repo.task_counts(gw.app_id)["pending"] == 2


def test_send_answers_carry_the_headers_of_every_answer(gw: Gateway) -> None:
    """A send, served ahead of Starlette's stack, still gets a UUIDv7 trace id and CORS's headers."""
    raw, headers = signed(gw, "13800000001")
    response = requests.post(gw.url + "/api/v1/messages", data=raw, timeout=10,
                             headers={"Content-Type": "application/json", "Origin": "https://shop.example", **headers})
    assert response.json()["code"] == 0
    assert uuid.UUID(response.headers["trace-id"]).version == 7
    assert response.headers["access-control-allow-origin"] == "*" and response.headers["vary"] == "Origin"


def test_a_crash_in_the_send_path_answers_the_internal_error_envelope(gw: Gateway,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception while accepting becomes code 40001 for the caller, not a dropped connection."""
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("store exploded")

    monkeypatch.setattr("engine.intake.accept_many", broken)
    raw, headers = signed(gw, "13800000001")
    response = requests.post(gw.url + "/api/v1/messages", data=raw, timeout=10, headers=headers)
    assert (response.status_code, response.json()["code"]) == (200, 40001)
    assert "trace-id" in response.headers


def test_other_methods_and_paths_still_go_through_the_router(gw: Gateway) -> None:
    """GET on the send path and a CORS preflight are answered by Starlette as before."""
    assert requests.get(gw.url + "/api/v1/messages", timeout=5).status_code == 404
    preflight = requests.options(gw.url + "/api/v1/messages", timeout=5, headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]


def test_a_send_refused_as_invalid_leaves_its_nonce_unused(gw: Gateway) -> None:
    """A send refused for an unknown channel does not use its nonce: the corrected request signed with it is accepted."""
    nonce = uuid.uuid4().hex
    assert post_all(gw, [signed(gw, "13800000001", nonce=nonce, channel=99)])[0]["code"] == 10001
    assert post_all(gw, [signed(gw, "13800000001", nonce=nonce)])[0]["code"] == 0
    assert post_all(gw, [signed(gw, "13800000001", nonce=nonce)])[0]["code"] == 20003
