"""Compiled shapes of the policy sections: routing, quota and failure rules, and settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time

from .conditions import ALWAYS, Condition
from .decisions import AlertSpec, Candidate, FailureAction, OnExceed, Scene

DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_REGION = "CN"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a rule was written: file, line and key path."""

    file: str
    line: int
    path: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Settings:
    timezone: str = DEFAULT_TIMEZONE
    default_region: str = DEFAULT_REGION


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """Route to tiers of candidates, or defer until a local time, or reject with a reason."""

    name: str
    origin: Origin
    priority: int = 0
    when: Condition = ALWAYS
    tiers: tuple[tuple[Candidate, ...], ...] = ()
    defer_until: time | None = None
    reject: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """A counter keyed by fact fields, with a limit per window."""

    name: str
    origin: Origin
    key: tuple[str, ...]
    limit: int
    window_seconds: int
    priority: int = 0
    when: Condition = ALWAYS
    on_exceed: OnExceed = "reject"
    description: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry while attempt <= max, waiting delay * backoff**(attempt-1), at most max_delay."""

    max: int = 3
    delay: float = 2.0
    backoff: float = 2.0
    max_delay: float = 60.0

    def delay_for(self, attempt: int) -> float:
        """The wait before the next try after `attempt` attempts: finite, never above max_delay."""
        if self.delay <= 0 or self.backoff <= 1:
            return min(self.delay, self.max_delay)
        try:
            delay = self.delay * float(self.backoff) ** max(attempt - 1, 0)
        except OverflowError:  # backoff ** attempt past the float range: far above any max_delay
            return self.max_delay
        return min(delay, self.max_delay)


@dataclass(frozen=True, slots=True)
class SwitchPolicy:
    """Resend on another provider while attempt <= max, after `delay` seconds."""

    max: int = 1
    delay: float = 1.0
    exclude_current: bool = True


@dataclass(frozen=True, slots=True)
class DeferPolicy:
    """Wait for the next local `until` (in `timezone`, the rule set's when empty), or for `delay` seconds."""

    until: time | None = None
    timezone: str = ""
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class FailureRule:
    name: str
    origin: Origin
    scene: Scene
    action: FailureAction
    priority: int = 0
    when: Condition = ALWAYS
    retry: RetryPolicy = RetryPolicy()
    switch: SwitchPolicy = SwitchPolicy()
    alert: AlertSpec | None = None
    defer: DeferPolicy = DeferPolicy()
    description: str = ""


Rule = RoutingRule | QuotaRule | FailureRule
