"""The console's pages: dashboard, messages and their timelines, batches, applications, rules, providers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api.admin import dry_run
from api.console import charts, security
from api.console.security import Session
from api.console.web import ConsoleError, form_text, page, redirect, render, services
from api.errors import ApiError
from engine import intake, keys, timeline
from engine.policy.decisions import SCENES
from engine.policy.rules import RoutingRule
from engine.policy.selection import breaker_state
from engine.provider_test import TrialSend, message_types, send_test_message
from engine.services import Services
from engine.store import queries, repo
from engine.store.models import APP_DISABLED, APP_ENABLED, TASK_STATUSES
from providers import registry

STARTED_AT = datetime.now(UTC)  # rule fire counts are "since the gateway started"
MASK = "••••••"
SEARCH_FIELDS = ("task_id", "receiver", "app_id", "channel", "status", "batch_id", "since", "until")
FILE_LINE = re.compile(r"([\w./-]+\.ya?ml):(\d+)")


def _now() -> datetime:
    return datetime.now(UTC)


# -- dashboard ------------------------------------------------------------------------------------------------


@page
async def dashboard(request: Request, session: Session) -> Response:
    hours = _int(request.query_params.get("hours", "1"), 1, 24)
    data = await run_in_threadpool(_dashboard, services(request), hours)
    return await render(request, session, "dashboard.html", section="Dashboard", hours=hours, **data)


def _dashboard(svc: Services, hours: int) -> dict[str, Any]:
    now = _now()
    ruleset = svc.rules.current
    local_midnight = now.astimezone(ruleset.timezone).replace(hour=0, minute=0, second=0, microsecond=0)
    activity = queries.attempt_activity(now, hours)
    return {
        "today": queries.day_tallies(local_midnight.astimezone(UTC)),
        "timezone": ruleset.settings.timezone,
        "activity": activity,
        "chart": charts.attempts_chart(activity.minutes),
        "accounts": _accounts(svc, now),
        "queue": {"stream backlog": svc.queue.backlog(), "pending (read, not acknowledged)": svc.queue.pending(),
                  "delayed jobs": svc.queue.delayed_count()},
        "rules": svc.rules.status(),
        "version": ruleset.version,
    }


def _accounts(svc: Services, now: datetime) -> list[dict[str, Any]]:
    """Each provider account of the live rules: breaker state and, per routing rule and tier, its weight
    and the smooth round robin's current value."""
    ruleset = svc.rules.current
    places = [(rule.name, number, candidate) for rule in ruleset.rules("routing") if isinstance(rule, RoutingRule)
              for number, tier in enumerate(rule.tiers, 1) for candidate in tier]
    pipe = svc.redis.pipeline(transaction=False)
    for rule_name, number, candidate in places:
        pipe.hget(keys.swrr(f"{rule_name}#{number}"), candidate.provider)
    weights: dict[str, list[tuple[str, int, int, int]]] = {}
    for (rule_name, number, candidate), current in zip(places, pipe.execute()):
        weights.setdefault(candidate.provider, []).append((rule_name, number, candidate.weight,
                                                           int(float(current or 0))))
    rows = []
    for name, account in ruleset.providers.items():
        breaker = svc.selector.breaker(name)
        rows.append({"name": name, "type": account.type, "state": breaker_state(breaker, now.timestamp()),
                     "open_until": datetime.fromtimestamp(breaker.open_until, UTC) if breaker.open_until else None,
                     "weights": weights.get(name, [])})
    return rows


# -- messages -------------------------------------------------------------------------------------------------


@page
async def messages(request: Request, session: Session) -> Response:
    svc = services(request)
    query = request.query_params
    try:
        where = queries.TaskFilter.from_params(query)
        after = queries.Cursor.parse(query["after"]) if query.get("after") else None
    except ValueError as exc:
        raise ConsoleError(400, str(exc)) from None
    region = svc.rules.current.settings.default_region
    found = await run_in_threadpool(lambda: queries.search_tasks(where, after=after, default_region=region))
    filters = {name: query[name] for name in SEARCH_FIELDS if query.get(name)}
    next_query = {**filters, "after": str(found.next)} if found.next else None
    return await render(request, session, "messages.html", section="Messages", page=found, filters=filters,
                        next_query=next_query, paged=after is not None, statuses=TASK_STATUSES,
                        channels=sorted(svc.rules.current.channels))


@page
async def message(request: Request, session: Session) -> Response:
    svc = services(request)
    task = await run_in_threadpool(repo.get_task, request.path_params["task_id"])
    if task is None:
        raise ConsoleError(404, "No message has this task id.")
    events = await run_in_threadpool(timeline.build, task, svc.rules.current, svc.rules.path)
    app = await run_in_threadpool(repo.get_app, task.app_id)
    return await render(request, session, "message.html", section="Messages", task=task, events=events, app=app)


# -- batches --------------------------------------------------------------------------------------------------


@page
async def batches(request: Request, session: Session) -> Response:
    recent = await run_in_threadpool(queries.recent_batches)
    return await render(request, session, "batches.html", section="Batches", batches=recent)


@page
async def batch(request: Request, session: Session) -> Response:
    batch_id = request.path_params["batch_id"]
    found = await run_in_threadpool(queries.get_batch, batch_id)
    if found is None:
        raise ConsoleError(404, "No batch has this id.")
    counts = await run_in_threadpool(queries.batch_counts, batch_id)
    tasks = await run_in_threadpool(queries.search_tasks, queries.TaskFilter(batch_id=batch_id), page_size=200)
    return await render(request, session, "batch.html", section="Batches", batch=found, counts=counts, tasks=tasks)


# -- applications ---------------------------------------------------------------------------------------------


@page
async def apps(request: Request, session: Session) -> Response:
    return await _apps_page(request, session, created=None)


async def _apps_page(request: Request, session: Session, created: dict[str, Any] | None) -> Response:
    """The applications with today's quota use; `created` is an app whose new secret is shown this once."""
    listed = await run_in_threadpool(_apps_with_usage, services(request))
    return await render(request, session, "apps.html", section="Applications", apps=listed, created=created)


def _apps_with_usage(svc: Services) -> list[dict[str, Any]]:
    now = _now().timestamp()
    return [{"app": app, "used": svc.limits.used(intake.app_quota_check(app), now)} for app in repo.list_apps()]


@page
async def app_create(request: Request, session: Session) -> Response:
    svc = services(request)
    name = await form_text(request, "name", 100)
    webhook = (await form_text(request, "webhook_url", 500)).strip() or None
    quota = _int(await form_text(request, "daily_quota", 12) or "10000", 0, 10**9)
    rate = _int(await form_text(request, "rate_limit", 12) or "100", 0, 10**6)
    try:
        app, secret = await run_in_threadpool(lambda: repo.create_app(name, svc.key, webhook_url=webhook,
                                                                      daily_quota=quota, rate_limit=rate))
    except ValueError as exc:
        raise ConsoleError(400, str(exc)) from None
    return await _apps_page(request, session, created={"app": app, "secret": secret, "rotated": False})


@page
async def app_action(request: Request, session: Session) -> Response:
    """enable / disable / rotate-secret / webhook on one application."""
    svc = services(request)
    app_id, action = request.path_params["app_id"], request.path_params["action"]
    app = await run_in_threadpool(repo.get_app, app_id)
    if app is None:
        raise ConsoleError(404, "No application has this id.")
    if action == "rotate-secret":
        secret = await run_in_threadpool(repo.rotate_secret, app_id, svc.key)
        return await _apps_page(request, session, created={"app": app, "secret": secret, "rotated": True})
    if action in ("enable", "disable"):
        await run_in_threadpool(repo.set_app_status, app_id, APP_ENABLED if action == "enable" else APP_DISABLED)
        done = f"{app.name} is {action}d."
    elif action == "webhook":
        url = (await form_text(request, "webhook_url", 500)).strip() or None
        try:
            await run_in_threadpool(repo.set_webhook, app_id, url)
        except ValueError as exc:
            raise ConsoleError(400, str(exc)) from None
        done = f"{app.name}'s webhook is {url or 'cleared'}."
    else:
        raise ConsoleError(404, f"Unknown action {action!r}.")
    await run_in_threadpool(security.flash, svc.redis, session, done)
    return redirect("/console/apps")


# -- rules ----------------------------------------------------------------------------------------------------


@page
async def rules(request: Request, session: Session) -> Response:
    data = await run_in_threadpool(_rules_page, services(request))
    return await render(request, session, "rules.html", section="Rules", dry=None, **data)


def _rules_page(svc: Services) -> dict[str, Any]:
    status = svc.rules.status()
    return {"status": status, "files": list(_rule_files(svc.rules.path)), "counts": _fire_counts(svc),
            "error_lines": _error_lines(status.get("last_error") or "", svc.rules.path), "scenes": SCENES,
            "channels": sorted(svc.rules.current.channels)}


def _rule_files(root: Path) -> Iterator[tuple[str, list[str]]]:
    for path in sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]):
        yield str(path.relative_to(root)), path.read_text(encoding="utf-8", errors="replace").splitlines()


def _error_lines(error: str, root: Path) -> list[tuple[str, str | None]]:
    """Each line of the last reload error, with the anchor of the file line it names, if any."""
    return [(line, _anchor(*found.groups(), root) if (found := FILE_LINE.search(line)) else None)
            for line in error.splitlines()]


def _anchor(file: str, line: str, root: Path) -> str | None:
    """The rules page's anchor of a file line: the file's path under the rules directory, "-L", the number."""
    path = Path(file)
    try:
        relative = (path if path.is_absolute() else Path.cwd() / path).resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return f"{relative}-L{line}"


def _fire_counts(svc: Services) -> list[dict[str, Any]]:
    """Every rule of the live set with how often it fired since start: routing (attempts it routed), quotas
    (messages it counted) and failure rules (decisions it made). A rule at zero may be dead."""
    ruleset = svc.rules.current
    fired = queries.rule_fire_counts(STARTED_AT)
    rows = []
    for kind in ("routing", "quotas", *SCENES):
        for rule in ruleset.rules(kind):
            if kind == "quotas":
                count = int(REGISTRY.get_sample_value("mpush_quota_rule_matches_total", {"rule": rule.name}) or 0)
            else:
                count = fired.get(kind, {}).get(rule.name, 0)
            rows.append({"kind": kind, "name": rule.name, "at": timeline.where(rule.origin, svc.rules.path),
                         "count": count})
    return rows


@page
async def rules_reload(request: Request, session: Session) -> Response:
    svc = services(request)
    result = await run_in_threadpool(svc.rules.reload)
    text = ("Reload rejected; the running rule set stays. The errors are below." if isinstance(result, Exception)
            else f"Reloaded: version {result.version}.")
    await run_in_threadpool(security.flash, svc.redis, session, text)
    return redirect("/console/rules")


@page
async def rules_dry_run(request: Request, session: Session) -> Response:
    """A fact (JSON) through the live rules or a pasted rule file, for one scene or all; the trace shown."""
    svc = services(request)
    fact_text = await form_text(request, "fact", 10_000)
    scene = await form_text(request, "scene", 40) or None
    pasted = await form_text(request, "rules", 500_000)
    form = {"fact": fact_text, "scene": scene or "", "rules": pasted}
    try:
        fact = json.loads(fact_text or "{}")
    except ValueError as exc:
        dry = {"error": f"The fact is not valid JSON: {exc}", **form}
    else:
        files = {"pasted.yaml": pasted} if pasted.strip() else None
        try:
            version, explanation = await dry_run(svc, fact, scene, files)
            dry = {"error": "", "version": version, "explanation": explanation, **form}
        except ApiError as exc:
            dry = {"error": exc.message, **form}
    data = await run_in_threadpool(_rules_page, svc)
    return await render(request, session, "rules.html", section="Rules", dry=dry, **data)


# -- providers ------------------------------------------------------------------------------------------------


@page
async def providers(request: Request, session: Session) -> Response:
    return await _providers_page(request, session, tested=None)


async def _providers_page(request: Request, session: Session, tested: TrialSend | None) -> Response:
    """The accounts of the live rules; `tested` is the test send just made, shown on top."""
    svc = services(request)
    accounts = await run_in_threadpool(_providers, svc)
    return await render(request, session, "providers.html", section="Providers", accounts=accounts,
                        disabled=sorted(svc.rules.current.disabled_providers), tested=tested)


def _providers(svc: Services) -> list[dict[str, Any]]:
    ruleset = svc.rules.current
    now = _now()
    states = {row["name"]: row for row in _accounts(svc, now)}
    rows = []
    for name, account in ruleset.providers.items():
        rows.append({"name": name, "type": account.type, "config": masked_config(account.type, account.config),
                     "channel_types": message_types(account.type), "rate": account.rate,
                     "circuit": account.circuit, "state": states[name]["state"],
                     "open_until": states[name]["open_until"], "weights": states[name]["weights"],
                     "errors": queries.recent_errors(name)})
    return rows


def masked_config(provider_type: str, config: dict[str, Any] | Any) -> dict[str, str]:
    """The account's settings with every value its provider declares secret replaced by a mask."""
    schema = registry.get(provider_type).CONFIG
    return {key: MASK if key in schema and schema[key].secret and value else str(value)
            for key, value in sorted(config.items())}


@page
async def provider_test(request: Request, session: Session) -> Response:
    svc = services(request)
    receiver = await form_text(request, "to", 255)
    text = await form_text(request, "text", 2000)
    channel_type = await form_text(request, "channel_type", 40)
    try:
        result = await run_in_threadpool(send_test_message, svc, request.path_params["name"], receiver, text,
                                         channel_type)
    except LookupError as exc:
        raise ConsoleError(404, str(exc)) from None
    except ValueError as exc:
        raise ConsoleError(400, str(exc)) from None
    return await _providers_page(request, session, tested=result)


def _int(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConsoleError(400, f"not a whole number: {text[:20]!r}") from None
    if not low <= value <= high:
        raise ConsoleError(400, f"{value} is not between {low} and {high}")
    return value

