"""Loading: ${ENV}, disabled accounts, provider templates, settings, versions, git revisions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.engine.policy.rulekit import CATALOGUE, TYPES, load

from engine.policy import RuleError
from engine.policy.loader import load_dir, load_git
from engine.policy.model import ProviderTemplate

VENDOR = """
  - name: vendor
    type: sms_x
    enabled: ${ENABLE_VENDOR:-false}
    config: {id: "${VENDOR_ID}", key: "${VENDOR_KEY}", port: "${VENDOR_PORT:-25}", verbose: "${VENDOR_VERBOSE:-true}"}
    templates:
      code: TPL_1
      promo: {code: TPL_2, params: {content: "{text}", brand: Acme}}
routing:
  - name: sms
    providers: [{use: vendor}, {use: console, tier: 2}]
  - name: vendor-only
    when: {channel: promo}
    priority: 10
    providers: [{use: vendor}]
"""
ENV = {"ENABLE_VENDOR": "true", "VENDOR_ID": "id-1", "VENDOR_KEY": "s3cret", "VENDOR_VERBOSE": "false"}


def test_enabled_account_resolves_env_and_coerces_types() -> None:
    """${NAME} values are substituted and whole-reference values take the schema's int / bool type."""
    ruleset = load(VENDOR, env=ENV)
    vendor = ruleset.providers["vendor"]
    assert vendor.config == {"id": "id-1", "key": "s3cret", "port": 25, "verbose": False}


def test_bare_template_code_maps_variables_in_declared_order() -> None:
    """A bare vendor code maps each system variable to itself; a mapping keeps fixed values."""
    vendor = load(VENDOR, env=ENV).providers["vendor"]
    assert vendor.templates["code"] == ProviderTemplate("TPL_1", {"code": "{code}"})
    assert vendor.templates["promo"] == ProviderTemplate("TPL_2", {"content": "{text}", "brand": "Acme"})


def test_disabled_account_is_left_out_without_reading_its_env() -> None:
    """With enabled false, unset ${ENV} of the account are not errors and routes drop it."""
    ruleset = load(VENDOR, env={})
    assert "vendor" not in ruleset.providers
    assert [r.name for r in ruleset.rules("routing")] == ["sms"]
    assert [[c.provider for c in tier] for tier in ruleset.rules("routing")[0].tiers] == [["console"]]


def test_route_left_without_candidates_becomes_a_note() -> None:
    """A route whose every provider is disabled is dropped and reported as a note, not an error."""
    (note,) = load(VENDOR, env={}).notes
    assert note.path == "routing[1]" and "every provider of this route is disabled" in note.message


def test_enabled_must_read_as_a_boolean() -> None:
    """An env value for `enabled` that is not a boolean word is an error naming the variable, not its value."""
    with pytest.raises(RuleError, match=r"providers\[3\].enabled: must be true or false, got the value of \$\{ENABLE_VENDOR\}") as caught:
        load(VENDOR, env={**ENV, "ENABLE_VENDOR": "maybe"})
    assert "maybe" not in str(caught.value)


def test_demo_types_may_default_secrets() -> None:
    """console / fake accounts may give ${NAME:-default} values; they hold no real secret."""
    text = "  - {name: demo, type: fake, config: {}}\nrouting:\n  - {name: r, providers: [{use: demo}]}\n"
    assert "demo" in load(text).providers


def test_env_inside_a_longer_string_is_substituted() -> None:
    """A reference inside an account's config text is replaced in place and stays a string."""
    text = VENDOR.replace('id: "${VENDOR_ID}"', 'id: "acct-${VENDOR_ID}-x"')
    assert load(text, env=ENV).providers["vendor"].config["id"] == "acct-id-1-x"


def test_settings_set_zone_and_region() -> None:
    """settings: timezone changes local_hour; default_region changes how bare numbers are read."""
    from tests.engine.policy.rulekit import NOON

    ruleset = load("settings: {timezone: Europe/London, default_region: GB}\n" + "routing:\n  - {name: r, providers: [{use: a}]}\n")
    fact = ruleset.fact(now=NOON, app="x", channel=ruleset.channels["sms"], receiver="07400123456")
    assert fact.fields["local_hour"] == 5 and fact.fields["receiver.country"] == "GB"


def test_unknown_zone_is_an_error() -> None:
    """A time zone the tz database does not know is reported at its line."""
    with pytest.raises(RuleError, match=r"rules.yaml:\d+: settings.timezone: unknown time zone 'Mars/Olympus'"):
        load("settings: {timezone: Mars/Olympus}\n")


def test_version_is_a_content_hash() -> None:
    """Same content gives the same version; a changed rule gives another."""
    one = load("routing:\n  - {name: r, providers: [{use: a}]}\n", backend="reference")
    two = load("routing:\n  - {name: r, providers: [{use: a}]}\n", backend="reference")
    three = load("routing:\n  - {name: r, providers: [{use: b}]}\n", backend="reference")
    assert one.version == two.version != three.version
    assert len(one.version.digest) == 12


def test_version_changes_when_an_account_is_enabled() -> None:
    """Enabling an account through the environment changes decisions, so it changes the version."""
    assert load(VENDOR, env={}).version != load(VENDOR, env=ENV).version


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.test")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "all.yaml").write_text(CATALOGUE + "routing:\n  - {name: first, providers: [{use: a}]}\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


def test_version_names_the_commit_and_dirty_state(repo: Path) -> None:
    """In a git work tree the version carries the commit, and -dirty once a file changes."""
    head = _git(repo, "rev-parse", "HEAD")
    clean = load_dir(repo / "rules", env={}, provider_types=TYPES)
    assert (clean.version.commit, clean.version.dirty) == (head, False)
    (repo / "rules" / "all.yaml").write_text(CATALOGUE + "routing:\n  - {name: second, providers: [{use: a}]}\n")
    dirty = load_dir(repo / "rules", env={}, provider_types=TYPES)
    assert dirty.version.dirty and str(dirty.version).endswith("-dirty")


def test_load_git_reads_an_old_revision(repo: Path) -> None:
    """load_git reads the files as committed at REV, not as they are on disk."""
    (repo / "rules" / "all.yaml").write_text(CATALOGUE + "routing:\n  - {name: second, providers: [{use: a}]}\n")
    _git(repo, "commit", "-qam", "two")
    old = load_git(repo, "HEAD~1", "rules", env={}, provider_types=TYPES)
    new = load_git(repo, "HEAD", "rules", env={}, provider_types=TYPES)
    assert [r.name for r in old.rules("routing")] == ["first"]
    assert [r.name for r in new.rules("routing")] == ["second"]
    assert old.version.commit == _git(repo, "rev-parse", "HEAD~1")


def test_load_git_reports_a_bad_revision(repo: Path) -> None:
    """An unknown revision is a RuleError, not a crash."""
    with pytest.raises(RuleError, match="git rev-parse"):
        load_git(repo, "no-such-rev", "rules", env={}, provider_types=TYPES)


def test_shipped_rules_load_without_any_environment() -> None:
    """The shipped rules/ load on a fresh machine: vendor accounts off, console and fake on."""
    from providers import registry

    ruleset = load_dir(Path(__file__).parents[3] / "rules", env={}, provider_types=registry.config_schemas())
    assert set(ruleset.providers) == {"console", "fake"}
    required = {"verify-sms", "notice-email", "ops-wecom", "ops-dingtalk", "hook", "marketing-sms", "fake-sms"}
    assert required <= set(ruleset.channels)
    assert sorted(c.id for c in ruleset.channels.values()) == list(range(1, len(ruleset.channels) + 1))
    for rule in ruleset.rules("routing"):
        assert not rule.tiers or rule.tiers[-1][-1].provider in ("console", "fake")



def test_disabled_accounts_are_named_by_the_rule_set() -> None:
    """An account switched off in its file is not usable, and the rule set still names it (the console lists it)."""
    ruleset = load("""
templates: [{name: code, variables: [code], text: "code {code}"}]
channels: [{id: 1, name: sms, type: sms, template: code}]
providers:
  - {name: live, type: console, config: {}}
  - {name: spare, type: console, config: {}, enabled: false}
routing:
  - {name: r, when: {channel: sms}, providers: [{use: live}]}
""", catalogue=False)
    assert set(ruleset.providers) == {"live"} and ruleset.disabled_providers == {"spare"}
