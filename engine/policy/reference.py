"""The plain-Python evaluator: the meaning of the rules, the oracle for the network, the fallback."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .conditions import holds
from .rules import Rule


def matching(rules: Sequence[Rule], fields: Mapping[str, Any]) -> list[int]:
    """Positions (priority order) of every rule whose condition holds for the fields."""
    return [i for i, rule in enumerate(rules) if holds(rule.when, fields)]
