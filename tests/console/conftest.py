"""A running gateway with an operator, and an HTTP client of its console that signs in like a browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from engine.store import queries
from tests.support.service import Gateway, gateway, write_rules

OPERATOR, PASSWORD = "admin", "correct horse battery"

# Two SMS accounts: "flaky" refuses every send (a retryable vendor error), so a message fails over to "steady".
FAILOVER_RULES = """
templates:
  - {name: code, variables: [code], text: "code {code}"}
channels:
  - {id: 1, name: otp, type: sms, template: code}
providers:
  - {name: flaky, type: fake, config: {outcomes: ["retry:503:vendor busy"]}}
  - {name: steady, type: console}
  - {name: spare, type: console, enabled: false}
routing:
  - {name: otp-failover, when: {channel: otp}, providers: [{use: flaky}, {use: steady, tier: 2}]}
failures:
  - {name: switch-on-error, scene: send_failure, action: switch_provider, switch_provider: {max: 2}}
"""


class Console:
    """A console client over real HTTP; `csrf` is the token of the last page read."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.csrf = ""

    def get(self, path: str, **params: str) -> requests.Response:
        answer = self.http.get(self.base + path, params=params, timeout=10, allow_redirects=True)
        self._remember_token(answer.text)
        return answer

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: str | None = None) -> requests.Response:
        form = {"csrf": self.csrf if csrf is None else csrf, **(data or {})}
        answer = self.http.post(self.base + path, data=form, timeout=10, allow_redirects=True)
        self._remember_token(answer.text)
        return answer

    def sign_in(self, name: str = OPERATOR, password: str = PASSWORD) -> requests.Response:
        self.get("/console/login")
        return self.post("/console/login", {"name": name, "password": password})

    def _remember_token(self, text: str) -> None:
        found = re.search(r'name="csrf" value="([^"]+)"', text)
        if found:
            self.csrf = found.group(1)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    rules = write_rules(tmp_path, FAILOVER_RULES)
    with gateway(tmp_path, rules) as running:
        queries.create_operator(OPERATOR, PASSWORD)
        yield running


@pytest.fixture
def console(gw: Gateway) -> Console:
    client = Console(gw.url)
    assert client.sign_in().url.endswith("/console/")
    return client
