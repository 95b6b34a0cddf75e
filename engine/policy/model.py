"""Compiled shapes of the catalogue sections of a rule set: channels, templates, provider accounts.

These are what the rest of the gateway reads; the raw YAML shape lives in `schema.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CHANNEL_TYPES = ("sms", "email", "wecom", "dingtalk", "webhook")
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(text: str, params: Mapping[str, str]) -> str:
    """Replace `{name}` with params[name]; unknown placeholders stay as written (reference rule)."""
    return PLACEHOLDER.sub(lambda m: str(params.get(m.group(1), m.group(0))), text)


@dataclass(frozen=True, slots=True)
class Template:
    """A system template: required variables and the text (plus subject / html for email)."""

    name: str
    variables: tuple[str, ...]
    text: str
    subject: str = ""
    html: str | None = None

    def missing(self, params: Mapping[str, str]) -> list[str]:
        return [v for v in self.variables if v not in params]


@dataclass(frozen=True, slots=True)
class Channel:
    """What a client names in a send request (by id or by name)."""

    id: int
    name: str
    type: str
    template: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderTemplate:
    """The vendor-side template of one system template on one account.

    `params` maps each vendor variable to a value template rendered with the system params
    ("{code}" copies a variable, "Acme" is a fixed value); its order is the vendor's order
    (Tencent `{1}{2}`, Zrwinfo `##`-joined).
    """

    code: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` calls per `per_seconds`."""

    count: int
    per_seconds: int


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    """Open after `failure_ratio` of at least `min_calls` calls failed within `window_seconds`;
    stay open `open_for_seconds`; then let `half_open_probes` calls through."""

    failure_ratio: float = 0.5
    min_calls: int = 20
    window_seconds: int = 60
    open_for_seconds: int = 30
    half_open_probes: int = 3


@dataclass(frozen=True, slots=True)
class ProviderAccount:
    """One provider account: its registry type, resolved config and per-template mapping."""

    name: str
    type: str
    config: Mapping[str, Any]
    templates: Mapping[str, ProviderTemplate] = field(default_factory=dict)
    signatures: Mapping[str, str] = field(default_factory=dict)  # alias -> vendor sign name
    rate: Rate | None = None
    circuit: CircuitPolicy = field(default_factory=CircuitPolicy)
    callback: Mapping[str, Any] = field(default_factory=dict)  # token / allow_ips for unsigned vendors

    def template_for(self, template: str) -> ProviderTemplate | None:
        return self.templates.get(template)


@dataclass(frozen=True, slots=True)
class RuleSetVersion:
    """Content hash of the canonical rule set, plus the git commit when the dir is in a work tree."""

    digest: str
    commit: str = ""
    dirty: bool = False

    def __str__(self) -> str:
        if not self.commit:
            return self.digest
        return f"{self.digest}@{self.commit[:12]}{'-dirty' if self.dirty else ''}"
