"""Pure arithmetic of selection and limits: fixed windows, smooth weighted round robin, circuit breakers.

Values in, values out; `now` is always passed in. `engine/limits.py` and `engine/selector.py`
run the same steps atomically inside Redis (Lua), and their tests hold them equal to these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from engine.policy.model import CircuitPolicy

BreakerState = Literal["closed", "open", "half_open"]
# How one call counts for its account's breaker: True a success, False a failure, TRIP a failure that opens the
# circuit at once (the account itself cannot send: no balance, no permission, bad credentials, its quota used up).
TRIP: Literal["trip"] = "trip"
Health = bool | Literal["trip"]

SLOTS = 10  # the breaker's window is counted in this many buckets of window_seconds / SLOTS


# --- fixed windows -----------------------------------------------------------------------------


def window_bucket(now: float, window_seconds: float, utc_offset: int = 0) -> int:
    """The fixed window `now` falls in, windows aligned to the epoch in local time (`utc_offset`)."""
    return math.floor((now + utc_offset) / window_seconds)


def window_end(bucket: int, window_seconds: float, utc_offset: int = 0) -> float:
    """When the window `bucket` is over (and its counter starts again from zero)."""
    return (bucket + 1) * window_seconds - utc_offset


def counter_ttl(window_seconds: int) -> int:
    """How long a window's counter is kept: past its window (clock skew between processes), then cleaned up."""
    return window_seconds + min(window_seconds, 60)


# --- smooth weighted round robin ---------------------------------------------------------------


def swrr_step(weights: Sequence[int], current: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """One pick of nginx's smooth weighted round robin: the picked index and the new `current` values.

    Every candidate gains its weight; the largest (first on ties) wins and pays back the total.
    """
    if len(weights) != len(current) or not weights:
        raise ValueError("swrr_step needs one current value per weight, and at least one")
    raised = [c + w for c, w in zip(current, weights)]
    picked = max(range(len(raised)), key=raised.__getitem__)
    raised[picked] -= sum(weights)
    return picked, tuple(raised)


# --- circuit breaker ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slot:
    """Calls and failures counted in one bucket of the breaker's window."""

    bucket: int
    calls: int
    failures: int


EMPTY_RING: tuple[Slot | None, ...] = (None,) * SLOTS


@dataclass(frozen=True, slots=True)
class Breaker:
    """What is stored for one provider account.

    `state` is the stored state: an `open` breaker becomes half-open by itself once
    `open_until` has passed (see `breaker_state`); the first call let through then stores
    `half_open` with `probe_since`. `ring` holds the closed state's recent counts.
    """

    state: BreakerState = "closed"
    open_until: float = 0.0
    probe_since: float = 0.0
    probes_taken: int = 0
    probes_ok: int = 0
    ring: tuple[Slot | None, ...] = EMPTY_RING
    streak: int = 0  # failures in a row since the last success, while closed


def breaker_state(breaker: Breaker, now: float) -> BreakerState:
    if breaker.state == "open" and now >= breaker.open_until:
        return "half_open"
    return breaker.state


def _probes_stale(breaker: Breaker, policy: CircuitPolicy, now: float) -> bool:
    # Probes that never reported (their worker died) must not keep the circuit half-open forever.
    return now >= breaker.probe_since + policy.open_for_seconds


def breaker_admits(breaker: Breaker, policy: CircuitPolicy, now: float) -> bool:
    """Whether a call may be sent now (without taking a probe slot)."""
    state = breaker_state(breaker, now)
    if state == "closed":
        return True
    if state == "open":
        return False
    if breaker.state == "open":  # the first probe of this half-open period
        return True
    return breaker.probes_taken < policy.half_open_probes or _probes_stale(breaker, policy, now)


def breaker_acquire(breaker: Breaker, policy: CircuitPolicy, now: float) -> Breaker:
    """The breaker after a call it admits was sent: a half-open breaker gives up one probe slot."""
    if breaker_state(breaker, now) != "half_open":
        return breaker
    fresh_round = breaker.state == "open" or (
        breaker.probes_taken >= policy.half_open_probes and _probes_stale(breaker, policy, now)
    )
    if fresh_round:
        return Breaker(state="half_open", probe_since=now, probes_taken=1)
    return replace(breaker, probes_taken=breaker.probes_taken + 1)


def window_totals(ring: Sequence[Slot | None], policy: CircuitPolicy, now: float) -> tuple[int, int]:
    """(calls, failures) within the last `window_seconds`, at bucket granularity."""
    current = window_bucket(now, policy.window_seconds / SLOTS)
    live = [s for s in ring if s is not None and current - SLOTS < s.bucket <= current]
    return sum(s.calls for s in live), sum(s.failures for s in live)


def _counted(ring: tuple[Slot | None, ...], policy: CircuitPolicy, now: float, ok: bool) -> tuple[Slot | None, ...]:
    bucket = window_bucket(now, policy.window_seconds / SLOTS)
    index = bucket % SLOTS
    slot = ring[index]
    if slot is None or slot.bucket != bucket:
        slot = Slot(bucket, 0, 0)
    slots = list(ring)
    slots[index] = Slot(bucket, slot.calls + 1, slot.failures + (0 if ok else 1))
    return tuple(slots)


def call_health(error_class: str) -> Health:
    """How a call of this class counts against its account: an answer about the receiver, the content or the time
    window shows a working account (a success, so one bad number never opens the circuit for everybody); an
    account failure trips it; throttled, transient and unknown calls are failures."""
    if error_class == "account":
        return TRIP
    return error_class in ("ok", "receiver", "content", "window")


def breaker_record(breaker: Breaker, ok: Health, policy: CircuitPolicy, now: float) -> Breaker:
    """The breaker after a call's outcome (see `call_health`).

    Closed: a trip opens it; otherwise count it, and open when at least `min_calls` calls in the
    window failed at `failure_ratio` or more, or the last `min_calls` calls in the window all failed (a
    window full of earlier successes must not keep a failing account in use for seconds). Half-open: any failure opens again;
    `half_open_probes` successes close. Open: outcomes of calls sent before it opened are ignored.
    """
    if breaker.state == "open":
        return breaker
    opened = Breaker(state="open", open_until=now + policy.open_for_seconds)
    if ok is TRIP:
        return opened
    if breaker.state == "half_open":
        if not ok:
            return opened
        if breaker.probes_ok + 1 >= policy.half_open_probes:
            return Breaker()
        return replace(breaker, probes_ok=breaker.probes_ok + 1)
    ring = _counted(breaker.ring, policy, now, ok)
    streak = 0 if ok else breaker.streak + 1
    calls, failures = window_totals(ring, policy, now)
    # the streak's failures still in the window: all of them, or (when it began before) every failure there
    recent_streak = min(streak, failures)
    if recent_streak >= policy.min_calls or (calls >= policy.min_calls and failures >= policy.failure_ratio * calls):
        return opened
    return replace(breaker, ring=ring, streak=streak)
