"""Receivers in one form per channel type: every way of writing a number or an address is the same receiver."""

from __future__ import annotations

from typing import Any

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.policy import receivers
from engine.policy.receivers import InvalidReceiver, normalise

SAME_NUMBER = ["13800138000", "+8613800138000", "+86 138 0013 8000", "008613800138000", "138-0013-8000",
               "１３８００１３８０００", "138\u200b0013\u200b8000", " (138) 0013.8000 ", "+86\u00a0138\u00a000138000"]


@pytest.mark.parametrize("written", SAME_NUMBER)
def test_every_way_of_writing_a_mobile_number_is_its_e164(written: str) -> None:
    """Country code or not, 00 prefix, separators, full-width digits, zero-width spaces: one E.164 number."""
    assert normalise(written, "sms", "CN") == "+8613800138000"


@pytest.mark.parametrize("written", ["notaphone", "123", "+86 138", "1380013800099999", "", "\u200b"])
def test_what_is_not_a_valid_phone_number_is_refused_on_sms(written: str) -> None:
    """Text, too short or too long numbers and nothing at all are refused on an SMS channel, saying why."""
    with pytest.raises(InvalidReceiver, match="phone number"):
        normalise(written, "sms", "CN")


def test_a_number_of_another_region_keeps_its_country() -> None:
    """With CN the default region, a Hong Kong number written with +852 stays in +852."""
    assert normalise("+852 5123 4567", "sms", "CN") == "+85251234567"


@given(st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
       st.sampled_from(["{n}", "+86{n}", "0086{n}", "+86 {a} {b} {c}", "{a}-{b}-{c}", "{wide}"]))
def test_written_forms_of_any_mainland_mobile_agree(number: str, shape: str) -> None:
    """Whatever the shape, a mainland mobile number is stored once (or refused in every shape alike)."""
    wide = "".join(chr(ord(ch) + 0xFEE0) for ch in number)
    written = shape.format(n=number, a=number[:3], b=number[3:7], c=number[7:], wide=wide)
    try:
        plain = normalise(number, "sms", "CN")
    except InvalidReceiver:
        with pytest.raises(InvalidReceiver):
            normalise(written, "sms", "CN")
        return
    assert normalise(written, "sms", "CN") == plain == "+86" + number


def _parsed_e164(plain: str, region: str) -> str | None:
    """What the full `phonenumbers` parse and validity check make of `plain`: E.164, or None when invalid."""
    try:
        number = phonenumbers.parse(plain, region)
    except phonenumbers.NumberParseException:
        return None
    valid = phonenumbers.is_valid_number(number)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) if valid else None


REGIONS = ["CN", "HK", "TW", "US", "CA", "GB", "DE", "FR", "IT", "RU", "IN", "BR", "JP", "KR", "SG", "AU", "AR", "MX"]


@given(st.sampled_from(["", "+"]), st.from_regex(r"[1-9][0-9]{3,16}", fullmatch=True), st.sampled_from(REGIONS))
def test_the_plain_digits_shortcut_agrees_with_the_full_parse(plus: str, digits: str, region: str) -> None:
    """Plain digits the shortcut answers are the E.164 a full parse and validity check give; what it leaves
    to the parse (None) is anything else."""
    fast = receivers._plain_e164(plus + digits, region)
    assert fast is None or fast == _parsed_e164(plus + digits, region)


@given(st.sampled_from(REGIONS), st.sampled_from(REGIONS), st.booleans(), st.randoms(use_true_random=False))
def test_the_shortcut_agrees_on_numbers_near_valid_ones(home: str, default: str, plus: bool, rnd: Any) -> None:
    """Regions' example mobile and fixed numbers with their tails changed, written with +country or as
    national digits: where the shortcut answers, it answers what the parse does."""
    kind = rnd.choice([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
    example = phonenumbers.example_number_for_type(home, kind)
    national = str(example.national_number)
    kept = rnd.randrange(len(national) + 1)
    national = national[:kept] + "".join(rnd.choice("0123456789") for _ in national[kept:])
    plain = f"+{example.country_code}{national}" if plus else national
    fast = receivers._plain_e164(plain, default)
    assert fast is None or fast == _parsed_e164(plain, default)


def test_the_shortcut_answers_plain_mobile_numbers() -> None:
    """The common shapes take the shortcut: a bare mainland mobile, and any valid number written in E.164."""
    assert receivers._plain_e164("13800138000", "CN") == "+8613800138000"
    assert receivers._plain_e164("+8613800138000", "US") == "+8613800138000"
    assert receivers._plain_e164("+14155552671", "CN") == "+14155552671"


@given(st.from_regex(r"[0-9]{7,9}", fullmatch=True), st.sampled_from(["", "+86", "86", "+1", "+44", "+7", "+39"]))
def test_the_shortcut_agrees_on_every_prefix_a_national_prefix_could_strip(tail: str, lead: str) -> None:
    """Carrier and national prefixes (CN's 1[12]xx and 179xx, RU's 8, IT's leading 0) never make the shortcut
    differ from the parse: it steps aside for them."""
    for head in ("11", "12", "179", "10", "13", "8", "810", "0", "3"):
        plain = lead + head + tail
        if plain.lstrip("+")[:1] in ("", "0"):
            continue
        for region in ("CN", "RU", "IT", "US"):
            fast = receivers._plain_e164(plain, region)
            assert fast is None or fast == _parsed_e164(plain, region), (plain, region)


@pytest.mark.parametrize("written,normal", [
    ("Alice@Example.COM", "Alice@example.com"),
    (" bob@mail.example.org ", "bob@mail.example.org"),
    ("ｃａｒｏｌ@ｅｘａｍｐｌｅ.ｃｏｍ", "carol@example.com"),
    ("dave@exa\u200bmple.com", "dave@example.com"),
])
def test_an_email_address_has_its_domain_lower_cased(written: str, normal: str) -> None:
    """The domain is case-folded and full-width or invisible characters dropped; the mailbox is kept."""
    assert normalise(written, "email", "CN") == normal


@pytest.mark.parametrize("written", ["notanemail", "a@b", "a@@b.com", "a b@c.com", "@example.com", "a@.com"])
def test_what_is_not_an_email_address_is_refused_on_email(written: str) -> None:
    """Addresses without a mailbox, a dotted domain or with spaces are refused on an email channel."""
    with pytest.raises(InvalidReceiver, match="email address"):
        normalise(written, "email", "CN")


def test_im_ids_are_kept_as_configured_but_for_invisibles() -> None:
    """A WeCom or DingTalk user id is the id itself: only surrounding space and invisible characters go."""
    assert normalise(" ZhangSan\u200b ", "wecom", "CN") == "ZhangSan"
    assert normalise("Ｕser", "dingtalk", "CN") == "Ｕser"
