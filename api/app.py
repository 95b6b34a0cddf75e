"""The Starlette application: the whole HTTP surface on one screen."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import admin, health, public
from api.auth import header_map
from api.callbacks import provider_callback
from api.console import CONSOLE
from api.console.web import fault_page
from api.errors import (INTERNAL, PAYLOAD_TOO_LARGE, RETRY_AFTER_SECONDS, ApiError, envelope, error_response,
                        unavailable_code)
from engine import metrics
from engine.ids import uuid7
from engine.microbatch import MicroBatcher
from engine.services import Services

log = logging.getLogger("mpush.api")

ROUTES = [
    Route("/api/v1/messages/batch", public.send_batch, methods=["POST"]),
    Route("/api/v1/messages/{task_id}", public.get_message, methods=["GET"]),
    Route("/api/v1/batches/{batch_id}", public.get_batch, methods=["GET"]),
    Route("/api/callback/{account}", provider_callback, methods=["GET", "POST"]),
    Route("/health", health.health, methods=["GET"]),
    Route("/health/simple", health.health_simple, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
    Route("/openapi.json", health.openapi, methods=["GET"]),
    Route("/api/admin/rules", admin.rules_status, methods=["GET"]),
    Route("/api/admin/rules/reload", admin.rules_reload, methods=["POST"]),
    Route("/api/admin/rules/explain", admin.rules_explain, methods=["POST"]),
    Route("/api/admin/apps", admin.apps_list, methods=["GET"]),
    Route("/api/admin/apps", admin.apps_create, methods=["POST"]),
    Route("/api/admin/apps/{app_id}/{action}", admin.apps_action, methods=["POST"]),
    Route("/api/admin/tasks", admin.tasks_list, methods=["GET"]),
    Route("/api/admin/tasks/search", admin.tasks_search, methods=["GET"]),
    Route("/api/admin/tasks/{task_id}", admin.task_detail, methods=["GET"]),
    Route("/api/admin/tasks/{task_id}/timeline", admin.task_timeline, methods=["GET"]),
    Route("/api/admin/providers/{name}/test", admin.provider_test, methods=["POST"]),
    Route("/api/admin/stats", admin.stats, methods=["GET"]),
    *CONSOLE,
]

WIRE_API = "/api/v1/"  # the reference's surface: its SDKs read the code of an HTTP 200, whatever went wrong

CORS_HEADERS = ["Origin", "Content-Type", "Accept", "Authorization", "Idempotency-Key",
                "X-App-Id", "X-Timestamp", "X-Nonce", "X-Signature"]


class TraceIdMiddleware:
    """Every response carries a `trace-id` header, a UUIDv7 as the reference's are."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = uuid7().encode()
        scope.setdefault("state", {})["trace_id"] = trace_id.decode()

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"trace-id", trace_id))
            await send(message)

        await self.app(scope, receive, send_with_trace)


class BodyTooLarge(ApiError):
    """Raised from `receive` once a body passes the limit: whoever was reading answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(PAYLOAD_TOO_LARGE, f"request body too large: the limit is {limit} bytes")


class BodyLimit:
    """Every request body is limited while it is read (`MPUSH_MAX_BODY_BYTES`, and the send routes' own smaller
    limits): a declared Content-Length over the limit is refused before a byte is read, and a body that grows
    past it is cut off there, so no request can make the process buffer, parse or verify more than a valid one
    needs. Answered 413 in the envelope; nothing behind it runs on a refused body."""

    def __init__(self, app: ASGIApp, limit: int, by_path: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default = limit
        self.by_path = dict(by_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.default)
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(scope, receive, send, limit)
            return
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    metrics.REJECTED.labels(str(PAYLOAD_TOO_LARGE)).inc()
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:
            if not started:
                await error_response(exc)(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        metrics.REJECTED.labels(str(PAYLOAD_TOO_LARGE)).inc()
        await error_response(BodyTooLarge(limit))(scope, receive, send)


class SendLane:
    """POST /api/v1/messages, the hot path, answered in plain ASGI ahead of Starlette; the rest goes to `app`.

    Skipping Starlette's layers (error and exception middlewares, CORS, router, request object) halved the
    accept latency of the API alone at 1000 sends/s (p50 3.5-5.4 -> 2.3-2.9 ms, p99 11-20 -> 7.5-9.9 ms). The
    lane's answers carry what the stack puts on every answer: a trace id, CORS's headers, the crash envelope.
    """

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        # One batch at a time: the sends arriving meanwhile make the next one, so batches grow with the load and
        # the hand-offs and round trips a send costs shrink (1000 sends/s: ~720 against ~820 µs of CPU a send
        # with two batches at a time, and accept p99 16-21 against 20-27 ms).
        self.batcher = MicroBatcher(functools.partial(public.send_many, services), max_batch=public.SEND_BATCH,
                                    runners=1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/api/v1/messages" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw = await _body(receive)
        if raw is None:
            return  # the client went away before its request was whole
        headers = header_map((name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"])
        trace_id = uuid7()
        try:
            signed = public.SignedSend("POST", scope["path"], headers, raw, headers.get("idempotency-key", ""),
                                       trace_id)
            response = envelope(data=await self.batcher.submit(signed))
        except ApiError as exc:
            response = error_response(exc)
        except Exception as exc:
            response = envelope(_fault_code("POST", scope["path"], exc))
        response.raw_headers += [(b"trace-id", trace_id.encode()), (b"vary", b"Origin")]
        if "origin" in headers:
            response.raw_headers.append((b"access-control-allow-origin", b"*"))
        await response(scope, receive, send)


async def _body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _crash(request: Request, exc: Exception) -> Response:
    """An exception no endpoint caught, answered in the shape of the surface it hit: on the wire API the
    reference's envelope (HTTP 200), on the console an error page, elsewhere (admin API, metrics) an envelope
    with HTTP 503 and Retry-After while Redis or the database is out of reach, or 500 for a bug of ours."""
    path = request.url.path
    code = _fault_code(request.method, path, exc)
    if path.startswith(WIRE_API):
        return envelope(code)
    if path == "/console" or path.startswith("/console/"):
        return await fault_page(request, code)
    if code == INTERNAL:
        return envelope(code, status=500)
    response = envelope(code, status=503)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _fault_code(method: str, path: str, exc: Exception) -> int:
    """Redis or the database out of reach is 40003 / 40002; anything else is a bug of ours, 40001."""
    code = unavailable_code(exc)
    if code is not None:
        log.warning("request.unavailable %s %r: %s", method, path, exc)
        return code
    log.exception("request.crashed %s %r", method, path, exc_info=exc)
    return INTERNAL


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"code": 404, "message": "not found"}, status_code=404)


def create_app(services: Services) -> ASGIApp:
    middleware = [
        Middleware(TraceIdMiddleware),
        Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                   allow_headers=CORS_HEADERS, max_age=86400),
    ]
    app = Starlette(routes=ROUTES, middleware=middleware,
                    exception_handlers={ApiError: _api_error, 404: _not_found, 405: _not_found, Exception: _crash})
    app.state.services = services
    settings = services.settings
    send_limits = {"/api/v1/messages": min(settings.max_send_bytes, settings.max_body_bytes),
                   "/api/v1/messages/batch": min(4 * settings.max_send_bytes, settings.max_body_bytes)}
    return BodyLimit(SendLane(app, services), settings.max_body_bytes, send_limits)
