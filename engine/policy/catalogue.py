"""Build the catalogue sections (settings, templates, channels, provider accounts) from parsed items."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from .building import Context, resolve_env
from .issues import Path, suggest
from .model import PLACEHOLDER, Channel, CircuitPolicy, ProviderAccount, ProviderTemplate, Rate, Template
from .rules import DEFAULT_REGION, DEFAULT_TIMEZONE, Settings
from .schema import EnvStr, Located, as_bool, parse_duration, parse_rate, shown

# Provider types whose accounts may carry demo defaults for secrets.
DEMO_TYPES = frozenset({"console", "fake"})


class ConfigFieldLike(Protocol):
    """What the loader reads of a provider's config field (providers.base.ConfigField)."""

    type: type
    required: bool
    secret: bool
    choices: tuple[Any, ...]


ConfigSchema = Mapping[str, ConfigFieldLike]


def build_settings(ctx: Context) -> Settings:
    items = ctx.section("settings")
    for extra in items[1:]:
        ctx.problem(extra, (), "settings may appear in one file only")
    if not items or not isinstance(items[0].value, dict):
        return Settings()
    item, raw = items[0], items[0].value
    timezone, region = raw.get("timezone", DEFAULT_TIMEZONE), raw.get("default_region", DEFAULT_REGION)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        ctx.problem(item, ("timezone",), f"unknown time zone {timezone!r}")
        timezone = DEFAULT_TIMEZONE
    if region not in phonenumbers.SUPPORTED_REGIONS:
        ctx.problem(item, ("default_region",), f"unknown phone region {region!r}")
        region = DEFAULT_REGION
    return Settings(timezone, region)


def build_templates(ctx: Context) -> dict[str, Template]:
    templates: dict[str, Template] = {}
    for item in ctx.unique("templates"):
        raw = item.value
        variables = tuple(raw.get("variables", ()))
        template = Template(raw["name"], variables, raw["text"], raw.get("subject", ""), raw.get("html"))
        for key in ("text", "subject", "html"):
            for name in PLACEHOLDER.findall(raw.get(key) or ""):
                if name not in variables:
                    ctx.problem(item, (key,), f"placeholder {{{name}}} is not in variables {list(variables)}")
        templates[template.name] = template
    return templates


def build_channels(ctx: Context, templates: Mapping[str, Template]) -> dict[str, Channel]:
    channels: dict[str, Channel] = {}
    ids: dict[int, str] = {}
    for item in ctx.unique("channels"):
        raw = item.value
        if raw["id"] in ids:
            ctx.problem(item, ("id",), f"channel id {raw['id']} is already used by {ids[raw['id']]!r}")
        if raw["template"] not in templates:
            ctx.problem(item, ("template",), f"unknown template {raw['template']!r}{suggest(raw['template'], templates)}")
        ids[raw["id"]] = raw["name"]
        channels[raw["name"]] = Channel(raw["id"], raw["name"], raw["type"], raw["template"], tuple(raw.get("tags", ())))
    return channels


def build_providers(
    ctx: Context, templates: Mapping[str, Template], provider_types: Mapping[str, ConfigSchema]
) -> tuple[dict[str, ProviderAccount], set[str]]:
    """Enabled accounts by name, plus the names of declared but disabled ones."""
    accounts: dict[str, ProviderAccount] = {}
    disabled: set[str] = set()
    for item in ctx.unique("providers"):
        name, kind = item.value["name"], item.value["type"]
        if kind not in provider_types:
            known = ", ".join(sorted(provider_types))
            ctx.problem(item, ("type",), f"unknown provider type {kind!r}{suggest(kind, provider_types)} (known: {known})")
            continue
        if not _enabled(ctx, item):
            disabled.add(name)
            _check_templates(ctx, item, item.value.get("templates", {}), templates)
            continue
        account = _account(ctx, item, templates, provider_types[kind])
        if account is not None:
            accounts[name] = account
    return accounts, disabled


def _enabled(ctx: Context, item: Located) -> bool:
    problems: list[tuple[Path, str]] = []
    value = resolve_env(item.value.get("enabled", True), (*item.path, "enabled"), ctx.env, problems, set())
    ctx.problems(item, problems)
    flag = as_bool(value)
    if flag is None:
        ctx.problem(item, ("enabled",), f"must be true or false, got {shown(value)}")
    return bool(flag)


def _account(
    ctx: Context, item: Located, templates: Mapping[str, Template], schema: ConfigSchema
) -> ProviderAccount | None:
    problems: list[tuple[Path, str]] = []
    defaulted: set[Path] = set()
    raw = resolve_env(item.value, item.path, ctx.env, problems, defaulted)
    if ctx.problems(item, problems):
        return None
    config = _config(ctx, item, raw.get("config", {}), schema, defaulted)
    mapped = _check_templates(ctx, item, raw.get("templates", {}), templates)
    circuit = raw.get("circuit", {})
    rate = parse_rate(raw["rate"]) if "rate" in raw else None
    callback = raw.get("callback", {})
    for i, address in enumerate(callback.get("allow_ips", ())):
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            ctx.problem(item, ("callback", "allow_ips", i), f"not an IP address or network: {shown(address)}")
    return ProviderAccount(
        name=raw["name"],
        type=raw["type"],
        config=config,
        templates=mapped,
        signatures={str(k): str(v) for k, v in raw.get("signatures", {}).items()},
        rate=Rate(*rate) if rate else None,
        circuit=CircuitPolicy(
            failure_ratio=float(circuit.get("failure_ratio", 0.5)),
            min_calls=circuit.get("min_calls", 20),
            window_seconds=int(parse_duration(circuit.get("window", 60))),
            open_for_seconds=int(parse_duration(circuit.get("open_for", 30))),
            half_open_probes=circuit.get("half_open_probes", 3),
        ),
        callback={"token": str(callback.get("token", "")), "allow_ips": tuple(callback.get("allow_ips", ()))},
    )


def _config(ctx: Context, item: Located, raw: dict[str, Any], schema: ConfigSchema, defaulted: set[Path]) -> dict[str, Any]:
    """Validate a config block against the provider type's schema, coercing env strings."""
    config: dict[str, Any] = {}
    demo = item.value["type"] in DEMO_TYPES
    for key, value in raw.items():
        path = ("config", key)
        spec = schema.get(key)
        if spec is None:
            ctx.problem(item, path, f"unknown key (known: {', '.join(sorted(schema)) or 'none'})")
            continue
        if spec.secret and not demo and (*item.path, *path) in defaulted:
            ctx.problem(item, path, "a secret must not have a ${NAME:-default}; set the environment variable")
        coerced, error = _coerce(spec.type, value)
        if error:
            ctx.problem(item, path, error)
        elif spec.type is str and spec.required and coerced == "":
            ctx.problem(item, path, "must not be empty")
        elif spec.choices and coerced not in spec.choices:
            ctx.problem(item, path, f"must be one of {', '.join(map(str, spec.choices))}, got {shown(value)}")
        else:
            config[key] = coerced
    for key, spec in schema.items():
        if spec.required and key not in raw:
            ctx.problem(item, ("config",), f"missing required key {key!r}")
    return config


def _coerce(expected: type, value: Any) -> tuple[Any, str | None]:
    """`value` as the config field's type; an environment string is converted, a YAML value must already fit."""
    from_env = isinstance(value, EnvStr) and value.whole
    if expected is bool:
        flag = as_bool(value)
        return (flag, None) if flag is not None else (None, f"must be true or false, got {shown(value)}")
    if expected in (int, float):
        number = _number(expected, value) if from_env else value
        if isinstance(number, bool) or not isinstance(number, (int, float) if expected is float else int):
            return None, f"must be {'an integer' if expected is int else 'a number'}, got {shown(value)}"
        if isinstance(number, float) and not math.isfinite(number):
            return None, f"must be a finite number, got {shown(value)}"
        return expected(number), None
    if expected is str:
        return (str(value), None) if isinstance(value, str) else (None, f"must be a string, got {type(value).__name__}")
    if expected in (list, tuple) and not isinstance(value, list):
        return None, f"must be a list, got {type(value).__name__}"
    if expected is dict and not isinstance(value, dict):
        return None, f"must be a mapping, got {type(value).__name__}"
    return value, None


def _number(expected: type, text: str) -> int | float | None:
    """An environment string read as a number (ASCII digits only), or None."""
    if not text.isascii() or len(text) > 40:
        return None
    try:
        return expected(text.strip())
    except ValueError:
        return None


def _check_templates(
    ctx: Context, item: Located, raw: Mapping[str, Any], templates: Mapping[str, Template]
) -> dict[str, ProviderTemplate]:
    mapped: dict[str, ProviderTemplate] = {}
    for system, entry in raw.items():
        template = templates.get(system)
        if template is None:
            ctx.problem(item, ("templates", system), f"unknown template {system!r}{suggest(system, templates)}")
            continue
        if isinstance(entry, str):
            mapped[system] = ProviderTemplate(str(entry), {v: f"{{{v}}}" for v in template.variables})
            continue
        params = {str(k): str(v) for k, v in entry.get("params", {}).items()}
        for vendor_var, value in params.items():
            for name in PLACEHOLDER.findall(value):
                if name not in template.variables:
                    ctx.problem(item, ("templates", system, "params", vendor_var), f"{{{name}}} is not a variable of template {system!r}")
        mapped[system] = ProviderTemplate(str(entry["code"]), params)
    return mapped

