"""Facts: the fields rules test, with the derived ones (country, email domain, local hour, weekday)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers

from .model import Channel
from .schema import INT64_MAX


@dataclass(frozen=True, slots=True)
class Fact:
    """What one decision is made about; `now` is timezone-aware and passed in, never read."""

    fields: Mapping[str, Any]
    now: datetime


def make_fact(
    *,
    now: datetime,
    timezone: ZoneInfo,
    default_region: str,
    app: str,
    channel: Channel,
    receiver: str,
    tags: Sequence[str] = (),
    priority: int = 0,
    attempt: int = 0,
    provider: str = "",
    error_code: str = "",
    error_class: str = "",
    error_message: str = "",
) -> Fact:
    """Build a fact; ValueError for a naive `now` or an integer outside the 64-bit range."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    for name, value in (("priority", priority), ("attempt", attempt)):
        if isinstance(value, bool) or not isinstance(value, int) or not -INT64_MAX <= value <= INT64_MAX:
            raise ValueError(f"{name} must be a 64-bit integer, got {value!r}")
    local = now.astimezone(timezone)
    fields = {
        "app": str(app),
        "channel": channel.name,
        "channel_type": channel.type,
        "template": channel.template,
        "receiver": str(receiver),
        "receiver.country": receiver_country(str(receiver), default_region),
        "receiver.domain": receiver_domain(str(receiver)),
        "tags": tuple(dict.fromkeys((*channel.tags, *map(str, tags)))),
        "priority": priority,
        "attempt": attempt,
        "provider": str(provider),
        "error_code": str(error_code),
        "error_class": str(error_class),
        "error_message": str(error_message),
        "local_hour": local.hour,
        "weekday": local.isoweekday(),
    }
    return Fact(fields, now)


@lru_cache(maxsize=8192)
def receiver_country(receiver: str, default_region: str) -> str:
    """ISO region of a phone number ("+8613800138000" -> "CN"); "" for anything else."""
    if "@" in receiver or not any(ch.isdigit() for ch in receiver):
        return ""
    quick = _single_region_country(receiver, default_region)
    if quick is not None:
        return quick
    try:
        number = phonenumbers.parse(receiver, default_region)
    except phonenumbers.NumberParseException:
        return ""
    return phonenumbers.region_code_for_number(number) or ""


_PLAIN_NUMBER = re.compile(r"\+?[1-9][0-9]{4,17}")


def _single_region_country(receiver: str, default_region: str) -> str | None:
    """The region `phonenumbers` gives a number of bare ASCII digits whose calling code belongs to one
    region alone, read off the calling code without its full parse (a fifth of the cost); None when
    the number needs that parse: other characters, a shared code such as +1, an international prefix."""
    if not _PLAIN_NUMBER.fullmatch(receiver):
        return None
    if receiver[0] == "+":
        digits = receiver[1:]
        size = next((n for n in (1, 2, 3) if int(digits[:n]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE), 0)
        if not size:
            return None
        regions, national = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[int(digits[:size])], digits[size:]
    else:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(default_region)
        if metadata is None or metadata.international_prefix is None or metadata.country_code is None:
            return None
        if re.match(metadata.international_prefix, receiver):
            return None
        regions, national = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(metadata.country_code, ()), receiver
    if len(regions) != 1 or not 4 <= len(national) <= 15:
        return None
    return regions[0]


def receiver_domain(receiver: str) -> str:
    """Lower-cased domain of an email address; "" when the receiver is not one."""
    local, at, domain = receiver.rpartition("@")
    return domain.lower() if at and local else ""
