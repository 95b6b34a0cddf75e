"""Signed sends at a steady rate, spread over several API addresses; prints one accepted task id a line.

Run inside the client host: python tests/multihost/load.py APP_ID SECRET COUNT RATE URL [URL …]
A send that gets no answer (its API host was cut off) is not retried: it may or may not have been
accepted, and the test counts only what was answered.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.signing import sign_headers  # noqa: E402

PATH = "/api/v1/messages"


def main() -> None:
    app_id, secret, count, rate, *urls = sys.argv[1:]
    lock, sessions = threading.Lock(), threading.local()

    def send(index: int) -> None:
        session = getattr(sessions, "session", None) or requests.Session()
        sessions.session = session
        body = json.dumps({"channel_id": 1, "receiver": f"1380013{index:04d}",
                           "template_params": {"code": str(index)}}, separators=(",", ":")).encode()
        headers = sign_headers(app_id, secret, "POST", PATH, body, now=int(time.time()), nonce=uuid.uuid4().hex)
        try:
            answer = session.post(urls[index % len(urls)] + PATH, data=body, timeout=5,
                                  headers={"Content-Type": "application/json", **headers}).json()
        except (requests.RequestException, ValueError):
            return
        if answer.get("code") == 0:
            with lock:
                print(answer["data"]["task_id"], flush=True)

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        for index in range(int(count)):
            time.sleep(max(0.0, start + index / float(rate) - time.monotonic()))
            pool.submit(send, index)


if __name__ == "__main__":
    main()
