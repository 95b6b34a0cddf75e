"""Shared helpers for the policy tests: a small provider-type table and a one-file rule set loader."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

from engine.policy import RuleSet
from engine.policy.loader import load_texts
from providers.base import ConfigField

TYPES = {
    "console": {},
    "fake": {},
    "sms_x": {
        "id": ConfigField(),
        "key": ConfigField(secret=True),
        "port": ConfigField(int, required=False, default=1),
        "verbose": ConfigField(bool, required=False, default=False),
        "mode": ConfigField(required=False, default="text", choices=("text", "markdown")),
    },
}
SHANGHAI = ZoneInfo("Asia/Shanghai")
NOON = datetime(2024, 5, 6, 12, 0, tzinfo=SHANGHAI)  # a Monday

MINIMAL = """templates:
  - {name: code, variables: [code], text: "code {code}"}
channels:
  - {id: 1, name: sms, type: sms, template: code}
providers:
  - {name: console, type: console, config: {}}
"""  # the least a rule set needs, as a file of its own beside the one under test
# Ten levels of nine aliases each: 540 bytes that expand to 9^10 values.
BILLION_LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'lol'] * 9)}]\n" for i in range(10))

CATALOGUE = """
templates:
  - {name: code, variables: [code], text: "code {code}"}
  - {name: promo, variables: [text], text: "{text}"}
  - {name: mail, variables: [body], text: "{body}", subject: hi}
channels:
  - {id: 1, name: sms, type: sms, template: code}
  - {id: 2, name: promo, type: sms, template: promo, tags: [marketing]}
  - {id: 3, name: mail, type: email, template: mail}
providers:
  - {name: console, type: console, config: {}}
  - {name: a, type: fake, config: {}}
  - {name: b, type: fake, config: {}}
"""


def load(text: str, *, env: Mapping[str, str] | None = None, backend: str = "network", catalogue: bool = True) -> RuleSet:
    """Load one rule file (the shared catalogue prepended unless told otherwise)."""
    body = CATALOGUE + text if catalogue else text
    return load_texts({"rules.yaml": body}, env=env or {}, provider_types=TYPES, backend=backend)
