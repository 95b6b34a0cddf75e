"""An in-memory `TokenCache` for tests: remembers each value's TTL and expires by an injectable clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class MemoryTokenCache:
    """Thread-safe dict twin of the service's Redis token cache."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, float]] = {}
        self.ttls: dict[str, int] = {}  # the TTL each key was last set with, for assertions

    def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            value, expires_at = entry
            if self._clock() >= expires_at:
                del self._entries[key]
                return None
            return value

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        with self._lock:
            self._entries[key] = (value, self._clock() + ttl_seconds)
            self.ttls[key] = ttl_seconds

    def delete(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)
