"""The console's message search on a million tasks: p50 / p95 of representative searches, on SQLite and PostgreSQL.

    .venv/bin/python bench/console_search_bench.py [--rows 1000000] [--runs 40] [--only sqlite|postgres]

The tables come from the real migrations (so the indexes are the shipped ones); rows are bulk-loaded (SQLite:
executemany in chunks, PostgreSQL: COPY), then every search runs `--runs` times with different values through
`engine.store.queries.search_tasks`, the function the console and `mpush tasks list` call. PostgreSQL uses a
scratch database made on MPUSH_TEST_POSTGRES_URL's server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import peewee

from engine.store import db as store_db
from engine.store import queries
from engine.store.migrations import migrate

POSTGRES_URL = os.environ.get("MPUSH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
APPS = [f"{i:016x}" for i in range(1, 21)]
CHANNELS = ["otp", "notice", "marketing", "mail", "wecom"]
STATUSES = ["success"] * 90 + ["sent"] * 5 + ["failed"] * 3 + ["pending"] * 2
PROVIDERS = ["aliyun-main", "tencent-main", "zrwinfo-backup", "console"]
SPAN = timedelta(days=30)
COLUMNS = ("task_id", "app_id", "batch_id", "channel_id", "channel", "message_type", "receiver", "title", "content",
           "template", "template_params", "signature", "status", "callback_status", "retry_count", "max_retry",
           "exclude_providers", "provider", "provider_message_id", "error_code", "error_message", "rule",
           "rule_version", "tags", "created_at", "updated_at")


class Corpus:
    """What was loaded, to draw search values from: some task ids, receivers, batches; the time span."""

    def __init__(self, rows: int, seed: int = 7) -> None:
        self.rows = rows
        self.rng = random.Random(seed)
        self.end = datetime(2026, 6, 1, tzinfo=UTC)
        self.start = self.end - SPAN
        self.receivers = [f"13{self.rng.randrange(10**9):09d}" for _ in range(max(rows // 3, 1))]
        self.task_ids: list[str] = []
        self.batches: list[str] = []

    def generate(self) -> Iterator[tuple[object, ...]]:
        """The rows in creation order; every 10,000th row starts a batch of 100."""
        rng, step = self.rng, SPAN / self.rows
        batch = None
        for n in range(self.rows):
            task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            if n % 1000 == 0:
                self.task_ids.append(task_id)
            if n % 10_000 == 0:
                batch = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                self.batches.append(batch)
            created = (self.start + step * n).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
            status, channel = rng.choice(STATUSES), rng.choice(CHANNELS)
            yield (task_id, rng.choice(APPS), batch if n % 10_000 < 100 else None, 1, channel, "sms",
                   rng.choice(self.receivers), "", "your code is 123456", "code", '{"code":"123456"}', "", status,
                   "", 1, 3, "[]", rng.choice(PROVIDERS), "", "isv.BUSINESS_LIMIT" if status == "failed" else "",
                   "", f"{channel}-route", "abc123@def456", "[]", created, created)


@contextmanager
def indexes_built_after(db: peewee.Database) -> Iterator[None]:
    """Drop the tasks table's non-unique indexes for a bulk load and build them again (the same SQL) after it:
    several times faster than keeping them up to date row by row."""
    secondary = [index for index in db.get_indexes("tasks") if not index.unique]
    for index in secondary:
        db.execute_sql(f"DROP INDEX {index.name}")
    yield
    for index in secondary:
        db.execute_sql(index.sql)
    db.execute_sql("ANALYZE")


def load_sqlite(db: peewee.Database, corpus: Corpus, chunk: int = 50_000) -> None:
    sql = f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    rows = corpus.generate()
    with indexes_built_after(db), db.atomic():
        while batch := [row for _, row in zip(range(chunk), rows)]:
            db.cursor().executemany(sql, batch)


def load_postgres(db: peewee.Database, corpus: Corpus, chunk: int = 100_000) -> None:
    rows = corpus.generate()
    with indexes_built_after(db), db.atomic():
        cursor = db.cursor()
        while batch := [row for _, row in zip(range(chunk), rows)]:
            text = io.StringIO("".join("\t".join(r"\N" if v is None else str(v) for v in row) + "\n" for row in batch))
            cursor.copy_expert(f"COPY tasks ({', '.join(COLUMNS)}) FROM STDIN", text)


def searches(corpus: Corpus) -> dict[str, Callable[[random.Random], queries.TaskPage]]:
    """Each representative search, drawing fresh values from `corpus` on every call."""

    def window(rng: random.Random, hours: int) -> tuple[datetime, datetime]:
        since = corpus.start + timedelta(hours=rng.randrange(int(SPAN.total_seconds() // 3600) - hours))
        return since, since + timedelta(hours=hours)

    def second_page(rng: random.Random) -> queries.TaskPage:
        where = queries.TaskFilter(app_id=rng.choice(APPS))
        return queries.search_tasks(where, after=queries.search_tasks(where).next)

    def search(**fields: object) -> queries.TaskPage:
        return queries.search_tasks(queries.TaskFilter(**fields))  # type: ignore[arg-type]

    return {
        "task id": lambda rng: search(task_id=rng.choice(corpus.task_ids)),
        "receiver (as typed, +86 forms too)": lambda rng: search(receiver=rng.choice(corpus.receivers)),
        "receiver never seen": lambda rng: search(receiver=f"199{rng.randrange(10**8):08d}"),
        "newest, no filter": lambda rng: search(),
        "app": lambda rng: search(app_id=rng.choice(APPS)),
        "app, second page": second_page,
        "app + failed": lambda rng: search(app_id=rng.choice(APPS), status="failed"),
        "status failed (3 %)": lambda rng: search(status="failed"),
        "status pending (2 %)": lambda rng: search(status="pending"),
        "channel": lambda rng: search(channel=rng.choice(CHANNELS)),
        "batch": lambda rng: search(batch_id=rng.choice(corpus.batches)),
        "one hour window": lambda rng: search(since=window(rng, 1)[0], until=window(rng, 1)[1]),
        "app + one day": lambda rng: search(app_id=rng.choice(APPS), **dict(zip(("since", "until"), window(rng, 24)))),
        "receiver + failed": lambda rng: search(receiver=rng.choice(corpus.receivers), status="failed"),
    }


def measure(corpus: Corpus, runs: int) -> list[tuple[str, float, float, int]]:
    rng = random.Random(11)
    results = []
    for name, run in searches(corpus).items():
        run(rng)  # warm the statement and the pages it reads
        times, found = [], 0
        for _ in range(runs):
            started = time.perf_counter()
            page = run(rng)
            times.append((time.perf_counter() - started) * 1000)
            found += len(page.tasks)
        times.sort()
        results.append((name, statistics.median(times), times[max(0, round(0.95 * len(times)) - 1)], found // runs))
    return results


def report(kind: str, rows: int, load_seconds: float, results: list[tuple[str, float, float, int]]) -> None:
    print(f"\n{kind}: {rows:,} tasks loaded in {load_seconds:.0f} s; search latency (ms) over the runs")
    print(f"  {'search':<36} {'p50':>7} {'p95':>7}  rows/page")
    for name, p50, p95, found in results:
        print(f"  {name:<36} {p50:7.2f} {p95:7.2f}  {found:>5}")
    print(f"  worst p95: {max(p95 for _, _, p95, _ in results):.2f} ms")


def run_sqlite(rows: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        db = store_db.connect(f"sqlite:///{Path(folder) / 'bench.db'}")
        migrate(db)
        store_db.bind(db)
        corpus = Corpus(rows)
        started = time.perf_counter()
        load_sqlite(db, corpus)
        report("SQLite", rows, time.perf_counter() - started, measure(corpus, runs))
        db.close()


def run_postgres(rows: int, runs: int) -> None:
    admin = store_db.connect(POSTGRES_URL)
    name = f"mpush_bench_{uuid.uuid4().hex[:10]}"
    admin.execute_sql(f"CREATE DATABASE {name}")
    try:
        db = store_db.connect(urlsplit(POSTGRES_URL)._replace(path=f"/{name}").geturl())
        migrate(db)
        store_db.bind(db)
        corpus = Corpus(rows)
        started = time.perf_counter()
        load_postgres(db, corpus)
        report("PostgreSQL", rows, time.perf_counter() - started, measure(corpus, runs))
        db.close_all()
    finally:
        admin.execute_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    if args.only != "postgres":
        run_sqlite(args.rows, args.runs)
    if args.only != "sqlite":
        run_postgres(args.rows, args.runs)


if __name__ == "__main__":
    main()
