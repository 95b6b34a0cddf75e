"""The contract every HTTP provider meets, run as a table against a mock vendor on 127.0.0.1.

To put a provider under contract, its test module defines a `ProviderCase` and one test:

    CASE = ProviderCase(provider=my_module, config=lambda url: {...}, vendor=my_vendor, ...)

    @pytest.mark.parametrize("scenario", contract.scenarios(CASE), ids=str)
    def test_contract(scenario: contract.Scenario) -> None:
        \"\"\"The provider meets the shared HTTP provider contract in this scenario.\"\"\"
        contract.check(CASE, scenario)

`vendor(reply, problems)` returns the loopback handler standing in for the vendor: it checks each
request the way the vendor does (path, query, content type, required fields, signature), appends
what is wrong to `problems`, answers any token endpoint itself, and answers `reply` on the send
endpoint. Standard scenarios (success, 5xx, 429, garbage, timeout, connection refused) are added
to the case's own vendor error codes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from types import ModuleType
from typing import Any

from engine.transport import HttpTransport
from providers.base import (
    Account, Message, Outcome, SendContext, SendResult, secret_values, validate_config, with_defaults,
)
from tests.support.loopback import Handler, LoopbackServer, Reply
from tests.support.tokens import MemoryTokenCache

TIMEOUT = 0.3  # every case's config must pass this as `timeout`
SLOW = 1.0
TRANSPORT = HttpTransport()

Vendor = Callable[[Reply, list[str]], Handler]

_lock = threading.Lock()
_server: LoopbackServer | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    reply: Reply
    outcome: Outcome
    error_code: str = ""  # checked when not empty
    refused: bool = False  # point the provider at a port nobody listens on

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ProviderCase:
    provider: ModuleType
    config: Callable[[str], dict[str, Any]]  # mock vendor base URL -> the account's raw config
    vendor: Vendor
    message: Message
    success: Reply
    vendor_errors: tuple[Scenario, ...] = ()
    message_id: str = ""  # the provider message id a success yields ("" when the vendor gives none)
    final: bool = True
    garbage: Outcome = Outcome.RETRYABLE  # what an unreadable 200 body means for this provider
    hidden: tuple[str, ...] = ()  # vendor-issued secrets (tokens) that must never be stored


def scenarios(case: ProviderCase) -> list[Scenario]:
    garbage_code = "bad_response" if case.garbage is Outcome.RETRYABLE else ""
    return [
        Scenario("success", case.success, Outcome.OK),
        Scenario("http-500", Reply(500, "<html>internal error</html>", {"Content-Type": "text/html"}), Outcome.RETRYABLE),
        Scenario("http-503", Reply(503, "", {"Content-Type": "text/plain"}), Outcome.RETRYABLE),
        Scenario("http-429", Reply(429, "slow down", {"Content-Type": "text/plain"}), Outcome.RETRYABLE),
        Scenario("garbage", Reply(200, "<html>not the API</html>", {"Content-Type": "text/html"}), case.garbage, garbage_code),
        Scenario("truncated-json", Reply(200, '{"errcode": 0, "Code'), case.garbage, garbage_code),
        Scenario("timeout", _slow(case.success), Outcome.RETRYABLE, "network"),
        Scenario("connection-refused", case.success, Outcome.RETRYABLE, "network", refused=True),
        *case.vendor_errors,
    ]


def check(case: ProviderCase, scenario: Scenario) -> SendResult:
    """Run one scenario against the mock vendor and assert the contract; returns the result."""
    assert hasattr(case.provider, "build_request") and hasattr(case.provider, "parse_response")
    problems: list[str] = []
    with vendor(case.vendor(scenario.reply, problems)) as server:
        base_url = _dead_url() if scenario.refused else server.url
        raw = case.config(base_url)
        assert validate_config(case.provider.CONFIG, raw) == [], "the case's config must be valid"
        assert raw.get("timeout") == TIMEOUT, "cases pass the short test timeout"
        account = Account("acct", case.provider.TYPE, with_defaults(case.provider.CONFIG, raw))
        ctx = SendContext(TRANSPORT, datetime.now(timezone.utc), MemoryTokenCache())
        result = case.provider.send(case.message, account, ctx)
    assert problems == [], f"the vendor would refuse the request: {problems}"
    assert result.outcome is scenario.outcome, result
    if scenario.error_code:
        assert result.error_code == scenario.error_code, result
    if scenario.name == "success":
        assert result.provider_message_id == case.message_id
        assert result.final is case.final
    if not result.ok:
        assert result.error_code and result.error_message, "failures say what went wrong"
    assert_no_secrets(result, [*secret_values(case.provider.CONFIG, raw), *case.hidden])
    return result


def assert_no_secrets(result: SendResult, secrets: list[str]) -> None:
    stored = f"{result.error_message} {result.request_summary} {result.response_summary}"
    for secret in secrets:
        assert secret not in stored, f"secret {secret!r} leaked into the stored result"


@contextmanager
def vendor(handler: Handler) -> Iterator[LoopbackServer]:
    """The shared mock vendor server on 127.0.0.1, answering with `handler` within the block.

    One server for the whole run: a loopback server takes half a second to shut down.
    """
    global _server
    if not _lock.acquire(timeout=10):
        raise RuntimeError("the mock vendor server is already in use (nested contract.vendor blocks?)")
    try:
        if _server is None:
            _server = LoopbackServer(handler).start()
        _server.handler = handler
        _server.requests.clear()
        yield _server
    finally:
        _lock.release()


def _slow(reply: Reply) -> Reply:
    return Reply(reply.status, reply.body, reply.headers, delay=SLOW)


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
