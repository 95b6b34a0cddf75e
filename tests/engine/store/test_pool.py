"""The connection pool to PostgreSQL and MySQL is sized by setting, and a nonsense size is refused."""

from __future__ import annotations

import pytest

from engine.services import Settings
from engine.store.db import connect


@pytest.mark.parametrize("url", ["postgresql://u@db.test/mpush", "mysql://u@db.test/mpush"])
def test_a_process_keeps_at_most_the_configured_connections(url: str) -> None:
    """The pool's ceiling is the pool_size given, for both server databases."""
    assert connect(url, pool_size=5)._max_connections == 5
    assert connect(url)._max_connections == Settings().database_pool_size


def test_a_pool_smaller_than_one_is_refused() -> None:
    """Zero connections could never serve a request: refused when the database is made."""
    with pytest.raises(ValueError, match="pool size must be at least 1"):
        connect("postgresql://u@db.test/mpush", pool_size=0)
