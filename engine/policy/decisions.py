"""Decisions the rule set hands to the edges: frozen values naming the rule and rule-set version."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

DEFAULT_RULE = "(default)"

RoutingAction = Literal["route", "defer", "reject"]
FailureAction = Literal["retry", "switch_provider", "fail", "alert", "ignore", "defer"]
FAILURE_ACTIONS: tuple[FailureAction, ...] = ("retry", "switch_provider", "fail", "alert", "ignore", "defer")
Scene = Literal["send_failure", "callback_failure", "callback_timeout", "unknown_outcome"]
OnExceed = Literal["reject", "defer"]
SCENES: tuple[Scene, ...] = ("send_failure", "callback_failure", "callback_timeout", "unknown_outcome")
# What a failed call means, whatever the vendor: the `error_class` fact field takes one of these.
ERROR_CLASSES = ("ok", "throttled", "transient", "receiver", "content", "account", "window", "unknown")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider account that may deliver, with its smooth-weighted-round-robin weight."""

    provider: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Who may deliver a message: ordered tiers of candidates, or defer, or reject."""

    action: RoutingAction
    rule: str
    version: str
    tiers: tuple[tuple[Candidate, ...], ...] = ()
    defer_until: datetime | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class QuotaCheck:
    """One matching quota rule: the counter key (without the window), its limit and window.

    `utc_offset` (seconds east of UTC in the rule set's time zone) aligns windows to local time,
    so a daily quota starts again at local midnight.
    """

    rule: str
    key: str
    limit: int
    window_seconds: int
    on_exceed: OnExceed = "reject"
    utc_offset: int = 0


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """All quota rules that apply to a fact; every one of them must have room."""

    checks: tuple[QuotaCheck, ...]
    version: str


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """Where an alert goes and how loud it is."""

    webhook: str
    level: str = "warning"


@dataclass(frozen=True, slots=True)
class FailureDecision:
    """What to do after a failed send or a failed / missing delivery report.

    `retry` and `switch_provider` carry the delay before the next attempt; `exhausted` is set
    when the matched rule wanted to retry but its budget is spent, in which case `action` is
    already `fail`. `alert` always ends the task failed after the alert is sent; any other action
    may carry an `alert` too, sent before the action is carried out. `defer` waits
    until `defer_until` (`delay_seconds` from the decision's `now`) and sends again, not counted
    as a try.
    """

    action: FailureAction
    rule: str
    version: str
    scene: Scene
    delay_seconds: float = 0.0
    exclude_current: bool = True
    exhausted: bool = False
    alert: AlertSpec | None = None
    reasons: tuple[str, ...] = field(default=())
    overruled: str = ""  # why the gateway turned the rules' retry into `fail` (see `bound_failure`)
    defer_until: datetime | None = None


def counted_attempts(attempts: int, deferred: int) -> int:
    """The attempts that count against the failure rules' limits: every one but those a deferral answered (a send
    refused for its time window is not a try); at least one once any attempt was made."""
    return max(attempts - deferred, min(attempts, 1))


def bound_failure(decision: FailureDecision, *, decided: int, limit: int, deduplicates: bool) -> FailureDecision:
    """The rules' decision, unless carrying it out could loop or send twice: then `fail`, saying why.

    A task whose failures were already decided `limit` times fails whatever the rules say (a deferral too: a
    window that never opens must not loop). An unknown outcome is
    resent only to the same account, under the same idempotency key, where its vendor drops a repeated key
    (`deduplicates`); anywhere else a resend might deliver the message twice, so the task fails.
    """
    if decision.action not in ("retry", "switch_provider", "defer"):
        return decision
    if decided >= limit:
        return replace(decision, action="fail", overruled=f"gave up after {decided} failure decisions "
                                                           f"(MPUSH_MAX_FAILURE_DECISIONS={limit})")
    if decision.scene == "unknown_outcome" and not deduplicates:
        return replace(decision, action="fail", overruled="outcome unknown and the vendor does not drop repeated "
                                                           "idempotency keys: not resent")
    return decision
