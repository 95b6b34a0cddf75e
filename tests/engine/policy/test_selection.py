"""Pure selection arithmetic: fixed windows, smooth weighted round robin, circuit-breaker transitions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.policy.model import CircuitPolicy
from engine.policy.selection import (
    Breaker,
    breaker_acquire,
    breaker_admits,
    breaker_record,
    breaker_state,
    counter_ttl,
    swrr_step,
    window_bucket,
    window_end,
    window_totals,
)

POLICY = CircuitPolicy(failure_ratio=0.5, min_calls=4, window_seconds=60, open_for_seconds=30, half_open_probes=2)
T0 = 1_700_000_000.0


@settings(max_examples=200)
@given(now=st.floats(min_value=0, max_value=4e9), window=st.integers(1, 10**6))
def test_window_bucket_contains_now_and_ends_at_the_next_boundary(now: float, window: int) -> None:
    """`now` lies in [bucket*window, window_end) and windows are aligned to the epoch."""
    bucket = window_bucket(now, window)
    assert bucket * window <= now < window_end(bucket, window)
    assert window_end(bucket, window) == (bucket + 1) * window


def test_counter_ttl_outlives_the_window_briefly() -> None:
    """Counters live a little past their window: 1s -> 2s, 1h -> 1h + 60s."""
    assert counter_ttl(1) == 2
    assert counter_ttl(3600) == 3660


def _picks(weights: list[int], count: int) -> list[int]:
    current = tuple(0 for _ in weights)
    picks = []
    for _ in range(count):
        picked, current = swrr_step(weights, current)
        picks.append(picked)
    return picks


def test_swrr_reproduces_nginx_sequence() -> None:
    """Weights a=5, b=1, c=1 give nginx's documented order a a b a c a a."""
    assert "".join("abc"[i] for i in _picks([5, 1, 1], 7)) == "aabacaa"


def test_swrr_first_wins_ties() -> None:
    """Equal weights alternate starting with the first candidate."""
    assert _picks([1, 1, 1], 6) == [0, 1, 2, 0, 1, 2]


def test_swrr_rejects_mismatched_input() -> None:
    """A current list of the wrong length, or no candidates, is a clear error."""
    with pytest.raises(ValueError):
        swrr_step([1, 2], [0])
    with pytest.raises(ValueError):
        swrr_step([], [])


@settings(max_examples=300)
@given(weights=st.lists(st.integers(1, 20), min_size=1, max_size=6))
def test_swrr_is_exact_per_round_and_periodic(weights: list[int]) -> None:
    """Each round of sum(weights) picks gives every candidate exactly its weight; the current values always
    sum to zero and are all back to zero after each round, so every round repeats the same order."""
    total = sum(weights)
    current = tuple(0 for _ in weights)
    rounds: list[list[int]] = []
    for _ in range(2):
        picks = []
        for _ in range(total):
            picked, current = swrr_step(weights, current)
            picks.append(picked)
            assert sum(current) == 0
        assert current == tuple(0 for _ in weights)
        assert [picks.count(i) for i in range(len(weights))] == weights
        rounds.append(picks)
    assert rounds[0] == rounds[1]


def _record(breaker: Breaker, outcomes: str, now: float) -> Breaker:
    for outcome in outcomes:
        breaker = breaker_record(breaker, outcome == "+", POLICY, now)
    return breaker


def test_breaker_opens_at_min_calls_and_failure_ratio() -> None:
    """Failures below min_calls keep it closed; the call that reaches min_calls at the ratio opens it."""
    breaker = _record(Breaker(), "--+", T0)
    assert breaker_state(breaker, T0) == "closed"
    breaker = _record(breaker, "+", T0)
    assert breaker_state(breaker, T0) == "open"
    assert breaker.open_until == T0 + POLICY.open_for_seconds
    assert not breaker_admits(breaker, POLICY, T0 + 29.9)


def test_breaker_stays_closed_below_the_ratio() -> None:
    """Three successes to one failure is under a 0.5 ratio."""
    breaker = _record(Breaker(), "+-++++", T0)
    assert breaker_state(breaker, T0) == "closed"
    assert window_totals(breaker.ring, POLICY, T0) == (6, 1)


def test_breaker_forgets_calls_older_than_the_window() -> None:
    """Failures a full window ago no longer count towards opening."""
    breaker = _record(Breaker(), "---", T0)
    breaker = _record(breaker, "-", T0 + 61)
    assert breaker_state(breaker, T0 + 61) == "closed"
    assert window_totals(breaker.ring, POLICY, T0 + 61) == (1, 1)


def _opened() -> Breaker:
    return _record(Breaker(), "----", T0)


def test_open_breaker_half_opens_after_open_for_and_limits_probes() -> None:
    """After open_for the breaker admits exactly half_open_probes concurrent probes."""
    breaker = _opened()
    later = T0 + POLICY.open_for_seconds
    assert breaker_state(breaker, later) == "half_open"
    for _ in range(POLICY.half_open_probes):
        assert breaker_admits(breaker, POLICY, later)
        breaker = breaker_acquire(breaker, POLICY, later)
    assert breaker.state == "half_open"
    assert not breaker_admits(breaker, POLICY, later + 1)


def test_successful_probes_close_the_breaker() -> None:
    """Every probe succeeding closes it with a fresh window."""
    later = T0 + POLICY.open_for_seconds
    breaker = breaker_acquire(breaker_acquire(_opened(), POLICY, later), POLICY, later)
    breaker = breaker_record(breaker, True, POLICY, later + 1)
    assert breaker_state(breaker, later + 1) == "half_open"
    breaker = breaker_record(breaker, True, POLICY, later + 1)
    assert breaker == Breaker()


def test_failed_probe_reopens_the_breaker() -> None:
    """One failed probe opens it again for open_for from the failure."""
    later = T0 + POLICY.open_for_seconds
    breaker = breaker_record(breaker_acquire(_opened(), POLICY, later), False, POLICY, later + 2)
    assert breaker_state(breaker, later + 2) == "open"
    assert breaker.open_until == later + 2 + POLICY.open_for_seconds


def test_results_arriving_while_open_are_ignored() -> None:
    """Outcomes of calls sent before the circuit opened change nothing."""
    breaker = _opened()
    assert breaker_record(breaker, True, POLICY, T0 + 1) == breaker
    assert breaker_record(breaker, False, POLICY, T0 + 1) == breaker


def test_probe_slots_of_lost_probes_are_freed_after_open_for() -> None:
    """Probes that never report do not keep the circuit half-open forever."""
    later = T0 + POLICY.open_for_seconds
    breaker = breaker_acquire(breaker_acquire(_opened(), POLICY, later), POLICY, later)
    assert not breaker_admits(breaker, POLICY, later + POLICY.open_for_seconds - 1)
    assert breaker_admits(breaker, POLICY, later + POLICY.open_for_seconds)
    fresh = breaker_acquire(breaker, POLICY, later + POLICY.open_for_seconds)
    assert (fresh.probes_taken, fresh.probe_since) == (1, later + POLICY.open_for_seconds)


def test_closed_breaker_acquire_changes_nothing() -> None:
    """A closed breaker admits every call and stores nothing for it."""
    breaker = _record(Breaker(), "+", T0)
    assert breaker_admits(breaker, POLICY, T0)
    assert breaker_acquire(breaker, POLICY, T0) == breaker


def test_failures_in_a_row_open_a_breaker_whose_window_is_full_of_successes() -> None:
    """After many successes, min_calls failures in a row open the circuit at once, though the window's failure
    ratio is still far below the threshold; a success between them starts the count again."""
    breaker = _record(Breaker(), "+" * 200, T0)
    breaker = _record(breaker, "---+---", T0 + 1)
    assert breaker_state(breaker, T0 + 1) == "closed"
    breaker = _record(breaker, "-", T0 + 1)
    assert breaker_state(breaker, T0 + 1) == "open"
