"""Which client address the gateway believes: X-Forwarded-For only from the proxies the operator names, so a
callback account's `allow_ips` cannot be passed by writing a header."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

from tests.support.service import gateway, write_rules

pytestmark = pytest.mark.timeout(60)

RULES = """
templates:
  - {name: code, variables: [code], text: "code {code}"}
channels:
  - {id: 1, name: otp, type: sms, template: code}
providers:
  - name: zr
    type: zrwinfo_sms
    config: {accesskey: key, secret: secret, base_url: "http://127.0.0.1:9"}
    callback: {allow_ips: ["203.0.113.5"]}
routing:
  - {name: otp, when: {channel: otp}, providers: [{use: zr}]}
"""

REPORT = urlencode({"smUuid": "16596_1_0_13800138000_1_Ab3cD", "mobile": "13800138000", "batchId": "",
                    "deliverResult": "DELIVRD", "deliverTime": "2026-03-01 16:30:05"})


def push_report(url: str) -> int:
    """A report from loopback claiming, by header, to come from the allowed vendor address."""
    return requests.post(url + "/api/callback/zr", data=REPORT, timeout=10,
                         headers={"Content-Type": "application/x-www-form-urlencoded",
                                  "X-Forwarded-For": "203.0.113.5"}).status_code


def test_a_forwarded_for_header_is_not_believed_by_default(tmp_path: Path) -> None:
    """With no trusted proxy configured, the header is ignored and the loopback peer is refused by allow_ips."""
    with gateway(tmp_path, write_rules(tmp_path, RULES), workers=False) as gw:
        assert push_report(gw.url) == 403


def test_a_named_proxy_is_believed(tmp_path: Path) -> None:
    """With MPUSH_FORWARDED_ALLOW_IPS naming the peer (a reverse proxy on loopback), its header is the client."""
    with gateway(tmp_path, write_rules(tmp_path, RULES), workers=False, forwarded_allow_ips="127.0.0.1") as gw:
        assert push_report(gw.url) != 403
