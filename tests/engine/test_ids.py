"""Identifiers: RFC 9562 version 7 UUIDs."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from engine.ids import uuid7

MAX_MILLIS = (1 << 48) - 1


@given(millis=st.integers(0, MAX_MILLIS))
def test_uuid7_is_a_version_7_rfc_uuid_carrying_its_millisecond(millis: int) -> None:
    """The id parses as a UUID of version 7 and the RFC variant, its first 48 bits the Unix milliseconds."""
    value = uuid.UUID(uuid7(millis * 1_000_000 + 999_999))
    assert (value.version, value.variant) == (7, uuid.RFC_4122)
    assert value.int >> 80 == millis


@given(earlier=st.integers(0, MAX_MILLIS - 1), gap=st.integers(1, 1000))
def test_ids_of_a_later_millisecond_sort_after_earlier_ones(earlier: int, gap: int) -> None:
    """As text and as bytes, an id from a later millisecond sorts after any from an earlier one."""
    later = min(MAX_MILLIS, earlier + gap)
    first, second = uuid7(earlier * 1_000_000), uuid7(later * 1_000_000)
    assert first < second
    assert uuid.UUID(first).bytes < uuid.UUID(second).bytes


def test_ids_of_one_millisecond_differ() -> None:
    """Ids made in the same millisecond are still distinct (74 random bits each)."""
    assert len({uuid7(1_700_000_000_000_000_000) for _ in range(10_000)}) == 10_000
