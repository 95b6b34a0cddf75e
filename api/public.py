"""The public API of the reference service: send, batch, query a task, query a batch.

Each endpoint makes one trip to the thread pool: authentication and the work it guards run
together there, since every hop costs a thread hand-off and a loop wake-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

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

T = TypeVar("T")


async def _authenticated(request: Request, work: Callable[[Services, Caller], T]) -> T:
    """Authenticate the request, then run `work` for the caller, both in one thread-pool call."""
    svc: Services = request.app.state.services
    raw = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    method, path = request.method, request.url.path

    def run() -> T:
        return work(svc, authenticate(svc, method, path, headers, raw, time.time()))

    return await run_in_threadpool(run)


async def send_message(request: Request) -> JSONResponse:
    key = request.headers.get("idempotency-key", "")
    accepted = await _authenticated(request, lambda svc, caller: _accept(svc, caller, key, False))
    return envelope(data={"task_id": accepted.task_ids[0], "status": accepted.status,
                          "created_at": _rfc3339(accepted.created_at)})


async def send_batch(request: Request) -> JSONResponse:
    key = request.headers.get("idempotency-key", "")
    return envelope(data=await _authenticated(request, lambda svc, caller: _accept_batch(svc, caller, key)))


async def get_message(request: Request) -> JSONResponse:
    task_id = request.path_params["task_id"]
    return envelope(data=await _authenticated(request, lambda svc, caller: _public_task(caller, task_id)))


async def get_batch(request: Request) -> JSONResponse:
    batch_id = request.path_params["batch_id"]
    return envelope(data=await _authenticated(request, lambda svc, caller: _batch_summary(caller, batch_id)))


def _accept(svc: Services, caller: Caller, idempotency_key: str, batch: bool) -> intake.Accepted:
    try:
        request = intake.parse(caller.body, batch=batch, idempotency_key=idempotency_key)
        return intake.accept(svc, caller.app, request, time.time())
    except Refused as exc:
        metrics.REJECTED.labels(str(REFUSAL_CODES[exc.kind])).inc()
        raise ApiError(REFUSAL_CODES[exc.kind], exc.message) from None


def _accept_batch(svc: Services, caller: Caller, idempotency_key: str) -> dict[str, Any]:
    accepted = _accept(svc, caller, idempotency_key, True)
    total = len(accepted.task_ids)
    if accepted.replayed:
        summary = repo.batch_summary(accepted.batch_id, caller.app.app_id)
        total = summary["total_count"] if summary else total
    return {"batch_id": accepted.batch_id, "total_count": total, "success_count": total, "failed_count": 0,
            "status": accepted.status, "created_at": _rfc3339(accepted.created_at)}


def _public_task(caller: Caller, task_id: str) -> dict[str, Any]:
    task = repo.get_task(task_id, caller.app.app_id)
    if task is None:
        raise ApiError(errors.BAD_REQUEST, "task not found: record not found")
    return repo.task_to_public(task)


def _batch_summary(caller: Caller, batch_id: str) -> dict[str, Any]:
    summary = repo.batch_summary(batch_id, caller.app.app_id)
    if summary is None:
        raise ApiError(errors.BAD_REQUEST, "batch not found: record not found")
    return summary


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
