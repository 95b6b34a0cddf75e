"""A request head (line and headers) is bounded while it is read: past MAX_HEAD_BYTES the answer is 431 in the
envelope and the connection closes, where uvicorn's httptools protocol read a 20 MB header whole."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest

from api.server import MAX_HEAD_BYTES
from tests.attack.hostile import SEND, Hostile, send_raw
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("heads")
    with gateway(tmp, write_rules(tmp, CONSOLE_RULES), workers=False) as running:
        yield running


def with_header(size: int) -> Hostile:
    request = Hostile(SEND, b"{}")
    request.header("Content-Type", "application/json")
    request.header("X-Padding", "a" * size)
    return request


def test_a_head_past_the_limit_is_answered_431(gw: Gateway) -> None:
    """A 100 KB header answers 431 with the envelope, unauthenticated, before anything else looks at it."""
    status, raw = send_raw(gw.url, with_header(100_000))
    assert status == 431 and json.loads(raw)["code"] == 431 and str(MAX_HEAD_BYTES) in json.loads(raw)["message"]


def test_a_huge_head_is_never_read_whole(gw: Gateway) -> None:
    """A 20 MB header gets 431 or a closed connection, never an answer to the request it would have been."""
    try:
        status, _ = send_raw(gw.url, with_header(20_000_000))
    except (ConnectionResetError, BrokenPipeError):
        return
    assert status == 431


def test_heads_within_the_limit_pass_request_after_request_on_one_connection(gw: Gateway) -> None:
    """Each request's head is counted on its own: five 40 KB heads on one kept-alive connection (200 KB in all)
    are all answered normally (20001: unsigned)."""
    conn = http.client.HTTPConnection(gw.url.removeprefix("http://"), timeout=10)
    try:
        for _ in range(5):
            conn.request("POST", SEND, body=b"{}", headers={"Content-Type": "application/json",
                                                           "X-Padding": "a" * 40_000})
            answer = conn.getresponse()
            assert answer.status == 200 and json.loads(answer.read())["code"] == 20001
    finally:
        conn.close()


def test_pipelined_requests_in_one_write_are_each_counted_on_their_own(gw: Gateway) -> None:
    """Five requests with 30 KB heads written at once (150 KB, read in one go) are all answered, none 431."""
    port = int(gw.url.rsplit(":", 1)[1])
    one = (b"POST " + SEND.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Padding: "
           + b"a" * 30_000 + b"\r\nContent-Length: 2\r\n\r\n{}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(one * 5)
        received = b""
        while received.count(b'"code":20001') < 5 and b" 431 " not in received:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.count(b"HTTP/1.1 200") == 5 and b" 431 " not in received, received[:300]
