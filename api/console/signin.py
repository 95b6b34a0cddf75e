"""Signing in and out of the console."""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api.console import security
from api.console.security import Session
from api.console.web import html, page, redirect, services
from engine.store import queries


MAX_SIGN_IN_BYTES = 4096  # read before anyone is signed in: never more than a sign-in form


def _safe_next(target: str) -> str:
    """Where to go after signing in: a console path only, never another site."""
    if target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/"


async def _form(request: Request, *, status: int = 200, error: str = "", name: str = "", target: str = "") -> Response:
    token = secrets.token_urlsafe(32)
    response = await html(request, "login.html", {"session": None, "notice": "", "csrf": token, "error": error,
                                            "name": name, "next": _safe_next(target)}, status)
    security.set_cookie(response, security.SIGN_IN_COOKIE, token,
                        secure=security.secure_cookies(request, services(request).settings.public_url))
    return response


async def login_form(request: Request) -> Response:
    return await _form(request, target=request.query_params.get("next", ""))


async def login(request: Request) -> Response:
    """Check the form's token, the failure counts, then the password; a session cookie on success."""
    svc = services(request)
    length = request.headers.get("content-length", "")
    if not length.isdigit() or not 0 < int(length) <= MAX_SIGN_IN_BYTES:
        return await _form(request, status=400, error="The sign-in form was empty or too large.")
    form = await request.form(max_files=0, max_fields=10)
    name, password, target = (str(form.get(field, ""))[:200] for field in ("name", "password", "next"))
    if not security.same_token(request.cookies.get(security.SIGN_IN_COOKIE, ""), form.get("csrf")):
        return await _form(request, status=403, error="The sign-in form expired. Please try again.", name=name,
                     target=target)
    address = request.client.host if request.client else "unknown"
    wait = await run_in_threadpool(security.sign_in_blocked, svc.redis, name, address)
    if wait:
        return await _form(request, status=429, name=name, target=target,
                     error=f"Too many failed sign-ins. Try again in {max(1, round(wait / 60))} minute(s).")
    operator = await run_in_threadpool(queries.check_operator, name, password)
    if operator is None:
        await run_in_threadpool(security.count_failure, svc.redis, name, address)
        return await _form(request, status=401, error="Wrong name or password.", name=name, target=target)
    await run_in_threadpool(security.clear_failures, svc.redis, name)
    token, _ = await run_in_threadpool(security.start_session, svc.redis, operator.name, security.now())
    response = redirect(_safe_next(target))
    secure = security.secure_cookies(request, svc.settings.public_url)
    security.set_cookie(response, security.SESSION_COOKIE, token, secure=secure)
    response.delete_cookie(security.SIGN_IN_COOKIE, path=security.COOKIE_PATH)
    return response


@page
async def logout(request: Request, session: Session) -> Response:
    await run_in_threadpool(security.end_session, services(request).redis, session)
    response = redirect("/console/login")
    response.delete_cookie(security.SESSION_COOKIE, path=security.COOKIE_PATH)
    return response
