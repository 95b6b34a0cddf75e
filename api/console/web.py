"""What every console page shares: templates, the session guard, CSRF on posts, headers, error pages."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api.console import security
from api.console.security import Session
from api.errors import DATABASE_ERROR, REDIS_ERROR, RETRY_AFTER_SECONDS
from engine.services import Services

HERE = Path(__file__).parent
# Everything the console sends comes from itself: no inline script or style, no frames, no third party.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
MAX_FORM_FIELDS = 50

Handler = Callable[[Request, Session], Awaitable[Response]]


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)


templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                               undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
templates.filters.update(when=_when, pretty=_pretty, urlquote=lambda text: quote(str(text), safe=""))


class ConsoleError(Exception):
    """A request the console refuses: shown as a page with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def html(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    """The page, rendered on a worker thread: a large page must not hold up the event loop the API shares."""
    body = await run_in_threadpool(templates.get_template(name).render, request=request, **context)
    return HTMLResponse(body, status_code=status, headers=HEADERS)


async def render(request: Request, session: Session, name: str, **context: Any) -> HTMLResponse:
    """A signed-in page: the template with the operator, the CSRF token and any pending notice."""
    return await html(request, name, {"session": session, "notice": getattr(request.state, "notice", ""),
                                      **context})


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers=HEADERS)


async def error_page(request: Request, session: Session | None, status: int, message: str) -> HTMLResponse:
    context = {"session": session, "notice": "", "status": status, "message": message}
    return await html(request, "error.html", context, status)


FAULTS = {
    DATABASE_ERROR: (503, "The database is out of reach. Try again in a moment."),
    REDIS_ERROR: (503, "Redis is out of reach. Try again in a moment."),
}


async def fault_page(request: Request, code: int) -> HTMLResponse:
    """The page for an exception no handler caught (`code` as the API's): 503 with Retry-After while the
    database or Redis is out of reach, else 500."""
    status, message = FAULTS.get(code, (500, "Something went wrong in the gateway; its log has the details."))
    answer = await error_page(request, None, status, message)
    if status == 503:
        answer.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return answer


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Require a live session (else to the sign-in page, coming back afterwards) and, on a POST, the
    session's CSRF token in the form; a ConsoleError becomes its error page."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        svc = services(request)
        token = request.cookies.get(security.SESSION_COOKIE)
        session = await run_in_threadpool(security.load_session, svc.redis, token, security.now())
        if session is None:
            if request.method != "GET":
                return await error_page(request, None, 403, "Your session has ended. Sign in again.")
            back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return redirect(f"/console/login?next={quote(back, safe='')}")
        try:
            if request.method == "GET":
                request.state.notice = await run_in_threadpool(security.take_flash, svc.redis, session)
            if request.method == "POST":
                form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
                if not security.same_token(session.csrf, form.get("csrf")):
                    raise ConsoleError(403, "The form's security token is missing or wrong. Reload the page and try "
                                            "again.")
            return await handler(request, session)
        except ConsoleError as exc:
            return await error_page(request, session, exc.status, exc.message)

    return guarded


async def form_text(request: Request, name: str, limit: int = 100_000) -> str:
    """A text field of the posted form ("" when absent); ConsoleError when longer than `limit`."""
    value = (await request.form()).get(name, "")
    if not isinstance(value, str):
        raise ConsoleError(400, f"{name} must be text")
    if len(value) > limit:
        raise ConsoleError(400, f"{name} is longer than {limit} characters")
    return value
