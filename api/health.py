"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api import errors
from api.admin import is_admin
from api.errors import envelope
from engine.redis_errors import REDIS_ERRORS
from engine.services import Services
from engine.store import db as store_db

OPENAPI = Path(__file__).with_name("openapi.yaml")


def _checks(svc: Services) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = {}
    problem = store_db.ping(svc.db)
    services["database"] = {"status": "DOWN", "message": problem} if problem else {"status": "UP"}
    try:
        svc.redis.ping()
        services["redis"] = {"status": "UP"}
    except REDIS_ERRORS as exc:
        services["redis"] = {"status": "DOWN", "message": str(exc)}
    rules = svc.rules.status()
    services["rules"] = {"status": "UP" if not rules.get("last_error") else "DEGRADED",
                         **{k: v for k, v in rules.items() if v is not None}}
    return services


async def health(request: Request) -> JSONResponse:
    """UP, DEGRADED (serving, but the last rule reload failed) or DOWN. Only the admin token sees the checks;
    anyone else gets the status alone, so a failed reload's errors never reach an unauthenticated caller."""
    svc: Services = request.app.state.services
    services = await run_in_threadpool(_checks, svc)
    states = {check["status"] for check in services.values()}
    status = "DOWN" if "DOWN" in states else "DEGRADED" if "DEGRADED" in states else "UP"
    data: dict[str, Any] = {"status": status}
    if is_admin(request):
        data.update(timestamp=int(time.time()), services=services)
    if status == "DOWN":  # 503 rather than the reference's 200, so readiness probes see it
        return JSONResponse({"code": errors.INTERNAL, "message": "服务不健康", "data": data}, status_code=503)
    return envelope(data=data)


async def health_simple(request: Request) -> JSONResponse:
    return envelope(data={"status": "UP", "timestamp": int(time.time())})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(yaml.safe_load(OPENAPI.read_text(encoding="utf-8")))
