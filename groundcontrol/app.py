"""The Starlette application: routes from the endpoint table, errors turned into JSON here.

Errors are raised deep (store, registration, publishing) as
:class:`~groundcontrol.errors.GroundControlError` and become
``{"error": {"code", "message"}}`` in :func:`_error_response`, the one place that knows
about HTTP statuses. Anything unexpected is logged under a request id and answered with
``internal_error`` and that id.

Before a handler runs, an API request must carry JSON if it changes state (else 415) and
is identified by its Bearer token alone; a dashboard request is identified (and checked
for forgery) by :func:`groundcontrol.dashboard.caller`. A browser without a dashboard
session is sent to the login form.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from groundcontrol import dashboard, fleetview
from groundcontrol.api.base import Ctx, Endpoint, check_access, principal_of, require_json_body
from groundcontrol.api.table import ENDPOINTS
from groundcontrol.config import Config
from groundcontrol.errors import FRAMEWORK_CODES, GroundControlError, Unauthorized
from groundcontrol.services import Services

log = logging.getLogger("groundcontrol")


def _error_response(exc: GroundControlError, request: Request) -> Response:
    headers = {}
    if isinstance(exc, Unauthorized):
        if request.url.path.startswith("/dashboard") and "authorization" not in request.headers:
            # a browser without a session: to the login form
            return RedirectResponse(dashboard.LOGIN_PATH, status_code=303)
        headers["WWW-Authenticate"] = 'Bearer realm="Ground Control"'
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def _route(endpoint: Endpoint) -> Route:
    browser = endpoint.access in ("dashboard", "login")

    async def run(request: Request) -> Response:
        services: Services = request.app.state.services
        now = services.now()
        try:
            principal, session = None, None
            if browser:
                principal, session = await dashboard.caller(services, request, endpoint.access, now)
            else:
                require_json_body(request)
                if endpoint.access not in ("public", "join"):
                    principal = await principal_of(services, request, now)
            ctx = Ctx(request, services, principal, now, session)
            await check_access(endpoint.access, ctx)
            return await endpoint.handler(ctx)
        except GroundControlError as exc:
            return _error_response(exc, request)

    return Route(endpoint.path, run, methods=[endpoint.method], name=endpoint.handler.__name__)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = FRAMEWORK_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A bug: logged with a request id, which the answer gives (body and X-Request-Id)
    so that an operator can find the traceback, as the registry's 500 does."""
    request_id = secrets.token_hex(8)
    log.error(
        "request %s failed: %s %s",
        request_id,
        request.method,
        request.url.path,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    message = f"internal error; see the server log for request {request_id}"
    return JSONResponse(
        {"error": {"code": "internal_error", "message": message, "request_id": request_id}},
        status_code=500,
        headers={"X-Request-Id": request_id},
    )


def routes() -> list[BaseRoute]:
    table: list[BaseRoute] = [_route(ep) for ep in ENDPOINTS + fleetview.API_ENDPOINTS]
    table += [_route(ep) for ep in dashboard.ENDPOINTS]
    return table


def build_app(
    services: Services | None = None,
    lifespan: Callable[[Starlette], Any] | None = None,
) -> Starlette:
    app = Starlette(
        routes=routes(),
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
        lifespan=lifespan,
    )
    if services is not None:
        app.state.services = services
    return app


def create_app(config: Config, **service_options: Any) -> Starlette:
    """The app for ``groundcontrol serve``: services are opened (and migrations applied)
    in the lifespan, closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await Services.open(config, **service_options)
        app.state.services = services
        services.artifacts.notify()  # push whatever an earlier run left unpushed
        try:
            yield
        finally:
            await services.close()

    return build_app(lifespan=lifespan)
