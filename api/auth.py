"""Authentication of `/api/v1`: the reference's steps and codes, plus replay and rate protection."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from api import errors
from api.errors import ApiError
from engine import keys
from engine.services import Services
from engine.signing import verify
from engine.store import repo
from engine.store.crypto import SecretError
from engine.store.models import Application

WINDOW_SECONDS = 300
HEADERS = ("x-app-id", "x-timestamp", "x-nonce", "x-signature")


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated application and the parsed request body."""

    app: Application
    body: dict[str, Any]


def authenticate(svc: Services, method: str, path: str, headers: dict[str, str], raw: bytes, now: float) -> Caller:
    """Verify the four X- headers over METHOD+PATH+canonical body+ts+nonce; raise ApiError on refusal."""
    app_id, stamp, nonce, given = (headers.get(name, "") for name in HEADERS)
    if not (app_id and stamp and nonce and given):
        raise ApiError(errors.UNAUTHORIZED)
    ts = _parse_timestamp(stamp)
    app = repo.get_app(app_id)
    if app is None:
        raise ApiError(errors.INVALID_APP_ID)
    if app.status != 1:
        raise ApiError(errors.APP_DISABLED)
    try:
        secret = repo.app_secret(app, svc.key)
    except SecretError:
        raise ApiError(errors.UNAUTHORIZED) from None
    body = _parse_body(raw)
    if abs(now - ts) > WINDOW_SECONDS:
        raise ApiError(errors.INVALID_SIGNATURE, "invalid signature: timestamp outside the 300 s window")
    if not verify(secret, method, path, raw, ts, nonce, given):
        raise ApiError(errors.INVALID_SIGNATURE)
    if not svc.redis.set(keys.nonce(app_id, nonce), 1, nx=True, ex=2 * WINDOW_SECONDS):
        raise ApiError(errors.INVALID_SIGNATURE, "invalid signature: nonce already used (replay)")
    if app.rate_limit and not svc.limits.rate_allow(app_id, app.rate_limit, now):
        raise ApiError(errors.RATE_LIMITED)
    return Caller(app, body)


def _parse_timestamp(value: str) -> int:
    text = value.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isdigit():
        raise ApiError(errors.INVALID_TIMESTAMP)
    number = int(text)
    if not -(2**63) <= number < 2**63:
        raise ApiError(errors.INVALID_TIMESTAMP)
    return number


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(errors.BAD_REQUEST, "invalid request body") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(errors.BAD_REQUEST, "invalid request body")
    return value
