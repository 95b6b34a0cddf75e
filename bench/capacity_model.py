"""A capacity model: from measured CPU per message, how many processes and shards a target rate needs.

Nothing here runs the gateway. The defaults are the figures measured by `bench/e2e_bench.py` on the
2-core development machine (see README "Benchmarks"); pass your own with the options after measuring
on your hardware. Every figure printed for rates above what was measured is modelled, and says so.

    python bench/capacity_model.py --rate 10000
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

MEASURED_RATE = 2000.0  # msg/s: the highest rate the per-message costs below were measured at


@dataclass(frozen=True)
class Costs:
    """CPU milliseconds per message, and per-message operations on the shared services."""

    api_ms: float
    worker_ms: float
    redis_ms: float
    db_rows: float  # rows written per message (task insert, attempt insert, status updates)


@dataclass(frozen=True)
class Plan:
    rate: float
    api_processes: int
    worker_processes: int
    redis_shards: int
    db_rows_per_s: float
    first_limit: str


def plan(rate: float, costs: Costs, *, utilisation: float, redis_core_share: float) -> Plan:
    """Processes sized so each runs at `utilisation` of one core; Redis shards so each uses `redis_core_share`."""
    api = math.ceil(rate * costs.api_ms / 1000 / utilisation)
    worker = math.ceil(rate * costs.worker_ms / 1000 / utilisation)
    redis_cores = rate * costs.redis_ms / 1000
    shards = max(1, math.ceil(redis_cores / redis_core_share))
    limit = ("one Redis server (single-threaded)" if shards > 1
             else "API and worker cores (they scale out; shared services have room)")
    return Plan(rate, api, worker, shards, rate * costs.db_rows, limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, action="append", help="target msg/s (repeatable); default 1k, 10k, 100k")
    parser.add_argument("--api-ms", type=float, default=0.52,
                        help="API CPU ms per message (measured at 1,000 msg/s: 0.49-0.52 on PostgreSQL and SQLite)")
    parser.add_argument("--worker-ms", type=float, default=0.7,
                        help="worker CPU ms per message (measured at 1,000 msg/s, 16 send threads: 0.64-0.70 on "
                             "PostgreSQL, 0.88 on SQLite)")
    parser.add_argument("--redis-ms", type=float, default=0.06,
                        help="Redis CPU ms per message (measured at 1,000 msg/s: 0.06)")
    parser.add_argument("--db-rows", type=float, default=5.0,
                        help="row writes per message: task insert, attempt insert and update, two task updates")
    parser.add_argument("--utilisation", type=float, default=0.6, help="target CPU share per process (default 0.6)")
    parser.add_argument("--redis-share", type=float, default=0.5, help="target CPU share per Redis server (0.5)")
    args = parser.parse_args()
    costs = Costs(args.api_ms, args.worker_ms, args.redis_ms, args.db_rows)
    print(f"costs per message: API {costs.api_ms} ms, worker {costs.worker_ms} ms, Redis {costs.redis_ms} ms CPU, "
          f"{costs.db_rows:g} database rows; processes at {args.utilisation:.0%} of a core, "
          f"Redis at {args.redis_share:.0%}")
    print(f"{'msg/s':>9} {'API procs':>9} {'workers':>8} {'Redis':>6} {'DB rows/s':>10}  first limit  [kind]")
    for rate in args.rate or [1000.0, 10000.0, 100000.0]:
        p = plan(rate, costs, utilisation=args.utilisation, redis_core_share=args.redis_share)
        kind = "measured costs" if rate <= MEASURED_RATE else "modelled"
        print(f"{rate:>9,.0f} {p.api_processes:>9} {p.worker_processes:>8} {p.redis_shards:>6} "
              f"{p.db_rows_per_s:>10,.0f}  {p.first_limit}  [{kind}]")


if __name__ == "__main__":
    main()
