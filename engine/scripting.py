"""Running one Lua script many times in one round trip, on a single Redis server or a Redis Cluster."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script


def pipelined(client: redis.Redis, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
    """Run `script` once per (keys, args) call in one round trip (one per node on a cluster), in order.

    EVALSHA is sent directly: a pipeline handed Script objects asks SCRIPT EXISTS first, an extra round
    trip every time. A NOSCRIPT (Redis restarted) fails every call sent to that server alike, before any
    ran, so loading the script (on every primary of a cluster) and sending the batch again is safe for calls
    whose keys share one slot; calls spread over several nodes must be safe to run twice (releasing due jobs
    is: a second run moves only what became due since).
    """
    if not calls:
        return []
    for retry in (False, True):
        pipe = client.pipeline(transaction=False)
        for script_keys, args in calls:
            pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
        try:
            return pipe.execute()
        except redis.exceptions.NoScriptError:
            if retry:
                raise
            client.script_load(script.script)
    raise AssertionError("unreachable")
