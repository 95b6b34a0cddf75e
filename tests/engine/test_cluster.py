"""The gateway on a 3-master Redis Cluster: sharded queue, quotas, provider choice, scheduler, one whole send."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from api.console import security
from engine import keys, scheduler
from engine.limits import Call, Limits
from engine.policy.decisions import Candidate, QuotaCheck
from engine.policy.model import CircuitPolicy, ProviderAccount
from engine.queue import Queue, job
from engine.selector import Selector
from tests.support.redis_cluster import connect_cluster
from tests.support.service import delayed_jobs, gateway, write_rules

pytestmark = pytest.mark.redis

RUN = uuid.uuid4().hex[:12]
T0 = 1_700_000_000.0
SHARDS = 6
POLICY = CircuitPolicy(failure_ratio=0.5, min_calls=2, window_seconds=60, open_for_seconds=30, half_open_probes=1)
RULES = """
templates: [{name: code, variables: [code], text: "code {code}"}]
channels: [{id: 1, name: otp, type: sms, template: code}]
providers: [{name: fake, type: fake, config: {}}]
routing: [{name: otp, when: {channel: otp}, providers: [{use: fake}]}]
"""


@pytest.fixture(scope="module")
def cluster(redis_cluster: str) -> Iterator[RedisCluster]:
    client = connect_cluster(redis_cluster)
    yield client
    stale = list(client.scan_iter(match=f"*{RUN}*", count=1000))
    if stale:
        client.delete(*stale)
    client.close()


@pytest.fixture
def queue(cluster: RedisCluster) -> Queue:
    created = Queue(cluster, shards=SHARDS, base=f"cluster-{RUN}-{uuid.uuid4().hex[:6]}:q")
    created.ensure_group()
    return created


def _node_of(cluster: RedisCluster, key: str) -> str:
    return str(cluster.get_node_from_key(key).name)


def test_shards_spread_over_the_nodes_and_each_keeps_its_delayed_set_beside_it(cluster: RedisCluster,
                                                                                queue: Queue) -> None:
    """A shard's stream and delayed set share a slot, and the shards land on more than one node."""
    assert all(cluster.keyslot(s) == cluster.keyslot(d) for s, d in zip(queue.streams, queue.delayed_sets))
    assert len({_node_of(cluster, stream) for stream in queue.streams}) > 1


def test_every_job_is_read_once_across_shards_and_acknowledged(queue: Queue) -> None:
    """Jobs queued to several shards all come back to one reader, with ids unique across shards, and
    acknowledging them empties every shard."""
    queue.enqueue([job("send", f"t{i}") for i in range(40)])
    seen: list[str] = []
    done: list[str] = []
    for _ in range(20):
        entries = queue.read("c1", count=10, block_ms=10, ack=done)
        done = [entry.id for entry in entries]
        seen += [entry.ref for entry in entries]
        if not entries and len(seen) == 40:
            break
    assert sorted(seen) == sorted(f"t{i}" for i in range(40))
    assert len({queue.shard(job("send", ref)) for ref in seen}) == SHARDS
    assert (queue.pending(), queue.backlog()) == (0, 0)


def test_an_empty_cluster_queue_read_waits_briefly_and_returns_nothing(queue: Queue) -> None:
    """With every shard empty, a read waits on one shard at most a short while (so jobs queued meanwhile to
    another shard wait no longer than that) and returns no entries."""
    started = time.monotonic()
    assert queue.read("c1", count=10, block_ms=5000) == []
    assert time.monotonic() - started < 1.0


def test_delayed_jobs_of_every_shard_are_released_and_unread_ones_reclaimed(queue: Queue) -> None:
    """Due jobs of all shards move to their streams once; entries read and never acknowledged are reclaimed
    from every shard."""
    queue.defer_many([(job("send", f"d{i}"), 1_000.0 + i) for i in range(12)])
    assert queue.delayed_count() == 12
    assert queue.release_due(1_005.0) == 6 and queue.release_due(1_005.0) == 0
    assert queue.release_due(2_000.0) == 6 and queue.delayed_count() == 0
    read = [entry.ref for _ in range(4) for entry in queue.read("dead", count=12, block_ms=10)]
    assert sorted(read) == sorted(f"d{i}" for i in range(12))
    assert sorted(entry.ref for entry in queue.reclaim("alive", min_idle_ms=0)) == sorted(read)


def test_quotas_rates_and_nonces_of_several_apps_are_counted_in_one_script_call(cluster: RedisCluster) -> None:
    """A receiver's quota shared by two apps, each app's own quota and its signed call are counted all or
    nothing on the cluster, exactly as on one server."""
    limits = Limits(cluster)
    receiver = QuotaCheck(rule=f"receiver-{RUN}", key="receiver=1380", limit=2, window_seconds=60)

    def app_quota(app: str) -> QuotaCheck:
        return QuotaCheck(rule=f"app-{RUN}", key=f"app={app}", limit=5, window_seconds=60)

    calls = [Call(f"a-{RUN}", f"n1-{RUN}", 10, 300), Call(f"b-{RUN}", f"n2-{RUN}", 10, 300),
             Call(f"a-{RUN}", f"n3-{RUN}", 10, 300)]
    requests = [([receiver, app_quota("a")], [1, 1]), ([receiver, app_quota("b")], [1, 1]),
                ([receiver, app_quota("a")], [1, 1])]
    verdicts = limits.admit_many(requests, now=T0, calls=calls)
    assert [v.allowed for v in verdicts] == [True, True, False] and verdicts[2].rule == receiver.rule
    assert (limits.used(receiver, T0), limits.used(app_quota("a"), T0), limits.used(app_quota("b"), T0)) == (2, 1, 1)
    assert limits.admit_calls([calls[0], calls[2]], T0) == ["replay", "ok"]


def test_provider_choice_and_breakers_work_on_the_cluster(cluster: RedisCluster) -> None:
    """Weighted round robin shares its positions, and an account whose breaker opened is passed over."""
    selector = Selector(cluster)
    main, spare = f"main-{RUN}", f"spare-{RUN}"
    accounts = {name: ProviderAccount(name, "fake", {}, circuit=POLICY) for name in (main, spare)}
    tiers = ((Candidate(main, 2), Candidate(spare, 1)),)
    picks = [selector.choose(tiers, scope=f"rule-{RUN}", exclude=set(), accounts=accounts, now=T0).provider
             for _ in range(3)]
    assert sorted(picks) == sorted([main, main, spare])  # type: ignore[type-var]
    for _ in range(POLICY.min_calls):
        selector.record(main, False, POLICY, T0)
    assert selector.state(main, T0) == "open"
    choice = selector.choose(tiers, scope=f"rule-{RUN}", exclude=set(), accounts=accounts, now=T0 + 1)
    assert choice.provider == spare


def test_console_sign_in_failures_span_two_slots(cluster: RedisCluster) -> None:
    """Counting and reading an operator's and an address's failures works though their keys lie in two slots."""
    operator, address = f"op-{RUN}", f"10.0.0.1-{RUN}"
    for _ in range(security.FAILS_PER_ACCOUNT):
        security.count_failure(cluster, operator, address)  # type: ignore[arg-type]
    assert security.sign_in_blocked(cluster, operator, address) > 0  # type: ignore[arg-type]
    cluster.delete(*security._fail_keys(operator, address))


def test_a_message_is_delivered_through_a_sharded_cluster_gateway(tmp_path: Path, redis_cluster: str) -> None:
    """A gateway on the cluster with several stream shards accepts messages and delivers every one; the
    scheduler's lost-data check and sweep run on the cluster without queuing anything twice."""
    rules = write_rules(tmp_path, RULES)
    with gateway(tmp_path, rules, redis_url=f"redis://{redis_cluster}", redis_cluster=True,
                 stream_shards=3) as gw:
        ids = [gw.send("otp", f"1380000{i:04d}", {"code": "1"})["data"]["task_id"] for i in range(6)]
        assert all(gw.wait(task_id).status == "success" for task_id in ids)
        assert isinstance(gw.svc.redis, RedisCluster) and gw.svc.queue.shards == 3
        assert scheduler.recover_lost_data(gw.svc, datetime.now(UTC)) == 0
        assert gw.svc.redis.exists(keys.EPOCH) and delayed_jobs(gw.svc) == {}


def test_cluster_client_errors_outside_redis_error_count_as_redis_faults() -> None:
    """No node serving a slot raises an error redis-py does not derive from RedisError; the API answers it as
    Redis unavailable (retry later) and the worker leaves the job for the reclaimer, as for any Redis fault."""
    from redis.exceptions import SlotNotCoveredError

    from api import errors
    from engine.worker import POSTPONE

    fault = SlotNotCoveredError("slot 42 is not covered")
    assert errors.unavailable_code(fault) == errors.REDIS_ERROR and isinstance(fault, POSTPONE)


def _getkeys_calls(cluster: RedisCluster) -> int:
    stats = cluster.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
    return sum(int(node.get("cmdstat_command|getkeys", {}).get("calls", 0)) for node in stats.values())


def test_stream_reads_cost_no_key_lookup_round_trip(cluster: RedisCluster, queue: Queue) -> None:
    """The client routes XREADGROUP by the stream names it reads itself, never asking a node for the keys first
    (redis-py's cluster client otherwise sends COMMAND GETKEYS before every stream read)."""
    queue.enqueue([job("send", f"t{i}") for i in range(12)])
    before = _getkeys_calls(cluster)
    entries = [entry for shard in range(SHARDS) for entry in queue.read("c1", count=12, block_ms=10, shards=[shard])]
    entries += queue.read("c1", count=12, block_ms=10)
    assert len(entries) == 12 and _getkeys_calls(cluster) == before


def test_stream_read_keys_are_the_names_before_the_ids() -> None:
    """The keys of an XREADGROUP are the first half of what follows STREAMS; a malformed one has none."""
    from engine.cluster_client import stream_read_keys

    assert stream_read_keys(("XREADGROUP", b"GROUP", "g", "c", b"COUNT", "4", b"STREAMS", "a", "b", ">", ">")) == ["a", "b"]
    assert stream_read_keys(("XREADGROUP", b"GROUP", "g", "c", b"STREAMS", "a")) == []
    assert stream_read_keys(("XREADGROUP", b"GROUP", "g", "c")) == []
