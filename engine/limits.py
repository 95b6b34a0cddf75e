"""Quota and rate-limit counters in Redis: epoch-aligned fixed windows, checked and counted atomically in Lua."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import redis

from engine import keys
from engine.policy.decisions import OnExceed, QuotaCheck
from engine.policy.selection import counter_ttl, window_bucket, window_end

# Takes the units of several requests in order, each all or nothing. KEYS: the counters of every
# request, one request after another. ARGV: the number of requests, then how many counters each
# has, then cost, limit and ttl per counter. Returns per request 0, or the 1-based index of its
# first counter without room for its cost — in which case nothing of that request was counted.
# Counters are taken first and given back on a refusal: an admitted request, the usual case, costs one
# INCRBY a counter (and an EXPIRE for a new one) instead of a GET before it; within the script no one
# else ever sees a counter over its limit.
_TAKE = """
local requests = tonumber(ARGV[1])
local results, k, a = {}, 0, requests + 1
for r = 1, requests do
  local size, failed = tonumber(ARGV[1 + r]), 0
  for i = 1, size do
    local cost, limit = tonumber(ARGV[a + 3 * i - 2]), tonumber(ARGV[a + 3 * i - 1])
    local used = redis.call('INCRBY', KEYS[k + i], cost)
    if used == cost then redis.call('EXPIRE', KEYS[k + i], ARGV[a + 3 * i]) end
    if used > limit then failed = i break end
  end
  for i = 1, failed do redis.call('DECRBY', KEYS[k + i], tonumber(ARGV[a + 3 * i - 2])) end
  results[r], k, a = failed, k + size, a + 3 * size
end
return results
"""

# KEYS: counters. ARGV: cost per counter. Gives back up to that many units; a counter back at zero is deleted
# (a nonce given back leaves no trace, and the next take sets its expiry afresh).
_GIVE_BACK = """
for i = 1, #KEYS do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used <= tonumber(ARGV[i]) then redis.call('DEL', KEYS[i])
  else redis.call('DECRBY', KEYS[i], tonumber(ARGV[i])) end
end
return 0
"""


CallVerdict = Literal["ok", "replay", "rate"]
_CALL_VERDICTS: tuple[CallVerdict, ...] = ("ok", "replay", "rate")  # by the take script's failed counter


class Call(NamedTuple):
    """A signed API call: its nonce may be used once in `nonce_ttl` seconds, its app make `rate_limit` calls a
    second (0 = unlimited)."""

    app_id: str
    nonce: str
    rate_limit: int
    nonce_ttl: int


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a request may proceed; on reject, its call's verdict ("replay" or "rate"), or the first
    exhausted quota rule and when its window resets."""

    allowed: bool
    rule: str | None = None
    on_exceed: OnExceed | None = None
    retry_at: float | None = None
    call: CallVerdict = "ok"


ADMITTED = Admission(True)


def counter_key(check: QuotaCheck, now: float) -> str:
    """The Redis counter of one quota rule in the window `now` falls in (per rule, so rules never share)."""
    bucket = window_bucket(now, check.window_seconds, check.utc_offset)
    return keys.quota(f"{check.rule}:{check.window_seconds}:{check.key}", bucket)


def _per_check(checks: Sequence[QuotaCheck], cost: int, costs: Sequence[int] | None) -> list[int]:
    """One cost per check: the same `cost` for all unless `costs` names each."""
    return list(costs) if costs is not None else [cost] * len(checks)


def _validated(checks: Sequence[QuotaCheck], costs: Sequence[int]) -> list[int]:
    """The costs, once they and the checks are known to make a countable request; ValueError otherwise."""
    per_check = list(costs)
    if len(per_check) != len(checks):
        raise ValueError(f"{len(per_check)} costs for {len(checks)} quota checks")
    if any(c < 1 for c in per_check):
        raise ValueError(f"every cost must be at least 1, got {per_check}")
    for check in checks:
        if check.limit < 0 or check.window_seconds < 1:
            raise ValueError(f"quota {check.rule!r}: limit must be >= 0 and window >= 1s, got {check}")
    names = [(c.rule, c.key, c.window_seconds) for c in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"the same quota counter appears twice: {names}")
    return per_check


class Limits:
    """Quota rules and per-app request rate, counted in Redis (the selector counts per-account send rates)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._take = client.register_script(_TAKE)
        self._give_back = client.register_script(_GIVE_BACK)

    def admit(
        self, checks: Sequence[QuotaCheck], *, now: float, cost: int = 1, costs: Sequence[int] | None = None
    ) -> Admission:
        """Count each check's cost if all of them have room, else count nothing and say which failed.

        `cost` applies to every check; `costs` gives one per check instead (a batch costs a per-app
        quota one unit per receiver, but a per-receiver quota one unit).
        """
        return self.admit_many([(checks, _per_check(checks, cost, costs))], now=now)[0]

    def admit_many(self, requests: Sequence[tuple[Sequence[QuotaCheck], Sequence[int]]], *, now: float,
                   calls: Sequence[Call | None] = ()) -> list[Admission]:
        """`admit` for several requests (their checks and a cost per check) in one round trip: each is
        counted whole or not at all, in order, so a later request sees what the earlier ones took.

        With `calls`, one per request or None, a request's call is counted with its quotas, all or nothing:
        a replay or a call over its rate takes no quota, one over its quota leaves its nonce unused. A call
        whose quota defers it is accepted later, so its nonce and rate are then counted on their own."""
        validated = [(checks, _validated(checks, costs)) for checks, costs in requests]
        calls = list(calls) or [None] * len(requests)
        if len(calls) != len(requests):
            raise ValueError(f"{len(calls)} calls for {len(requests)} requests")
        call_counters = [_call_counters(call, now) if call else [] for call in calls]
        counters = [[*counted_call, *((counter_key(check, now), units, check.limit, counter_ttl(check.window_seconds))
                                      for check, units in zip(checks, costs))]
                    for (checks, costs), counted_call in zip(validated, call_counters)]
        if not any(counters):
            return [ADMITTED] * len(requests)
        admissions = [_verdict(checks, len(counted_call), exhausted, now) for (checks, _), counted_call, exhausted
                      in zip(validated, call_counters, self._take_many(counters))]
        return self._count_deferred_calls(admissions, calls, now)

    def _count_deferred_calls(self, admissions: list[Admission], calls: Sequence[Call | None], now: float
                              ) -> list[Admission]:
        """Count on their own the calls their quotas defer: accepted for later, their nonce is used now."""
        deferred = {index: call for index, (admission, call) in enumerate(zip(admissions, calls))
                    if call is not None and admission.on_exceed == "defer" and not admission.allowed}
        for index, verdict in zip(deferred, self.admit_calls(list(deferred.values()), now)):
            if verdict != "ok":
                admissions[index] = Admission(False, call=verdict)
        return admissions

    def refund(
        self, checks: Sequence[QuotaCheck], now: float, cost: int = 1, *, costs: Sequence[int] | None = None
    ) -> None:
        """Give back what `admit(checks, now=now, ...)` took, when the request could not be stored.

        Pass the same `now` and costs as to `admit`, so the units go back to the window they came from.
        """
        per_check = _validated(checks, _per_check(checks, cost, costs))
        if checks:
            self._give_back(keys=[counter_key(c, now) for c in checks], args=per_check)

    def refund_call(self, call: Call, now: float) -> None:
        """Give back what admitting a signed call took (its nonce, a unit of its app's rate), when the request
        it carried was not stored after all: a client may then send the same signed request again."""
        counters = _call_counters(call, now)
        self._give_back(keys=[key for key, *_ in counters], args=[cost for _, cost, *_ in counters])

    def used(self, check: QuotaCheck, now: float) -> int:
        """Units counted so far in the window `now` falls in."""
        return int(self.redis.get(counter_key(check, now)) or 0)

    def admit_calls(self, calls: Sequence[Call], now: float) -> list[CallVerdict]:
        """Per signed call, in order and in one round trip: "ok" when its nonce is new and its app within its
        rate, both now counted; else "replay" or "rate", and nothing counted: a replay uses no rate, a call
        over the rate leaves its nonce unused."""
        counters = [_call_counters(call, now) for call in calls]
        return [_CALL_VERDICTS[failed] for failed in self._take_many(counters)] if calls else []

    def _take_many(self, requests: list[list[tuple[str, int, int, int]]]) -> list[int]:
        """Run the take script over requests of (counter key, cost, limit, ttl); per request 0 or the
        1-based index of its counter that had no room."""
        counter_keys = [key for counters in requests for key, *_ in counters]
        args: list[int | str] = [len(requests), *(len(counters) for counters in requests)]
        for counters in requests:
            for _, cost, limit, ttl in counters:
                args += [cost, limit, ttl]
        return [int(result) for result in self._take(keys=counter_keys, args=args)]


def _call_counters(call: Call, now: float) -> list[tuple[str, int, int, int]]:
    """The nonce counter (room for one use) and, with a rate limit, the app's counter for this second."""
    if call.rate_limit < 0:
        raise ValueError(f"rate limits must be >= 0, got {call.rate_limit}")
    rate = [(keys.rate(call.app_id, window_bucket(now, 1)), 1, call.rate_limit, counter_ttl(1))] if call.rate_limit else []
    return [(keys.nonce(call.app_id, call.nonce), 1, 1, call.nonce_ttl), *rate]


def _verdict(checks: Sequence[QuotaCheck], call_size: int, exhausted: int, now: float) -> Admission:
    """What the take script said of a request whose first `call_size` counters are its call's."""
    if 0 < exhausted <= call_size:
        return Admission(False, call=_CALL_VERDICTS[exhausted])
    return _admission(checks, exhausted - call_size if exhausted else 0, now)


def _admission(checks: Sequence[QuotaCheck], exhausted: int, now: float) -> Admission:
    """What the take script's answer for one request means: admitted, or which rule refused and until when."""
    if not exhausted:
        return ADMITTED
    check = checks[exhausted - 1]
    bucket = window_bucket(now, check.window_seconds, check.utc_offset)
    return Admission(False, check.rule, check.on_exceed, window_end(bucket, check.window_seconds, check.utc_offset))
