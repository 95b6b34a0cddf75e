"""The one form of a receiver per channel type, under which it is stored, counted by quotas and routed."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import phonenumbers

# What people put between digits: spaces (any width), hyphens, dots, slashes and brackets.
_PHONE_SEPARATORS = re.compile(r"[\s\-./()\u2010-\u2015]")
_EMAIL = re.compile(r"[^\s@]{1,64}@[^\s@]{1,253}")


class InvalidReceiver(ValueError):
    """A receiver that is not one on its channel's type: the message says what was expected."""


def normalise(receiver: str, channel_type: str, default_region: str) -> str:
    """`receiver` in its one form for `channel_type`: a phone number in E.164 (`+8613800138000`), an email
    address with its domain lower-cased, any other id as given; InvalidReceiver when it is not one."""
    text = _without_invisibles(receiver).strip()
    if channel_type == "sms":
        return phone_number(text, default_region)
    if channel_type == "email":
        return email_address(text)
    if not text:
        raise InvalidReceiver("receiver is empty")
    return text


@lru_cache(maxsize=8192)
def phone_number(text: str, default_region: str) -> str:
    """E.164 of a number `phonenumbers` takes as valid; full-width digits, separators and the 00 prefix are
    read as people write them, a number without a country code as one of `default_region`."""
    plain = _PHONE_SEPARATORS.sub("", unicodedata.normalize("NFKC", text))
    try:
        number = phonenumbers.parse(plain, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidReceiver(f"receiver {text[:40]!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidReceiver(f"receiver {text[:40]!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email_address(text: str) -> str:
    """local@domain with the domain lower-cased (the local part is the mailbox owner's, kept as written)."""
    text = unicodedata.normalize("NFKC", text)
    if not _EMAIL.fullmatch(text):
        raise InvalidReceiver(f"receiver {text[:40]!r} is not an email address")
    local, _, domain = text.partition("@")
    if "." not in domain.strip(".") or ".." in domain:
        raise InvalidReceiver(f"receiver {text[:40]!r} is not an email address")
    return f"{local}@{domain.lower()}"


def _without_invisibles(text: str) -> str:
    """Without format characters (zero-width spaces and joiners, bidi marks, BOMs), which no receiver holds."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
