"""Settings from the environment: typed, and refused with the setting's name when a value is not of its type."""

from __future__ import annotations

import pytest

from engine.settings import Settings, SettingsError


@pytest.mark.parametrize(("text", "value"), [("true", True), ("Yes", True), ("1", True), (" on ", True),
                                             ("false", False), ("NO", False), ("0", False), ("off", False),
                                             ("", False)])
def test_a_boolean_setting_reads_the_usual_spellings(text: str, value: bool) -> None:
    """true/yes/1/on and false/no/0/off in any case, and an empty value as false."""
    assert Settings.from_env({"MPUSH_WATCH_RULES": text}).watch_rules is value


@pytest.mark.parametrize("text", ["ture", "flase", "enabled", "2"])
def test_a_boolean_setting_spelled_neither_way_is_refused(text: str) -> None:
    """A typo is an error naming the setting, not a silent false."""
    with pytest.raises(SettingsError, match=f"setting database_prepare has an invalid value '{text}'"):
        Settings.from_env({"MPUSH_DATABASE_PREPARE": text})


def test_a_number_setting_that_is_not_a_number_is_refused() -> None:
    """MPUSH_DATABASE_POOL_SIZE=many is an error naming the setting."""
    with pytest.raises(SettingsError, match="setting database_pool_size has an invalid value 'many'"):
        Settings.from_env({"MPUSH_DATABASE_POOL_SIZE": "many"})
