"""The one form of a receiver per channel type, under which it is stored, counted by quotas and routed."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import phonenumbers

# What people put between digits: spaces (any width), hyphens, dots, slashes and brackets.
_PHONE_SEPARATORS = re.compile(r"[\s\-./()\u2010-\u2015]")
_PLAIN_DIGITS = re.compile(r"\+?[1-9][0-9]{3,16}", re.ASCII)
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
    plain_e164 = _plain_e164(plain, default_region)
    if plain_e164 is not None:
        return plain_e164
    try:
        number = phonenumbers.parse(plain, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidReceiver(f"receiver {text[:40]!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidReceiver(f"receiver {text[:40]!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _plain_e164(plain: str, default_region: str) -> str | None:
    """E.164 of plain digits (`+8613800138000`, `13800138000`) that `phonenumbers.parse` would read unchanged
    and that are valid, without parsing (a third of the cost, which batches of a thousand numbers feel); None
    when the full parse must decide: a prefix it could strip or read as an international one, a leading zero."""
    if not _PLAIN_DIGITS.fullmatch(plain):
        return None
    if plain[0] == "+":
        country_code, national = _split_country_code(plain[1:])
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(
            phonenumbers.region_code_for_country_code(country_code))
    else:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(default_region)
        if metadata is None:
            return None
        country_code, national = metadata.country_code, plain
        if national.startswith(str(country_code)) or _starts_with(metadata.international_prefix, national):
            return None
    if metadata is None or national[0] == "0" or _starts_with(metadata.national_prefix_for_parsing, national):
        return None
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
    return f"+{country_code}{national}" if phonenumbers.is_valid_number(number) else None


def _split_country_code(digits: str) -> tuple[int, str]:
    """The country calling code that `digits` start with (0 when none is) and the digits after it."""
    for length in (1, 2, 3):
        if int(digits[:length]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return int(digits[:length]), digits[length:]
    return 0, digits


def _starts_with(pattern: str | None, digits: str) -> bool:
    if not pattern:
        return False
    return re.match(pattern, digits) is not None


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
