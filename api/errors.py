"""The reference service's envelope, error codes and HTTP status rule, and the one error type."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from engine.jsondepth import nested_deeper_than

SUCCESS = 0
BAD_REQUEST = 10001
UNAUTHORIZED = 20001
INVALID_APP_ID = 20002
INVALID_SIGNATURE = 20003
INVALID_TIMESTAMP = 20004
APP_DISABLED = 20006
RATE_LIMITED = 30001
QUOTA_EXCEEDED = 30002
INTERNAL = 40001
DATABASE_ERROR = 40002
REDIS_ERROR = 40003
PAYLOAD_TOO_LARGE = 413  # ours: the reference has no code for it; 400-599 is also the HTTP status

RETRY_AFTER_SECONDS = 2  # told to callers of our own surfaces (admin API, console) while a store is out of reach

MESSAGES = {
    SUCCESS: "success",
    BAD_REQUEST: "bad request",
    UNAUTHORIZED: "unauthorized",
    INVALID_APP_ID: "invalid app id",
    INVALID_SIGNATURE: "invalid signature",
    INVALID_TIMESTAMP: "invalid timestamp",
    APP_DISABLED: "app disabled",
    RATE_LIMITED: "rate limit exceeded",
    QUOTA_EXCEEDED: "quota exceeded",
    INTERNAL: "internal server error",
    DATABASE_ERROR: "database error",
    REDIS_ERROR: "redis error",
    PAYLOAD_TOO_LARGE: "request body too large",
    400: "bad request",
    401: "unauthorized",
    404: "not found",
}


class ApiError(Exception):
    """A refused request: an envelope code and a message for the caller."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        self.message = message or MESSAGES.get(code, "unknown error")
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"ApiError(code={self.code}, message={self.message!r})"


def http_status(code: int) -> int:
    """The reference's rule: a code between 400 and 599 is also the HTTP status, else 200."""
    return code if 400 <= code <= 599 else 200


class Envelope(JSONResponse):
    """Starlette's JSON answer, printed by one encoder built once (its own builds one per response)."""

    def render(self, content: Any) -> bytes:
        return _ENCODER.encode(content).encode("utf-8")


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def envelope(code: int = SUCCESS, data: Any = None, message: str | None = None,
             status: int | None = None) -> JSONResponse:
    """The envelope with the reference's HTTP status for `code`, unless `status` is given."""
    body: dict[str, Any] = {"code": code, "message": message or MESSAGES.get(code, "unknown error")}
    if data is not None:
        body["data"] = data
    return Envelope(body, status_code=status or http_status(code))


MAX_JSON_DEPTH = 32


def strict_json(raw: bytes) -> Any:
    """JSON as the RFC has it, from a client: ValueError for NaN and Infinity, numbers no float can hold,
    nesting deeper than MAX_JSON_DEPTH, and text that is not UTF-8, so none of them reaches the code behind."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def finite(text: str) -> float:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"number out of range: {text[:20]}")
        return value

    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and nested_deeper_than(raw, MAX_JSON_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(raw.decode("utf-8"), parse_constant=refuse_constant, parse_float=finite)


def unavailable_code(exc: BaseException) -> int | None:
    """40003 when Redis could not be reached, 40002 when the database could not: a fault of ours the client
    may retry, never 40001. None for any other exception."""
    from engine.redis_errors import REDIS_ERRORS
    from engine.store.db import StoreUnavailable, transient

    if isinstance(exc, REDIS_ERRORS):
        return REDIS_ERROR
    if isinstance(exc, StoreUnavailable) or transient(exc):
        return DATABASE_ERROR
    return None


def error_response(exc: ApiError) -> JSONResponse:
    return envelope(exc.code, message=exc.message)
