"""The Redis Cluster client: redis-py's, except that it finds the stream names of XREADGROUP itself.

redis-py routes a command by its keys; for XREADGROUP (keys after the STREAMS keyword) it asks a node with
COMMAND GETKEYS first, one more round trip before every stream read. The keys are the first half of what
follows STREAMS (stream names, then as many ids), so they are read here without asking.
"""

from __future__ import annotations

from typing import Any

from redis.cluster import RedisCluster


class GatewayCluster(RedisCluster):
    """`RedisCluster` with XREADGROUP's keys found locally, by the client and by its pipelines (which share its
    command parser)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parser = self.commands_parser
        ask_node = parser.get_keys

        def get_keys(connection: Any, *command: Any) -> Any:
            if command and _text(command[0]).upper() == "XREADGROUP":
                keys = stream_read_keys(command)
                if keys:
                    return keys
            return ask_node(connection, *command)

        parser.get_keys = get_keys  # type: ignore[method-assign]


def stream_read_keys(args: tuple[Any, ...]) -> list[Any]:
    """The stream names of an XREADGROUP command's arguments, or [] when it has no well-formed STREAMS part."""
    words = [_text(arg).upper() if isinstance(arg, (bytes, str)) else "" for arg in args]
    if "STREAMS" not in words:
        return []
    rest = args[words.index("STREAMS") + 1:]
    return list(rest[: len(rest) // 2]) if rest and len(rest) % 2 == 0 else []


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
