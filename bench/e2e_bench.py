"""End-to-end benchmark: signed API -> store -> stream -> worker -> fake provider over loopback.

Starts the mock vendor (`mock_vendor.py`), one `mpush serve --no-workers` process and one `mpush worker`
process on a scratch rules dir, database and Redis db, then offers load at a fixed rate from
asyncio clients on keep-alive connections and prints: offered and achieved accept rate, accept latency p50/p99, delivered
messages per second, accept-to-delivery latency p50/p99, CPU per message of each process (PostgreSQL's
backends for the bench database, or a MySQL / MariaDB server's process on this machine, included), and per message the database statements and Redis round trips
of the API and the worker (counted in those processes by `counted.py`).

    .venv/bin/python bench/e2e_bench.py --rate 1000 --seconds 20
    .venv/bin/python bench/e2e_bench.py --batch 20 --rate 2000          # 20 receivers per request
    .venv/bin/python bench/e2e_bench.py --batch 1000 --rate 10000 --vendor-batch   # 200 receivers a vendor call
    .venv/bin/python bench/e2e_bench.py --database-url postgresql://postgres@127.0.0.1/test
    .venv/bin/python bench/e2e_bench.py --database-url mysql://root@127.0.0.1:3306/bench
    .venv/bin/python bench/e2e_bench.py --apis 2 --workers 2                    # processes sharing the load
    .venv/bin/python bench/e2e_bench.py --redis-url redis://127.0.0.1:7301 --redis-cluster --stream-shards 6
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis
from redis.cluster import RedisCluster

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.signing import sign_headers  # noqa: E402
from mock_vendor import take_message  # noqa: E402  (bench/, this script's folder, is on the path)

RULES = """
templates:
  - {{name: code, variables: [code], text: "your code is {{code}}"}}
channels:
  - {{id: 1, name: bench, type: sms, template: code}}
providers:
  - {{name: vendor, type: fake, config: {{url: "http://127.0.0.1:{port}/send"{batch_url}}}}}
routing:
  - {{name: bench, when: {{channel: bench}}, providers: [{{use: vendor}}]}}
quotas:
  - {{name: per-app, key: [app], limit: 100000000, per: 1d}}
  - {{name: per-receiver, key: [app, receiver], limit: 1000, per: 1h}}
"""

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def signed_requests(count: int, app_id: str, secret: str, batch: int, port: int) -> list[bytes]:
    """Whole HTTP requests, signed before the run so the load generator spends its CPU on sending only."""
    path = "/api/v1/messages/batch" if batch > 1 else "/api/v1/messages"
    now, built = int(time.time()), []
    for _ in range(count):
        receivers = [f"138{uuid.uuid4().int % 10**8:08d}" for _ in range(batch)]
        body: dict[str, object] = {"channel_id": 1, "template_params": {"code": "123456"}}
        body.update({"receivers": receivers} if batch > 1 else {"receiver": receivers[0]})
        raw = json.dumps(body).encode()
        headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "Content-Length": str(len(raw)),
                   **sign_headers(app_id, secret, "POST", path, raw, now=now)}
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        built.append(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + raw)
    return built


@dataclass
class Tally:
    """What the clients saw: latencies, refusals, and when each task was accepted."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    accepted: dict[str, float] = field(default_factory=dict)
    refused_at: list[float] = field(default_factory=list)  # when each refusal was answered (the restart bench's timeline)
    first_sent: float = 0.0  # when the first request went out: rates are measured from it, not from the set-up
    last_answered: float = 0.0


class Client(asyncio.Protocol):
    """Sends pre-signed requests on one keep-alive connection, one every `interval` seconds from `start`.

    All clients share one thread and event loop (threads in the load generator would queue on its own
    GIL and add that wait to the latencies it measures), and each is a bare protocol, timed by the loop's
    `call_at`: the leaner the load generator, the more of the two cores is left to the gateway.
    """

    def __init__(self, requests: list[bytes], interval: float, start: float, batch: int, tally: Tally) -> None:
        self.requests, self.interval, self.next_at, self.batch, self.tally = requests, interval, start, batch, tally
        self.loop = asyncio.get_running_loop()
        self.finished = self.loop.create_future()
        self.sent, self.buffer, self.started = 0, b"", 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.call_at(self.next_at, self.send_next)

    def send_next(self) -> None:
        self.started = time.perf_counter()
        if not self.tally.first_sent:
            self.tally.first_sent = time.time()
        self.transport.write(self.requests[self.sent])  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (message := take_message(self.buffer)) is not None:
            _, body, self.buffer = message
            self.tally.latencies.append(time.perf_counter() - self.started)
            self.tally.last_answered = time.time()
            answer = answer_of(body)
            if answer["code"] != 0:
                self.tally.errors.append(answer["message"])
                self.tally.refused_at.append(time.time())
            elif self.batch == 1:
                self.tally.accepted[answer["data"]["task_id"]] = time.time()
            self.sent += 1
            self.next_at += self.interval
            if self.sent == len(self.requests):
                self.transport.close()
                self.finished.set_result(None)
            else:
                self.loop.call_at(self.next_at, self.send_next)


def answer_of(body: bytes) -> dict[str, object]:
    """The API's JSON answer; a body that is not one (a proxy's or a crash's page) counts as a refusal."""
    try:
        return json.loads(body)  # type: ignore[no-any-return]
    except ValueError:
        return {"code": -1, "message": f"not JSON: {body[:60]!r}"}


async def offer(port: int | list[int], prepared: list[bytes], clients: int, interval: float, batch: int,
                tally: Tally) -> None:
    """Run the clients, spread over the API processes' ports in turn."""
    ports = port if isinstance(port, list) else [port]
    loop = asyncio.get_running_loop()
    start, share = loop.time() + 0.1, len(prepared) // clients
    running = []
    for i in range(clients):
        _, protocol = await loop.create_connection(
            lambda i=i: Client(prepared[i * share:(i + 1) * share], interval, start + i * interval / clients,
                               batch, tally), "127.0.0.1", ports[i % len(ports)])
        running.append(protocol.finished)
    await asyncio.gather(*running)


try:
    from uvloop import run as run_loop  # the load generator shares the two cores: the leaner its loop, the truer the figures
except ImportError:
    run_loop = asyncio.run  # type: ignore[assignment]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000, help="messages offered per second")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--batch", type=int, default=1, help="receivers per request")
    parser.add_argument("--vendor-batch", action="store_true",
                        help="the vendor takes up to 200 receivers of one text a call (mock_vendor.py /batch)")
    parser.add_argument("--clients", type=int, default=32,
                        help="keep-alive connections, each waiting for its answer before its next request: "
                             "with 16, an accept p50 over 16 ms made them offer less than 1000 msg/s")
    parser.add_argument("--worker-threads", type=int, default=16,
                        help="send threads of the worker: more calls at once share more of each claim's and "
                             "record's transaction (16 against 4: 0.57 against 1.64 statements per message)")
    parser.add_argument("--worker-readers", type=int, default=2, help="stream readers of the worker")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13",
                        help="a Redis database of its own (the tests use 14 and 15: a bench worker there would take their jobs)")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--redis-cluster", action="store_true", help="--redis-url names a node of a Redis Cluster")
    parser.add_argument("--stream-shards", type=int, default=1)
    parser.add_argument("--apis", type=int, default=1, help="API processes (the clients spread over them)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mpush-bench-"))
    mock_port, api_ports = free_port(), [free_port() for _ in range(args.apis)]
    write_rules(tmp / "rules", mock_port, args.vendor_batch)
    database_url = args.database_url or f"sqlite:///{tmp / 'mpush.db'}"
    bench_redis = RedisCluster.from_url(args.redis_url) if args.redis_cluster else redis.Redis.from_url(args.redis_url)
    bench_redis.flushdb()  # on a cluster: every primary
    env = gateway_env(tmp, args.redis_url, database_url, args.worker_threads, args.worker_readers)
    env.update({"MPUSH_REDIS_CLUSTER": "true" if args.redis_cluster else "false",
                "MPUSH_STREAM_SHARDS": str(args.stream_shards)})
    names = [f"api {n + 1}" if args.apis > 1 else "api" for n in range(args.apis)]
    names += [f"worker {n + 1}" if args.workers > 1 else "worker" for n in range(args.workers)]
    counted = {name: tmp / f"{name.replace(' ', '-')}-counts.json" for name in names}
    app_id, secret = create_app(env)
    counted_run = [sys.executable, str(ROOT / "bench" / "counted.py")]
    commands = {name: [*counted_run, str(counted[name]), "serve", "--no-workers", "--port", str(port)]
                for name, port in zip(names, api_ports)}
    commands.update({name: [*counted_run, str(counted[name]), "worker"] for name in names[args.apis:]})
    mock = subprocess.Popen([sys.executable, str(ROOT / "bench" / "mock_vendor.py"), str(mock_port)])
    started = {name: subprocess.Popen(command, env=env) for name, command in commands.items()}
    processes = [mock, *started.values()]
    try:
        wait_port(mock_port)
        for port in api_ports:
            wait_port(port)
        time.sleep(1.0)
        named = {**{name: process.pid for name, process in started.items()}, "mock": mock.pid,
                 "load generator": os.getpid()}
        named.update(redis_processes(bench_redis))
        return run_load(args, api_ports, mock_port, app_id, secret, named, counted, database_url)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def write_rules(directory: Path, mock_port: int, vendor_batch: bool = False) -> None:
    """The bench's rule set: one channel, one `fake` provider calling the mock vendor on `mock_port`."""
    directory.mkdir()
    batch_url = f', batch_url: "http://127.0.0.1:{mock_port}/batch"' if vendor_batch else ""
    (directory / "bench.yaml").write_text(RULES.format(port=mock_port, batch_url=batch_url), encoding="utf-8")


def gateway_env(tmp: Path, redis_url: str, database_url: str, worker_threads: int, worker_readers: int) -> dict[str, str]:
    """The environment of the bench's `mpush` processes (rules in tmp/rules, files in tmp/data)."""
    return {**os.environ, "MPUSH_REDIS_URL": redis_url, "MPUSH_DATABASE_URL": database_url,
            "MPUSH_RULES_DIR": str(tmp / "rules"), "MPUSH_DATA_DIR": str(tmp / "data"),
            "MPUSH_ENCRYPTION_KEY": "b" * 32, "MPUSH_ADMIN_TOKEN": "bench", "MPUSH_LOG_LEVEL": "WARNING",
            "MPUSH_WORKER_THREADS": str(worker_threads), "MPUSH_WORKER_READERS": str(worker_readers),
            "MPUSH_WATCH_RULES": "false"}


def create_app(env: dict[str, str]) -> tuple[str, str]:
    """A new app without quota or rate limit (migrating the database first, as the CLI does); its id and secret."""
    created = subprocess.run([sys.executable, "-m", "engine.cli", "apps", "create", "bench", "--daily-quota", "0",
                              "--rate-limit", "0"], env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in created.splitlines() if line.startswith("app_"))
    return fields["app_id"].strip(), fields["app_secret"].strip()


def redis_processes(client: redis.Redis | RedisCluster) -> dict[str, int]:
    """The Redis server processes on this machine (they share its cores): one, or each cluster node by port."""
    if isinstance(client, RedisCluster):
        infos = client.info("server", target_nodes=RedisCluster.PRIMARIES)
        pids = {f"redis :{node.rpartition(':')[2]}": int(info["process_id"]) for node, info in infos.items()}
    else:
        pids = {"redis": int(client.info("server")["process_id"])}
    return {name: pid for name, pid in pids.items() if Path(f"/proc/{pid}").exists()}


def read_counts(paths: dict[str, Path]) -> dict[str, dict[str, int]]:
    return {name: json.loads(path.read_text()) if path.exists() else {} for name, path in paths.items()}


def postgres_backends(database_url: str) -> dict[str, int]:
    """The server processes serving the bench database, when it is a PostgreSQL on this machine."""
    if not database_url.startswith(("postgresql:", "postgres:")):
        return {}
    import psycopg2

    with psycopg2.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
        pids = [pid for (pid,) in cursor.fetchall()]
    conn.close()
    return {f"postgres {pid}": pid for pid in pids if Path(f"/proc/{pid}").exists()}


def mysql_server(database_url: str) -> dict[str, int]:
    """The server process of the bench database, when it is a MySQL or MariaDB on this machine (one process
    serves every database there: its CPU is the whole server's)."""
    if not database_url.startswith("mysql:"):
        return {}
    import pymysql

    parts = urlsplit(database_url)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username or "root",
                           password=parts.password or "")
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@pid_file")
        (pid_file,) = cursor.fetchone()
    conn.close()
    try:
        pid = int(Path(pid_file).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return {}  # not on this machine, or not readable
    return {"mysql server": pid}


def run_load(args: argparse.Namespace, api_ports: list[int], mock_port: int, app_id: str, secret: str,
             processes: dict[str, int], counted: dict[str, Path], database_url: str) -> int:
    tally = Tally()
    request_rate = args.rate / args.batch
    per_client = int(request_rate * args.seconds / args.clients)
    prepared = signed_requests(per_client * args.clients, app_id, secret, args.batch, api_ports[0])
    processes = {**processes, **postgres_backends(database_url), **mysql_server(database_url)}
    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    time.sleep(0.3)
    counts_before = read_counts(counted)
    run_loop(offer(api_ports, prepared, args.clients, args.clients / request_rate, args.batch, tally))
    load_seconds = tally.last_answered - tally.first_sent
    latencies, errors, accepted = tally.latencies, tally.errors, tally.accepted
    offered = len(latencies) * args.batch
    received = wait_delivered(mock_port, offered - len(errors) * args.batch, timeout=120)
    time.sleep(0.5)  # the counters are written every 0.2 s
    counts_after = read_counts(counted)
    processes.update(postgres_backends(database_url))  # backends opened during the run started from nothing
    cpu = {name: [after - before for after, before in
                  zip(cpu_seconds(pid), cpu_before.get(name, (0.0, 0.0)))]
           for name, pid in processes.items() if Path(f"/proc/{pid}").exists()}
    backends = [name for name in cpu if name.startswith("postgres ")]
    if backends:
        shares = [cpu.pop(name) for name in backends]
        cpu["postgres"] = [sum(user for user, _ in shares), sum(system for _, system in shares)]
    times = [at for at, _ in received]
    delivered_rate = len(received) / (max(times) - tally.first_sent) if times else 0.0
    e2e = [at - accepted[task_id] for at, task_id in received if task_id in accepted]
    print(f"cores: {os.cpu_count()}  batch: {args.batch}  clients: {args.clients}  "
          f"worker threads: {args.worker_threads}  readers: {args.worker_readers}  "
          f"redis: {'cluster' if args.redis_cluster else 'one server'}, {args.stream_shards} stream shard(s)  "
          f"processes: {args.apis} API + {args.workers} worker")
    print(f"offered: {args.rate:.0f} msg/s for {args.seconds:.0f} s; accepted {offered - len(errors) * args.batch}"
          f" messages at {offered / load_seconds:.0f} msg/s ({len(latencies) / load_seconds:.0f} req/s),"
          f" {len(errors)} refused {set(errors) or ''}")
    print(f"accept latency: p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    print(f"delivered: {len(received)} messages, {delivered_rate:.0f} msg/s sustained (first accept to last delivery)")
    if e2e:
        print(f"accept->delivery: p50 {statistics.median(e2e) * 1000:.1f} ms, p99 {percentile(e2e, 0.99) * 1000:.1f} ms")
    if received:
        print("CPU µs per message (user+system): " + ", ".join(
            f"{name} {user / len(received) * 1e6:.0f}+{system / len(received) * 1e6:.0f}"
            for name, (user, system) in cpu.items()))
        print_counts(counts_before, counts_after, len(received))
    return 0


def print_counts(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], messages: int) -> None:
    """Database statements (round trips), transactions and Redis round trips and commands per message."""
    for name in after:
        delta = {key: after[name].get(key, 0) - before[name].get(key, 0) for key in after[name]}
        print(f"per message, {name}: database statements {delta.get('db_statements', 0) / messages:.2f} "
              f"(transactions {delta.get('db_transactions', 0) / messages:.2f}), Redis round trips "
              f"{delta.get('redis_round_trips', 0) / messages:.2f} (commands {delta.get('redis_commands', 0) / messages:.2f})")


def wait_delivered(port: int, expected: int, timeout: float) -> list[tuple[float, str]]:
    deadline = time.monotonic() + timeout
    received: list[tuple[float, str]] = []
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/stats")
        received = [tuple(item) for item in json.loads(connection.getresponse().read())]  # type: ignore[misc]
        if len(received) >= expected:
            break
        time.sleep(0.5)
    return received


if __name__ == "__main__":
    sys.exit(main())
