"""Error classes: one vocabulary shared by provider results and failure rules, with a default per outcome."""

from __future__ import annotations

import pytest

from engine.policy.decisions import ERROR_CLASSES as RULE_CLASSES
from providers.base import ERROR_CLASSES, Outcome, SendResult


def test_providers_and_rules_speak_the_same_classes() -> None:
    """The classes a provider may return are exactly those a failure rule may name."""
    assert ERROR_CLASSES == RULE_CLASSES


@pytest.mark.parametrize(("outcome", "expected"), [(Outcome.OK, "ok"), (Outcome.RETRYABLE, "transient"),
                                                   (Outcome.PERMANENT, "content")])
def test_a_result_without_a_class_takes_its_outcomes_usual_class(outcome: Outcome, expected: str) -> None:
    """A provider that names no class gets the usual one of its outcome."""
    assert SendResult(outcome).error_class == expected


def test_a_named_class_is_kept_and_an_unknown_one_refused() -> None:
    """An explicit class wins over the outcome's; a word outside the vocabulary is a provider bug."""
    assert SendResult(Outcome.RETRYABLE, error_class="throttled").error_class == "throttled"
    with pytest.raises(ValueError, match="unknown error class"):
        SendResult(Outcome.PERMANENT, error_class="bogus")
