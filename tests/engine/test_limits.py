"""Quota and rate counters against real Redis: all-or-nothing admission, windows, refunds, concurrency."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.limits import Call, Limits, counter_key
from engine.policy.decisions import QuotaCheck
from engine.policy.selection import window_bucket

pytestmark = pytest.mark.redis

RUN = uuid.uuid4().hex[:12]  # every key these tests touch contains it
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def limits(client: redis.Redis) -> Limits:
    return Limits(client)


def _unique(name: str) -> str:
    return f"{name}-{RUN}-{uuid.uuid4().hex[:8]}"


def _check(rule: str, limit: int, window: int = 60, on_exceed: str = "reject") -> QuotaCheck:
    return QuotaCheck(rule=_unique(rule), key="app=a1", limit=limit, window_seconds=window,
                      on_exceed=on_exceed)  # type: ignore[arg-type]


def test_admit_counts_every_check(limits: Limits) -> None:
    """An admitted request counts its cost against every matching quota."""
    daily, hourly = _check("daily", 10, 86400), _check("hourly", 5, 3600)
    assert limits.admit([daily, hourly], now=T0, cost=2).allowed
    assert (limits.used(daily, T0), limits.used(hourly, T0)) == (2, 2)


def test_one_exhausted_check_rejects_and_counts_nothing(limits: Limits) -> None:
    """When one quota has no room, nothing is counted anywhere and the reject names that rule."""
    roomy, tight = _check("roomy", 100), _check("tight", 3, 3600, "defer")
    assert limits.admit([roomy, tight], now=T0, cost=3).allowed
    verdict = limits.admit([roomy, tight], now=T0 + 1, cost=1)
    assert not verdict.allowed
    assert verdict.rule == tight.rule
    assert verdict.on_exceed == "defer"
    assert verdict.retry_at == (window_bucket(T0, 3600) + 1) * 3600
    assert (limits.used(roomy, T0), limits.used(tight, T0)) == (3, 3)


def test_cost_larger_than_the_room_left_is_refused_whole(limits: Limits) -> None:
    """A batch whose cost exceeds what is left is refused entirely, not partially counted."""
    check = _check("batch", 10)
    assert limits.admit([check], now=T0, cost=7).allowed
    assert not limits.admit([check], now=T0, cost=4).allowed
    assert limits.admit([check], now=T0, cost=3).allowed
    assert limits.used(check, T0) == 10


def test_per_check_costs(limits: Limits) -> None:
    """`costs` charges each check its own units: a 3-receiver batch costs the app quota 3, a receiver quota 1."""
    app_quota, receiver_quota = _check("app", 10), _check("receiver", 1)
    assert limits.admit([app_quota, receiver_quota], now=T0, costs=[3, 1]).allowed
    assert (limits.used(app_quota, T0), limits.used(receiver_quota, T0)) == (3, 1)
    assert not limits.admit([app_quota, receiver_quota], now=T0, costs=[1, 1]).allowed
    limits.refund([app_quota, receiver_quota], now=T0, costs=[3, 1])
    assert (limits.used(app_quota, T0), limits.used(receiver_quota, T0)) == (0, 0)
    with pytest.raises(ValueError):
        limits.admit([app_quota, receiver_quota], now=T0, costs=[1])
    with pytest.raises(ValueError):
        limits.admit([app_quota], now=T0, costs=[0])
    assert limits.used(app_quota, T0) == 0


def test_windows_are_epoch_aligned_fixed_windows(limits: Limits) -> None:
    """A new window starts from zero at the epoch-aligned boundary, not `window` after the first call."""
    check = _check("minute", 1, 60)
    start = window_bucket(T0, 60) * 60
    assert limits.admit([check], now=start + 59.9).allowed
    assert not limits.admit([check], now=start + 59.99).allowed
    assert limits.admit([check], now=start + 60).allowed


def test_counters_expire_after_their_window(client: redis.Redis, limits: Limits) -> None:
    """A counter is kept a little past its window and then removed by Redis."""
    check = _check("ttl", 5, 3600)
    limits.admit([check], now=T0)
    assert 3600 < client.ttl(counter_key(check, T0)) <= 3660


def test_refund_gives_units_back_to_the_admission_window(limits: Limits) -> None:
    """refund undoes an admission that could not be stored, never going below zero."""
    a, b = _check("ra", 5), _check("rb", 5)
    assert limits.admit([a, b], now=T0, cost=3).allowed
    limits.refund([a, b], T0, 2)
    assert (limits.used(a, T0), limits.used(b, T0)) == (1, 1)
    limits.refund([a, b], T0, 5)
    assert (limits.used(a, T0), limits.used(b, T0)) == (0, 0)


def test_no_checks_admit_without_touching_redis(limits: Limits) -> None:
    """With no matching quota rule the request is admitted."""
    assert limits.admit([], now=T0).allowed


@pytest.mark.parametrize(
    ("shape", "cost"),
    [([(5, 60)], 0), ([(-1, 60)], 1), ([(5, 0)], 1), ([(5, 60), (9, 60)], 1)],
)
def test_bad_input_is_refused_and_counts_nothing(limits: Limits, shape: list[tuple[int, int]], cost: int) -> None:
    """A zero cost, a negative limit, an empty window or one counter twice is a ValueError."""
    rule = _unique("bad")
    checks = [QuotaCheck(rule, "k", limit, window) for limit, window in shape]
    with pytest.raises(ValueError):
        limits.admit(checks, now=T0, cost=cost)
    with pytest.raises(ValueError):
        limits.refund(checks, T0, cost)
    if checks[0].window_seconds > 0:
        assert limits.used(checks[0], T0) == 0


def _signed_calls(limits: Limits, app: str, limit: int, now: float, nonces: list[str]) -> list[str]:
    return limits.admit_calls([Call(app, nonce, limit, 600) for nonce in nonces], now)


def test_app_rate_limit_per_second(limits: Limits) -> None:
    """An app gets `limit` calls per epoch second; 0 means unlimited."""
    app = _unique("app")
    assert _signed_calls(limits, app, 3, T0 + 0.1, ["a", "b", "c", "d"]) == ["ok", "ok", "ok", "rate"]
    assert _signed_calls(limits, app, 3, T0 + 1.0, ["e"]) == ["ok"]
    assert set(_signed_calls(limits, app, 0, T0 + 0.5, [f"n{i}" for i in range(50)])) == {"ok"}
    with pytest.raises(ValueError):
        _signed_calls(limits, app, -1, T0, ["f"])


def test_a_nonce_is_used_once_and_a_refused_call_counts_nothing(limits: Limits) -> None:
    """A repeated nonce is a replay and uses no rate; a call over the rate leaves its nonce free for later."""
    app = _unique("app")
    assert _signed_calls(limits, app, 2, T0, ["a", "a", "b", "c"]) == ["ok", "replay", "ok", "rate"]
    assert _signed_calls(limits, app, 2, T0 + 1, ["c", "a", "c"]) == ["ok", "replay", "replay"]
    assert _signed_calls(limits, _unique("app"), 2, T0 + 1, ["a"]) == ["ok"]  # nonces belong to their app


def test_concurrent_admissions_never_exceed_the_limit(limits: Limits) -> None:
    """Eight threads hammering one quota admit exactly `limit` units in total."""
    check = _check("hammer", 50)
    other = _check("other", 10_000)
    admitted = [0] * 8

    def hammer(slot: int) -> None:
        for _ in range(25):
            if limits.admit([other, check], now=T0).allowed:
                admitted[slot] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert sum(admitted) == 50
    assert (limits.used(check, T0), limits.used(other, T0)) == (50, 50)


_calls = st.lists(
    st.tuples(st.lists(st.integers(1, 6), min_size=3, max_size=3), st.floats(0, 400),
              st.sets(st.integers(0, 2), min_size=1)),
    min_size=1,
    max_size=25,
)


class _Model:
    """The plain model of the counters: per rule and window, the sum of admitted costs, never above the limit."""

    def __init__(self, checks: list[QuotaCheck]) -> None:
        self.checks = checks
        self.used: dict[tuple[int, int], int] = {}

    def admit(self, indexes: list[int], costs: list[int], now: float) -> tuple[bool, str | None]:
        slots = [(i, window_bucket(now, self.checks[i].window_seconds)) for i in indexes]
        full = [s for s in slots if self.used.get(s, 0) + costs[s[0]] > self.checks[s[0]].limit]
        if full:
            return False, self.checks[full[0][0]].rule
        for s in slots:
            self.used[s] = self.used.get(s, 0) + costs[s[0]]
        return True, None

    def assert_matches(self, limits: Limits, now: float) -> None:
        for i, check in enumerate(self.checks):
            assert limits.used(check, now) == self.used.get((i, window_bucket(now, check.window_seconds)), 0)
            assert limits.used(check, now) <= check.limit


def _model_checks() -> list[QuotaCheck]:
    return [_check("m0", 7, 60), _check("m1", 12, 300), _check("m2", 20, 3600)]


@settings(max_examples=60, deadline=None)
@given(calls=_calls)
def test_counters_match_a_reference_model(limits: Limits, calls: list[tuple[list[int], float, set[int]]]) -> None:
    """For any sequence of admissions with any costs, times and rule subsets, decisions and counters equal a
    plain model: per rule and window, the sum of admitted costs, never above the limit."""
    model = _Model(_model_checks())
    for costs, offset, chosen in calls:
        indexes = sorted(chosen)
        verdict = limits.admit([model.checks[i] for i in indexes], now=T0 + offset, costs=[costs[i] for i in indexes])
        assert (verdict.allowed, verdict.rule) == model.admit(indexes, costs, T0 + offset)
        model.assert_matches(limits, T0 + offset)


@settings(max_examples=40, deadline=None)
@given(groups=st.lists(st.tuples(st.floats(0, 400), _calls), min_size=1, max_size=5))
def test_admit_many_decides_each_request_as_if_admitted_alone_in_order(
        limits: Limits, groups: list[tuple[float, list[tuple[list[int], float, set[int]]]]]) -> None:
    """A group admitted in one round trip gets, request by request, the verdicts and counts that one
    admission after another would give: a later request sees what the earlier ones took."""
    model = _Model(_model_checks())
    for offset, calls in groups:
        requests = [sorted(chosen) for _, _, chosen in calls]
        verdicts = limits.admit_many([([model.checks[i] for i in indexes], [costs[i] for i in indexes])
                                      for indexes, (costs, _, _) in zip(requests, calls)], now=T0 + offset)
        expected = [model.admit(indexes, costs, T0 + offset) for indexes, (costs, _, _) in zip(requests, calls)]
        assert [(v.allowed, v.rule) for v in verdicts] == expected
        model.assert_matches(limits, T0 + offset)


def test_admit_many_with_no_checks_admits_without_touching_redis(limits: Limits) -> None:
    """Requests no quota applies to are admitted even with Redis unreachable."""
    offline = Limits(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))
    assert [a.allowed for a in offline.admit_many([([], []), ([], [])], now=T0)] == [True, True]


def test_admit_calls_counts_in_order_per_app(limits: Limits) -> None:
    """Several calls' nonces and rates in one round trip: each app's limit holds across the group, 0 is unlimited."""
    busy, calm = _unique("busy"), _unique("calm")
    group = [Call(busy, "1", 2, 600), Call(calm, "1", 0, 600), Call(busy, "2", 2, 600), Call(busy, "3", 2, 600),
             Call(calm, "2", 0, 600)]
    assert limits.admit_calls(group, T0 + 0.2) == ["ok", "ok", "ok", "rate", "ok"]
    assert limits.admit_calls([Call(busy, "3", 2, 600)], T0 + 1.2) == ["ok"]
    assert limits.admit_calls([], T0) == []


def test_a_call_and_its_quotas_count_all_or_nothing(limits: Limits) -> None:
    """Counted together: a replay takes no quota, a call over its quota leaves its nonce unused for a retry."""
    app, rule = _unique("app"), _unique("one-a-day")
    quota = [QuotaCheck(rule, app, 1, 86_400)]
    first, replay, second = Call(app, "n1", 0, 600), Call(app, "n1", 0, 600), Call(app, "n2", 0, 600)
    verdicts = limits.admit_many([(quota, [1]), (quota, [1]), (quota, [1])], now=T0, calls=[first, replay, second])
    assert [(v.allowed, v.call, v.rule) for v in verdicts] == [(True, "ok", None), (False, "replay", None),
                                                               (False, "ok", rule)]
    assert limits.used(quota[0], T0) == 1
    assert limits.admit_calls([second], T0) == ["ok"]  # the nonce refused by the quota was not used


def test_a_call_over_its_rate_takes_no_quota(limits: Limits) -> None:
    """The second call in a second of an app limited to one a second is refused as rate, its quota untouched."""
    app, rule = _unique("app"), _unique("daily")
    quota = [QuotaCheck(rule, app, 10, 86_400)]
    verdicts = limits.admit_many([(quota, [1]), (quota, [1])], now=T0 + 0.1,
                                 calls=[Call(app, "a", 1, 600), Call(app, "b", 1, 600)])
    assert [(v.allowed, v.call) for v in verdicts] == [(True, "ok"), (False, "rate")]
    assert limits.used(quota[0], T0) == 1


def test_a_call_its_quota_defers_still_uses_its_nonce(limits: Limits) -> None:
    """A deferred request is accepted for later: its quota is not counted now, but its nonce is, so a replay fails."""
    app, rule = _unique("app"), _unique("defer")
    quota = [QuotaCheck(rule, app, 0, 60, on_exceed="defer")]
    call = Call(app, "n", 0, 600)
    verdict = limits.admit_many([(quota, [1])], now=T0, calls=[call])[0]
    assert (verdict.allowed, verdict.on_exceed, verdict.call) == (False, "defer", "ok")
    assert limits.admit_calls([call], T0) == ["replay"]
    assert limits.admit_many([(quota, [1])], now=T0, calls=[call])[0].call == "replay"


def test_daily_window_follows_local_midnight(limits: Limits) -> None:
    """With the rule set's UTC offset, a daily quota starts again at local midnight, not UTC midnight."""
    from datetime import UTC, datetime

    shanghai = 8 * 3600
    check = QuotaCheck(_unique("local-day"), "app=a1", 1, 86400, utc_offset=shanghai)
    before_local_midnight = datetime(2026, 11, 27, 15, 59, tzinfo=UTC).timestamp()  # 23:59 in Shanghai
    assert limits.admit([check], now=before_local_midnight).allowed
    refused = limits.admit([check], now=before_local_midnight)
    assert not refused.allowed and refused.retry_at == datetime(2026, 11, 27, 16, 0, tzinfo=UTC).timestamp()
    assert limits.admit([check], now=before_local_midnight + 60).allowed  # 00:00:59 the next local day
