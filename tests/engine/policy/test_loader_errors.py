"""Every defect in tests/testdata/rules/defects is reported with its exact file:line: path: message."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.engine.policy.rulekit import TYPES

from engine.policy import RuleError
from engine.policy.loader import load_dir, load_texts

DEFECTS = Path(__file__).parents[2] / "testdata" / "rules" / "defects"

EXPECTED = {
    "bad_duration": ["{f}:11: quotas[0].per: bad duration '1 week' (use e.g. 500ms, 5s, 5m, 1h, 1d)"],
    "bad_rate": ["{f}:10: providers[1].rate: bad rate 'fast' (use e.g. 100/s, 6000/m, 5/10s)"],
    "bad_regex": [
        "{f}:10: failures[0].when.error_message.matches: bad regular expression '(': "
        "missing ): ( (RE2 syntax: no backreferences or lookaround)"
    ],
    "config_choice": ["{f}:9: providers[1].config.mode: must be one of text, markdown, got 'fax'"],
    "config_key": ["{f}:9: providers[1].config.colour: unknown key (known: id, key, mode, port, verbose)"],
    "duplicate_key": ["{f}:9: routing[0].name: duplicate key"],
    "duplicate_name": ["{f}:10: routing[1].name: duplicate routing name 'all' (first defined at {f}:8)"],
    "int64_overflow": ["{f}:10: failures[0].when.attempt.lt: 9223372036854775808 is outside the 64-bit integer range"],
    "many": [
        "{f}:4: channels[0].template: unknown template 'nope'",
        "{f}:5: channels[1].type: must be one of sms, email, wecom, dingtalk, webhook, got 'fax'",
        "{f}:7: quotas[0].key[0]: must be one of app, channel, channel_type, template, receiver, "
        "receiver.country, receiver.domain, provider, got 'user'",
        "{f}:7: quotas[0].limit: must be between 1 and 9007199254740992, got 0",
    ],
    "negative_priority": ["{f}:9: routing[0].priority: must be between 0 and 65535, got -1"],
    "placeholder": ["{f}:2: templates[0].text: placeholder {{cdoe}} is not in variables ['code']"],
    "secret_default": [
        "{f}:11: providers[1].config.key: a secret must not have a ${{NAME:-default}}; set the environment variable"
    ],
    "syntax_error": ["{f}:11: YAML syntax error: did not find expected ',' or ']'"],
    "two_outcomes": ["{f}:8: routing[0]: give exactly one of providers, defer_until, reject (got providers, reject)"],
    "undefined_channel": ["{f}:9: routing[0].when.channel: unknown channel 'nope'"],
    "undefined_provider": ["{f}:10: routing[0].providers[0].use: unknown provider account 'nope'"],
    "undefined_template": ["{f}:4: channels[0].template: unknown template 'nope'"],
    "unknown_field": [
        "{f}:9: routing[0].when.user: unknown field (fields: app, channel, channel_type, template, receiver, "
        "receiver.country, receiver.domain, tags, priority, attempt, provider, error_code, error_class, error_message, "
        "local_hour, weekday; combinators: all, any, not)"
    ],
    "unknown_key": [
        "{f}:4: channels[0].colour: unknown key (expected one of: id, name, type, template, tags, description)"
    ],
    "unknown_operator": [
        "{f}:10: failures[0].when.attempt.le: unknown operator 'le' (did you mean 'lte'?) for integer field attempt "
        "(operators: eq, in, not_in, lt, lte, gt, gte)"
    ],
    "unknown_section": [
        "{f}:7: routes: unknown section (did you mean 'routing'?) (sections: settings, channels, templates, providers, routing, quotas, failures)"
    ],
    "unknown_type": ["{f}:2: providers[0].type: unknown provider type 'carrier_pigeon' (known: console, fake, sms_x)"],
    "unset_env": ["{f}:11: providers[1].config.key: environment variable SECRET_X is not set"],
    "wrong_type": ["{f}:4: channels[0].id: must be an integer, got str"],
}


def test_every_defect_file_has_an_expectation() -> None:
    """The table and the directory list the same defects, so no file goes unchecked."""
    assert sorted(p.stem for p in DEFECTS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_defect_is_reported_with_file_and_line(name: str) -> None:
    """Loading the defect raises RuleError whose text is exactly the expected file:line lines."""
    path = DEFECTS / f"{name}.yaml"
    with pytest.raises(RuleError) as caught:
        load_texts({str(path): path.read_text(encoding="utf-8")}, env={"K": "k"}, provider_types=TYPES, backend="reference")
    assert str(caught.value).splitlines() == [line.format(f=path) for line in EXPECTED[name]]


def test_issues_carry_their_parts() -> None:
    """RuleError.issues hold file, line, path and message separately, for the admin API."""
    path = DEFECTS / "undefined_channel.yaml"
    with pytest.raises(RuleError) as caught:
        load_texts({str(path): path.read_text(encoding="utf-8")}, env={}, provider_types=TYPES)
    (issue,) = caught.value.issues
    assert (issue.file, issue.line, issue.path, issue.message) == (str(path), 9, "routing[0].when.channel", "unknown channel 'nope'")


def test_errors_from_several_files_are_reported_together(tmp_path: Path) -> None:
    """Problems in two files of one directory come back in one RuleError, sorted by file."""
    for name in ("unknown_key", "bad_rate"):
        (tmp_path / f"{name}.yaml").write_text((DEFECTS / f"{name}.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(RuleError) as caught:
        load_dir(tmp_path, env={}, provider_types=TYPES, backend="reference")
    files = [issue.file for issue in caught.value.issues]
    assert any(f.endswith("bad_rate.yaml") for f in files) and any(f.endswith("unknown_key.yaml") for f in files)
    assert files == sorted(files)


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    """A directory without rule files is refused rather than loaded as an empty policy."""
    with pytest.raises(RuleError, match="no \\*.yaml rule files"):
        load_dir(tmp_path, env={}, provider_types=TYPES)
