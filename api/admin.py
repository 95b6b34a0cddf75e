"""Admin API under `/api/admin/` (bearer token): rule set status, reload, explain; apps; tasks; stats."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.errors import ApiError, envelope, strict_json
from engine import timeline
from engine.policy.cases import FactError, fact_from_mapping
from engine.policy.decisions import SCENES
from engine.policy.issues import RuleError
from engine.policy.loader import load_texts
from engine.policy.ruleset import RuleSet
from engine.provider_test import send_test_message
from engine.services import Services
from engine.store import queries, repo
from engine.store.models import Application, Task
from providers import registry

Endpoint = Callable[[Request], Awaitable[JSONResponse]]


def is_admin(request: Request) -> bool:
    """Whether the request carries `Authorization: Bearer <admin token>`."""
    svc: Services = request.app.state.services
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme == "Bearer" and bool(given) and hmac.compare_digest(given.encode(), svc.settings.admin_token.encode())


def admin(endpoint: Endpoint) -> Endpoint:
    """Require `Authorization: Bearer <admin token>`."""

    async def guarded(request: Request) -> JSONResponse:
        if not is_admin(request):
            raise ApiError(401, "admin token missing or wrong")
        return await endpoint(request)

    guarded.__name__ = endpoint.__name__
    guarded.__doc__ = endpoint.__doc__
    return guarded


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = strict_json(await request.body() or b"{}")
    except ValueError:
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


@admin
async def rules_status(request: Request) -> JSONResponse:
    svc: Services = request.app.state.services
    return envelope(data=svc.rules.status())


@admin
async def rules_reload(request: Request) -> JSONResponse:
    svc: Services = request.app.state.services
    result = await run_in_threadpool(svc.rules.reload)
    if isinstance(result, Exception):
        return envelope(400, data={"errors": str(result).splitlines(), **svc.rules.status()},
                        message="reload rejected; the running rule set stays")
    return envelope(data=svc.rules.status())


DRY_RUN_SECONDS = 10.0  # a dry run (load, compile, evaluate) answers within this, or is refused


@admin
async def rules_explain(request: Request) -> JSONResponse:
    """Dry run: {"fact": {...}, "scene"?: ..., "rules"?: {"file.yaml": "text", ...}}, or the bare fact itself,
    against the live rule set, or against the posted rule files (loaded, validated and compiled aside, never
    made live).

    Posted files resolve no environment: only `${NAME:-default}` defaults apply, and a reference
    without one is refused as unset. The work runs on a thread, never on the event loop."""
    svc: Services = request.app.state.services
    body = await _json(request)
    if "fact" not in body:
        body = {"fact": body}
    version, explanation = await dry_run(svc, body.get("fact"), body.get("scene"), body.get("rules"))
    return envelope(data={"version": version, "explanation": explanation})


async def dry_run(svc: Services, fact_data: Any, scene: Any, files: Any) -> tuple[str, str]:
    """The rule set's version and its explanation of the fact (for one scene, or all), worked out on a thread;
    ApiError when the fact, the scene or the posted files are not usable, or it takes over DRY_RUN_SECONDS."""
    if not isinstance(fact_data, dict):
        raise ApiError(400, "fact must be a JSON object: {channel, receiver, app, ...}")
    if scene is not None and scene not in SCENES:
        raise ApiError(400, f"scene must be one of {', '.join(SCENES)}")
    try:
        return await asyncio.wait_for(run_in_threadpool(_dry_run, svc, fact_data, scene, files), DRY_RUN_SECONDS)
    except TimeoutError:
        raise ApiError(400, f"the dry run took longer than {DRY_RUN_SECONDS:g} s") from None


def _dry_run(svc: Services, fact_data: dict[str, Any], scene: Any, files: Any) -> tuple[str, str]:
    """(version, explanation) of one fact through the live rules or the posted files (closed afterwards)."""
    ruleset = svc.rules.current if files is None else _load_posted(files)
    try:
        fact = fact_from_mapping(ruleset, fact_data, datetime.now(UTC))
        return str(ruleset.version), str(ruleset.explain(fact, scene))
    except FactError as exc:
        raise ApiError(400, str(exc)) from None
    finally:
        if files is not None:
            ruleset.close()


def _load_posted(files: Any) -> RuleSet:
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()) or not files:
        raise ApiError(400, "rules must map file names to YAML text")
    try:
        return load_texts(files, env={}, provider_types=registry.config_schemas())
    except RuleError as exc:
        raise ApiError(400, str(exc)) from None


def _app_public(app: Application) -> dict[str, Any]:
    return {"app_id": app.app_id, "name": app.name, "status": app.status, "webhook_url": app.webhook_url,
            "daily_quota": app.daily_quota, "rate_limit": app.rate_limit, "created_at": repo.rfc3339(app.created_at)}


@admin
async def apps_list(request: Request) -> JSONResponse:
    apps = await run_in_threadpool(repo.list_apps)
    return envelope(data={"items": [_app_public(app) for app in apps], "total": len(apps)})


@admin
async def apps_create(request: Request) -> JSONResponse:
    svc: Services = request.app.state.services
    body = await _json(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "name is required")
    webhook_url = _webhook_url(svc, body.get("webhook_url"))
    daily_quota = _whole_number(body.get("daily_quota", 10000), "daily_quota", MAX_COUNT)
    rate_limit = _whole_number(body.get("rate_limit", 100), "rate_limit", MAX_COUNT)
    app, secret = await run_in_threadpool(
        lambda: repo.create_app(name.strip()[:100], svc.key, webhook_url=webhook_url, daily_quota=daily_quota,
                                rate_limit=rate_limit))
    return envelope(data={**_app_public(app), "app_secret": secret})


@admin
async def apps_action(request: Request) -> JSONResponse:
    """POST /api/admin/apps/{app_id}/{enable|disable|rotate-secret|webhook}."""
    svc: Services = request.app.state.services
    app_id, action = request.path_params["app_id"], request.path_params["action"]
    if await run_in_threadpool(repo.get_app, app_id) is None:
        raise ApiError(404, f"app {app_id} not found")
    data: dict[str, Any] = {"app_id": app_id}
    if action in ("enable", "disable"):
        await run_in_threadpool(repo.set_app_status, app_id, 1 if action == "enable" else 2)
    elif action == "rotate-secret":
        data["app_secret"] = await run_in_threadpool(repo.rotate_secret, app_id, svc.key)
    elif action == "webhook":
        url = _webhook_url(svc, (await _json(request)).get("webhook_url"))
        await run_in_threadpool(repo.set_webhook, app_id, url)
        data["webhook_url"] = url
    else:
        raise ApiError(404, f"unknown action {action!r}")
    return envelope(data=data)


MAX_COUNT = 2**31 - 1  # a quota or rate: what every database's INTEGER holds
MAX_PAGE = 100_000  # deeper pages are the search's cursor's job (GET /api/admin/tasks/search)


def _whole_number(value: object, name: str, most: int, least: int = 0) -> int:
    """An integer given as a JSON number or decimal text, within [least, most]; 400 otherwise."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise ApiError(400, f"{name} must be a whole number from {least} to {most}")
    return value


def _webhook_url(svc: Services, url: object) -> str | None:
    """A webhook URL to store (None to clear it); refused when it is not one or names an inside address (the
    transport checks again at each call: DNS can change)."""
    if url in (None, ""):
        return None
    if not isinstance(url, str) or len(url) > 2048 or not url.startswith(("http://", "https://")):
        raise ApiError(400, "webhook_url must be an http(s) URL of at most 2048 characters")
    if svc.outbound.policy is not None:
        try:
            svc.outbound.policy.check_url(url)
        except ValueError as exc:
            raise ApiError(400, f"webhook_url: {exc}") from None
    return url


@admin
async def tasks_list(request: Request) -> JSONResponse:
    """GET /api/admin/tasks?app_id=&status=&batch_id=&page=&page_size= — newest first."""
    query = request.query_params
    page = _whole_number(query.get("page", "1"), "page", MAX_PAGE, least=1)
    page_size = _whole_number(query.get("page_size", "20"), "page_size", repo.PAGE_SIZE_MAX, least=1)
    try:
        total, tasks = await run_in_threadpool(lambda: repo.list_tasks(
            app_id=query.get("app_id"), status=query.get("status"), batch_id=query.get("batch_id"),
            page=page, page_size=page_size))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    items = [{key: value for key, value in repo.task_to_public(task).items() if key != "attempts"} for task in tasks]
    return envelope(data={"total": total, "page": page, "size": page_size, "items": items})


@admin
async def task_detail(request: Request) -> JSONResponse:
    """Any app's task with its attempts, delivery reports and webhook deliveries (each try)."""
    task = await run_in_threadpool(repo.get_task, request.path_params["task_id"])
    if task is None:
        raise ApiError(404, "task not found")
    return envelope(data=await run_in_threadpool(_task_detail, task))


def _task_detail(task: Task) -> dict[str, Any]:
    return {
        **repo.task_to_public(task),
        "callbacks": [repo.callback_to_public(callback) for callback in repo.list_callbacks(task.task_id)],
        "decisions": [repo.decision_to_public(d) for d in repo.list_decisions(task.task_id)],
        "webhooks": [repo.webhook_delivery_to_public(d) for d in repo.list_webhook_deliveries(task.task_id)],
    }


@admin
async def stats(request: Request) -> JSONResponse:
    svc: Services = request.app.state.services
    counts = await run_in_threadpool(repo.task_counts)
    return envelope(data={"tasks": counts, "queue": await run_in_threadpool(_queue_depths, svc)})


def _queue_depths(svc: Services) -> dict[str, int]:
    return {"backlog": svc.queue.backlog(), "pending": svc.queue.pending(), "delayed": svc.queue.delayed_count()}


@admin
async def tasks_search(request: Request) -> JSONResponse:
    """GET /api/admin/tasks/search?task_id=&receiver=&app_id=&channel=&status=&batch_id=&since=&until=&after=
    &page_size= — newest first; `next` is the `after` of the following page (null on the last)."""
    query = request.query_params
    try:
        where = queries.TaskFilter.from_params(query)
        after = queries.Cursor.parse(query["after"]) if query.get("after") else None
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    page_size = _whole_number(query.get("page_size", str(queries.PAGE_SIZE)), "page_size", repo.PAGE_SIZE_MAX, least=1)
    region = request.app.state.services.rules.current.settings.default_region
    found = await run_in_threadpool(lambda: queries.search_tasks(where, after=after, page_size=page_size,
                                                                 default_region=region))
    items = [{key: value for key, value in repo.task_to_public(task).items() if key != "attempts"}
             for task in found.tasks]
    return envelope(data={"items": items, "next": str(found.next) if found.next else None})


@admin
async def task_timeline(request: Request) -> JSONResponse:
    """The task's history, oldest first, as the console shows it."""
    svc: Services = request.app.state.services
    task = await run_in_threadpool(repo.get_task, request.path_params["task_id"])
    if task is None:
        raise ApiError(404, "task not found")
    events = await run_in_threadpool(timeline.build, task, svc.rules.current, svc.rules.path)
    return envelope(data={"task": {key: value for key, value in repo.task_to_public(task).items() if key != "attempts"},
                          "events": [event.to_public() for event in events]})


@admin
async def provider_test(request: Request) -> JSONResponse:
    """POST /api/admin/providers/{name}/test {"to": ..., "text"?: ..., "channel_type"?: ...}: one real send."""
    svc: Services = request.app.state.services
    body = await _json(request)
    receiver, text, kind = (body.get(name, "") for name in ("to", "text", "channel_type"))
    if not all(isinstance(value, str) for value in (receiver, text, kind)):
        raise ApiError(400, "to, text and channel_type must be strings")
    try:
        result = await run_in_threadpool(send_test_message, svc, request.path_params["name"], receiver, text, kind)
    except LookupError as exc:
        raise ApiError(404, str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return envelope(data=result.to_public())
