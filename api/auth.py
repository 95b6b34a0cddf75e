"""Authentication of `/api/v1`: the reference's steps and codes, plus replay and rate protection.

`authenticate` does it for one request. The send path checks a group of requests at once:
`verify` each (no Redis), then its intake counts each one's `call_of` (nonce and rate) together
with its quotas, all in one round trip.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from api import errors
from api.errors import ApiError
from engine.limits import Call
from engine.services import Services
from engine.signing import verify as signature_matches
from engine.store import repo
from engine.store.crypto import SecretError
from engine.store.models import Application

WINDOW_SECONDS = 300
CLOCK_SKEW_SECONDS = 120  # how far API processes' clocks may disagree while a nonce must still be remembered
HEADERS = ("x-app-id", "x-timestamp", "x-nonce", "x-signature")


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated application and the parsed request body."""

    app: Application
    body: dict[str, Any]
    nonce: str = ""


def authenticate(svc: Services, method: str, path: str, headers: dict[str, str], raw: bytes, now: float) -> Caller:
    """Verify the four X- headers over METHOD+PATH+canonical body+ts+nonce; raise ApiError on refusal."""
    caller = verify(svc, method, path, headers, raw, now)
    refusal = admit_nonces(svc, [caller], now)[0]
    if refusal is not None:
        raise refusal
    return caller


def verify(svc: Services, method: str, path: str, headers: dict[str, str], raw: bytes, now: float,
           apps: dict[str, Application | None] | None = None) -> Caller:
    """Every check that needs no Redis: headers, app, secret, body, window, signature. `apps` caches the
    application rows across a group of requests checked together."""
    app_id, stamp, nonce, given = (headers.get(name, "") for name in HEADERS)
    if not (app_id and stamp and nonce and given):
        raise ApiError(errors.UNAUTHORIZED)
    ts = _parse_timestamp(stamp)
    if not _NONCE.fullmatch(nonce):
        raise ApiError(errors.UNAUTHORIZED, "unauthorized: X-Nonce must be 1-64 of A-Z a-z 0-9 . _ ~ -")
    if apps is None:
        app = repo.get_app(app_id)
    else:
        app = apps[app_id] if app_id in apps else apps.setdefault(app_id, repo.get_app(app_id))
    if app is None:
        raise ApiError(errors.INVALID_APP_ID)
    if app.status != 1:
        raise ApiError(errors.APP_DISABLED)
    try:
        secret = repo.app_secret(app, svc.key, svc.retired_keys)
    except SecretError:
        raise ApiError(errors.UNAUTHORIZED) from None
    body = _parse_body(raw)
    if abs(now - ts) > WINDOW_SECONDS:
        raise ApiError(errors.INVALID_SIGNATURE, "invalid signature: timestamp outside the 300 s window")
    if not signature_matches(secret, method, path, raw, ts, nonce, given):
        raise ApiError(errors.INVALID_SIGNATURE)
    return Caller(app, body, nonce)


def admit_nonces(svc: Services, callers: Sequence[Caller], now: float) -> list[ApiError | None]:
    """Remember each verified request's nonce and count it against its app's rate, all in one round trip.
    Per caller, None when admitted, else the refusal. A replay counts against no rate, and a request over
    its rate leaves its nonce unused: a refused request changes nothing."""
    verdicts = svc.limits.admit_calls([call_of(caller) for caller in callers], now)
    return [None if verdict == "ok" else call_refusal(verdict) for verdict in verdicts]


def call_of(caller: Caller) -> Call:
    """What the limits count of a verified request: its nonce, kept while its timestamp could still pass the
    window on any API process (twice the window, plus the clock skew between processes), and its app's rate."""
    return Call(caller.app.app_id, caller.nonce, caller.app.rate_limit, 2 * WINDOW_SECONDS + CLOCK_SKEW_SECONDS)


def call_refusal(verdict: Literal["replay", "rate"]) -> ApiError:
    if verdict == "replay":
        return ApiError(errors.INVALID_SIGNATURE, "invalid signature: nonce already used (replay)")
    return ApiError(errors.RATE_LIMITED)


def header_map(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Request headers by lower-cased name; a header sent twice reads as its values joined by ", " (as HTTP
    combines repeated fields), so a duplicated X- header never passes its exact check, rather than the last
    one silently winning."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


_TIMESTAMP = re.compile(r"[0-9]{1,19}")
_NONCE = re.compile(r"[A-Za-z0-9._~-]{1,64}")


def _parse_timestamp(value: str) -> int:
    """Unix seconds as the SDKs send them: ASCII digits only (no sign, space or other digits)."""
    if not _TIMESTAMP.fullmatch(value) or int(value) >= 2**63:
        raise ApiError(errors.INVALID_TIMESTAMP)
    return int(value)


def _parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a body; no body at all reads as `{}`, one of only whitespace is not JSON."""
    if not raw:
        return {}
    try:
        value = errors.strict_json(raw)
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise ApiError(errors.BAD_REQUEST, f"invalid request body: {str(exc)[:100]}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(errors.BAD_REQUEST, "invalid request body")
    return value
