"""Receivers in one form per channel type: every way of writing a number or an address is the same receiver."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
