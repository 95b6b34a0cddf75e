"""The fake provider: scripted outcomes per attempt, receiver failures, loopback mode and reports."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers import fake
from providers.base import Account, CallbackRequest, Message, Outcome, SendContext, with_defaults
from tests.providers import contract
from tests.providers.contract import ProviderCase, Scenario
from tests.support.loopback import Handler, Recorded, Reply
from tests.support.tokens import MemoryTokenCache

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
CTX = SendContext(contract.TRANSPORT, NOW, MemoryTokenCache())


def message(attempt: int = 1, task_id: str = "T1", receiver: str = "+8613800000000") -> Message:
    return Message(task_id, attempt, receiver, "sms", "您的验证码是123456")


def account(callback: dict[str, object] | None = None, **config: object) -> Account:
    return Account("fake-1", "fake", with_defaults(fake.CONFIG, config), callback=callback or {})


def server(reply: Reply, problems: list[str]) -> Handler:
    """A benchmark-style loopback endpoint expecting the message as JSON with an idempotency key."""

    def handle(request: Recorded) -> Reply:
        body = json.loads(request.body)
        if request.header("Idempotency-Key") != f"{body['task_id']}-{body['attempt']}":
            problems.append("idempotency key")
        return reply

    return handle


CASE = ProviderCase(
    provider=fake,
    config=lambda url: {"url": f"{url}/send", "timeout": contract.TIMEOUT},
    vendor=server,
    message=message(),
    success=Reply(200, '{"code": 0, "id": "srv-1"}'),
    message_id="srv-1",
    vendor_errors=(
        Scenario("vendor-code", Reply(200, '{"code": "E42", "message": "bad number"}'), Outcome.PERMANENT, "E42"),
        Scenario("http-400", Reply(400, '{"code": 400, "message": "bad"}'), Outcome.PERMANENT, "400"),
    ),
)


@pytest.mark.parametrize("scenario", contract.scenarios(CASE), ids=str)
def test_contract(scenario: Scenario) -> None:
    """In url mode the fake provider meets the shared HTTP provider contract in this scenario."""
    contract.check(CASE, scenario)


class TestScript:
    def test_default_is_delivered_with_a_stable_id(self) -> None:
        """Without a script every attempt is delivered, id fake-<task>-<attempt>, final."""
        result = fake.send(message(attempt=3), account(), CTX)
        assert (result.outcome, result.provider_message_id, result.final) == (Outcome.OK, "fake-T1-3", True)

    def test_outcomes_follow_the_attempt_number(self) -> None:
        """Attempt n takes entry n-1: a retry, then a permanent error, then success, then round again."""
        acct = account(outcomes=["retry:BUSY:vendor busy", "error:E1:bad number", "ok"])
        results = [fake.send(message(attempt=n), acct, CTX) for n in (1, 2, 3, 4)]
        assert [(r.outcome, r.error_code) for r in results] == [
            (Outcome.RETRYABLE, "BUSY"), (Outcome.PERMANENT, "E1"), (Outcome.OK, ""), (Outcome.RETRYABLE, "BUSY"),
        ]
        assert results[0].error_message == "vendor busy"

    def test_timeout_entry_is_retryable_without_waiting(self) -> None:
        """"timeout" answers at once with a retryable result that failure rules can match on "timeout"."""
        result = fake.send(message(), account(outcomes=["timeout"]), CTX)
        assert result.outcome is Outcome.RETRYABLE and "timeout" in result.error_message

    def test_fail_receivers_win_over_outcomes(self) -> None:
        """A receiver listed in fail_receivers gets its entry whatever the cycle says."""
        acct = account(fail_receivers={"+8613900000000": "error:INVALID_NUMBER:空号"})
        assert fake.send(message(receiver="+8613900000000"), acct, CTX).error_code == "INVALID_NUMBER"
        assert fake.send(message(), acct, CTX).ok

    def test_malformed_entry_is_a_clear_permanent_error(self) -> None:
        """An entry outside the syntax fails permanently and names the accepted forms."""
        result = fake.send(message(), account(outcomes=["explode"]), CTX)
        assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "fake_script")
        assert "'explode'" in result.error_message and "retry:CODE:message" in result.error_message

    def test_not_final_awaits_a_report(self) -> None:
        """final: false accepts like an SMS vendor: ok but not final."""
        result = fake.send(message(), account(final=False), CTX)
        assert result.ok and result.final is False

    def test_scripted_failure_skips_the_url(self) -> None:
        """A scripted failure never reaches the loopback server."""
        with contract.vendor(lambda r: Reply(200, "{}")) as srv:
            result = fake.send(message(), account(url=srv.url, outcomes=["retry:X:y"]), CTX)
            assert srv.requests == []
        assert result.error_code == "X"

    @given(task_id=st.text(min_size=1, max_size=12), attempt=st.integers(1, 50))
    def test_spread_choice_depends_only_on_task_and_attempt(self, task_id: str, attempt: int) -> None:
        """With spread the pick is a pure function of task id and attempt, and cycles by attempt."""
        outcomes = ["ok", "retry:A:a", "error:B:b"]
        first = fake.pick(outcomes, message(attempt, task_id), spread=True)
        assert first == fake.pick(outcomes, message(attempt, task_id), spread=True)
        following = fake.pick(outcomes, message(attempt + 1, task_id), spread=True)
        assert outcomes.index(following) == (outcomes.index(first) + 1) % 3

    def test_spread_mixes_first_attempts(self) -> None:
        """With spread a 1-in-4 failure script fails some but not all first attempts."""
        acct = account(outcomes=["ok", "ok", "ok", "retry:X:y"], spread=True)
        failed = sum(not fake.send(message(task_id=f"T{i}"), acct, CTX).ok for i in range(400))
        assert 50 < failed < 150


def report(body: object, token: str = "s3cret") -> CallbackRequest:
    return CallbackRequest("POST", {"token": token}, {"content-type": "application/json"}, json.dumps(body).encode())


class TestCallback:
    def test_reports_are_parsed(self) -> None:
        """A JSON report (or a list) with the right token yields delivery reports."""
        acct = account(callback={"token": "s3cret"}, final=False)
        result = fake.parse_callback(report([
            {"id": "fake-T1-1", "status": "delivered"},
            {"id": "fake-T2-1", "status": "failed", "code": "UNDELIV", "message": "关机"},
        ]), acct, NOW)
        assert result.verified and result.reply.status == 200
        assert [(r.provider_message_id, r.status, r.error_code) for r in result.reports] == [
            ("fake-T1-1", "delivered", ""), ("fake-T2-1", "failed", "UNDELIV"),
        ]

    def test_wrong_token_is_refused(self) -> None:
        """A report without the shared secret is unverified and yields nothing."""
        result = fake.parse_callback(report({"id": "x", "status": "delivered"}, token="guess"),
                                     account(callback={"token": "s3cret"}), NOW)
        assert (result.verified, result.reports, result.reply.status) == (False, (), 403)

    def test_no_callback_settings_refuses_everything(self) -> None:
        """An account without callback token or allow_ips accepts no reports."""
        result = fake.parse_callback(report({"id": "x", "status": "delivered"}), account(), NOW)
        assert not result.verified and result.reports == ()

    @pytest.mark.parametrize("body", [b"not json", b'{"id": "x", "status": "lost"}', b'[{"status": "failed"}]'])
    def test_garbage_is_rejected_with_a_reason(self, body: bytes) -> None:
        """Unreadable bodies and items without id or known status are not applied."""
        request = CallbackRequest("POST", {"token": "s3cret"}, {}, body)
        result = fake.parse_callback(request, account(callback={"token": "s3cret"}), NOW)
        assert result.reports == () and result.error and result.reply.status == 400
