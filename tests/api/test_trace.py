"""The `trace-id` of the answer that accepted a message is stored with its task and shown in its timeline."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from engine import timeline
from engine.signing import sign_headers
from engine.store import repo
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("trace")
    with gateway(tmp, write_rules(tmp, CONSOLE_RULES), workers=False) as running:
        yield running


def post(gw: Gateway, path: str, body: dict[str, object]) -> requests.Response:
    raw = json.dumps(body).encode()
    headers = sign_headers(gw.app_id, gw.secret, "POST", path, raw, now=int(time.time()), nonce=uuid.uuid4().hex)
    return requests.post(gw.url + path, data=raw, timeout=10, headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize("path,body", [
    ("/api/v1/messages", {"channel_id": 1, "receiver": "13800138000", "template_params": {"code": "1"}}),
    ("/api/v1/messages/batch", {"channel_id": 1, "receivers": ["13800138001"], "template_params": {"code": "1"}}),
])
def test_the_answers_trace_id_is_the_tasks(gw: Gateway, path: str, body: dict[str, object]) -> None:
    """Single sends and batches alike: the task's trace id is the answer's header, and its timeline says so."""
    answer = post(gw, path, body)
    trace_id = answer.headers["trace-id"]
    batch_id = answer.json()["data"].get("batch_id")
    task_id = (repo.list_tasks(batch_id=batch_id)[1][0].task_id if batch_id else answer.json()["data"]["task_id"])
    task = repo.get_task(task_id)
    assert task.trace_id == trace_id and len(trace_id) == 36
    accepted = timeline.build(task, gw.svc.rules.current, gw.svc.settings.rules_dir)[0]
    assert ("trace id", trace_id) in accepted.facts
