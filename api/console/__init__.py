"""The operator console at /console: server-rendered pages behind a sign-in, served by the gateway itself."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from api.console import pages, signin
from api.console.web import HERE

ROUTES = [
    Route("/login", signin.login_form, methods=["GET"]),
    Route("/login", signin.login, methods=["POST"]),
    Route("/logout", signin.logout, methods=["POST"]),
    Route("/", pages.dashboard, methods=["GET"]),
    Route("/messages", pages.messages, methods=["GET"]),
    Route("/messages/{task_id}", pages.message, methods=["GET"]),
    Route("/batches", pages.batches, methods=["GET"]),
    Route("/batches/{batch_id}", pages.batch, methods=["GET"]),
    Route("/apps", pages.apps, methods=["GET"]),
    Route("/apps", pages.app_create, methods=["POST"]),
    Route("/apps/{app_id}/{action}", pages.app_action, methods=["POST"]),
    Route("/rules", pages.rules, methods=["GET"]),
    Route("/rules/reload", pages.rules_reload, methods=["POST"]),
    Route("/rules/dry-run", pages.rules_dry_run, methods=["POST"]),
    Route("/providers", pages.providers, methods=["GET"]),
    Route("/providers/{name}/test", pages.provider_test, methods=["POST"]),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="console-static"),
]



async def _to_dashboard(request: Request) -> RedirectResponse:
    return RedirectResponse("/console/")


CONSOLE: list[BaseRoute] = [Route("/console", _to_dashboard, methods=["GET"]), Mount("/console", routes=ROUTES)]
