"""The separate-hosts harness: namespaces reach each other over the bridge, a cut link isolates, all is removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import netns

WHY_NOT = netns.available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"network namespaces unavailable: {WHY_NOT}")


def reaches(source: netns.Host, target: netns.Host, port: int = 8000) -> bool:
    """A TCP connection from `source` to the listener on `target` succeeds within a second."""
    connect = f"import socket; socket.create_connection(({target.address!r}, {port}), timeout=1)"
    return subprocess.run(source.command([sys.executable, "-c", connect]), capture_output=True).returncode == 0


def listen(host: netns.Host, port: int = 8000) -> None:
    host.start([sys.executable, "-m", "http.server", str(port), "--bind", host.address])
    netns.wait_for(host, [sys.executable, "-c", f"import socket; socket.create_connection(({host.address!r}, {port}))"])


def test_hosts_reach_each_other_and_a_cut_host_reaches_nobody(tmp_path: Path) -> None:
    """Two hosts ping each other; cutting one's link stops it both ways, restoring it brings it back."""
    with netns.Network(index=231) as net:
        a, b = net.add("a"), net.add("b")
        listen(a), listen(b)
        assert reaches(a, b) and reaches(b, a)
        net.cut("b")
        assert not reaches(a, b) and not reaches(b, a)
        net.restore("b")
        assert reaches(a, b)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert a.name not in listed and b.name not in listed and net.bridge not in listed


def test_redis_and_postgres_run_on_a_host_of_their_own(tmp_path: Path) -> None:
    """The db host serves Redis and PostgreSQL on its address; a client host reaches both, the machine does not."""
    with netns.Network(index=232) as net:
        db, client = net.add("db"), net.add("client")
        redis_url = netns.start_redis(db, tmp_path / "redis")
        pg_url = netns.start_postgres(db)
        assert client.run(["redis-cli", "-u", redis_url, "ping"]).stdout.strip() == "PONG"
        answer = client.run(["psql", pg_url, "-Atc", "SELECT 40 + 2"]).stdout.strip()
        assert answer == "42"
        outside = subprocess.run(["redis-cli", "-h", db.address, "-p", "6379", "ping"], capture_output=True,
                                 text=True, timeout=10)
        assert "PONG" not in outside.stdout
