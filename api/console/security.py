"""Console sessions, CSRF tokens and the sign-in rate limit, kept in Redis.

A session is a random token in an HttpOnly, SameSite=Strict cookie; Redis keeps only its SHA-256, the
operator, the session's CSRF token and when it began. It ends after IDLE_SECONDS without a request
(the key's TTL) or ABSOLUTE_SECONDS after sign-in, whichever comes first.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import redis
from starlette.requests import Request
from starlette.responses import Response

from engine import keys

SESSION_COOKIE = "mpush_console"
SIGN_IN_COOKIE = "mpush_console_signin"  # double-submit CSRF token of the sign-in form, before any session
IDLE_SECONDS = 2 * 3600
ABSOLUTE_SECONDS = 12 * 3600
FAIL_WINDOW_SECONDS = 15 * 60
FAILS_PER_ACCOUNT = 5
FAILS_PER_ADDRESS = 20
COOKIE_PATH = "/console"


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in operator; `csrf` must come back with every form the console posts."""

    key: str
    operator: str
    csrf: str
    started: float


def _session_key(token: str) -> str:
    return f"{keys.PREFIX}console:session:{hashlib.sha256(token.encode()).hexdigest()}"


def start_session(client: redis.Redis, operator: str, now: float) -> tuple[str, Session]:
    """A new session for `operator`: the cookie token (given to the browser only) and the session."""
    token = secrets.token_urlsafe(32)
    session = Session(_session_key(token), operator, secrets.token_urlsafe(32), now)
    client.hset(session.key, mapping={"operator": operator, "csrf": session.csrf, "started": repr(now)})
    client.expire(session.key, IDLE_SECONDS)
    return token, session


def load_session(client: redis.Redis, token: str | None, now: float) -> Session | None:
    """The live session of a cookie token, its idle time restarted; None when unknown or ended."""
    if not token or len(token) > 100:
        return None
    key = _session_key(token)
    fields = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    if not {"operator", "csrf", "started"} <= fields.keys():
        return None
    started = float(fields["started"])
    if now - started > ABSOLUTE_SECONDS:
        client.delete(key)
        return None
    client.expire(key, IDLE_SECONDS)
    return Session(key, fields["operator"], fields["csrf"], started)


def end_session(client: redis.Redis, session: Session) -> None:
    client.delete(session.key)


def flash(client: redis.Redis, session: Session, text: str) -> None:
    """A one-line notice the next page shows once."""
    client.hset(session.key, "flash", text)


def take_flash(client: redis.Redis, session: Session) -> str:
    pipe = client.pipeline(transaction=True)  # one key: atomic on a cluster too, so a notice shows once
    pipe.hget(session.key, "flash")
    pipe.hdel(session.key, "flash")
    value = pipe.execute()[0]
    return value.decode() if value else ""


def same_token(expected: str, given: object) -> bool:
    """Constant-time comparison of a CSRF token; anything but a non-empty string is a mismatch."""
    return bool(expected) and isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


def secure_cookies(request: Request, public_url: str) -> bool:
    """Cookies are Secure when the browser reached us over TLS: directly, through a proxy uvicorn trusts
    (X-Forwarded-Proto), or when the configured public URL is https."""
    return request.url.scheme == "https" or public_url.startswith("https://")


def set_cookie(response: Response, name: str, value: str, *, secure: bool, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="strict",
                        secure=secure)


# -- sign-in failures -----------------------------------------------------------------------------------------


def _fail_keys(operator: str, address: str) -> tuple[str, str]:
    digest = hashlib.sha256(operator.encode()).hexdigest()[:32]
    return f"{keys.PREFIX}console:fails:operator:{digest}", f"{keys.PREFIX}console:fails:address:{address}"


def sign_in_blocked(client: redis.Redis, operator: str, address: str) -> int:
    """Seconds until another try is allowed for this name or address; 0 when it is allowed now."""
    account, origin = _fail_keys(operator, address)
    pipe = client.pipeline(transaction=False)  # two keys, two slots on a cluster
    for key in (account, origin):
        pipe.get(key)
        pipe.ttl(key)
    account_fails, account_ttl, origin_fails, origin_ttl = pipe.execute()
    waits = [max(int(ttl), 1) for fails, ttl, limit in ((account_fails, account_ttl, FAILS_PER_ACCOUNT),
                                                         (origin_fails, origin_ttl, FAILS_PER_ADDRESS))
             if int(fails or 0) >= limit]
    return max(waits, default=0)


def count_failure(client: redis.Redis, operator: str, address: str) -> None:
    """One more failed sign-in for the name and the address; each count lasts FAIL_WINDOW_SECONDS from the first."""
    pipe = client.pipeline(transaction=False)  # two keys, two slots on a cluster; each key's two steps in order
    for key in _fail_keys(operator, address):
        pipe.set(key, 0, ex=FAIL_WINDOW_SECONDS, nx=True)
        pipe.incr(key)
    pipe.execute()


def clear_failures(client: redis.Redis, operator: str) -> None:
    client.delete(_fail_keys(operator, "")[0])


def now() -> float:
    return time.time()
