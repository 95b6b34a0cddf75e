"""A flood of forged provider callbacks is counted, and only a bounded sample of it is stored and logged."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
import requests

from engine import callbacks
from engine.store.models import Callback
from tests.support.service import REPORTING_RULES, gateway, write_rules


def _refused(metrics_text: str, provider: str, reason: str) -> float:
    pattern = rf'mpush_callbacks_refused_total\{{provider="{re.escape(provider)}",reason="{reason}"\}} (\S+)'
    found = re.search(pattern, metrics_text)
    return float(found.group(1)) if found else 0.0


def test_forged_callback_flood_stores_only_a_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """200 forged 20 KB callbacks in a minute leave at most REFUSED_SAMPLE rows (each truncated) and log lines,
    and all 200 are counted by provider and reason; a request for an unknown account is counted too."""
    caplog.set_level(logging.WARNING, logger="mpush.callbacks")
    with gateway(tmp_path, write_rules(tmp_path, REPORTING_RULES), workers=False) as gw:
        before = _refused(requests.get(gw.url + "/metrics", timeout=5).text, "reporting", "unverified")
        first_minute = int(time.time() // 60)
        with requests.Session() as session:
            for n in range(200):
                answer = session.post(f"{gw.url}/api/callback/reporting?token=forged-{n}",
                                      data=b'{"x":"' + b"A" * 20_000 + b'"}', timeout=5)
                assert answer.status_code == 403
            assert session.post(f"{gw.url}/api/callback/no-such-account", data=b"{}", timeout=5).status_code == 404
        minutes = int(time.time() // 60) - first_minute + 1  # the sample is per minute
        rows = list(Callback.select())
        metrics_text = requests.get(gw.url + "/metrics", timeout=5).text
    assert 1 <= len(rows) <= callbacks.REFUSED_SAMPLE * minutes
    assert all(not row.verified and len(row.raw) <= callbacks.REFUSED_RAW for row in rows)
    assert len([r for r in caplog.records if r.getMessage().startswith("callback.refused")]) == len(rows)
    assert _refused(metrics_text, "reporting", "unverified") - before == 200
    assert _refused(metrics_text, "(unknown)", "unknown_account") >= 1
