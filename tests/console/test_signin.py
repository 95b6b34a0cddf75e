"""Console sign-in over real HTTP: passwords, sessions, CSRF, the failure limit, cookies."""

from __future__ import annotations

import requests

from api.console import security
from tests.console.conftest import OPERATOR, PASSWORD, Console
from tests.support.service import Gateway


def test_every_page_requires_a_session(gw: Gateway) -> None:
    """Without signing in, pages redirect to the sign-in form (remembering where to go) and posts are refused."""
    client = Console(gw.url)
    for path in ("/console/", "/console/messages", "/console/apps", "/console/rules", "/console/providers",
                 "/console/batches", "/console/messages/x"):
        answer = client.http.get(gw.url + path, allow_redirects=False, timeout=5)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login?next=")
    assert client.http.post(gw.url + "/console/apps", data={"name": "x"}, timeout=5).status_code == 403


def test_sign_in_sets_a_strict_http_only_cookie_and_returns_to_the_page_asked_for(gw: Gateway) -> None:
    """A right password opens a session whose cookie is HttpOnly and SameSite=Strict, then goes back to `next`."""
    client = Console(gw.url)
    client.get("/console/login", next="/console/rules")
    answer = client.http.post(gw.url + "/console/login", timeout=5, allow_redirects=False,
                              data={"name": OPERATOR, "password": PASSWORD, "csrf": client.csrf,
                                    "next": "/console/rules"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/rules"
    cookie = answer.headers["set-cookie"]
    assert security.SESSION_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    assert "Rules" in client.get("/console/rules").text


def test_next_never_leaves_the_console(gw: Gateway) -> None:
    """An off-site `next` after sign-in lands on the dashboard instead."""
    client = Console(gw.url)
    client.get("/console/login")
    answer = client.http.post(gw.url + "/console/login", timeout=5, allow_redirects=False,
                              data={"name": OPERATOR, "password": PASSWORD, "csrf": client.csrf,
                                    "next": "//evil.example/"})
    assert answer.headers["location"] == "/console/"


def test_wrong_password_is_refused(gw: Gateway) -> None:
    """A wrong password answers 401 with the form again and no session."""
    client = Console(gw.url)
    answer = client.sign_in(password="not the password")
    assert answer.status_code == 401 and "Wrong name or password" in answer.text
    assert security.SESSION_COOKIE not in client.http.cookies


def test_sign_in_without_the_form_token_is_refused(gw: Gateway) -> None:
    """A sign-in post whose CSRF token does not match the form's cookie is refused, even with the right password."""
    client = Console(gw.url)
    client.get("/console/login")
    answer = client.post("/console/login", {"name": OPERATOR, "password": PASSWORD}, csrf="forged")
    assert answer.status_code == 403 and security.SESSION_COOKIE not in client.http.cookies


def test_failed_sign_ins_are_limited_per_account(gw: Gateway) -> None:
    """After five wrong passwords the account is locked for a while: even the right password is refused."""
    client = Console(gw.url)
    for _ in range(security.FAILS_PER_ACCOUNT):
        assert client.sign_in(password="wrong password!").status_code == 401
    answer = client.sign_in()
    assert answer.status_code == 429 and "Too many failed sign-ins" in answer.text


def test_a_post_without_the_session_token_is_refused_and_changes_nothing(console: Console, gw: Gateway) -> None:
    """A signed-in post carrying no or a wrong CSRF token answers 403 and creates nothing."""
    assert console.post("/console/apps", {"name": "forged"}, csrf="").status_code == 403
    assert console.post("/console/apps", {"name": "forged"}, csrf="wrong").status_code == 403
    assert "forged" not in console.get("/console/apps").text


def test_sign_out_ends_the_session(console: Console, gw: Gateway) -> None:
    """After signing out, the old cookie opens nothing."""
    cookie = console.http.cookies[security.SESSION_COOKIE]
    assert console.post("/console/logout").url.endswith("/console/login")
    stale = requests.get(gw.url + "/console/", cookies={security.SESSION_COOKIE: cookie}, allow_redirects=False,
                         timeout=5)
    assert stale.status_code == 303


def test_sessions_end_after_the_absolute_lifetime(gw: Gateway) -> None:
    """A session older than ABSOLUTE_SECONDS is gone even while in use; a young one lives on."""
    token, _ = security.start_session(gw.svc.redis, OPERATOR, now=1000.0)
    assert security.load_session(gw.svc.redis, token, now=1000.0 + security.ABSOLUTE_SECONDS - 1) is not None
    assert security.load_session(gw.svc.redis, token, now=1000.0 + security.ABSOLUTE_SECONDS + 1) is None
    assert security.load_session(gw.svc.redis, token, now=1000.0) is None  # deleted, not just refused


def test_idle_sessions_expire_in_redis(gw: Gateway) -> None:
    """A session's key lives IDLE_SECONDS from its last use."""
    token, session = security.start_session(gw.svc.redis, OPERATOR, now=security.now())
    assert 0 < gw.svc.redis.ttl(session.key) <= security.IDLE_SECONDS


def test_pages_forbid_framing_and_foreign_scripts(console: Console) -> None:
    """Console answers carry a strict content security policy and are not cached."""
    answer = console.get("/console/")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"


def test_an_oversized_sign_in_post_is_refused_unread(gw: Gateway) -> None:
    """Before anyone is signed in, a sign-in body larger than a form could be is refused with 400."""
    client = Console(gw.url)
    client.get("/console/login")
    answer = client.post("/console/login", {"name": OPERATOR, "password": PASSWORD, "padding": "x" * 10_000})
    assert answer.status_code == 400 and security.SESSION_COOKIE not in client.http.cookies
