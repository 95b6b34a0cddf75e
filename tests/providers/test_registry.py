"""The provider registry: explicit modules, one per TYPE, lookups with full-sentence errors."""

from __future__ import annotations

import types

import pytest

from engine.policy.model import CHANNEL_TYPES
from providers import registry
from providers.base import validate_config


def test_every_provider_is_registered_under_its_module_name() -> None:
    """All eleven providers are present and each TYPE equals its module name."""
    assert set(registry.PROVIDERS) == {
        "console", "fake", "webhook", "smtp", "aliyun_sms", "tencent_sms", "zrwinfo_sms",
        "wecom_app", "wecom_robot", "dingtalk_work", "dingtalk_robot",
    }
    for name, provider in registry.PROVIDERS.items():
        assert provider.TYPE == name == provider.__name__.rpartition(".")[2]  # type: ignore[attr-defined]


def test_providers_declare_known_channel_types_and_callable_send() -> None:
    """Every provider serves only known channel types and has a send()."""
    for provider in registry.PROVIDERS.values():
        assert provider.CHANNEL_TYPES and provider.CHANNEL_TYPES <= set(CHANNEL_TYPES)
        assert callable(provider.send)


def test_schema_defaults_are_valid_values() -> None:
    """Every optional key's default passes its own schema check."""
    for name, schema in registry.config_schemas().items():
        defaults = {key: spec.default for key, spec in schema.items() if not spec.required}
        problems = [p for p in validate_config(schema, defaults) if p[1] != "required"]
        assert problems == [], (name, problems)


def test_duplicate_type_raises() -> None:
    """Two modules with one TYPE are refused at build time, naming both."""
    first = types.ModuleType("providers.sample")
    second = types.ModuleType("providers.other.sample")
    first.TYPE = second.TYPE = "sample"  # type: ignore[attr-defined]
    with pytest.raises(registry.ProviderRegistryError, match="declared by both providers.sample and providers.other.sample"):
        registry.build([first, second])


def test_type_must_match_module_name() -> None:
    """A module whose TYPE differs from its name is refused."""
    module = types.ModuleType("providers.mail")
    module.TYPE = "smtp"  # type: ignore[attr-defined]
    with pytest.raises(registry.ProviderRegistryError, match="declares TYPE 'smtp'; it must be 'mail'"):
        registry.build([module])


def test_unknown_type_lists_the_known_ones() -> None:
    """get() of an unknown type raises UnknownProvider with a sentence naming the known types."""
    with pytest.raises(registry.UnknownProvider) as caught:
        registry.get("aliyun")
    assert caught.value.name == "aliyun"
    assert str(caught.value).startswith("Unknown provider type 'aliyun'; known types are: aliyun_sms, console,")
    assert str(caught.value).endswith(".")


def test_callback_parsers_exist_only_where_vendors_report() -> None:
    """Reporting providers expose parse_callback; chat and console providers have none."""
    reporting = {name for name in registry.PROVIDERS if registry.callback_parser(name) is not None}
    assert {"fake", "smtp", "aliyun_sms", "tencent_sms", "zrwinfo_sms"} <= reporting
    assert reporting.isdisjoint({"console", "webhook", "wecom_robot", "dingtalk_robot"})


def test_secrets_are_marked() -> None:
    """Credential keys are marked secret so they are redacted everywhere."""
    schemas = registry.config_schemas()
    for provider, key in [("webhook", "secret"), ("smtp", "password"), ("wecom_app", "corp_secret"),
                          ("wecom_robot", "key"), ("dingtalk_work", "app_secret"),
                          ("dingtalk_robot", "access_token"), ("dingtalk_robot", "secret")]:
        assert schemas[provider][key].secret, (provider, key)
