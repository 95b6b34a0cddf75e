"""Request bodies are limited while they are read: a declared or streamed body past MPUSH_MAX_BODY_BYTES gets
413 in the envelope on every route, before it is buffered, and nothing is stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from engine.store.models import Task
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(60)

LIMIT = 2000
ROUTES = ["/api/v1/messages", "/api/v1/messages/batch", "/api/callback/console", "/api/admin/rules/explain",
          "/console/login"]


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with gateway(tmp_path, write_rules(tmp_path, CONSOLE_RULES), workers=False, max_body_bytes=LIMIT) as running:
        yield running


def chunks(total: int, size: int = 500) -> Iterator[bytes]:
    """A body sent with chunked transfer encoding: no Content-Length to check up front."""
    for _ in range(total // size):
        yield b"x" * size


@pytest.mark.parametrize("path", ROUTES)
def test_a_declared_length_past_the_limit_is_refused_unread(gw: Gateway, path: str) -> None:
    """Content-Length over the limit answers 413 with the envelope, on every route."""
    answer = requests.post(gw.url + path, data=b"x" * (LIMIT + 1), timeout=10,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["code"] == 413 and "limit is 2000 bytes" in answer.json()["message"]


@pytest.mark.parametrize("path", [*ROUTES[:3], ROUTES[3]])
def test_a_streamed_body_is_cut_off_at_the_limit(gw: Gateway, path: str) -> None:
    """A chunked body is counted as it arrives and refused once it passes the limit (the admin route reads it
    only with its token)."""
    answer = requests.post(gw.url + path, data=chunks(LIMIT * 50), timeout=10,
                           headers={"Content-Type": "application/json", "Authorization": "Bearer admin-token"})
    assert answer.status_code == 413 and answer.json()["code"] == 413


def test_a_send_within_the_limit_is_accepted_and_a_refused_one_stores_nothing(gw: Gateway) -> None:
    """Signed sends under the limit work; one over it leaves no task."""
    assert gw.send("otp", "13800138000", {"code": "1"})["code"] == 0
    refused = gw.send("otp", "13800138000", {"code": "1" * LIMIT})
    assert refused["code"] == 413
    assert Task.select().count() == 1


@pytest.mark.parametrize("path,limit", [("/api/v1/messages", 3000), ("/api/v1/messages/batch", 12000)])
def test_the_send_routes_have_their_own_smaller_limit(tmp_path: Path, path: str, limit: int) -> None:
    """MPUSH_MAX_SEND_BYTES bounds a single send's body (a batch's at four times), below the general limit:
    a body no valid send needs is refused before it is read, parsed or its signature computed."""
    rules = write_rules(tmp_path, CONSOLE_RULES)
    with gateway(tmp_path, rules, workers=False, max_send_bytes=3000, max_body_bytes=100_000) as gw:
        over = requests.post(gw.url + path, data=b"x" * (limit + 1), timeout=10,
                             headers={"Content-Type": "application/json"})
        assert over.status_code == 413 and f"limit is {limit} bytes" in over.json()["message"]
        assert gw.send("otp", "13800138000", {"code": "1" * 2000})["code"] == 0
        other = requests.post(gw.url + "/api/admin/rules/explain", data=b"x" * (limit + 1), timeout=10,
                              headers={"Authorization": "Bearer admin-token"})
        assert other.status_code == 400  # read (and refused as not JSON): the general limit is larger
