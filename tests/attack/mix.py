"""Concurrent good and bad sends from several apps, for the isolation tests: who got what answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from engine.store import repo
from tests.attack.hostile import SEND, Hostile, good_body, send_raw, signed_headers
from tests.support.service import Gateway


@dataclass(frozen=True)
class Client:
    app_id: str
    secret: str


def new_clients(gw: Gateway, count: int, prefix: str) -> list[Client]:
    """`count` fresh apps without quota or rate limit."""
    made = [repo.create_app(f"{prefix}-{i}", gw.svc.key, daily_quota=0, rate_limit=0) for i in range(count)]
    return [Client(app.app_id, secret) for app, secret in made]


def signed_send(client: Client, body: bytes) -> Hostile:
    request = Hostile(SEND, body)
    request.header("Content-Type", "application/json")
    for name, value in signed_headers(client.app_id, client.secret, SEND, body).items():
        request.header(name, value)
    return request


def good_send_body(receiver: str) -> bytes:
    return json.dumps({**good_body(SEND), "receiver": receiver}).encode()


def bad_send_bodies(literals: Sequence[tuple[str, str]]) -> list[bytes]:
    """Send bodies with one field set to raw JSON text, e.g. ("receiver", '"\\ud800"')."""
    bodies = []
    for name, literal in literals:
        body = {**good_body(SEND), name: "@@"}
        bodies.append(json.dumps(body).replace('"@@"', literal).encode())
    return bodies


def run_mix(gw: Gateway, good: list[Client], bad: list[Client], bad_bodies: list[bytes],
            rounds: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Every good client sends `rounds` good sends while every bad client sends `rounds` bad ones, all at once
    (one thread per client, released together); the answers of the good and of the bad sends."""
    start = threading.Barrier(len(good) + len(bad))
    good_answers: list[dict[str, object]] = []
    bad_answers: list[dict[str, object]] = []
    lock = threading.Lock()

    def sender(client: Client, bodies: list[bytes], into: list[dict[str, object]]) -> None:
        start.wait()
        for body in bodies:
            status, raw = send_raw(gw.url, signed_send(client, body))
            with lock:
                into.append({"status": status, **json.loads(raw)})

    threads = [threading.Thread(target=sender, args=(c, [good_send_body(f"1380013{8000 + i:04d}")
                                                           for i in range(rounds)], good_answers)) for c in good]
    threads += [threading.Thread(target=sender, args=(c, [bad_bodies[i % len(bad_bodies)] for i in range(rounds)],
                                                     bad_answers)) for c in bad]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return good_answers, bad_answers
