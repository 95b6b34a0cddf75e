"""`POST|GET /api/callback/{account}`: provider delivery reports, answered as each vendor expects."""

from __future__ import annotations

import logging
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api.auth import header_map
from api.errors import unavailable_code
from engine import callbacks
from engine.services import Services
from providers.base import CallbackRequest

log = logging.getLogger("mpush.callbacks")

MAX_BODY = 1_000_000


async def provider_callback(request: Request) -> Response:
    svc: Services = request.app.state.services
    body = await request.body()
    if len(body) > MAX_BODY:
        return Response("report too large", status_code=413, media_type="text/plain")
    inbound = CallbackRequest(
        method=request.method,
        query=dict(request.query_params),
        headers=header_map(request.headers.items()),
        body=body,
        client_host=request.client.host if request.client else "",
    )
    try:
        reply = await run_in_threadpool(callbacks.handle, svc, request.path_params["account"], inbound, time.time())
    except Exception as exc:
        if unavailable_code(exc) is None:
            raise
        # Not the vendor's 200 (nor its success body): vendors send a report again until it is taken.
        log.warning("callback.unavailable %s: %s", request.path_params["account"], exc)
        return Response("temporarily unavailable, send the report again later", status_code=503,
                        media_type="text/plain")
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)
