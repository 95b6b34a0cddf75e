"""An API host cut off from the database host or the Redis host by a partition (packets dropped, no reset)
answers 40002 / 40003 within seconds, not when the kernel gives up on the connection a quarter of an hour
later, and accepts again once the link is back."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.multihost.test_multihost import API_PORT, RULES, VENDOR_PORT, gateway_env, mpush
from tests.support import netns

ROOT = Path(__file__).parents[2]
WHY_NOT = netns.available()
pytestmark = [pytest.mark.skipif(WHY_NOT is not None, reason=f"network namespaces unavailable: {WHY_NOT}"),
              pytest.mark.timeout(240)]

# Seconds: a silent database connection is dropped after 10 s (TCP_USER_TIMEOUT), and the store call made once
# more on a fresh connection gives up connecting after 5 s; a silent Redis fails a call after 5 s.
DEAD_PEER_BOUND = 25.0

SEND = """
import json, sys, time, uuid, requests
sys.path.insert(0, {root!r})
from engine.signing import sign_headers
app_id, secret, url = sys.argv[1:]
body = json.dumps({{"channel_id": 1, "receiver": "13800138000", "template_params": {{"code": "1"}}}}).encode()
headers = sign_headers(app_id, secret, "POST", "/api/v1/messages", body, now=int(time.time()), nonce=uuid.uuid4().hex)
started = time.monotonic()
answer = requests.post(url + "/api/v1/messages", data=body, timeout=120,
                       headers={{"Content-Type": "application/json", **headers}}).json()
print(json.dumps({{"code": answer["code"], "seconds": time.monotonic() - started}}))
"""


def test_an_api_host_partitioned_from_a_store_refuses_within_seconds_and_recovers(tmp_path: Path) -> None:
    """With the database host's link down a send on a pooled connection answers 40002, with the Redis host's
    40003, each within DEAD_PEER_BOUND seconds; once the link is back, sends are accepted again."""
    with netns.Network(index=241) as net:
        db, cache, vendor, api, client = (net.add(role) for role in ("db", "cache", "vendor", "api", "client"))
        database_url = netns.start_postgres(db)
        redis_url = netns.start_redis(cache, tmp_path / "redis")
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "rules.yaml").write_text(RULES.format(vendor=vendor.address, port=VENDOR_PORT))
        env = gateway_env(tmp_path, "api", redis_url, database_url)
        api.run(mpush("migrate"), env=env, cwd=ROOT)
        created = api.run(mpush("apps", "create", "load", "--rate-limit", "0", "--daily-quota", "0"),
                          env=env, cwd=ROOT).stdout
        app_id, secret = (line.split()[1] for line in created.splitlines()[:2])
        api.start(mpush("serve", "--no-workers", "--host", api.address, "--port", str(API_PORT)), env=env,
                  log=tmp_path / "api.log")
        url = f"http://{api.address}:{API_PORT}"
        netns.wait_for(client, [sys.executable, "-c", f"import urllib.request; urllib.request.urlopen('{url}/health')"])

        def send() -> dict[str, float]:
            out = client.run([sys.executable, "-c", SEND.format(root=str(ROOT)), app_id, secret, url], timeout=150)
            answer: dict[str, float] = json.loads(out.stdout)
            return answer

        assert send()["code"] == 0  # the API now holds pooled connections to both stores
        for role, code in (("db", 40002), ("cache", 40003)):
            net.cut(role)
            try:
                refused = send()
            finally:
                net.restore(role)
            print(f"partitioned from the {role} host: code {refused['code']} after {refused['seconds']:.1f} s")
            assert refused["code"] == code and refused["seconds"] < DEAD_PEER_BOUND, (role, refused)
            deadline = time.monotonic() + 30
            while (answer := send())["code"] != 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert answer["code"] == 0, (role, answer)
