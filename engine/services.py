"""Wiring: one `Services` value holding every connection and component a process needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import peewee
import redis
from redis.cluster import RedisCluster

from engine.cluster_client import GatewayCluster
from engine.files import private_dir, restrict_tree
from engine.limits import Limits
from engine.queue import Queue
from engine.redis_errors import REDIS_ERRORS
from engine.rulesets import RuleSetHolder
from engine.selector import Selector
from engine.settings import Settings, SettingsError
from engine.store import db as store_db
from engine.store.crypto import key_from_text
from engine.store.migrations import migrate
from engine.targets import TargetPolicy
from engine.tokens import RedisTokenCache
from engine.transport import HttpTransport
from engine.upgrade import move_old_layout

log = logging.getLogger("mpush")


@dataclass
class Services:
    """The process's connections and components; built by `open_services`, closed once."""

    settings: Settings
    redis: redis.Redis
    db: peewee.Database
    rules: RuleSetHolder
    queue: Queue
    limits: Limits
    selector: Selector
    transport: HttpTransport
    outbound: HttpTransport  # customer webhooks and alerts: only to targets the policy permits
    tokens: RedisTokenCache
    key: bytes
    retired_keys: tuple[bytes, ...] = ()  # keys being rotated out: app secrets stored under them still open

    def close(self) -> None:
        try:
            store_db.checkpoint(self.db)  # leave a SQLite file whole, its log copied back
        finally:
            self.db.close()
            self.redis.close()


# A Redis gone silent (a partition, a frozen host) fails a call after this long, on every redis-py version (before
# 6.0 its default was to wait forever); the longest blocking read the gateway makes is 1 s.
REDIS_TIMEOUTS = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0, "health_check_interval": 30}


def connect_redis(settings: Settings) -> redis.Redis:
    if settings.embedded_redis:
        from engine.embedded import start_embedded_redis

        return start_embedded_redis(settings.data_dir)
    if settings.redis_cluster:
        return connect_cluster(settings.redis_url)  # type: ignore[return-value]
    return redis.Redis.from_url(settings.redis_url, **REDIS_TIMEOUTS)


def connect_cluster(url: str) -> RedisCluster:
    """The cluster client, which learns the nodes and slots from the node `url` names at once: a URL it cannot
    use (a database other than 0, a server not in cluster mode, no node answering) is a setting error."""
    try:
        return GatewayCluster.from_url(url, **REDIS_TIMEOUTS)
    except (*REDIS_ERRORS, ValueError) as exc:
        raise SettingsError(f"setting redis_url: no Redis Cluster usable at {_without_password(url)}: {exc}") from None


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def open_services(settings: Settings, *, rules: RuleSetHolder | None = None) -> Services:
    """Connect Redis and the database, migrate, load the rule set, build the components."""
    settings = settings.resolve_secrets()
    outbound = HttpTransport(target_policy(settings))
    restrict_tree(private_dir(settings.data_dir))  # 0700, its files 0600: also those of an older version
    client = connect_redis(settings)
    database = store_db.connect(settings.effective_database_url, pool_size=settings.database_pool_size,
                                prepare=settings.database_prepare)
    store_db.bind(database)
    applied = migrate(database)
    if applied:
        log.info("store.migrated %s", ", ".join(applied))
    holder = rules or RuleSetHolder(settings.rules_dir, env=settings.rule_env or {})
    queue = Queue(client, shards=settings.stream_shards)
    queue.ensure_group()
    move_old_layout(client, queue)
    return Services(
        settings=settings,
        redis=client,
        db=database,
        rules=holder,
        queue=queue,
        limits=Limits(client),
        selector=Selector(client),
        transport=HttpTransport(),
        outbound=outbound,
        tokens=RedisTokenCache(client),
        key=key_from_text(settings.encryption_key),
        retired_keys=retired_keys(settings),
    )


def retired_keys(settings: Settings) -> tuple[bytes, ...]:
    return (key_from_text(settings.previous_encryption_key),) if settings.previous_encryption_key else ()


def target_policy(settings: Settings) -> TargetPolicy:
    try:
        return TargetPolicy.parse(settings.outbound_allow)
    except ValueError as exc:
        raise SettingsError(f"setting outbound_allow: {exc}") from None


def utcnow() -> datetime:
    return datetime.now(UTC)
