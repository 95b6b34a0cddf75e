"""The OpenAPI document validates, and schemathesis-generated requests (signed, or with the admin token) against a
live gateway never get a 5xx or 40001 and always get answers the document describes."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from engine.signing import BodyError, sign_headers
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

pytestmark = pytest.mark.timeout(120)

DOCUMENT = Path(__file__).resolve().parents[2] / "api" / "openapi.yaml"
ADMIN_TOKEN = "admin-token"  # what tests/support/service.py configures
OPERATIONS = 18  # in api/openapi.yaml
EXAMPLES = int(os.environ.get("MPUSH_SCHEMATHESIS_EXAMPLES", "15"))  # per operation: about 20 operations stay well under a minute


def test_the_document_validates() -> None:
    """api/openapi.yaml is a valid OpenAPI 3.1 document, and /openapi.json serves the same content."""
    validate(yaml.safe_load(DOCUMENT.read_text(encoding="utf-8")))


class Signed(requests.auth.AuthBase):
    """Signs a prepared request the way an SDK does: public routes get the four headers over the final bytes,
    admin routes the bearer token."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        path = unquote(urlsplit(prepared.url or "").path)
        if path.startswith("/api/admin/"):
            prepared.headers.setdefault("Authorization", f"Bearer {ADMIN_TOKEN}")
        elif path.startswith("/api/v1/"):
            body = prepared.body or b""
            raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
            try:
                signed = sign_headers(self.gw.app_id, self.gw.secret, prepared.method or "GET", path, raw,
                                      now=int(time.time()), nonce=uuid.uuid4().hex)
            except BodyError:  # not a JSON object: nothing an SDK could sign, sent with a signature of `{}`
                signed = sign_headers(self.gw.app_id, self.gw.secret, prepared.method or "GET", path, b"{}",
                                      now=int(time.time()), nonce=uuid.uuid4().hex)
            prepared.headers.update(signed)
        return prepared


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("openapi")
    with gateway(tmp, write_rules(tmp, CONSOLE_RULES), workers=False) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(gw: Gateway) -> schemathesis.BaseSchema:
    served = requests.get(gw.url + "/openapi.json", timeout=10).json()
    assert served == yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    schema = schemathesis.openapi.from_dict(served)
    schema.config.base_url = gw.url
    return schema


def no_internal_error(case: schemathesis.Case, answer: schemathesis.Response) -> None:
    """An envelope answer never carries 40001 (internal error: a fault of ours, never of the input)."""
    try:
        body = answer.json()
    except ValueError:
        return
    code = body.get("code") if isinstance(body, dict) else None
    assert code != 40001, f"40001 for {case.method} {case.formatted_path}: {body}\n{case.as_curl_command()}"


def describe(exc: BaseException) -> str:
    """The messages of an exception and of every exception grouped inside it."""
    if isinstance(exc, BaseExceptionGroup):
        return "\n".join(describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"[:3000]


def exercise(operation: schemathesis.APIOperation, gw: Gateway, mode: schemathesis.GenerationMode) -> int:
    """Generated cases of one operation, each sent signed and its answer checked against the document; returns
    how many were sent."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=not os.environ.get("MPUSH_SCHEMATHESIS_EXAMPLES"))  # the same cases each CI run
    def run(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        answer = case.call(base_url=gw.url, auth=Signed(gw), timeout=10)
        case.validate_response(answer, checks=[not_a_server_error, status_code_conformance,
                                               content_type_conformance, response_schema_conformance])
        no_internal_error(case, answer)

    run()
    return sent


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda mode: mode.value)
def test_generated_requests_conform(api_schema: schemathesis.BaseSchema, gw: Gateway,
                                    mode: schemathesis.GenerationMode) -> None:
    """Every generated request to every operation (valid by the document, or not), signed or with the admin
    token, gets a documented non-5xx answer, never 40001."""
    failures, sent = [], {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        try:
            sent[operation.label] = exercise(operation, gw, mode)
        except Unsatisfiable:  # nothing invalid to generate (an operation without parameters or body)
            sent[operation.label] = 0
        except (AssertionError, BaseExceptionGroup) as exc:  # every operation is tried, all failures reported
            failures.append(f"{operation.label}:\n{describe(exc)}")
    assert not failures, "\n\n".join(failures)
    assert len(sent) == OPERATIONS and sum(sent.values()) >= OPERATIONS, sent
