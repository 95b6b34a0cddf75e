"""The console's queries on SQLite, PostgreSQL and MariaDB: operators, message search pages, tallies, counts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import peewee
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.store import queries, repo

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def store(count: int, **fields: object) -> list[str]:
    """`count` tasks a second apart from T0, to the same E.164 receiver, oldest first; their ids."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    rows = [{"task_id": task_id, "app_id": "a" * 16, "receiver": "+8613800138000", "channel": "otp",
             "created_at": T0 + timedelta(seconds=n), **fields} for n, task_id in enumerate(ids)]
    repo.create_tasks(rows)
    return ids


@pytest.mark.usefixtures("db")
class TestSearch:
    def test_pages_walk_every_match_newest_first_once(self) -> None:
        """Following the cursor from page to page yields every match once, newest first."""
        ids = store(7)
        seen, after = [], None
        while True:
            page = queries.search_tasks(queries.TaskFilter(app_id="a" * 16), after=after, page_size=3)
            seen += [task.task_id for task in page.tasks]
            if page.next is None:
                break
            after = queries.Cursor.parse(str(page.next))
        assert seen == list(reversed(ids))

    def test_tasks_created_in_the_same_microsecond_are_not_lost_between_pages(self) -> None:
        """Ties on creation time are broken by id, so a page boundary inside a tie skips and repeats nothing."""
        ids = [str(uuid.uuid4()) for _ in range(5)]
        repo.create_tasks([{"task_id": task_id, "app_id": "b" * 16, "receiver": "x", "created_at": T0}
                           for task_id in ids])
        first = queries.search_tasks(queries.TaskFilter(app_id="b" * 16), page_size=2)
        second = queries.search_tasks(queries.TaskFilter(app_id="b" * 16), after=first.next, page_size=2)
        third = queries.search_tasks(queries.TaskFilter(app_id="b" * 16), after=second.next, page_size=2)
        found = [t.task_id for t in first.tasks + second.tasks + third.tasks]
        assert sorted(found) == sorted(ids) and third.next is None

    def test_receiver_is_found_in_the_forms_people_type(self) -> None:
        """A number stored in E.164 is found typed nationally, with +86, or as stored."""
        [task_id] = store(1)
        for typed in ("13800138000", "+86 138 0013 8000", "8613800138000", "+8613800138000"):
            assert [t.task_id for t in queries.search_tasks(queries.TaskFilter(receiver=typed)).tasks] == [task_id]

    def test_filters_narrow_and_combine(self) -> None:
        """Status, channel, batch and the time range each narrow the result, together as well."""
        store(3)
        [failed] = store(1, status="failed", channel="mail")

        def found(**fields: object) -> list[str]:
            return [t.task_id for t in queries.search_tasks(queries.TaskFilter(**fields)).tasks]  # type: ignore[arg-type]

        assert found(status="failed") == [failed] and found(channel="mail", status="failed") == [failed]
        assert found(channel="mail", status="success") == []
        assert len(found(since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=3))) == 2
        assert found(task_id=failed) == [failed] and found(batch_id="none") == []

    def test_filters_from_query_parameters_refuse_nonsense(self) -> None:
        """An unknown status or an unreadable time is a ValueError, before any query."""
        with pytest.raises(ValueError, match="status must be one of"):
            queries.TaskFilter.from_params({"status": "done"})
        with pytest.raises(ValueError, match="not a date and time"):
            queries.TaskFilter.from_params({"since": "yesterday"})
        naive = queries.TaskFilter.from_params({"since": "2026-05-01T10:00"})
        assert naive.since == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


@pytest.mark.usefixtures("db")
class TestOperators:
    def test_passwords_are_hashed_and_checked(self) -> None:
        """Only the argon2 hash is stored; the right password signs in, a wrong one or an unknown name does not."""
        operator = queries.create_operator("ops", "a long password")
        assert operator.password_hash.startswith("$argon2") and "a long password" not in operator.password_hash
        assert queries.check_operator("ops", "a long password") is not None
        assert queries.check_operator("ops", "a wrong password") is None
        assert queries.check_operator("nobody", "a long password") is None

    def test_names_are_unique_and_passwords_long(self) -> None:
        """A second operator of a name and a short password are refused; a new password replaces the old."""
        queries.create_operator("ops", "a long password")
        with pytest.raises(queries.OperatorExists):
            queries.create_operator("ops", "another long one")
        with pytest.raises(ValueError, match="at least 10"):
            queries.create_operator("other", "short")
        queries.set_operator_password("ops", "the new password")
        assert queries.check_operator("ops", "a long password") is None
        assert queries.check_operator("ops", "the new password") is not None


@pytest.mark.usefixtures("db")
def test_day_tallies_count_by_status_channel_and_provider() -> None:
    """Today's tasks in all, per channel and per provider; pending is whatever has not ended."""
    store(2, status="success", provider="p1")
    store(1, status="failed", provider="p2", channel="mail")
    store(1, status="pending")
    tally = queries.day_tallies(T0 - timedelta(hours=1))
    assert (tally.total.accepted, tally.total.delivered, tally.total.failed, tally.total.pending) == (4, 2, 1, 1)
    assert tally.total.success_rate == pytest.approx(2 / 3)
    assert tally.by_channel["mail"].failed == 1 and tally.by_provider["p1"].delivered == 2
    assert queries.day_tallies(T0 + timedelta(days=1)).total.success_rate is None


@pytest.mark.usefixtures("db")
def test_attempt_activity_buckets_minutes_and_percentiles(db: peewee.Database) -> None:
    """Attempts of the last hour fall in their minute, with failures and latency percentiles."""
    now = datetime.now(UTC)
    [task_id] = store(1)
    for number, (status, latency) in enumerate([("ok", 10), ("retryable", 30), ("ok", 20)], 1):
        repo.begin_attempt(task_id, number, "p1", "r", "v")
        repo.finish_attempt(task_id, number, status=status, final=True, latency_ms=latency)
    activity = queries.attempt_activity(now + timedelta(seconds=1), hours=1)
    assert sum(m.attempts for m in activity.minutes) == 3 and sum(m.failed for m in activity.minutes) == 1
    assert (activity.p50, activity.p95, activity.p99) == (20, 30, 30)
    assert len(activity.minutes) == 61


@pytest.mark.usefixtures("db")
def test_attempt_activity_samples_latencies_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past LATENCY_SAMPLE attempts the counts stay exact while the percentiles come from every k-th attempt."""
    monkeypatch.setattr(queries, "LATENCY_SAMPLE", 2)
    now = datetime.now(UTC)
    [task_id] = store(1)
    for number in range(1, 7):
        repo.begin_attempt(task_id, number, "p1", "r", "v")
        repo.finish_attempt(task_id, number, status="ok" if number % 2 else "permanent", final=True,
                            latency_ms=number * 10)
    activity = queries.attempt_activity(now + timedelta(seconds=1), hours=1)
    assert sum(m.attempts for m in activity.minutes) == 6 and sum(m.failed for m in activity.minutes) == 3
    assert activity.sampled and activity.p99 in (10, 20, 30, 40, 50, 60)


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2999, 1, 1), timezones=st.just(UTC)),
       st.integers(min_value=1, max_value=2**62))
def test_cursor_text_round_trips_exactly(moment: datetime, ident: int) -> None:
    """A page cursor read back from its text is the same instant, to the microsecond, and the same id."""
    cursor = queries.Cursor(moment, ident)
    assert queries.Cursor.parse(str(cursor)) == cursor


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1))
def test_percentile_is_a_value_at_or_above_that_share(values: list[int]) -> None:
    """The nearest-rank percentile is one of the values, with at least that share of them at or below it."""
    ordered = sorted(values)
    for fraction in (0.5, 0.95, 0.99):
        value = queries.percentile(ordered, fraction)
        assert value in ordered and sum(v <= value for v in ordered) >= fraction * len(ordered)
