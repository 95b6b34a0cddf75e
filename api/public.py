"""The public API of the reference service: send, batch, query a task, query a batch."""

from __future__ import annotations

import time
from datetime import datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from api import errors
from api.auth import Caller, authenticate
from api.errors import ApiError, envelope
from engine import intake, metrics
from engine.intake import Refused
from engine.services import Services
from engine.store import repo

REFUSAL_CODES = {"invalid": errors.BAD_REQUEST, "quota": errors.QUOTA_EXCEEDED, "unavailable": errors.REDIS_ERROR}


async def _caller(request: Request) -> tuple[Services, Caller]:
    svc: Services = request.app.state.services
    raw = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    caller = await run_in_threadpool(authenticate, svc, request.method, request.url.path, headers, raw, time.time())
    return svc, caller


async def send_message(request: Request) -> JSONResponse:
    svc, caller = await _caller(request)
    accepted = await run_in_threadpool(_accept, svc, caller, request.headers.get("idempotency-key", ""), False)
    return envelope(data={"task_id": accepted.task_ids[0], "status": accepted.status,
                          "created_at": _rfc3339(accepted.created_at)})


async def send_batch(request: Request) -> JSONResponse:
    svc, caller = await _caller(request)
    accepted = await run_in_threadpool(_accept, svc, caller, request.headers.get("idempotency-key", ""), True)
    total = len(accepted.task_ids)
    if accepted.replayed:
        summary = await run_in_threadpool(repo.batch_summary, accepted.batch_id, caller.app.app_id)
        total = summary["total_count"] if summary else total
    return envelope(data={"batch_id": accepted.batch_id, "total_count": total, "success_count": total,
                          "failed_count": 0, "status": accepted.status,
                          "created_at": _rfc3339(accepted.created_at)})


async def get_message(request: Request) -> JSONResponse:
    svc, caller = await _caller(request)
    task_id = request.path_params["task_id"]
    task = await run_in_threadpool(repo.get_task, task_id, caller.app.app_id)
    if task is None:
        raise ApiError(errors.BAD_REQUEST, "task not found: record not found")
    return envelope(data=await run_in_threadpool(repo.task_to_public, task))


async def get_batch(request: Request) -> JSONResponse:
    svc, caller = await _caller(request)
    summary = await run_in_threadpool(repo.batch_summary, request.path_params["batch_id"], caller.app.app_id)
    if summary is None:
        raise ApiError(errors.BAD_REQUEST, "batch not found: record not found")
    return envelope(data=summary)


def _accept(svc: Services, caller: Caller, idempotency_key: str, batch: bool) -> intake.Accepted:
    try:
        request = intake.parse(caller.body, batch=batch, idempotency_key=idempotency_key)
        return intake.accept(svc, caller.app, request, time.time())
    except Refused as exc:
        metrics.REJECTED.labels(str(REFUSAL_CODES[exc.kind])).inc()
        raise ApiError(REFUSAL_CODES[exc.kind], exc.message) from None


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
