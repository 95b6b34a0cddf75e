"""The explicit list of provider modules, keyed by their `TYPE` (== module name == rule-file `type:`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType, ModuleType
from typing import cast

from providers import (
    aliyun_sms, console, dingtalk_robot, dingtalk_work, fake, smtp, tencent_sms, webhook, wecom_app,
    wecom_robot, zrwinfo_sms,
)
from providers.base import (
    Account, CallbackRequest, CallbackResult, ConfigSchema, Message, Provider, SendContext, SendResult,
)

CallbackParser = Callable[[CallbackRequest, Account, datetime], CallbackResult]

MODULES: tuple[ModuleType, ...] = (
    console,
    fake,
    webhook,
    smtp,
    aliyun_sms,
    tencent_sms,
    zrwinfo_sms,
    wecom_app,
    wecom_robot,
    dingtalk_work,
    dingtalk_robot,
)


class UnknownProvider(LookupError):
    """A provider type that no module in the registry declares."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        super().__init__(f"Unknown provider type {name!r}; known types are: {', '.join(self.known)}.")


class ProviderRegistryError(ValueError):
    """The module list is inconsistent: a repeated TYPE, or a TYPE that is not the module's name."""


def build(modules: Iterable[ModuleType]) -> Mapping[str, Provider]:
    """Index modules by `TYPE`; a repeated or misnamed TYPE raises instead of shadowing a provider."""
    seen: dict[str, ModuleType] = {}
    for module in modules:
        name, module_name = module.TYPE, module.__name__.rpartition(".")[2]
        if name in seen:
            raise ProviderRegistryError(
                f"Provider type {name!r} is declared by both {seen[name].__name__} and {module.__name__}."
            )
        if name != module_name:
            raise ProviderRegistryError(f"Module {module.__name__} declares TYPE {name!r}; it must be {module_name!r}.")
        seen[name] = module
    return MappingProxyType({name: cast(Provider, module) for name, module in seen.items()})


PROVIDERS: Mapping[str, Provider] = build(MODULES)


def get(type_name: str) -> Provider:
    """The provider module registered under `type_name`."""
    try:
        return PROVIDERS[type_name]
    except KeyError:
        raise UnknownProvider(type_name, PROVIDERS) from None


def config_schemas() -> dict[str, ConfigSchema]:
    """Every provider's config schema, by type: what the rule loader validates accounts against."""
    return {name: provider.CONFIG for name, provider in PROVIDERS.items()}


def callback_parser(type_name: str) -> CallbackParser | None:
    """The provider's `parse_callback`, or None when its vendor does not report delivery back."""
    return cast("CallbackParser | None", getattr(get(type_name), "parse_callback", None))


def deduplicates(type_name: str) -> bool:
    """Whether the vendor drops a message repeating an idempotency key it has seen (the provider's
    `DEDUPLICATES`): only then may an attempt of unknown outcome be resent."""
    return bool(getattr(get(type_name), "DEDUPLICATES", False))


def sends_reports(type_name: str, config: Mapping[str, object]) -> bool:
    """Whether the vendor reports delivery later for an account so configured: the provider's `reports(config)`,
    or else whether it parses delivery reports at all."""
    reports = getattr(get(type_name), "reports", None)
    if reports is not None:
        return bool(reports(config))
    return callback_parser(type_name) is not None


BatchSender = Callable[[Sequence[Message], Account, SendContext], Sequence[SendResult]]


def batch_sender(type_name: str) -> BatchSender | None:
    """The provider's `send_batch`, or None when its vendor takes one message a call."""
    return cast("BatchSender | None", getattr(get(type_name), "send_batch", None))


def batch_size(type_name: str, config: Mapping[str, object]) -> int:
    """How many messages of the same text one call can carry for an account so configured: the provider's
    `batch_size(config)` where it has a `send_batch`, else 1."""
    size = getattr(get(type_name), "batch_size", None)
    if size is None or batch_sender(type_name) is None:
        return 1
    return max(1, int(size(config)))
