"""Restart bench: a database restart and a Redis restart under steady load; what was lost, what was sent
twice, how long each outage lasted and how long until the gateway was back at full rate.

Starts a PostgreSQL (initdb/pg_ctl, as the postgres user when run as root) and a redis-server of its own in a
temp dir on free ports — never the machine's shared ones — then the mock vendor, one `mpush serve
--no-workers` and one `mpush worker` (as `e2e_bench.py` does), offers signed sends at a fixed rate, and
mid-load runs `pg_ctl restart -m fast` and kills Redis (SIGKILL) and starts it again on the same port and
directory. After the load it waits up to `--drain` seconds for every accepted message to reach the vendor,
then prints: accepted, refused (by phase), delivered, lost (accepted, never delivered), sent twice (task ids
the mock vendor delivered more than once; resends it dropped by idempotency key are counted apart), and per
restart the outage (refusals, longest gaps without an accept and without a delivery) and the time from the
restart until accepts and deliveries are back at >= 95% of the offered rate; then a per-second timeline.

    .venv/bin/python bench/restart_bench.py                          # PostgreSQL restart at 10 s, Redis at 25 s
    .venv/bin/python bench/restart_bench.py --redis-persistence none  # Redis comes back empty: epoch re-queue
    .venv/bin/python bench/restart_bench.py --database sqlite         # the Redis restart only
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_bench import (ROOT, Tally, create_app, free_port, gateway_env, offer, run_loop,  # noqa: E402
                       signed_requests, wait_port, write_rules)

RECOVERED = 0.95  # share of the offered rate that counts as "back at full rate"
STEADY_SECONDS = 3  # ... held for this many consecutive one-second windows
BASELINE_SECONDS = 5  # the delivered rate before a restart is measured over this many seconds


def _as_postgres_user(argv: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PrivatePostgres:
    """A PostgreSQL server of the bench's own: data in a temp dir, listening on 127.0.0.1:`port` only."""

    def __init__(self, port: int) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            raise RuntimeError("PostgreSQL server binaries are not installed under /usr/lib/postgresql")
        self.bindir, self.port = found[-1].parent, port
        self.directory = Path(tempfile.mkdtemp(prefix="mpush-restart-pg-"))
        self.directory.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.data = self.directory / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--no-sync")
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.directory / "postgres.log"), "-o", options,
                  "-w", "start")

    def restart(self) -> None:
        """A fast shutdown (open sessions are cut, transactions rolled back) and a start, as an operator's."""
        # -l again: without it the new server would write to pg_ctl's stdout, a pipe this process waits on
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.directory / "postgres.log"), "-m", "fast", "-w",
                  "restart")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        subprocess.run(_as_postgres_user([str(self.bindir / program), *args]), check=check, capture_output=True,
                       timeout=120)


class PrivateRedis:
    """A redis-server of the bench's own on 127.0.0.1:`port`, its files in a temp dir; `persistence` is
    "aof" (append-only file, fsync every second) or "none" (a restart comes back empty)."""

    def __init__(self, port: int, persistence: str) -> None:
        self.port, self.persistence = port, persistence
        self.directory = Path(tempfile.mkdtemp(prefix="mpush-restart-redis-"))
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        aof = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persistence == "aof" else ["--appendonly", "no"]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115  (kept by the process)
        self.process = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
                                         str(self.directory), "--save", "", *aof], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeError("the bench's redis-server did not start")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> None:
        """Killed outright (what was written in the last second may not be on disk) and started again."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Restart:
    """One restart during the load: what, and when it began and ended (the server answering again)."""

    name: str
    at: float
    action: Callable[[], None]
    began: float = 0.0
    ended: float = 0.0
    error: str = ""

    def run(self) -> None:
        self.began = time.time()
        try:
            self.action()
        except Exception as exc:  # noqa: BLE001  (reported, the load goes on)
            self.error = repr(exc)
        self.ended = time.time()


@dataclass
class Outcome:
    """What the load and the vendor saw."""

    start: float
    load_end: float
    tally: Tally
    received: list[tuple[float, str]]
    repeats: int
    restarts: list[Restart] = field(default_factory=list)


def vendor_get(port: int, path: str) -> bytes:
    """The mock vendor's answer to GET `path`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    return connection.getresponse().read()


def drain(mock_port: int, accepted: set[str], timeout: float) -> list[tuple[float, str]]:
    """The vendor's deliveries once every accepted task is among them, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        received = [(at, task_id) for at, task_id in json.loads(vendor_get(mock_port, "/stats"))]
        if accepted <= {task_id for _, task_id in received} or time.monotonic() > deadline:
            return received
        time.sleep(0.5)


def run(args: argparse.Namespace, tmp: Path, postgres: PrivatePostgres | None, bench_redis: PrivateRedis) -> Outcome:
    """Start the mock vendor, the API and the worker on the bench's servers, and run the load with its restarts."""
    mock_port, api_port = free_port(), free_port()
    write_rules(tmp / "rules", mock_port)
    database_url = postgres.url if postgres else f"sqlite:///{tmp / 'mpush.db'}"
    env = gateway_env(tmp, bench_redis.url, database_url, args.worker_threads, args.worker_readers)
    app_id, secret = create_app(env)
    mpush = [sys.executable, "-m", "engine.cli"]
    logs = {name: open(tmp / f"{name}.log", "ab") for name in ("mock", "api", "worker")}  # noqa: SIM115
    processes = [
        subprocess.Popen([sys.executable, str(ROOT / "bench" / "mock_vendor.py"), str(mock_port)],
                         stdout=logs["mock"], stderr=logs["mock"]),
        subprocess.Popen([*mpush, "serve", "--no-workers", "--port", str(api_port)], env=env, cwd=ROOT,
                         stdout=logs["api"], stderr=logs["api"]),
        subprocess.Popen([*mpush, "worker"], env=env, cwd=ROOT, stdout=logs["worker"], stderr=logs["worker"]),
    ]
    try:
        wait_port(mock_port)
        wait_port(api_port)
        time.sleep(1.0)
        return offer_with_restarts(args, api_port, mock_port, app_id, secret, postgres, bench_redis)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        for name, log in logs.items():
            log.close()
            if args.keep_logs:
                shutil.copy(tmp / f"{name}.log", Path(args.keep_logs) / f"{name}.log")


def offer_with_restarts(args: argparse.Namespace, api_port: int, mock_port: int, app_id: str, secret: str,
                        postgres: PrivatePostgres | None, bench_redis: PrivateRedis) -> Outcome:
    per_client = int(args.rate * args.seconds / args.clients)
    prepared = signed_requests(per_client * args.clients, app_id, secret, 1, api_port)
    restarts = []
    if postgres and args.database_restart_at > 0:
        restarts.append(Restart("database", args.database_restart_at, postgres.restart))
    if args.redis_restart_at > 0:
        restarts.append(Restart("redis", args.redis_restart_at, bench_redis.restart))
    tally = Tally()
    start = time.time() + 0.1  # `offer` starts its clients 0.1 s from now
    timers = [threading.Timer(start + restart.at - time.time(), restart.run) for restart in restarts]
    for timer in timers:
        timer.start()
    run_loop(bounded(offer(api_port, prepared, args.clients, args.clients / args.rate, 1, tally), args.seconds + 60))
    load_end = time.time()
    for timer in timers:
        timer.join()
    received = drain(mock_port, set(tally.accepted), args.drain)
    repeats = int(vendor_get(mock_port, "/repeats"))
    return Outcome(start, load_end, tally, received, repeats, restarts)


async def bounded(load: Coroutine[Any, Any, None], seconds: float) -> None:
    """The load, given up after `seconds` (an answer that never comes leaves the rest unsent)."""
    try:
        await asyncio.wait_for(load, seconds)
    except TimeoutError:
        print(f"the load did not finish within {seconds:.0f} s: some requests were never answered")


def per_second(times: list[float], start: float, seconds: int) -> list[int]:
    """How many of `times` fell in each second from `start`."""
    counts = [0] * seconds
    for at in times:
        second = int(at - start)
        if 0 <= second < seconds:
            counts[second] += 1
    return counts


def longest_gap(times: list[float], begin: float, end: float) -> float:
    """The longest stretch within [begin, end) with none of `times`."""
    inside = sorted(at for at in times if begin <= at < end)
    edges = [begin, *inside, end]
    return max(later - earlier for earlier, later in zip(edges, edges[1:]))


def back_at_rate(times: list[float], since: float, until: float, rate: float) -> float | None:
    """Seconds from `since` until every one of STEADY_SECONDS consecutive one-second windows holds >= 95% of
    `rate` events (scanned in 0.1 s steps); None if that never happened before `until`."""
    ordered = sorted(at for at in times if at >= since)
    need, step = RECOVERED * rate, 0.1
    t = since
    while t + STEADY_SECONDS <= until:
        if all(_count_between(ordered, t + k, t + k + 1) >= need for k in range(STEADY_SECONDS)):
            return t - since
        t += step
    return None


def _count_between(ordered: list[float], begin: float, end: float) -> int:
    from bisect import bisect_left

    return bisect_left(ordered, end) - bisect_left(ordered, begin)


def report(args: argparse.Namespace, outcome: Outcome, load: tuple[float, float]) -> None:
    """Totals, lost and sent-twice counts, each restart's outage and recovery, and the per-second timeline."""
    tally, start = outcome.tally, outcome.start
    accepted = set(tally.accepted)
    counts = Counter(task_id for _, task_id in outcome.received)
    first_delivery: dict[str, float] = {}
    for at, task_id in outcome.received:
        first_delivery.setdefault(task_id, at)
    twice = {task_id: n for task_id, n in counts.items() if n > 1}
    lost = accepted - set(counts)
    unacknowledged = set(counts) - accepted  # delivered, but the client never had an accepting answer
    accept_times, delivery_times = list(tally.accepted.values()), list(first_delivery.values())
    print(f"cores: {os.cpu_count()}  load average before/after: {load[0]:.2f} / {load[1]:.2f}  database: "
          f"{args.database}  redis persistence: {args.redis_persistence}  clients: {args.clients}")
    print(f"offered: {args.rate:.0f} msg/s for {args.seconds:.0f} s ({len(tally.latencies)} requests answered)")
    print(f"accepted {len(accepted)}, refused {len(tally.errors)} {dict(Counter(tally.errors)) or ''}")
    last = max(0.0, max(delivery_times, default=outcome.load_end) - outcome.load_end)
    print(f"delivered {len(counts)} (the last {last:.1f} s after the load); lost {len(lost)}; sent twice "
          f"{len(twice)}; resends the vendor dropped by idempotency key {outcome.repeats}; delivered without an "
          f"accepting answer {len(unacknowledged)}")
    if lost:
        print(f"  lost, e.g.: {sorted(lost)[:5]}")
    if twice:
        print(f"  sent twice, e.g.: {dict(list(twice.items())[:5])}")
    ends = [restart.at for restart in outcome.restarts[1:]] + [args.seconds]
    for restart, phase_end in zip(outcome.restarts, ends):
        last_phase = restart is outcome.restarts[-1]
        delivery_end = max([start + phase_end, *delivery_times]) if last_phase else start + phase_end
        print(restart_line(args.rate, start, restart, start + phase_end, delivery_end, accept_times,
                           tally.refused_at, delivery_times))
    print_timeline(start, int(max(args.seconds, max(delivery_times, default=start) - start)) + 1,
                   accept_times, tally.refused_at, delivery_times)


def restart_line(rate: float, start: float, restart: Restart, phase_end: float, delivery_end: float,
                 accept_times: list[float], refusal_times: list[float], delivery_times: list[float]) -> str:
    """One restart's figures: refusals, the longest gaps, and when accepts and deliveries were back at rate
    (deliveries also against their own rate of the seconds before, as a busy machine may deliver less than
    is offered)."""
    refused = [at for at in refusal_times if restart.began <= at < phase_end]
    accept_back = back_at_rate(accept_times, restart.began, phase_end, rate)
    delivery_back = back_at_rate(delivery_times, restart.began, delivery_end, rate)
    before = min(BASELINE_SECONDS, restart.began - start)
    baseline = sum(restart.began - before <= at < restart.began for at in delivery_times) / before
    baseline_back = back_at_rate(delivery_times, restart.began, delivery_end, baseline)
    shown = lambda value: "never in the phase" if value is None else f"{value:.1f} s"  # noqa: E731
    span = f"{refused[0] - start:.1f}-{refused[-1] - start:.1f} s" if refused else "none"
    return (f"{restart.name} restart at {restart.began - start:.1f} s, answering again after "
            f"{restart.ended - restart.began:.1f} s{' (' + restart.error + ')' if restart.error else ''}: "
            f"{len(refused)} refused ({span}), longest gap without an accept "
            f"{longest_gap(accept_times, restart.began, phase_end):.1f} s, without a delivery "
            f"{longest_gap(delivery_times, restart.began, phase_end):.1f} s; back at >= {RECOVERED:.0%} of offered "
            f"for {STEADY_SECONDS} s: accepts {shown(accept_back)}, deliveries {shown(delivery_back)}; deliveries "
            f"back at >= {RECOVERED:.0%} of their {baseline:.0f} msg/s of the {before:.0f} s before: "
            f"{shown(baseline_back)}")


def print_timeline(start: float, seconds: int, accept_times: list[float], refusal_times: list[float],
                   delivery_times: list[float]) -> None:
    """Accepted/refused/delivered in each second from the start of the load, eight seconds a line."""
    columns = zip(per_second(accept_times, start, seconds), per_second(refusal_times, start, seconds),
                  per_second(delivery_times, start, seconds))
    print("per second, accepted/refused/delivered:")
    cells = [f"{n:>2}:{a}/{r}/{d}" for n, (a, r, d) in enumerate(columns)]
    for row in range(0, len(cells), 8):
        print("  " + "  ".join(f"{cell:<16}" for cell in cells[row:row + 8]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500, help="messages offered per second")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--redis-persistence", choices=("aof", "none"), default="aof",
                        help="aof: append-only file, fsync every second; none: Redis restarts empty")
    parser.add_argument("--database-restart-at", type=float, default=10, help="seconds into the load; 0: none")
    parser.add_argument("--redis-restart-at", type=float, default=25, help="seconds into the load; 0: none")
    parser.add_argument("--drain", type=float, default=60, help="seconds to wait for deliveries after the load")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--worker-threads", type=int, default=4)
    parser.add_argument("--worker-readers", type=int, default=1)
    parser.add_argument("--keep-logs", default="", help="a directory to copy the processes' logs into")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mpush-restart-bench-"))
    bench_redis = PrivateRedis(free_port(), args.redis_persistence)
    postgres = PrivatePostgres(free_port()) if args.database == "postgresql" else None
    before = os.getloadavg()[0]
    try:
        bench_redis.start()
        if postgres:
            postgres.start()
        outcome = run(args, tmp, postgres, bench_redis)
        report(args, outcome, (before, os.getloadavg()[0]))
    finally:
        bench_redis.stop()
        if postgres:
            postgres.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
