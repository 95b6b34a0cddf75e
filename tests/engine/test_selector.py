"""Provider selection against real Redis: tiers, shared round robin, rates, breakers equal to the pure model."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.policy.decisions import Candidate
from engine.policy.model import CircuitPolicy, ProviderAccount, Rate
from engine.policy.selection import (
    TRIP,
    Breaker,
    call_health,
    breaker_acquire,
    breaker_admits,
    breaker_record,
    breaker_state,
    swrr_step,
    window_bucket,
)
from engine.selector import Selector
from tests.support.redis_server import connect_test_redis

pytestmark = pytest.mark.redis

RUN = uuid.uuid4().hex[:12]
T0 = 1_700_000_000.0
POLICY = CircuitPolicy(failure_ratio=0.5, min_calls=4, window_seconds=60, open_for_seconds=30, half_open_probes=2)


@pytest.fixture(scope="module")
def selector(client: redis.Redis) -> Selector:
    return Selector(client)


def _names(*labels: str) -> list[str]:
    token = uuid.uuid4().hex[:6]
    return [f"{label}-{RUN}-{token}" for label in labels]


def _accounts(names: list[str], rate: Rate | None = None) -> dict[str, ProviderAccount]:
    return {n: ProviderAccount(n, "fake", {}, rate=rate, circuit=POLICY) for n in names}


def _scope() -> str:
    return f"rule-{RUN}-{uuid.uuid4().hex[:6]}"


def _open(selector: Selector, name: str, now: float = T0) -> None:
    for _ in range(POLICY.min_calls):
        selector.record(name, False, POLICY, now)
    assert selector.state(name, now) == "open"


def test_round_robin_follows_nginx_order(selector: Selector) -> None:
    """Weights 5/1/1 give nginx's a a b a c a a, the same again in the next round."""
    a, b, c = _names("a", "b", "c")
    tiers = ((Candidate(a, 5), Candidate(b, 1), Candidate(c, 1)),)
    scope, accounts = _scope(), _accounts([a, b, c])
    picks = [selector.choose(tiers, scope=scope, exclude=set(), accounts=accounts, now=T0).provider
             for _ in range(14)]
    assert picks == [a, a, b, a, c, a, a] * 2


@settings(max_examples=40, deadline=None)
@given(weights=st.lists(st.integers(1, 12), min_size=1, max_size=5))
def test_shared_round_robin_equals_the_pure_step(selector: Selector, weights: list[int]) -> None:
    """For any weights, the Redis picks are the pure nginx sequence: each candidate exactly weight times a round."""
    names = _names(*(f"p{i}" for i in range(len(weights))))
    tiers = (tuple(Candidate(n, w) for n, w in zip(names, weights)),)
    scope, accounts = _scope(), _accounts(names)
    current = tuple(0 for _ in weights)
    picks = []
    for _ in range(sum(weights)):
        expected, current = swrr_step(weights, current)
        choice = selector.choose(tiers, scope=scope, exclude=set(), accounts=accounts, now=T0)
        assert choice.provider == names[expected]
        assert choice.tier == 1
        picks.append(choice.provider)
    assert Counter(picks) == dict(zip(names, weights))


def test_two_selectors_on_two_connections_share_the_rotation(selector: Selector) -> None:
    """Alternating between two processes' selectors still yields one nginx sequence."""
    other = Selector(connect_test_redis())
    a, b, c = _names("a", "b", "c")
    tiers = ((Candidate(a, 5), Candidate(b, 1), Candidate(c, 1)),)
    scope, accounts = _scope(), _accounts([a, b, c])
    picks = [(selector if i % 2 else other).choose(tiers, scope=scope, exclude=set(), accounts=accounts,
                                                  now=T0).provider for i in range(7)]
    assert picks == [a, a, b, a, c, a, a]
    other.redis.close()


def test_concurrent_choices_keep_exact_shares(selector: Selector) -> None:
    """Eight threads picking concurrently still give each candidate exactly its weight per round."""
    a, b = _names("a", "b")
    tiers = ((Candidate(a, 3), Candidate(b, 1)),)
    scope, accounts = _scope(), _accounts([a, b])
    picks: list[str | None] = []
    lock = threading.Lock()

    def pick() -> None:
        for _ in range(10):
            provider = selector.choose(tiers, scope=scope, exclude=set(), accounts=accounts, now=T0).provider
            with lock:
                picks.append(provider)

    threads = [threading.Thread(target=pick) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert Counter(picks) == {a: 60, b: 20}


def test_failover_to_tier_two_when_tier_one_is_excluded(selector: Selector) -> None:
    """When every tier-1 account already failed for this task, tier 2 delivers."""
    a, b, backup = _names("a", "b", "backup")
    tiers = ((Candidate(a, 80), Candidate(b, 20)), (Candidate(backup),))
    choice = selector.choose(tiers, scope=_scope(), exclude={a, b}, accounts=_accounts([a, b, backup]), now=T0)
    assert (choice.provider, choice.tier) == (backup, 2)
    assert f"{a}: already failed" in choice.reason and f"{b}: already failed" in choice.reason


def test_failover_to_tier_two_when_tier_one_circuits_are_open(selector: Selector) -> None:
    """Accounts with an open breaker are skipped; the next tier takes over; one excluded, one open works too."""
    a, b, backup = _names("a", "b", "backup")
    _open(selector, a)
    tiers = ((Candidate(a), Candidate(b)), (Candidate(backup),))
    accounts = _accounts([a, b, backup])
    assert selector.choose(tiers, scope=_scope(), exclude=set(), accounts=accounts, now=T0).provider == b
    choice = selector.choose(tiers, scope=_scope(), exclude={b}, accounts=accounts, now=T0)
    assert (choice.provider, choice.tier) == (backup, 2)
    assert f"{a}: circuit open" in choice.reason
    tier_one = selector.choose(tiers, scope=_scope(), exclude={backup}, accounts=accounts, now=T0)
    assert tier_one.provider == b and backup not in tier_one.reason  # tiers never reached are not reported


def test_nobody_left_gives_none_and_says_why(selector: Selector) -> None:
    """With every account excluded, open or unknown, there is no choice and the reason lists each one."""
    a, b, ghost = _names("a", "b", "ghost")
    _open(selector, b)
    choice = selector.choose(((Candidate(a),), (Candidate(b), Candidate(ghost))), scope=_scope(), exclude={a},
                             accounts=_accounts([a, b]), now=T0)
    assert (choice.provider, choice.tier) == (None, 0)
    for part in (f"{a}: already failed", f"{b}: circuit open", f"{ghost}: not configured"):
        assert part in choice.reason


def test_accounts_over_their_rate_are_skipped(selector: Selector) -> None:
    """An account that used up its send rate in this window is passed over until the next window."""
    fast, spare = _names("fast", "spare")
    accounts = {**_accounts([fast], Rate(2, 10)), **_accounts([spare])}
    tiers = ((Candidate(fast),), (Candidate(spare),))
    start, scope = window_bucket(T0, 10) * 10.0, _scope()
    picks = [selector.choose(tiers, scope=scope, exclude=set(), accounts=accounts, now=start + 1) for _ in range(3)]
    assert [p.provider for p in picks] == [fast, fast, spare]
    assert f"{fast}: over its send rate" in picks[2].reason
    assert selector.choose(tiers, scope=scope, exclude=set(), accounts=accounts, now=start + 10).provider == fast


def test_duplicate_or_weightless_candidates_are_refused(selector: Selector) -> None:
    """A tier naming an account twice or with a weight below 1 is a clear error."""
    (a,) = _names("a")
    with pytest.raises(ValueError):
        selector.choose(((Candidate(a), Candidate(a)),), scope=_scope(), exclude=set(), accounts=_accounts([a]),
                        now=T0)
    with pytest.raises(ValueError):
        selector.choose(((Candidate(a, 0),),), scope=_scope(), exclude=set(), accounts=_accounts([a]), now=T0)


def test_breaker_lifecycle(selector: Selector) -> None:
    """Closed -> open after failures -> half-open after open_for -> limited probes -> closed after successes."""
    (a,) = _names("a")
    tiers, accounts, scope = ((Candidate(a),),), _accounts([a]), _scope()
    for ok in (True, True, True, False, False):
        assert selector.record(a, ok, POLICY, T0 + 1) == "closed"  # 2 of 5 failed: under the 0.5 ratio
    assert selector.record(a, False, POLICY, T0 + 2) == "open"
    assert selector.choose(tiers, scope=scope, exclude=set(), accounts=accounts, now=T0 + 10).provider is None
    later = T0 + 2 + POLICY.open_for_seconds
    assert selector.state(a, later) == "half_open"
    probes = [selector.choose(tiers, scope=scope, exclude=set(), accounts=accounts, now=later).provider
              for _ in range(3)]
    assert probes == [a, a, None]
    assert selector.record(a, True, POLICY, later + 1) == "half_open"
    assert selector.record(a, True, POLICY, later + 1) == "closed"
    assert selector.state(a, later + 1) == "closed"
    assert selector.breaker(a) == Breaker()


def test_an_account_failure_opens_the_circuit_at_once_and_a_recovered_account_closes_it(selector: Selector) -> None:
    """One account-class failure (no balance) opens a closed circuit at once, whatever min_calls; after open_for
    the half-open probes that succeed (the account topped up) close it again."""
    (a,) = _names("a")
    tiers, accounts, scope = ((Candidate(a),),), _accounts([a]), _scope()
    assert selector.record(a, True, POLICY, T0) == "closed"
    assert selector.record(a, call_health("account"), POLICY, T0 + 1) == "open"
    assert selector.choose(tiers, scope=scope, exclude=set(), accounts=accounts, now=T0 + 2).provider is None
    later = T0 + 1 + POLICY.open_for_seconds
    assert selector.choose(tiers, scope=scope, exclude=set(), accounts=accounts, now=later).provider == a
    assert selector.record(a, call_health("ok"), POLICY, later + 1) == "half_open"
    assert selector.record(a, call_health("ok"), POLICY, later + 1) == "closed"


def test_a_probe_that_finds_the_account_still_broken_reopens(selector: Selector) -> None:
    """A half-open probe answered with an account failure opens the circuit again for open_for."""
    (a,) = _names("a")
    _open(selector, a)
    later = T0 + POLICY.open_for_seconds
    selector.choose(((Candidate(a),),), scope=_scope(), exclude=set(), accounts=_accounts([a]), now=later)
    assert selector.record(a, TRIP, POLICY, later + 1) == "open"
    assert selector.state(a, later + 1 + POLICY.open_for_seconds - 0.5) == "open"


def test_receiver_content_and_window_failures_never_count_against_the_account(selector: Selector) -> None:
    """However many bad numbers, rejected templates or closed windows, the circuit stays closed; transient and
    throttled calls still count as failures."""
    (a,) = _names("a")
    for error_class in ("receiver", "content", "window") * 5:
        assert selector.record(a, call_health(error_class), POLICY, T0) == "closed"
    assert [call_health(c) for c in ("throttled", "transient", "unknown")] == [False, False, False]


def test_failed_probe_reopens(selector: Selector) -> None:
    """A failed probe opens the circuit again for another open_for."""
    (a,) = _names("a")
    _open(selector, a)
    later = T0 + POLICY.open_for_seconds
    choice = selector.choose(((Candidate(a),),), scope=_scope(), exclude=set(), accounts=_accounts([a]), now=later)
    assert choice.provider == a
    assert selector.record(a, False, POLICY, later + 1) == "open"
    assert selector.state(a, later + 1 + POLICY.open_for_seconds - 0.5) == "open"
    assert selector.state(a, later + 1 + POLICY.open_for_seconds) == "half_open"


def test_probe_slots_are_shared_by_concurrent_choosers(selector: Selector) -> None:
    """Eight threads racing for a half-open account get exactly half_open_probes probes between them."""
    (a,) = _names("a")
    _open(selector, a)
    later = T0 + POLICY.open_for_seconds
    tiers, accounts, scope = ((Candidate(a),),), _accounts([a]), _scope()
    granted: list[str | None] = []
    lock = threading.Lock()

    def race() -> None:
        provider = selector.choose(tiers, scope=scope, exclude=set(), accounts=accounts, now=later).provider
        with lock:
            granted.append(provider)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert granted.count(a) == POLICY.half_open_probes
    assert granted.count(None) == 8 - POLICY.half_open_probes


_steps = st.sampled_from([0.0, 0.0, 0.0, 0.25, 1.0, 3.0, 10.0, 41.0]) | st.floats(0, 20)
_events = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.sampled_from([True, False, TRIP]), _steps),
        st.tuples(st.just("choose"), st.just(True), _steps),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events=_events, policy=st.builds(
    CircuitPolicy,
    failure_ratio=st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]),
    min_calls=st.integers(1, 6),
    window_seconds=st.integers(1, 60),
    open_for_seconds=st.integers(1, 40),
    half_open_probes=st.integers(1, 3),
))
def test_redis_breaker_equals_the_pure_model(selector: Selector, events: list[tuple[str, bool, float]],
                                             policy: CircuitPolicy) -> None:
    """For any sequence of outcomes, choices and clock steps, the stored breaker equals the pure functions'."""
    (a,) = _names("a")
    accounts = {a: ProviderAccount(a, "fake", {}, circuit=policy)}
    model, now = Breaker(), T0
    for kind, ok, step in events:
        now += step
        if kind == "record":
            model = breaker_record(model, ok, policy, now)
            assert selector.record(a, ok, policy, now) == model.state
        else:
            admitted = breaker_admits(model, policy, now)
            if admitted:
                model = breaker_acquire(model, policy, now)
            choice = selector.choose(((Candidate(a),),), scope=f"model-{a}", exclude=set(), accounts=accounts,
                                     now=now)
            assert choice.provider == (a if admitted else None)
        assert selector.breaker(a) == model
        assert selector.state(a, now) == breaker_state(model, now)


def test_choose_many_in_one_round_trip_equals_choosing_one_by_one(selector: Selector) -> None:
    """A pipelined batch of choices follows the same nginx order, skips the same excluded accounts,
    and answers an empty candidate list with no provider."""
    from engine.selector import ChoiceRequest

    a, b, c = _names("a", "b", "c")
    tiers = ((Candidate(a, 5), Candidate(b, 1), Candidate(c, 1)),)
    accounts = _accounts([a, b, c])
    request = ChoiceRequest(tiers, _scope(), frozenset(), accounts)
    picks = [choice.provider for choice in selector.choose_many([request] * 7, T0)]
    assert picks == [a, a, b, a, c, a, a]
    excluded = ChoiceRequest(tiers, _scope(), frozenset({a, b, c}), accounts)
    nothing = ChoiceRequest((), _scope(), frozenset(), accounts)
    assert [choice.provider for choice in selector.choose_many([excluded, nothing, request], T0)] == [None, None, a]


def test_record_many_counts_like_recording_one_by_one(selector: Selector) -> None:
    """Recording a batch of outcomes in one round trip opens the circuit exactly as single records do."""
    (name,) = _names("batched")
    states = selector.record_many([(name, False, POLICY)] * POLICY.min_calls, T0)
    assert states[-1] == "open" and set(states[:-1]) == {"closed"}
    assert selector.record_many([], T0) == []


@settings(max_examples=60, deadline=None)
@given(outcomes=st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([True, False, TRIP])), max_size=30),
       step=st.floats(0, 40))
def test_record_many_equals_recording_one_by_one(selector: Selector, outcomes: list[tuple[int, bool]],
                                                 step: float) -> None:
    """Outcomes of several accounts interleaved in one batch leave every breaker, and answer every state,
    as recording them one at a time would."""
    batched, single = _names("x", "y", "z"), _names("x", "y", "z")
    for names in (batched, single):  # a history first, so half-open and open breakers are batched too
        selector.record_many([(names[0], False, POLICY)] * POLICY.min_calls, T0)
    states = selector.record_many([(batched[i], ok, POLICY) for i, ok in outcomes], T0 + step)
    assert states == [selector.record(single[i], ok, POLICY, T0 + step) for i, ok in outcomes]
    assert [selector.breaker(name) for name in batched] == [selector.breaker(name) for name in single]


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([True, False, TRIP])),
                                max_size=6), max_size=8))
def test_lingering_counts_end_as_recording_one_by_one(client: redis.Redis,
                                                       chunks: list[list[tuple[int, bool]]]) -> None:
    """Outcomes counted with a linger, successes waiting for a flush and failures counted at once, leave every
    breaker as recording them one at a time would."""
    lingering, counted, single = Selector(client, linger=60), _names("x", "y", "z"), _names("x", "y", "z")
    for chunk in chunks:
        lingering.count_many([(counted[i], ok, POLICY) for i, ok in chunk], T0)
        for i, ok in chunk:
            lingering.record(single[i], ok, POLICY, T0)
    lingering.flush(T0)
    assert [lingering.breaker(name) for name in counted] == [lingering.breaker(name) for name in single]


def _counted(selector: Selector, name: str) -> tuple[int, int]:
    """Calls and failures in the breaker's window."""
    slots = [slot for slot in selector.breaker(name).ring if slot is not None]
    return sum(slot.calls for slot in slots), sum(slot.failures for slot in slots)


def test_successes_linger_until_a_failure_a_flush_or_their_time(client: redis.Redis) -> None:
    """With a linger, successes reach Redis only with a failure (before it), a flush, or a count made once the
    oldest waited the linger; without one, at once."""
    lingering = Selector(client, linger=1.0)
    a, b, c = _names("a", "b", "c")
    lingering.count_many([(a, True, POLICY)] * 2, T0)
    assert _counted(lingering, a) == (0, 0)
    lingering.count_many([(a, False, POLICY)], T0 + 0.1)
    assert _counted(lingering, a) == (3, 1)
    lingering.count_many([(b, True, POLICY)], T0)
    lingering.count_many([(b, True, POLICY)], T0 + 0.5)
    assert _counted(lingering, b) == (0, 0)
    lingering.count_many([(b, True, POLICY)], T0 + 1.0)
    assert _counted(lingering, b) == (3, 0)
    lingering.count_many([(c, True, POLICY)], T0)
    lingering.flush(T0)
    assert _counted(lingering, c) == (1, 0)
    Selector(client).count_many([(c, True, POLICY)], T0)
    assert _counted(lingering, c) == (2, 0)


def test_choose_many_groups_equal_choosing_group_by_group(selector: Selector) -> None:
    """Interleaved requests of two routes get, route by route, the picks of choosing one after another."""
    from engine.selector import ChoiceRequest

    def routes() -> tuple[ChoiceRequest, ChoiceRequest]:
        a, b = _names("a", "b")
        accounts = _accounts([a, b])
        return (ChoiceRequest(((Candidate(a, 2), Candidate(b, 1)),), _scope(), frozenset(), accounts),
                ChoiceRequest(((Candidate(a, 1), Candidate(b, 3)),), _scope(), frozenset(), accounts))

    first, second = routes()
    batched = [choice.provider for choice in selector.choose_many([first, second] * 3, T0)]
    first, second = routes()
    alone = [selector.choose_many([request], T0)[0].provider for request in [first] * 3 + [second] * 3]
    assert [name.split("-")[0] for name in batched[0::2] + batched[1::2]] == [name.split("-")[0] for name in alone]
    assert [name.split("-")[0] for name in alone] == ["a", "b", "a", "b", "a", "b"]


def test_batches_survive_a_redis_that_forgot_its_scripts(selector: Selector, client: redis.Redis) -> None:
    """After SCRIPT FLUSH (a restarted Redis) a pipelined batch loads the scripts again and runs once."""
    (name,) = _names("flushed")
    client.script_flush()
    failures = [(name, False, POLICY)] * (POLICY.min_calls - 1)
    assert selector.record_many(failures, T0) == ["closed"] * len(failures)  # run twice, they would open it
    assert selector.record(name, False, POLICY, T0) == "open"
