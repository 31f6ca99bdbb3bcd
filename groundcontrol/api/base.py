"""The shared vocabulary of the API modules: the request context, the endpoint record,
body reading and JSON answers, and the access check done before any handler runs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from groundcontrol.auth import (
    Principal,
    Session,
    authenticate,
    bearer_token,
    require_operator,
    require_own_satellite,
    require_satellite,
)
from groundcontrol.config import parse_int
from groundcontrol.errors import BadRequest, PayloadTooLarge, Unauthorized, UnsupportedMediaType
from groundcontrol.publish import Published
from groundcontrol.services import Services
from registry_proxy import strict_json
from registry_proxy.units import INT64_MAX

log = logging.getLogger("groundcontrol")
Access = Literal["public", "join", "operator", "satellite", "self", "any", "dashboard", "login"]
V1 = "/api/v1"
MAX_BODY = 1024 * 1024
MAX_CHECKIN_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Ctx:
    request: Request
    services: Services
    principal: Principal | None
    now: float
    session: Session | None = None  # the dashboard's browser session, if that is the caller

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])


Handler = Callable[[Ctx], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    access: Access
    summary: str


def iso(ts: int | float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def media_type(request: Request) -> str | None:
    value = request.headers.get("content-type")
    return None if value is None else value.split(";", 1)[0].strip().lower()


def require_json_body(request: Request) -> None:
    """A state-changing request that carries a body, or names a type, says JSON; else 415.

    This is what keeps a cross-site form post (``text/plain`` crafted to look like JSON)
    from reaching a handler, whatever credentials it carries."""
    if request.method not in STATE_CHANGING:
        return
    kind = media_type(request)
    if kind == "application/json":
        return
    if kind is None and not has_body(request):
        return  # POST …/revoke, …/publish: nothing to read
    raise UnsupportedMediaType(
        f"the body must be application/json, got {kind or 'no Content-Type'}"
    )


async def read_body(request: Request, max_bytes: int = MAX_BODY) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    return bytes(body)


async def read_json(request: Request, max_bytes: int = MAX_BODY) -> Any:
    body = await read_body(request, max_bytes)
    if not body:
        raise BadRequest("a JSON body is required", code="invalid_json")
    try:
        # one reading for every body: UTF-8, no duplicate keys, no NaN, bounded nesting,
        # and no lone surrogate ("\ud800": it parses but cannot be stored or signed)
        return strict_json.loads(bytes(body))
    except strict_json.StrictJSONError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None


async def read_object(request: Request, max_bytes: int = MAX_BODY) -> dict[str, Any]:
    body = await read_json(request, max_bytes)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    return body


def only_keys(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}", code="unknown_field")


def ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def published_json(published: list[Published]) -> list[dict[str, Any]]:
    return [{"satellite": p.satellite, "version": p.version} for p in published]


async def check_access(endpoint_access: Access, ctx: Ctx) -> None:
    """Refuse before the handler runs unless the principal may use this kind of route."""
    p = ctx.principal
    if endpoint_access in ("public", "join", "login"):
        return
    if endpoint_access == "operator":
        require_operator(p)
    elif endpoint_access == "satellite":
        require_satellite(p, ctx.param("name"))
    elif endpoint_access == "self":
        require_own_satellite(p, ctx.param("name"))
    elif endpoint_access == "dashboard":
        require_operator(p)
    elif p is None:
        raise Unauthorized("a satellite credential or an operator API token is required")


async def principal_of(services: Services, request: Request, now: float) -> Principal | None:
    token = bearer_token(request)
    if token is None:
        return None
    async with services.store.transaction() as q:
        return await authenticate(q, token, int(now))


def has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") not in ("", "0") or (
        "transfer-encoding" in request.headers
    )


def int_param(
    request: Request, name: str, default: int | None, lo: int, hi: int = INT64_MAX
) -> Any:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return parse_int(raw, lo, hi)
    except ValueError:
        raise BadRequest(
            f"{name} must be an integer between {lo} and {hi}", code=f"invalid_{name}"
        ) from None
