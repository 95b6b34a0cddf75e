"""The Redis key layout: upgrading from the untagged one (old queued and delayed jobs and old counters move to
their tagged names at start, old jobs again on every sweep: nothing in flight is lost); its settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from engine import keys
from engine.limits import Limits, counter_key
from engine.policy.decisions import QuotaCheck
from engine.queue import Queue
from engine.services import open_services
from engine.settings import Settings, SettingsError
from engine.upgrade import move_old_jobs, move_old_layout
from tests.support.redis_cluster import ADDRESS as CLUSTER_ADDRESS
from tests.support.service import REDIS_URL, clean_redis, delayed_jobs, settings_for, write_rules

one_server = pytest.mark.skipif(bool(CLUSTER_ADDRESS), reason="the untagged layout only ever ran on one server")

T0 = 1_700_000_000.0
RULES = """
templates: [{name: code, variables: [code], text: "code {code}"}]
channels: [{id: 1, name: otp, type: sms, template: code}]
providers: [{name: fake, type: fake, config: {}}]
routing: [{name: otp, when: {channel: otp}, providers: [{use: fake}]}]
"""


@pytest.fixture
def old(tmp_path: Path) -> Iterator[redis.Redis]:
    """The gateway test database, empty of gateway keys, to write an older version's keys into."""
    clean_redis(REDIS_URL, cluster=False)
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    clean_redis(REDIS_URL, cluster=False)
    client.close()


def _write_old_queue(client: redis.Redis) -> None:
    """What an older version leaves: one job read by a worker and not acknowledged, one waiting, two delayed."""
    client.xgroup_create(keys.OLD_STREAM, keys.GROUP, id="0", mkstream=True)
    client.xadd(keys.OLD_STREAM, {"job": "send:in-flight"})
    client.xreadgroup(keys.GROUP, "old-worker", {keys.OLD_STREAM: ">"}, count=1)
    client.xadd(keys.OLD_STREAM, {"job": "send:waiting"})
    client.zadd(keys.OLD_DELAYED, {"send:retry": 1_000.0, "timeout:sent": 5_000.0})


@pytest.mark.redis
@one_server
def test_old_jobs_move_to_their_shards_and_none_is_lost(old: redis.Redis) -> None:
    """Queued jobs (also one an old worker read and never acknowledged) land in their shards' streams,
    delayed ones in their shards' delayed sets at their due time; the old keys are left empty."""
    _write_old_queue(old)
    queue = Queue(old, shards=3)
    queue.ensure_group()
    assert move_old_layout(old, queue) == (4, 0)
    entries = queue.read("new-worker", count=10, block_ms=10)
    assert sorted(entry.job for entry in entries) == ["send:in-flight", "send:waiting"]
    assert old.zscore(queue.delayed_key("send:retry"), "send:retry") == 1_000.0
    assert old.zscore(queue.delayed_key("timeout:sent"), "timeout:sent") == 5_000.0
    assert (old.xlen(keys.OLD_STREAM), old.exists(keys.OLD_DELAYED)) == (0, 0)
    assert move_old_layout(old, queue) == (0, 0)


@pytest.mark.redis
@one_server
def test_a_delayed_job_already_kept_earlier_keeps_its_earlier_time(old: redis.Redis) -> None:
    """When a new process deferred a job before the move, the earlier of the two due times stays."""
    old.zadd(keys.OLD_DELAYED, {"send:retry": 3_000.0, "send:other": 1_000.0})
    queue = Queue(old)
    queue.defer("send:retry", 2_000.0)
    queue.defer("send:other", 2_000.0)
    move_old_layout(old, queue)
    assert (old.zscore(queue.delayed, "send:retry"), old.zscore(queue.delayed, "send:other")) == (2_000.0, 1_000.0)


@pytest.mark.redis
@one_server
def test_old_counters_keep_their_count_and_expiry_under_the_tagged_names(old: redis.Redis) -> None:
    """A quota counted by the old version goes on counting from where it was, with its expiry; nonces and
    breakers move too, once per data set."""
    check = QuotaCheck(rule="daily", key="app=a1", limit=5, window_seconds=86_400)
    limits = Limits(old)
    tagged_name = counter_key(check, T0)
    old_name = tagged_name.replace(keys.LIMITS_TAG, keys.PREFIX, 1)
    old.set(old_name, 4, ex=3_600)
    old.set(keys.PREFIX + "nonce:a1:abc", 1, ex=300)
    old.hset(keys.PREFIX + "breaker:fake", mapping={"state": "open", "open_until": "9999999999"})
    assert move_old_layout(old, Queue(old)) == (0, 3)
    assert limits.used(check, T0) == 4 and 3_500 < old.ttl(tagged_name) <= 3_600
    assert not limits.admit([check], now=T0, cost=2).allowed and limits.admit([check], now=T0, cost=1).allowed
    assert old.hget(keys.breaker("fake"), "state") == b"open" and old.get(keys.nonce("a1", "abc")) == b"1"
    assert not old.exists(old_name) and old.get(keys.LAYOUT) == b"2"
    old.set(keys.PREFIX + "nonce:a1:later", 1)
    assert move_old_layout(old, Queue(old)) == (0, 0)  # counters are moved once per data set


@pytest.mark.redis
@one_server
def test_a_process_starting_on_old_data_delivers_the_old_jobs(old: redis.Redis, tmp_path: Path) -> None:
    """Opening the services moves the old jobs, and the sweep's move takes those an old-version process queued
    after that."""
    _write_old_queue(old)
    svc = open_services(settings_for(tmp_path, write_rules(tmp_path, RULES), stream_shards=2))
    try:
        assert old.xlen(keys.OLD_STREAM) == 0 and set(delayed_jobs(svc)) == {b"send:retry", b"timeout:sent"}
        old.xadd(keys.OLD_STREAM, {"job": "send:from-an-old-api"})
        move_old_jobs(svc.redis, svc.queue)
        jobs = sorted(entry.job for entry in svc.queue.read("w", count=10, block_ms=10))
        assert jobs == ["send:from-an-old-api", "send:in-flight", "send:waiting"]
    finally:
        svc.close()


@pytest.mark.parametrize(("environ", "message"), [
    ({"MPUSH_STREAM_SHARDS": "0"}, "stream_shards must be between 1 and 1024"),
    ({"MPUSH_STREAM_SHARDS": "5000"}, "stream_shards must be between 1 and 1024"),
    ({"MPUSH_STREAM_SHARDS": "many"}, "stream_shards has an invalid value"),
    ({"MPUSH_REDIS_CLUSTER": "1"}, "redis_cluster needs redis_url"),
])
def test_unusable_layout_settings_are_refused_clearly(environ: dict[str, str], message: str) -> None:
    """A shard count out of range or not a number, and a cluster without an address, are setting errors."""
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ)


def test_layout_settings_are_read_from_the_environment() -> None:
    """MPUSH_STREAM_SHARDS and MPUSH_REDIS_CLUSTER reach the settings."""
    settings = Settings.from_env({"MPUSH_STREAM_SHARDS": "8", "MPUSH_REDIS_CLUSTER": "yes",
                                  "MPUSH_REDIS_URL": "redis://10.0.0.5:6379"})
    assert (settings.stream_shards, settings.redis_cluster) == (8, True)


@pytest.mark.parametrize(("url", "message"), [
    ("redis://127.0.0.1:6379/3", "no Redis Cluster usable at redis://127.0.0.1:6379/3: .*db"),
    ("redis://:sekrit@127.0.0.1:6379/0", r"redis://:\*\*\*@127.0.0.1:6379/0: .*[Cc]luster"),
    ("redis://127.0.0.1:1", "no Redis Cluster usable at redis://127.0.0.1:1"),
])
def test_a_cluster_url_that_cannot_be_used_is_a_clear_setting_error(url: str, message: str, tmp_path: Path) -> None:
    """A cluster URL with a database other than 0, naming a server not in cluster mode, or nothing that answers
    stops the process with a setting error naming the URL (its password hidden), not a traceback."""
    settings = settings_for(tmp_path, write_rules(tmp_path, RULES), redis_url=url, redis_cluster=True)
    with pytest.raises(SettingsError, match=message):
        open_services(settings)
