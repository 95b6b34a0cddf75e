"""Rule files to decisions. Pure: no Redis, no database, no HTTP, no clock, no environment."""

from .decisions import (
    DEFAULT_RULE,
    SCENES,
    AlertSpec,
    Candidate,
    FailureDecision,
    QuotaCheck,
    QuotaDecision,
    RoutingDecision,
    Scene,
)
from .explain import Explanation
from .facts import Fact
from .issues import RuleError, RuleIssue
from .loader import load_dir, load_git, load_texts
from .model import Channel, ProviderAccount, RuleSetVersion, Template
from .ruleset import RuleSet

__all__ = [
    "DEFAULT_RULE",
    "SCENES",
    "AlertSpec",
    "Candidate",
    "Channel",
    "Explanation",
    "Fact",
    "FailureDecision",
    "ProviderAccount",
    "QuotaCheck",
    "QuotaDecision",
    "RoutingDecision",
    "RuleError",
    "RuleIssue",
    "RuleSet",
    "RuleSetVersion",
    "Scene",
    "Template",
    "load_dir",
    "load_git",
    "load_texts",
]
