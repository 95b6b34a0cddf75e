"""Quota and rate-limit counters in Redis: epoch-aligned fixed windows, checked and counted atomically in Lua."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from engine import keys
from engine.policy.decisions import OnExceed, QuotaCheck
from engine.policy.selection import counter_ttl, window_bucket, window_end

# KEYS: counters. ARGV: cost, limit and ttl per counter. Returns 0, or the 1-based index of the first
# counter without room for its cost — in which case nothing was counted.
_TAKE = """
for i = 1, #KEYS do
  local cost, limit = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  if tonumber(redis.call('GET', KEYS[i]) or '0') + cost > limit then return i end
end
for i = 1, #KEYS do
  local cost = tonumber(ARGV[3 * i - 2])
  if redis.call('INCRBY', KEYS[i], cost) == cost then redis.call('EXPIRE', KEYS[i], ARGV[3 * i]) end
end
return 0
"""

# KEYS: counters. ARGV: cost per counter. Gives back up to that many units, never below zero.
_GIVE_BACK = """
for i = 1, #KEYS do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used > 0 then redis.call('DECRBY', KEYS[i], math.min(used, tonumber(ARGV[i]))) end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a request may proceed; on reject, the first exhausted rule and when its window resets."""

    allowed: bool
    rule: str | None = None
    on_exceed: OnExceed | None = None
    retry_at: float | None = None


ADMITTED = Admission(True)


def counter_key(check: QuotaCheck, now: float) -> str:
    """The Redis counter of one quota rule in the window `now` falls in (per rule, so rules never share)."""
    bucket = window_bucket(now, check.window_seconds, check.utc_offset)
    return keys.quota(f"{check.rule}:{check.window_seconds}:{check.key}", bucket)


def _costs(checks: Sequence[QuotaCheck], cost: int, costs: Sequence[int] | None) -> list[int]:
    """One cost per check (the same `cost` for all unless `costs` names each), validated with the checks."""
    per_check = list(costs) if costs is not None else [cost] * len(checks)
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
        per_check = _costs(checks, cost, costs)
        if not checks:
            return ADMITTED
        args: list[int] = []
        for check, units in zip(checks, per_check):
            args += [units, check.limit, counter_ttl(check.window_seconds)]
        exhausted = int(self._take(keys=[counter_key(c, now) for c in checks], args=args))
        if not exhausted:
            return ADMITTED
        check = checks[exhausted - 1]
        bucket = window_bucket(now, check.window_seconds, check.utc_offset)
        retry_at = window_end(bucket, check.window_seconds, check.utc_offset)
        return Admission(False, check.rule, check.on_exceed, retry_at)

    def refund(
        self, checks: Sequence[QuotaCheck], now: float, cost: int = 1, *, costs: Sequence[int] | None = None
    ) -> None:
        """Give back what `admit(checks, now=now, ...)` took, when the request could not be stored.

        Pass the same `now` and costs as to `admit`, so the units go back to the window they came from.
        """
        per_check = _costs(checks, cost, costs)
        if checks:
            self._give_back(keys=[counter_key(c, now) for c in checks], args=per_check)

    def used(self, check: QuotaCheck, now: float) -> int:
        """Units counted so far in the window `now` falls in."""
        return int(self.redis.get(counter_key(check, now)) or 0)

    def rate_allow(self, app_id: str, limit_per_second: int, now: float) -> bool:
        """One request of an app within its per-second limit (0 = unlimited)."""
        if limit_per_second < 0:
            raise ValueError(f"rate limit must be >= 0, got {limit_per_second}")
        if limit_per_second == 0:
            return True
        key = keys.rate(app_id, window_bucket(now, 1))
        return not int(self._take(keys=[key], args=[1, limit_per_second, counter_ttl(1)]))
