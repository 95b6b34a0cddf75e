"""Isolation benchmark: does one app's flood of bad requests hurt another app's sends?

Starts the same gateway as `e2e_bench.py` (mock vendor, `mpush serve --no-workers`, `mpush worker`), with two
apps. The good app sends at `--rate` msg/s for `--seconds`, twice: alone, then while the flooding app offers
`--flood-rate` bad requests per second: oversized bodies, malformed JSON, NaN and deeply nested bodies,
forged signatures, and signed sends whose receivers are shaped to make a backtracking regex explode (the
rules hold a `matches: '^(a+)+$'` rule), all of which, when accepted, end in a webhook call to an endpoint
of the flooding app that accepts connections and never answers. Prints the good app's accept p99 and
accept->delivery p99 for both runs, and what the flood got.

    .venv/bin/python bench/isolation_bench.py --redis-url redis://127.0.0.1:6379/9
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_bench import (  # noqa: E402
    RULES, ROOT, Tally, free_port, offer, percentile, run_loop, signed_requests, wait_delivered, wait_port,
)
from mock_vendor import take_message  # noqa: E402

from engine import keys  # noqa: E402
from engine.signing import sign_headers  # noqa: E402

REGEX_RULE = """
  - {name: shaped, priority: 200, when: {receiver: {matches: '^(a+)+$'}}, providers: [{use: vendor}]}
"""


FLOOD_MIX = ["shaped"] * 5 + ["forged"] * 5 + ["truncated"] * 3 + ["nan"] * 3 + ["blank"] * 2 + ["deep", "oversized"]


def flood_bodies(oversized: int) -> dict[str, bytes]:
    """One body per kind of bad request: what a careless or hostile client sends."""
    def send(receiver: str, code: str = "1") -> bytes:
        return json.dumps({"channel_id": 1, "receiver": receiver, "template_params": {"code": code}}).encode()

    return {
        "shaped": send("a" * 28 + "!"),  # signed and well formed: a receiver built to stall a backtracking regex
        "forged": send("13800138000"),  # signed with the wrong secret
        "truncated": b'{"channel_id": 1, "receiver": "138',
        "nan": b'{"channel_id": 1, "receiver": NaN, "template_params": {}}',
        "blank": b" \n ",
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "oversized": send("13800138000", "x" * oversized),
    }


def flood_requests(count: int, app_id: str, secret: str, port: int, oversized: int,
                   kinds: list[str]) -> list[tuple[bytes, bytes]]:
    """(head, body) of each bad request, signed where the signer can read the body; the bodies are shared, so
    thousands of oversized requests take one body's memory."""
    path, now, bodies = "/api/v1/messages", int(time.time()), flood_bodies(oversized)
    mix, built = [kind for kind in FLOOD_MIX if kind in kinds], []
    for n in range(count):
        kind = mix[n % len(mix)]
        body = bodies[kind]
        try:
            auth = sign_headers(app_id, "forged" if kind == "forged" else secret, "POST", path, body, now=now)
        except Exception:  # a body the signer cannot canonicalise: sent with a made-up signature
            auth = {"X-App-Id": app_id, "X-Timestamp": str(now), "X-Nonce": uuid.uuid4().hex, "X-Signature": "0" * 64}
        headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "Content-Length": str(len(body)),
                   **auth}
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        built.append((f"POST {path} HTTP/1.1\r\n{head}\r\n".encode(), body))
    return built


class Flooder(asyncio.Protocol):
    """Sends its requests at a fixed pace on one connection, reconnecting when the server closes it; counts
    the answers by HTTP status."""

    def __init__(self, requests: list[tuple[bytes, bytes]], interval: float, start: float, port: int,
                 tally: Counter[str]) -> None:
        self.requests, self.interval, self.next_at, self.port, self.tally = requests, interval, start, port, tally
        self.loop = asyncio.get_running_loop()
        self.finished = self.loop.create_future()
        self.sent, self.buffer, self.transport = 0, b"", None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.buffer = transport, b""  # type: ignore[assignment]
        self.loop.call_at(max(self.next_at, self.loop.time()), self.send_next)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.sent < len(self.requests):
            self.tally["closed"] += 1
            self.next_at += self.interval
            self.sent += 1
            self.loop.create_task(self.reconnect())
        elif not self.finished.done():
            self.finished.set_result(None)

    async def reconnect(self) -> None:
        if self.sent >= len(self.requests):
            self.finished.set_result(None)
            return
        await self.loop.create_connection(lambda: self, "127.0.0.1", self.port)

    def send_next(self) -> None:
        if self.transport is not None and self.sent < len(self.requests):
            head, body = self.requests[self.sent]
            self.transport.writelines((head, body))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (message := take_message(self.buffer)) is not None:
            head, body, self.buffer = message
            self.tally[answer_code(head, body)] += 1
            self.sent += 1
            self.next_at += self.interval
            if self.sent == len(self.requests):
                self.transport.close()  # type: ignore[union-attr]
            else:
                self.loop.call_at(self.next_at, self.send_next)


def answer_code(head: str, body: bytes) -> str:
    """The envelope's code (errors answer HTTP 200 or 4xx with it), else the HTTP status."""
    try:
        return str(json.loads(body)["code"])
    except (ValueError, KeyError, TypeError):
        return "HTTP " + head.split(" ", 2)[1]


async def flood(port: int, prepared: list[tuple[bytes, bytes]], clients: int, rate: float, tally: Counter[str]) -> None:
    loop = asyncio.get_running_loop()
    start, share, interval = loop.time() + 0.1, len(prepared) // clients, clients / rate
    running = []
    for i in range(clients):
        protocol = Flooder(prepared[i * share:(i + 1) * share], interval, start + i * interval / clients, port, tally)
        await loop.create_connection(lambda protocol=protocol: protocol, "127.0.0.1", port)
        running.append(protocol.finished)
    await asyncio.gather(*running)


async def both(args: argparse.Namespace, port: int, good: list[bytes], tally: Tally, bad: list[tuple[bytes, bytes]],
               flood_tally: Counter[str]) -> None:
    """Both loads at once, stopped after `--seconds` plus a grace of a quarter: a saturated gateway answers
    late, and the paced clients wait for each answer, so what is unanswered by then is simply not counted."""
    runs = [asyncio.ensure_future(offer(port, good, args.clients, args.clients / args.rate, 1, tally))]
    if bad:
        runs.append(asyncio.ensure_future(flood(port, bad, args.flood_clients, args.flood_rate, flood_tally)))
    _, late = await asyncio.wait(runs, timeout=args.seconds * 1.25 + 1)
    for run in late:
        run.cancel()


def hanging_endpoint() -> tuple[socket.socket, int]:
    """A webhook endpoint that accepts connections (the kernel's backlog does) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    return listener, listener.getsockname()[1]


def create_app(env: dict[str, str], name: str, *extra: str) -> tuple[str, str]:
    created = subprocess.run([sys.executable, "-m", "engine.cli", "apps", "create", name, "--daily-quota", "0",
                              "--rate-limit", "0", *extra], env=env, check=True, capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in created.splitlines() if line.startswith("app_"))
    return fields["app_id"].strip(), fields["app_secret"].strip()


def delivered_times(mock_port: int, accepted: dict[str, float], timeout: float) -> list[float]:
    """accept->delivery seconds of each accepted task, once all arrived at the vendor (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        arrived = {task_id: at for at, task_id in wait_delivered(mock_port, 0, timeout=1)}
        if all(task_id in arrived for task_id in accepted) or time.monotonic() > deadline:
            return [arrived[task_id] - at for task_id, at in accepted.items() if task_id in arrived]
        time.sleep(0.5)


def measure(args: argparse.Namespace, port: int, mock_port: int, good_app: tuple[str, str],
            bad_app: tuple[str, str] | None) -> None:
    count = int(args.rate * args.seconds) // args.clients * args.clients
    good = signed_requests(count, *good_app, 1, port)
    bad = flood_requests(int(args.flood_rate * args.seconds), *bad_app, port, args.oversized,
                         args.kinds.split(",")) if bad_app else []
    tally, flood_tally = Tally(), Counter[str]()
    started = time.monotonic()
    run_loop(both(args, port, good, tally, bad, flood_tally))
    took = time.monotonic() - started
    e2e = delivered_times(mock_port, tally.accepted, timeout=60)
    label = "with the flood" if bad_app else "alone"
    print(f"good app {label}: {len(tally.latencies)} of {len(good)} sends answered in {took:.1f} s, "
          f"{len(tally.errors)} errors "
          f"{set(tally.errors) or ''}; accept p50 {percentile(tally.latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(tally.latencies, 0.99) * 1000:.1f} ms; accept->delivery p50 "
          f"{percentile(e2e, 0.5) * 1000:.1f} ms, p99 {percentile(e2e, 0.99) * 1000:.1f} ms; "
          f"{len(tally.accepted) - len(e2e)} not delivered")
    if bad_app:
        answered = sum(n for status, n in flood_tally.items() if status != "closed")
        print(f"  flood: {len(bad)} offered at {args.flood_rate:.0f}/s, {answered} answered "
              f"({answered / took:.0f}/s); answers by code: {dict(sorted(flood_tally.items()))}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500, help="the good app's messages per second")
    parser.add_argument("--flood-rate", type=float, default=1000, help="the bad app's requests per second")
    parser.add_argument("--seconds", type=float, default=20, help="length of each of the two runs")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--flood-clients", type=int, default=16)
    parser.add_argument("--oversized", type=int, default=1_000_000, help="bytes of the oversized template parameter")
    parser.add_argument("--kinds", default=",".join(dict.fromkeys(FLOOD_MIX)),
                        help="the kinds of bad request to send, comma-separated (default: all, mixed as FLOOD_MIX)")
    parser.add_argument("--flood-webhook", choices=("hanging", "fast", "none"), default="hanging",
                        help="the flooding app's webhook endpoint; fast (the mock vendor) and none are controls")
    parser.add_argument("--no-regex-rule", action="store_true",
                        help="leave out the matches rule (to see the other kinds of flood without a regex stall)")
    parser.add_argument("--worker-threads", type=int, default=4)
    parser.add_argument("--worker-readers", type=int, default=1)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13",
                        help="its mpush:* keys are deleted first (the tests use 14 and 15)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mpush-isolation-"))
    mock_port, api_port = free_port(), free_port()
    (tmp / "rules").mkdir()
    rules = RULES.format(port=mock_port, batch_url="")  # one send a message, as the good app measures
    if not args.no_regex_rule:
        rules = rules.replace("routing:\n", "routing:" + REGEX_RULE)
    (tmp / "rules" / "bench.yaml").write_text(rules, encoding="utf-8")
    client = redis.Redis.from_url(args.redis_url)
    stale = [name for pattern in keys.PATTERNS for name in client.scan_iter(match=pattern, count=1000)]
    if stale:
        client.delete(*stale)
    env = {**os.environ, "MPUSH_REDIS_URL": args.redis_url, "MPUSH_DATABASE_URL": f"sqlite:///{tmp / 'mpush.db'}",
           "MPUSH_RULES_DIR": str(tmp / "rules"), "MPUSH_DATA_DIR": str(tmp / "data"),
           "MPUSH_ENCRYPTION_KEY": "b" * 32, "MPUSH_ADMIN_TOKEN": "bench", "MPUSH_LOG_LEVEL": "ERROR",
           "MPUSH_WORKER_THREADS": str(args.worker_threads), "MPUSH_WORKER_READERS": str(args.worker_readers),
           "MPUSH_WATCH_RULES": "false", "MPUSH_OUTBOUND_ALLOW": "127.0.0.1/32"}
    listener, hook_port = hanging_endpoint()
    good_app = create_app(env, "good")
    hook_url = {"hanging": f"http://127.0.0.1:{hook_port}/hook", "fast": f"http://127.0.0.1:{mock_port}/hook"}
    hook = ["--webhook-url", hook_url[args.flood_webhook]] if args.flood_webhook in hook_url else []
    bad_app = create_app(env, "flood", *hook)
    mpush = [sys.executable, "-m", "engine.cli"]
    processes = [
        subprocess.Popen([sys.executable, str(ROOT / "bench" / "mock_vendor.py"), str(mock_port)]),
        subprocess.Popen([*mpush, "serve", "--no-workers", "--port", str(api_port)], env=env),
        subprocess.Popen([*mpush, "worker"], env=env),
    ]
    try:
        wait_port(mock_port)
        wait_port(api_port)
        time.sleep(1.0)
        print(f"cores: {os.cpu_count()}  good app: {args.rate:.0f} msg/s  flood: {args.flood_rate:.0f} req/s  "
              f"{args.seconds:.0f} s per run  worker threads: {args.worker_threads}  readers: {args.worker_readers}")
        measure(args, api_port, mock_port, good_app, None)
        measure(args, api_port, mock_port, good_app, bad_app)
        return 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        listener.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
