"""The public API of the reference service: send, batch, query a task, query a batch.

Each endpoint makes one trip to the thread pool: authentication and the work it guards run
together there, since every hop costs a thread hand-off and a loop wake-up. Single sends,
the hot path, share their trips: the sends that arrive while earlier ones are being stored
are verified, admitted, stored in one transaction and enqueued in one round trip together
(`engine.microbatch`). Each still gets its own answer only once its task is stored and queued.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from api import errors
from api.auth import Caller, authenticate, call_of, call_refusal, header_map, verify
from api.errors import ApiError, envelope
from engine import intake, metrics
from engine.intake import Refused
from engine.limits import Call
from engine.services import Services
from engine.store import repo

REFUSAL_CODES = {"invalid": errors.BAD_REQUEST, "quota": errors.QUOTA_EXCEEDED, "database": errors.DATABASE_ERROR,
                 "redis": errors.REDIS_ERROR}

SEND_BATCH = 16

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SignedSend:
    """One POST /api/v1/messages as received: what authentication and intake need from it."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    idempotency_key: str
    trace_id: str = ""  # the answer's `trace-id`, stored with the task


async def _authenticated(request: Request, work: Callable[[Services, Caller], T]) -> T:
    """Authenticate the request, then run `work` for the caller, both in one thread-pool call."""
    svc: Services = request.app.state.services
    raw = await request.body()
    headers = header_map(request.headers.items())
    method, path = request.method, request.url.path

    def run() -> T:
        return work(svc, authenticate(svc, method, path, headers, raw, time.time()))

    return await run_in_threadpool(run)


def send_many(svc: Services, sends: Sequence[SignedSend]) -> list[dict[str, Any] | Exception]:
    """Authenticate and accept a group of single sends (POST /api/v1/messages, served by `api.app.SendLane`);
    the answer's data, or the error, for each."""
    now = time.time()
    outcomes: dict[int, dict[str, Any] | Exception] = {}
    requests: dict[int, tuple[Any, intake.SendRequest]] = {}
    calls: list[Call] = []
    apps: dict[str, Any] = {}
    limits = intake.FieldLimits.of(svc.settings)
    for index, send in enumerate(sends):
        try:
            caller = verify(svc, send.method, send.path, send.headers, send.raw, now, apps)
            requests[index] = (caller.app, intake.parse(caller.body, batch=False, now=now, limits=limits,
                                                        idempotency_key=send.idempotency_key,
                                                        trace_id=send.trace_id))
            calls.append(call_of(caller))
        except Refused as exc:
            outcomes[index] = _refusal(exc)
        except Exception as exc:
            outcomes[index] = exc
    for index, result in zip(requests, intake.accept_many(svc, list(requests.values()), now, calls)):
        outcomes[index] = _message_data(result)
    return [outcomes[index] for index in range(len(sends))]


def _message_data(result: intake.Accepted | Exception) -> dict[str, Any] | Exception:
    if isinstance(result, Refused):
        return _refusal(result)
    if isinstance(result, Exception):
        return result
    return {"task_id": result.task_ids[0], "status": result.status, "created_at": repo.rfc3339(result.created_at)}


async def send_batch(request: Request) -> JSONResponse:
    key, trace_id = request.headers.get("idempotency-key", ""), request.scope.get("state", {}).get("trace_id", "")
    return envelope(data=await _authenticated(request, lambda svc, caller: _accept_batch(svc, caller, key, trace_id)))


async def get_message(request: Request) -> JSONResponse:
    task_id = request.path_params["task_id"]
    return envelope(data=await _authenticated(request, lambda svc, caller: _public_task(caller, task_id)))


async def get_batch(request: Request) -> JSONResponse:
    batch_id = request.path_params["batch_id"]
    return envelope(data=await _authenticated(request, lambda svc, caller: _batch_summary(caller, batch_id)))


def _accept(svc: Services, caller: Caller, idempotency_key: str, batch: bool, trace_id: str = "") -> intake.Accepted:
    """Accept a request whose call (nonce, rate) `authenticate` counted: given back when it is refused."""
    now = time.time()
    try:
        request = intake.parse(caller.body, batch=batch, now=now, limits=intake.FieldLimits.of(svc.settings),
                               idempotency_key=idempotency_key, trace_id=trace_id)
        return intake.accept(svc, caller.app, request, now)
    except Refused as exc:
        intake.give_back_call(svc, call_of(caller), now)
        raise _refusal(exc) from None


def _refusal(exc: Refused) -> ApiError:
    if exc.kind in ("replay", "rate"):
        return call_refusal(exc.kind)
    metrics.REJECTED.labels(str(REFUSAL_CODES[exc.kind])).inc()
    return ApiError(REFUSAL_CODES[exc.kind], exc.message)


def _accept_batch(svc: Services, caller: Caller, idempotency_key: str, trace_id: str) -> dict[str, Any]:
    accepted = _accept(svc, caller, idempotency_key, True, trace_id)
    total = len(accepted.task_ids)
    if accepted.replayed:
        summary = repo.batch_summary(accepted.batch_id, caller.app.app_id)
        total = summary["total_count"] if summary else total
    return {"batch_id": accepted.batch_id, "total_count": total, "success_count": total, "failed_count": 0,
            "status": accepted.status, "created_at": repo.rfc3339(accepted.created_at)}


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
