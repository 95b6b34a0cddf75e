"""Separate hosts for tests: network namespaces joined by veth pairs to a bridge in a namespace of their own.

Each host is a namespace with its loopback up and one interface on a private test subnet; nothing
touches the machine's own network namespace, and every namespace and process is removed on close.
A host's link can be cut and restored (`cut` / `restore`) to simulate a partition.

Namespaces need root (CAP_SYS_ADMIN) and iproute2; `available()` says why not when they cannot be made,
so a test can fall back to processes on loopback and say so in its output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.231.{index}.0/24"


def available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"mpprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add refused: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Host:
    """One namespace: its name, its address on the test subnet and the processes started in it."""

    name: str
    address: str
    veth: str  # the bridge-side end of its link
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    scratch: list[Path] = field(default_factory=list)  # directories removed with the network

    def command(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(args), capture_output=True, text=True, check=True, timeout=timeout,
                              **kwargs)

    def start(self, args: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None,
              user: str | None = None) -> subprocess.Popen[bytes]:
        """A long-running process in this host, its output to `log`; stopped when the network closes."""
        prefix = ["runuser", "-u", user, "--"] if user else []
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 — handed to the child
        process = subprocess.Popen(self.command([*prefix, *args]), env=dict(env) if env is not None else None,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process


class Network:
    """A bridge namespace and hosts on one /24; `close()` kills every process and removes every namespace."""

    def __init__(self, index: int = 77) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.prefix = SUBNET.format(index=index).rsplit(".", 1)[0]
        self.bridge = f"mpbr{self.tag}"
        self.hosts: dict[str, Host] = {}
        _ip("netns", "add", self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")

    def add(self, role: str) -> Host:
        """A new host named `role`, with the next address of the subnet."""
        number = len(self.hosts) + 10
        name, veth = f"mp{role}{self.tag}", f"v{role[:6]}{self.tag}"
        address = f"{self.prefix}.{number}"
        _ip("netns", "add", name)
        _ip("link", "add", veth, "netns", self.bridge, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("-n", self.bridge, "link", "set", veth, "master", "br0", "up")
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        host = Host(name, address, veth)
        self.hosts[role] = host
        return host

    def cut(self, role: str) -> None:
        """Take the host's link down at the bridge: it can reach no other host, nor they it."""
        _ip("-n", self.bridge, "link", "set", self.hosts[role].veth, "down")

    def restore(self, role: str) -> None:
        _ip("-n", self.bridge, "link", "set", self.hosts[role].veth, "up")

    def close(self) -> None:
        for host in self.hosts.values():
            for process in host.processes:
                if process.poll() is None:
                    try:
                        os.killpg(process.pid, 9)
                    except ProcessLookupError:
                        pass
                    process.wait(timeout=10)
            for directory in host.scratch:
                shutil.rmtree(directory, ignore_errors=True)
        for name in [host.name for host in self.hosts.values()] + [self.bridge]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.hosts.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def wait_for(host: Host, check: Sequence[str], timeout: float = 30.0) -> None:
    """Run `check` in the host until it succeeds; RuntimeError after `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while subprocess.run(host.command(check), capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host.name}: {' '.join(check)} did not succeed within {timeout:.0f} s")
        time.sleep(0.2)


def start_redis(host: Host, directory: Path, *, port: int = 6379, appendonly: bool = True) -> str:
    """A Redis server on the host's address (append-only file under `directory`); its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    host.start(["redis-server", "--bind", host.address, "--port", str(port), "--dir", str(directory),
                "--save", "", "--appendonly", "yes" if appendonly else "no", "--protected-mode", "no"],
               log=directory / "redis.log")
    wait_for(host, ["redis-cli", "-h", host.address, "-p", str(port), "ping"])
    return f"redis://{host.address}:{port}/0"


def start_postgres(host: Host, *, port: int = 5432) -> str:
    """A PostgreSQL server of its own on the host's address (trust auth, data in a directory of the postgres
    user, removed with the network); its URL."""
    bindir = _postgres_bindir()
    directory = Path(tempfile.mkdtemp(prefix="mpush-pg-"))
    host.scratch.append(directory)
    directory.chmod(0o755)
    data = directory / "pgdata"
    shutil.chown(directory, "postgres", "postgres")
    subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(data), "--auth=trust",
                    "-U", "postgres", "--no-sync"], capture_output=True, check=True, timeout=120)
    with open(data / "pg_hba.conf", "a", encoding="utf-8") as hba:  # the test subnet may connect, no password
        hba.write(f"host all all {host.address.rsplit('.', 1)[0]}.0/24 trust\n")
    host.start([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(directory),
                "-c", f"listen_addresses={host.address}", "-c", "fsync=off"], user="postgres",
               log=directory / "postgres.log")
    wait_for(host, [str(bindir / "pg_isready"), "-h", host.address, "-p", str(port)], timeout=60)
    return f"postgresql://postgres@{host.address}:{port}/postgres"


def _postgres_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries are not installed under /usr/lib/postgresql")
    return found[-1].parent
