"""Customer webhooks and alerts reach only public addresses or the operator's allowlist, checked at connect time."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import webhooks
from engine.store import repo
from engine.targets import TargetPolicy, TargetRefused, is_public
from engine.transport import HttpTransport
from providers.base import HttpRequest
from tests.support.loopback import Reply, loopback
from tests.support.service import CONSOLE_RULES, Gateway, gateway, write_rules

INSIDE_NETWORKS = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                   "100.64.0.0/10", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"]
INSIDE_URLS = [
    "http://127.0.0.1/", "http://2130706433/", "http://0x7f000001/", "http://0177.0.0.1/", "http://127.1/",
    "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/", "http://100.64.0.1/", "http://0.0.0.0/",
    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:8.8.8.8]/", "http://[::127.0.0.1]/",
    "http://[fc00::1]/", "http://[fe80::1]/", "http://[ff02::1]/", "http://[::]/", "http://224.0.0.1/",
    "http://[2002:7f00:1::]/", "http://[64:ff9b::a00:1]/",
]


def _forms(ip: ipaddress.IPv4Address) -> list[str]:
    """The ways a URL can spell one IPv4 address."""
    n, octets = int(ip), str(ip).split(".")
    return [str(ip), str(n), hex(n), ".".join(f"0{int(o):o}" for o in octets), f"[::ffff:{ip}]"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(INSIDE_NETWORKS).flatmap(
    lambda net: st.integers(0, ipaddress.ip_network(net).num_addresses - 1).map(
        lambda i: ipaddress.ip_network(net)[i])), st.integers(0, 4))
def test_every_spelling_of_an_inside_ipv4_address_is_refused(ip: ipaddress.IPv4Address, form: int) -> None:
    """An address in a loopback, private, link-local, CGNAT, multicast or reserved range is refused at set time and
    at connect time, however the URL spells it (dotted, decimal, hex, octal, IPv4-mapped IPv6)."""
    url = f"http://{_forms(ip)[form]}:8080/hook"
    policy = TargetPolicy()
    with pytest.raises(ValueError):
        policy.check_url(url)
    with pytest.raises(TargetRefused):
        policy.pin(url)


@pytest.mark.parametrize("url", INSIDE_URLS)
def test_inside_urls_are_refused_without_an_allowlist(url: str) -> None:
    """Each inside URL is refused when set and when called; the transport never opens a connection."""
    with pytest.raises(ValueError):
        TargetPolicy().check_url(url)
    with pytest.raises(TargetRefused):
        HttpTransport(TargetPolicy())(HttpRequest("POST", url, {}, b"{}", timeout=1.0))


def test_public_addresses_pass() -> None:
    """Globally routable unicast addresses, v4 and v6, are permitted; a public host name is not refused at set time."""
    assert all(is_public(ipaddress.ip_address(a)) for a in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
    TargetPolicy().check_url("https://hooks.example.com/events")
    TargetPolicy().check_url("http://93.184.216.34:8443/events")


def test_a_name_resolving_to_loopback_is_refused_at_connect_time() -> None:
    """A host name is not refused when set (no lookup then), but a call to it that resolves to 127.0.0.1 is."""
    with loopback(lambda _: Reply(200, "{}")) as server:
        url = server.url.replace("127.0.0.1", "localhost")
        with pytest.raises(TargetRefused):
            HttpTransport(TargetPolicy())(HttpRequest("POST", url, {}, b"{}", timeout=2.0))
        assert server.requests == []


def test_allowlist_by_network_and_by_host_name() -> None:
    """The operator's allowlist lets calls reach a listed network or a listed host name, and nothing else."""
    with loopback(lambda _: Reply(204)) as server:
        by_network = HttpTransport(TargetPolicy.parse("127.0.0.0/8"))
        assert by_network(HttpRequest("POST", server.url + "/a", {}, b"{}", timeout=2.0)).status == 204
        by_name = HttpTransport(TargetPolicy.parse("localhost"))
        assert by_name(HttpRequest("POST", server.url.replace("127.0.0.1", "localhost"), {}, b"{}",
                                   timeout=2.0)).status == 204
        with pytest.raises(TargetRefused):  # the name is listed, not the address it stands for
            by_name(HttpRequest("POST", server.url, {}, b"{}", timeout=2.0))
        assert len(server.requests) == 2
    with pytest.raises(ValueError):
        TargetPolicy.parse("10.0.0.0/8, not a host!")


def test_the_transport_connects_to_the_address_checked_never_looking_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host is resolved once, by the policy, and the call is pinned to that answer: a name only the policy's
    lookup knows still reaches the pinned address, so a second (rebinding) answer could not be used."""
    real = socket.getaddrinfo

    def resolver(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        return real("127.0.0.1" if host == "hooks.rebind.test" else host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with loopback(lambda _: Reply(200, "{}")) as server:
        url = server.url.replace("127.0.0.1", "hooks.rebind.test")
        transport = HttpTransport(TargetPolicy.parse("hooks.rebind.test"))
        answer = transport(HttpRequest("POST", url, {}, b"{}", timeout=2.0))
        assert answer.status == 200 and server.requests[0].header("Host").startswith("hooks.rebind.test")


def test_no_redirect_is_followed() -> None:
    """A 3xx answer is the answer: the Location (here an inside address) is never called."""
    with loopback(lambda _: Reply(200, "{}")) as inside:
        with loopback(lambda _: Reply(302, headers={"Location": inside.url + "/admin"})) as hook:
            answer = HttpTransport(TargetPolicy.parse("127.0.0.1"))(HttpRequest("POST", hook.url, {}, b"{}", timeout=2))
            assert answer.status == 302
        assert inside.requests == []


# -- through the gateway ------------------------------------------------------------------------------------------


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with gateway(tmp_path, write_rules(tmp_path, CONSOLE_RULES), workers=False) as running:
        yield running


def _try(gw: Gateway, url: str) -> tuple[int, str]:
    delivery = repo.create_webhook_delivery("t-1", gw.app_id, "delivered", url, "{}")
    webhooks.deliver_webhook(gw.svc, str(delivery.id), time.time())
    [attempt] = repo.list_webhook_tries(delivery.id)
    return attempt.status_code, attempt.error


def test_recorded_errors_do_not_tell_refused_closed_and_silent_targets_apart(gw: Gateway,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused target, a closed port and an endpoint that never answers leave the same generic error in the
    app's records, so webhook tries cannot scan the network; a refused target is never contacted."""
    monkeypatch.setattr(webhooks, "TIMEOUT_SECONDS", 0.5)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    with loopback(lambda _: Reply(200, "{}", delay=3)) as silent:
        results = {_try(gw, "http://169.254.169.254/latest"), _try(gw, "http://0xa000001:6379/"),
                   _try(gw, f"http://127.0.0.1:{closed_port}/"), _try(gw, silent.url + "/hook")}
    assert results == {(0, webhooks.NO_ANSWER)}


def test_allowlisted_receiver_gets_the_webhook(gw: Gateway) -> None:
    """Through the allowlist (127.0.0.1 in the tests' settings) the webhook is delivered as before."""
    with loopback(lambda _: Reply(200, "{}")) as receiver:
        assert _try(gw, receiver.url + "/hook") == (200, "")


def test_alerts_follow_the_same_policy(gw: Gateway) -> None:
    """An alert webhook at an address outside the allowlist is not called; the alert reports failure."""
    task = repo.get_task(gw.send("otp", "13800138000", {"code": "1"})["data"]["task_id"])
    assert not webhooks.send_alert(gw.svc, "http://[::1]:9/alerts", "critical", task, provider="p", error_code="",
                                   error_message="")
    with loopback(lambda _: Reply(200, "{}")) as receiver:
        assert webhooks.send_alert(gw.svc, receiver.url + "/alerts", "critical", task, provider="p", error_code="",
                                   error_message="")


@pytest.mark.parametrize("url", ["http://167772161:8080/", "http://169.254.169.254/", "http://[::ffff:10.0.0.1]/",
                                 "http://localhost:8080/", "http://10.0.0.5/hook"])
def test_admin_api_refuses_an_inside_webhook_url(gw: Gateway, url: str) -> None:
    """Setting or creating an app with an inside webhook URL answers 400 and changes nothing."""
    headers = {"Authorization": "Bearer admin-token"}
    answer = requests.post(f"{gw.url}/api/admin/apps/{gw.app_id}/webhook", json={"webhook_url": url}, headers=headers,
                           timeout=5)
    assert answer.status_code == 400 and answer.json()["code"] != 40001
    assert repo.get_app(gw.app_id).webhook_url is None
    created = requests.post(f"{gw.url}/api/admin/apps", json={"name": "x", "webhook_url": url}, headers=headers,
                            timeout=5)
    assert created.status_code == 400 and [app.name for app in repo.list_apps()] == ["test-app"]
    fine = requests.post(f"{gw.url}/api/admin/apps/{gw.app_id}/webhook",
                         json={"webhook_url": "https://hooks.example.com/e"}, headers=headers, timeout=5)
    assert fine.status_code == 200

