"""Derived fact fields: the receiver's country and email domain."""

from __future__ import annotations

import phonenumbers
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.policy.facts import receiver_country, receiver_domain

PREFIXES = ["", "+", "+86", "+1", "+7", "+44", "+800", "+882", "+0", "00", "011", "0", "86", "1", "810", "112340"]
REGIONS = ["CN", "US", "GB", "DE", "RU", "JP", "BY", "KZ", "BR", "AR", "IN", "ZZ", "cn", "001", ""]


def _full_parse_country(receiver: str, region: str) -> str:
    try:
        number = phonenumbers.parse(receiver, region)
    except phonenumbers.NumberParseException:
        return ""
    return phonenumbers.region_code_for_number(number) or ""


@settings(max_examples=3000, deadline=None)
@given(prefix=st.sampled_from(PREFIXES), digits=st.text("0123456789", max_size=18), region=st.sampled_from(REGIONS),
       decoration=st.sampled_from(["", " ", "-", "(", "a"]))
@example(prefix="+86", digits="13800138000", region="US", decoration="")
@example(prefix="", digits="13800138000", region="CN", decoration="")
@example(prefix="00", digits="4420", region="CN", decoration="")
def test_country_is_what_a_full_parse_says(prefix: str, digits: str, region: str, decoration: str) -> None:
    """For any number in any default region, the country equals phonenumbers' full parse, shortcut or not."""
    receiver_country.cache_clear()
    receiver = prefix + digits[:3] + decoration + digits[3:]
    expected = _full_parse_country(receiver, region) if any(ch.isdigit() for ch in receiver) else ""
    assert receiver_country(receiver, region) == expected


def test_country_of_common_forms() -> None:
    """E.164 and national numbers get their region; shared calling codes and non-numbers are told apart."""
    assert receiver_country("+8613800138000", "US") == "CN"
    assert receiver_country("13800138000", "CN") == "CN"
    assert receiver_country("+14155550100", "CN") == "US"
    assert receiver_country("+442079460000", "CN") == "GB"
    assert receiver_country("someone@example.com", "CN") == ""
    assert receiver_country("hello", "CN") == ""


def test_domain_of_an_email_receiver() -> None:
    """An email address gives its lower-cased domain; anything else gives none."""
    assert receiver_domain("Someone@Example.COM") == "example.com"
    assert receiver_domain("+8613800138000") == ""
    assert receiver_domain("@example.com") == ""
