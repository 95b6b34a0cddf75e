"""Provider selection: tiers, smooth weighted round robin, per-account rate and circuit breakers, in Redis.

One `choose` is one Lua script: it walks the tiers, drops accounts whose breaker is open
(or half-open with every probe slot taken) or that are over their send rate, picks among the
rest by smooth weighted round robin with the `current` values shared by every process, and
takes the chosen account's rate unit and probe slot — all atomically. The steps are the pure
functions of `engine/policy/selection.py`; the tests hold the scripts equal to them.

A call counts by its error class (`selection.call_health`): throttled, transient and unknown calls
are failures; an account failure (no balance, no permission, bad credentials) trips the circuit at
once; an answer about one receiver, the content or a time window is a success, or one bad number
could open the circuit for everybody.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from dataclasses import dataclass

import redis
from redis.commands.core import Script

from engine import keys
from engine.policy.decisions import Candidate
from engine.policy.model import CircuitPolicy, ProviderAccount
from engine.policy.selection import (
    SLOTS, TRIP, Breaker, BreakerState, Health, Slot, breaker_state, counter_ttl, window_bucket,
)
from engine.scripting import pipelined

STATE_TTL = 86_400  # idle breakers and round-robin positions are forgotten after a day
TALLY_MAX = 256  # successes waiting to be counted at most, whatever their age

CallCount = tuple[str, Health, CircuitPolicy]  # an account's name, how its call counts, its breaker's policy

_BREAKER_LUA = f"local SLOTS = {SLOTS}\n" + """
local function num(x) return string.format('%.17g', x) end

local function load(key)
  local f = redis.call('HMGET', key, 'state', 'open_until', 'probe_since', 'probes_taken', 'probes_ok')
  return {state = f[1] or 'closed', open_until = tonumber(f[2] or '0'), probe_since = tonumber(f[3] or '0'),
          taken = tonumber(f[4] or '0'), ok = tonumber(f[5] or '0')}
end

local function status(b, now)
  if b.state == 'open' and now >= b.open_until then return 'half_open' end
  return b.state
end

local function admits(b, now, open_for, probes)
  local s = status(b, now)
  if s == 'closed' then return true end
  if s == 'open' then return false end
  if b.state == 'open' then return true end
  return b.taken < probes or now >= b.probe_since + open_for
end

local function open(key, until_)
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', 'open', 'open_until', num(until_))
end

local function acquire(key, b, now, open_for, probes)
  if status(b, now) ~= 'half_open' then return end
  if b.state == 'open' or (b.taken >= probes and now >= b.probe_since + open_for) then
    redis.call('DEL', key)
    redis.call('HSET', key, 'state', 'half_open', 'probe_since', num(now), 'probes_taken', 1)
  else
    redis.call('HSET', key, 'probes_taken', b.taken + 1)
  end
end
"""

# KEYS: breaker, rate per candidate, then one round-robin hash per tier.
# ARGV: now, candidates, tiers, then per candidate: name, weight, tier, rate limit, rate ttl, open_for, probes;
# then the state ttl and how many messages to choose for, one after another. Returns one choice per message.
_CHOOSE = _BREAKER_LUA + """
local now, n, tiers = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, times = ARGV[#ARGV - 1], tonumber(ARGV[#ARGV])
local positions = {}  -- round-robin hash -> field -> current value: read once, written back once at the end

local function current_values(swrr, fields)
  local known = positions[swrr]
  if known == nil then known = {} positions[swrr] = known end
  local missing = {}
  for _, f in ipairs(fields) do if known[f] == nil then missing[#missing + 1] = f end end
  if #missing > 0 then
    local stored = redis.call('HMGET', swrr, unpack(missing))
    for j, f in ipairs(missing) do known[f] = tonumber(stored[j]) or 0 end
  end
  return known
end

local function choose()
local verdicts = {}
for i = 1, n do verdicts[i] = '' end
for t = 1, tiers do
  local eligible, breakers = {}, {}
  for i = 1, n do
    local a = 3 + (i - 1) * 7
    if tonumber(ARGV[a + 3]) == t then
      local b = load(KEYS[2 * i - 1])
      local limit = tonumber(ARGV[a + 4])
      if not admits(b, now, tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])) then
        verdicts[i] = status(b, now)
      elseif limit > 0 and tonumber(redis.call('GET', KEYS[2 * i]) or '0') >= limit then
        verdicts[i] = 'rate'
      else
        verdicts[i] = 'ok'
        eligible[#eligible + 1] = i
        breakers[i] = b
      end
    end
  end
  if #eligible > 0 then
    local swrr = KEYS[2 * n + t]
    local fields = {}
    for j, i in ipairs(eligible) do fields[j] = ARGV[3 + (i - 1) * 7 + 1] end
    local known = current_values(swrr, fields)
    local current, total, best = {}, 0, 1
    for j, i in ipairs(eligible) do
      local weight = tonumber(ARGV[3 + (i - 1) * 7 + 2])
      current[j] = known[fields[j]] + weight
      total = total + weight
      if current[j] > current[best] then best = j end
    end
    current[best] = current[best] - total
    for j = 1, #eligible do known[fields[j]] = current[j] end
    local i = eligible[best]
    local a = 3 + (i - 1) * 7
    acquire(KEYS[2 * i - 1], breakers[i], now, tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]))
    if tonumber(ARGV[a + 4]) > 0 and redis.call('INCR', KEYS[2 * i]) == 1 then
      redis.call('EXPIRE', KEYS[2 * i], ARGV[a + 5])
    end
    return {ARGV[a + 1], t, verdicts}
  end
end
return {false, 0, verdicts}
end

local choices = {}
for m = 1, times do choices[m] = choose() end
for swrr, known in pairs(positions) do
  local pairs_ = {}
  for f, value in pairs(known) do
    pairs_[#pairs_ + 1] = f
    pairs_[#pairs_ + 1] = string.format('%d', value)
  end
  redis.call('HSET', swrr, unpack(pairs_))
  redis.call('EXPIRE', swrr, ttl)
end
return choices
"""

# KEYS: breaker. ARGV: now, failure_ratio, min_calls, window_seconds, open_for, probes, ttl, then the
# outcomes (1 ok / 0 failed / t trip: open at once) in the order they happened. Returns the state after each.
# The window's slots are read once and the current one written once per call, however many outcomes it carries.
_RECORD = _BREAKER_LUA + """
local key, now = KEYS[1], tonumber(ARGV[1])
local ratio, min_calls, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local open_for, probes, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local bucket = math.floor(now / (window / SLOTS))
local field = 'w' .. (bucket % SLOTS)
local slots, streak, dirty, touched = nil, 0, false, false

local function read_slots()
  local names = {}
  for s = 0, SLOTS - 1 do names[s + 1] = 'w' .. s end
  names[SLOTS + 1] = 'streak'
  local stored = redis.call('HMGET', key, unpack(names))
  streak = tonumber(stored[SLOTS + 1] or '0')
  slots = {}
  for s = 0, SLOTS - 1 do
    local b, c, f = string.match(stored[s + 1] or '', '^(-?%d+):(%d+):(%d+)$')
    if b ~= nil then slots['w' .. s] = {tonumber(b), tonumber(c), tonumber(f)} end
  end
end

local function cleared()  -- the key was deleted: no window left, nothing pending to write
  slots, streak, dirty = {}, 0, false
end

local function record(ok, trip)
local b = load(key)
if b.state == 'open' then return 'open' end
touched = true
if trip then
  open(key, now + open_for)
  cleared()
  return 'open'
end
if b.state == 'half_open' then
  if not ok then
    open(key, now + open_for)
    cleared()
  elseif b.ok + 1 >= probes then
    redis.call('DEL', key)
    cleared()
    return 'closed'
  else
    redis.call('HSET', key, 'probes_ok', b.ok + 1)
  end
  return ok and 'half_open' or 'open'
end
if slots == nil then read_slots() end
local current = slots[field]
if current == nil or current[1] ~= bucket then current = {bucket, 0, 0} end
slots[field] = {bucket, current[2] + 1, current[3] + (ok and 0 or 1)}
if ok then streak = 0 else streak = streak + 1 end
dirty = true
local calls, failures = 0, 0
for _, slot in pairs(slots) do
  if slot[1] > bucket - SLOTS and slot[1] <= bucket then calls, failures = calls + slot[2], failures + slot[3] end
end
if math.min(streak, failures) >= min_calls or (calls >= min_calls and failures >= ratio * calls) then
  open(key, now + open_for)
  cleared()
  return 'open'
end
return 'closed'
end

local states = {}
for i = 8, #ARGV do states[i - 7] = record(ARGV[i] == '1', ARGV[i] == 't') end
if dirty then
  local slot = slots[field]
  redis.call('HSET', key, field, string.format('%d:%d:%d', slot[1], slot[2], slot[3]), 'streak', streak)
end
if touched then redis.call('EXPIRE', key, ttl) end
return states
"""

_VERDICTS = {"open": "circuit open", "half_open": "half-open, probe slots busy", "rate": "over its send rate"}


@dataclass(frozen=True, slots=True)
class Choice:
    """The provider account to use (None when none is available), its tier (1-based, 0 if none), and why."""

    provider: str | None
    tier: int
    reason: str


@dataclass(frozen=True, slots=True)
class ChoiceRequest:
    """One message's choice: the routing decision's tiers, its scope, the accounts it may not use."""

    tiers: Sequence[Sequence[Candidate]]
    scope: str
    exclude: Collection[str]
    accounts: Mapping[str, ProviderAccount]


@dataclass(frozen=True, slots=True)
class _ChooseCall:
    """The choose script's keys and arguments for one request, and what was skipped before calling it."""

    keys: list[str]
    args: list[str | int | float]
    entries: list[tuple[int, Candidate, ProviderAccount]]
    skipped: list[tuple[int, str]]

    def choice(self, reply: Sequence[object] | None) -> Choice:
        if reply is None:
            return Choice(None, 0, _reason(None, 0, self.skipped))
        provider, tier, verdicts = reply
        skipped = list(self.skipped)
        for (number, candidate, _), verdict in zip(self.entries, verdicts):  # type: ignore[call-overload]
            if _text(verdict) in _VERDICTS:
                skipped.append((number, f"{candidate.provider}: {_VERDICTS[_text(verdict)]}"))
        return Choice(_text(provider) if provider else None, int(tier), _reason(provider, int(tier), skipped))


def _choose_call(request: ChoiceRequest, now: float) -> _ChooseCall:
    tiers = request.tiers
    _checked_tiers(tiers)
    skipped: list[tuple[int, str]] = []
    entries: list[tuple[int, Candidate, ProviderAccount]] = []
    for number, tier in enumerate(tiers, 1):
        for candidate in tier:
            account = request.accounts.get(candidate.provider)
            if candidate.provider in request.exclude:
                skipped.append((number, f"{candidate.provider}: already failed"))
            elif account is None:
                skipped.append((number, f"{candidate.provider}: not configured"))
            else:
                entries.append((number, candidate, account))
    script_keys: list[str] = []
    args: list[str | int | float] = [now, len(entries), len(tiers)]
    for number, candidate, account in entries:
        rate = account.rate
        bucket = window_bucket(now, rate.per_seconds) if rate else 0
        script_keys += [keys.breaker(candidate.provider), keys.provider_rate(candidate.provider, bucket)]
        args += [
            candidate.provider,
            candidate.weight,
            number,
            rate.count if rate else 0,
            counter_ttl(rate.per_seconds) if rate else 0,
            account.circuit.open_for_seconds,
            account.circuit.half_open_probes,
        ]
    script_keys += [keys.swrr(f"{request.scope}#{number}") for number in range(1, len(tiers) + 1)]
    args.append(STATE_TTL)
    return _ChooseCall(script_keys, args, entries, skipped)


def _breaker_from(fields: Mapping[str, str]) -> Breaker:
    ring: list[Slot | None] = [None] * SLOTS
    for i in range(SLOTS):
        raw = fields.get(f"w{i}")
        if raw:
            bucket, calls, failures = map(int, raw.split(":"))
            ring[i] = Slot(bucket, calls, failures)
    return Breaker(
        state=fields.get("state", "closed"),  # type: ignore[arg-type]
        open_until=float(fields.get("open_until", 0.0)),
        probe_since=float(fields.get("probe_since", 0.0)),
        probes_taken=int(fields.get("probes_taken", 0)),
        probes_ok=int(fields.get("probes_ok", 0)),
        ring=tuple(ring),
        streak=int(fields.get("streak", 0)),
    )


def _checked_tiers(tiers: Sequence[Sequence[Candidate]]) -> None:
    for number, tier in enumerate(tiers, 1):
        names = [c.provider for c in tier]
        if len(set(names)) != len(names):
            raise ValueError(f"tier {number} names a provider twice: {names}")
        if any(c.weight < 1 for c in tier):
            raise ValueError(f"tier {number} has a weight below 1: {[(c.provider, c.weight) for c in tier]}")


class Selector:
    """Chooses provider accounts and keeps their circuit breakers, shared through Redis."""

    def __init__(self, client: redis.Redis, *, linger: float = 0.0) -> None:
        self.redis = client
        self.linger = linger
        self._choose = client.register_script(_CHOOSE)
        self._record = client.register_script(_RECORD)
        self._tally: list[CallCount] = []
        self._tally_since = 0.0
        self._tally_lock = threading.Lock()
        self._flushing = threading.Lock()

    def choose(
        self,
        tiers: Sequence[Sequence[Candidate]],
        *,
        scope: str,
        exclude: Collection[str],
        accounts: Mapping[str, ProviderAccount],
        now: float,
    ) -> Choice:
        """Walk the tiers in order and pick by weighted round robin among the usable accounts of the first
        tier that has any. `scope` (the routing rule's name) keys the round-robin positions."""
        return self.choose_many([ChoiceRequest(tiers, scope, exclude, accounts)], now)[0]

    def choose_many(self, requests: Sequence[ChoiceRequest], now: float) -> list[Choice]:
        """`choose` for several messages in one round trip. Identical requests (the usual batch: one route)
        are chosen for in one script call; Redis runs the choices one after another, so the result is
        exactly that of choosing for each group's messages in turn, groups in order of appearance."""
        made: dict[tuple[int, str, frozenset[str], int], _ChooseCall] = {}  # the same tiers and accounts objects
        calls = []
        for request in requests:
            same = (id(request.tiers), request.scope, frozenset(request.exclude), id(request.accounts))
            call = made.get(same)
            if call is None:
                call = made[same] = _choose_call(request, now)
            calls.append(call)
        groups: dict[tuple[tuple[str, ...], tuple[object, ...]], list[int]] = {}
        for index, call in enumerate(calls):
            if call.entries:
                groups.setdefault((tuple(call.keys), tuple(call.args)), []).append(index)
        replies: dict[int, Sequence[object] | None] = {}
        batches = self._pipelined(self._choose, [(list(keys), [*args, len(members)])
                                                 for (keys, args), members in groups.items()])
        for members, batch in zip(groups.values(), batches):
            replies.update(zip(members, batch))
        return [call.choice(replies.get(index)) for index, call in enumerate(calls)]

    def record(self, provider: str, ok: Health, policy: CircuitPolicy, now: float) -> BreakerState:
        """Count one call's outcome (`selection.call_health`). Returns the state after it."""
        return self.record_many([(provider, ok, policy)], now)[0]

    def record_many(self, outcomes: Sequence[CallCount], now: float) -> list[BreakerState]:
        """`record` for several calls in one round trip, applied in order: one script call per account."""
        groups: dict[tuple[str, CircuitPolicy], list[int]] = {}
        for index, (provider, _, policy) in enumerate(outcomes):
            groups.setdefault((provider, policy), []).append(index)
        calls = [([keys.breaker(provider)], [now, policy.failure_ratio, policy.min_calls, policy.window_seconds,
                                             policy.open_for_seconds, policy.half_open_probes, STATE_TTL,
                                             *(_health_arg(outcomes[i][1]) for i in members)])
                 for (provider, policy), members in groups.items()]
        states: dict[int, BreakerState] = {}
        for members, replies in zip(groups.values(), self._pipelined(self._record, calls)):
            states.update(zip(members, map(_text, replies)))  # type: ignore[arg-type]
        return [states[index] for index in range(len(outcomes))]

    def count_many(self, outcomes: Sequence[CallCount], now: float) -> None:
        """Count calls against their accounts' breakers, in order, with those of other threads in one round trip.

        A failure is counted at once (after the successes before it), so a circuit opens as soon as it would
        have. Successes wait up to `linger` seconds for a `flush` (a worker's reader makes one per stream read),
        so under load the counts cost a round trip per read rather than per call; should the process die
        meanwhile, those successes go uncounted, which only makes the breaker's ratio a little more wary.
        """
        with self._tally_lock:
            if not self._tally:
                self._tally_since = now
            self._tally.extend(outcomes)
            due = (now - self._tally_since >= self.linger or len(self._tally) >= TALLY_MAX
                   or any(health is not True for _, health, _ in outcomes))
        if due:
            self.flush(now)

    def flush(self, now: float) -> None:
        """Count the calls still waiting (see `count_many`); callers arriving meanwhile wait and go next, so
        counts reach Redis in the order they were made. Redis' error is raised, and those counts are lost."""
        with self._flushing:
            with self._tally_lock:
                tally, self._tally = self._tally, []
            if tally:
                self.record_many(tally, now)

    def _pipelined(self, script: Script, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run `script` once per call in one round trip, in order (every key shares the route tag: one slot)."""
        return pipelined(self.redis, script, calls)

    def breaker(self, provider: str) -> Breaker:
        """The stored breaker of one account (counts included), for health and admin views."""
        return _breaker_from({_text(k): _text(v) for k, v in self.redis.hgetall(keys.breaker(provider)).items()})

    def state(self, provider: str, now: float) -> BreakerState:
        """closed / open / half_open as of `now`."""
        return breaker_state(self.breaker(provider), now)


def _health_arg(ok: Health) -> str:
    return "t" if ok is TRIP else "1" if ok else "0"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _reason(provider: bytes | str | None, tier: int, skipped: list[tuple[int, str]]) -> str:
    """Why this account, listing the accounts passed over in the tiers that were looked at."""
    looked_at = [(number, why) for number, why in skipped if not provider or number <= tier]
    unavailable = "; ".join(why for _, why in sorted(looked_at, key=lambda item: item[0]))
    if not provider:
        return f"no provider available ({unavailable})" if unavailable else "no provider available"
    chosen = f"{_text(provider)} from tier {tier} by weighted round robin"
    return f"{chosen}; skipped {unavailable}" if unavailable else chosen
