"""A throwaway 3-master Redis Cluster on loopback ports 7301-7303, or the one MPUSH_TEST_REDIS_CLUSTER names."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from engine.cluster_client import GatewayCluster

PORTS = (7301, 7302, 7303)
ADDRESS = os.environ.get("MPUSH_TEST_REDIS_CLUSTER", "")  # "host:port" of a running cluster's node, or empty


def connect_cluster(address: str) -> RedisCluster:
    host, _, port = address.rpartition(":")
    client = GatewayCluster(host=host, port=int(port), socket_timeout=5, socket_connect_timeout=5)
    client.ping()
    return client


@contextmanager
def local_cluster(workdir: Path, ports: tuple[int, ...] = PORTS) -> Iterator[str]:
    """Start one redis-server per port as a cluster master, join them into one cluster covering every slot,
    and yield a node's "host:port"; the servers stop afterwards."""
    server = shutil.which("redis-server")
    if server is None or shutil.which("redis-cli") is None:
        raise RuntimeError("redis-server and redis-cli are needed for the Redis Cluster tests")
    busy = [port for port in ports if _answers(port)]
    if busy:
        raise RuntimeError(f"ports {busy} are taken: stop what listens there or set MPUSH_TEST_REDIS_CLUSTER")
    processes = [subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                                   "--cluster-config-file", f"nodes-{port}.conf", "--dir", str(workdir),
                                   "--save", "", "--appendonly", "no", "--cluster-node-timeout", "3000",
                                   "--logfile", str(workdir / f"redis-{port}.log")])
                 for port in ports]
    try:
        _wait(lambda: all(_answers(port) for port in ports), "the cluster's servers did not start")
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        _wait(lambda: all(_cluster_ok(port) for port in ports), "the cluster did not reach state ok")
        yield f"127.0.0.1:{ports[0]}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _cluster_ok(port: int) -> bool:
    info = redis.Redis(port=port, socket_timeout=1, decode_responses=True).cluster("info")
    return isinstance(info, dict) and info.get("cluster_state") == "ok"


def _wait(ready: Callable[[], bool], message: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.1)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster's "host:port": the one MPUSH_TEST_REDIS_CLUSTER names, or one started on
    ports 7301-7303 for the test session and stopped after it."""
    if ADDRESS:
        yield ADDRESS
        return
    with local_cluster(tmp_path_factory.mktemp("redis-cluster")) as address:
        yield address
