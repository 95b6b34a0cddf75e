"""The JSON depth guard judges nesting with C-speed bytes operations: exact on valid JSON, a few milliseconds
for a 200 KB body of brackets (it was ~60 ms of GIL-holding Python, so a flood of them starved every client)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.errors import MAX_JSON_DEPTH, strict_json
from engine.jsondepth import nested_deeper_than

TRICKY = '[]{}"\\,:ab'  # brackets, quotes and escapes inside strings must not count


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


values = st.recursive(st.none() | st.integers() | st.text(alphabet=TRICKY, max_size=6),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(alphabet=TRICKY, max_size=3), inner, max_size=3), max_leaves=80)


@settings(max_examples=500, deadline=None)
@given(value=values, limit=st.integers(1, 8))
def test_the_guard_agrees_with_the_real_depth(value: Any, limit: int) -> None:
    """For any JSON value (brackets and escaped quotes inside strings included) the guard says "deeper than
    limit" exactly when the value nests deeper."""
    raw = json.dumps(value, ensure_ascii=False).encode()
    assert nested_deeper_than(raw, limit) == (depth(value) > limit)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet='[]{}",1', max_size=400))
def test_any_bracket_soup_is_a_value_error_never_a_recursion_error(text: str) -> None:
    """Unbalanced and malformed bracket runs are refused as ValueError (10001 / 400), never a RecursionError."""
    try:
        strict_json(text.encode())
    except ValueError:
        pass


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 40_000 + b"1" + b"}" * 40_000,
                                 b"[[]," * 50_000 + b"]" * 50_000, b"[" * 200_000],
                         ids=["arrays", "objects", "leaves-between", "unclosed"])
def test_a_deep_body_is_refused_in_milliseconds(raw: bytes) -> None:
    """200 KB of nesting is refused as too deep well under the 60 ms the byte-by-byte scan took (best of 3)."""
    took = []
    for _ in range(3):
        started = time.perf_counter()
        with pytest.raises(ValueError, match=f"deeper than {MAX_JSON_DEPTH}"):
            strict_json(raw)
        took.append(time.perf_counter() - started)
    assert min(took) < 0.015, took
