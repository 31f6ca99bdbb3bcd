"""The JSON API under /api/v1: one table of endpoints, each with the credential it needs.

``ENDPOINTS`` is the single source for routing, for the authentication check done before
any handler runs, and for the OpenAPI document; the test matrix walks it to prove that no
route answers without the right credential. Kinds of access:

- ``public``: health and the OpenAPI document;
- ``join``: registration, authenticated by the one-time join token in the body;
- ``operator``: an operator API token;
- ``satellite``: the satellite named in the path, or an operator;
- ``self``: only the satellite named in the path (its own check-ins and credentials);
- ``any``: any valid credential (the public trust-root chain);
- ``dashboard``: the dashboard's HTML, for an operator's browser session (or an operator
  token on GET);
- ``login``: the dashboard's login form.

Every state-changing request with a body must say ``Content-Type: application/json``
(:func:`require_json_body`): a browser form can only send ``text/plain``,
``application/x-www-form-urlencoded`` or ``multipart/form-data`` across sites.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from groundcontrol import actions, checkins, registration
from groundcontrol.auth import (
    Operator,
    Principal,
    SatellitePrincipal,
    Session,
    authenticate,
    bearer_token,
    hash_token,
    new_operator_token,
    require_operator,
    require_own_satellite,
    require_satellite,
)
from groundcontrol.config import parse_int
from groundcontrol.errors import (
    BadRequest,
    Forbidden,
    GroundControlError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
)
from groundcontrol.models import (
    Group,
    Satellite,
    check_name,
    check_registry_host,
    effective_config,
    parse_config_overrides,
    parse_group_names,
    parse_images,
    parse_labels,
)
from groundcontrol.publish import Published
from groundcontrol.services import Services
from groundcontrol.status import SUMMARIES, derive_status
from groundcontrol.store import Queries
from registry_proxy import strict_json
from registry_proxy.units import INT64_MAX
from registry_proxy.waits import wait_event

log = logging.getLogger("groundcontrol")
Access = Literal["public", "join", "operator", "satellite", "self", "any", "dashboard", "login"]
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
    if kind is None and not _has_body(request):
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


# --- representations -----------------------------------------------------------------


def group_json(g: Group, members: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": g.name,
        "description": g.description,
        "images": [i.to_dict() for i in g.images],
        "created_at": iso(g.created_at),
        "updated_at": iso(g.updated_at),
    }
    if members is not None:
        out["members"] = members
    return out


def satellite_json(s: Services, sat: Satellite, now: float) -> dict[str, Any]:
    status = derive_status(sat, now, s.config.stale_after, s.config.offline_after)
    report = sat.last_report or {}
    return {
        "name": sat.name,
        "groups": list(sat.groups),
        "labels": sat.labels,
        "config": sat.config,
        "effective_config": effective_config(s.config, sat.config).to_dict(),
        "registered": sat.registered_at is not None,
        "registered_at": iso(sat.registered_at),
        "revoked_at": iso(sat.revoked_at),
        "keyid": sat.keyid,
        "published_version": sat.published_version,
        "applied_version": sat.applied_version,
        "last_seen": iso(sat.last_seen),
        "last_seq": sat.last_seq,
        "cache_bytes_used": report.get("cache_bytes_used"),
        "cache_bytes_max": report.get("cache_bytes_max"),
        "offline_seconds": report.get("offline_seconds"),
        "errors": report.get("errors", []),
        **status.to_dict(),
    }


# --- public ----------------------------------------------------------------------------


async def healthz(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        await q.root_versions()
    return ok({"status": "ok"})


async def openapi(ctx: Ctx) -> Response:
    from groundcontrol.fleetview import API_ENDPOINTS
    from groundcontrol.openapi import openapi_document

    return ok(openapi_document(ENDPOINTS + API_ENDPOINTS))


# --- groups -----------------------------------------------------------------------------


async def list_groups(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        groups = await q.groups()
        out = [group_json(g, await q.group_members(g.name)) for g in groups]
    return ok({"groups": out})


async def create_group(ctx: Ctx) -> Response:
    body = await read_object(ctx.request)
    only_keys(body, {"name", "description", "images"})
    name = check_name(body.get("name"), "group")
    description = _description(body.get("description", ""))
    images = parse_images(body.get("images", []))
    # refuse images the registry cannot resolve before anything is stored
    await ctx.services.publisher.resolver.resolve_all(images)
    async with ctx.services.store.transaction() as q:
        await q.insert_group(name, description, images, int(ctx.now))
        group = await q.group(name)
    return ok(group_json(group, []), 201)


def _description(value: object) -> str:
    if not isinstance(value, str) or len(value) > 1000:
        raise BadRequest("description must be a string of at most 1000 characters")
    return value


async def get_group(ctx: Ctx) -> Response:
    name = ctx.param("group")
    async with ctx.services.store.transaction() as q:
        group = await q.group(name)
        members = await q.group_members(name)
    return ok(group_json(group, members))


async def update_group(ctx: Ctx) -> Response:
    name = ctx.param("group")
    body = await read_object(ctx.request)
    only_keys(body, {"description", "images"})
    new_images = parse_images(body["images"]) if "images" in body else None
    new_description = _description(body["description"]) if "description" in body else None

    async def mutate(q: Queries) -> tuple[tuple[Group, list[str]], list[str]]:
        current = await q.group(name)
        await q.update_group(
            name,
            current.description if new_description is None else new_description,
            current.images if new_images is None else new_images,
            int(ctx.now),
        )
        members = await q.group_members(name)  # what is shown, and what is published
        return (await q.group(name), members), members

    (group, members), published = await ctx.services.publisher.run(mutate, ctx.now)
    return ok({**group_json(group, members), "published": published_json(published)})


async def delete_group(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        await q.delete_group(ctx.param("group"))
    return Response(status_code=204)


# --- satellites -----------------------------------------------------------------------------


async def list_satellites(ctx: Ctx) -> Response:
    params = ctx.request.query_params
    async with ctx.services.store.transaction() as q:
        sats = await q.satellites()
    out = [satellite_json(ctx.services, s, ctx.now) for s in sats]
    if "group" in params:
        out = [s for s in out if params["group"] in s["groups"]]
    if "status" in params:
        if params["status"] not in SUMMARIES:
            raise BadRequest(f"status must be one of {', '.join(SUMMARIES)}", code="invalid_status")
        out = [s for s in out if s["status"] == params["status"]]
    for selector in params.getlist("label"):
        key, _, value = selector.partition("=")
        out = [s for s in out if s["labels"].get(key) == value]
    return ok({"satellites": out})


async def create_satellite(ctx: Ctx) -> Response:
    body = await read_object(ctx.request)
    only_keys(body, {"name", "groups", "labels", "config", "join_token_ttl"})
    name = check_name(body.get("name"), "satellite")
    groups = parse_group_names(body.get("groups", []))
    labels = parse_labels(body.get("labels", {}))
    config = parse_config_overrides(body.get("config", {}))
    ttl = _ttl(body.get("join_token_ttl"))

    async def mutate(q: Queries) -> tuple[None, list[str]]:
        await q.insert_satellite(name, groups, labels, config, int(ctx.now))
        return None, [name]

    _, published = await ctx.services.publisher.run(mutate, ctx.now)
    token = await registration.create_join_token(
        ctx.services.store, ctx.services.config, name, ctx.now, ttl
    )
    async with ctx.services.store.transaction() as q:
        sat = await q.satellite(name)
    return ok(
        {
            **satellite_json(ctx.services, sat, ctx.now),
            "join_token": token,
            "published": published_json(published),
        },
        201,
    )


def _ttl(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 60 <= value <= 30 * 86400:
        raise BadRequest(
            "join_token_ttl must be between 60 and 2592000 seconds", code="invalid_ttl"
        )
    return value


async def get_satellite(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        sat = await q.satellite(ctx.param("name"))
    return ok(satellite_json(ctx.services, sat, ctx.now))


async def update_satellite(ctx: Ctx) -> Response:
    name = ctx.param("name")
    body = await read_object(ctx.request)
    only_keys(body, {"groups", "labels", "config"})
    groups = parse_group_names(body["groups"]) if "groups" in body else None
    labels = parse_labels(body["labels"]) if "labels" in body else None
    config_patch = parse_config_overrides(body["config"]) if "config" in body else None
    nulls = (
        {k for k, v in body["config"].items() if v is None}
        if isinstance(body.get("config"), dict)
        else set()
    )

    async def mutate(q: Queries) -> tuple[None, list[str]]:
        current = await q.satellite(name)
        config = None
        if config_patch is not None:
            merged = {k: v for k, v in current.config.items() if k not in nulls}
            config = {**merged, **config_patch}
        await q.update_satellite(name, int(ctx.now), groups=groups, labels=labels, config=config)
        return None, [name]

    _, published = await ctx.services.publisher.run(mutate, ctx.now)
    async with ctx.services.store.transaction() as q:
        sat = await q.satellite(name)
    return ok(
        {**satellite_json(ctx.services, sat, ctx.now), "published": published_json(published)}
    )


async def delete_satellite(ctx: Ctx) -> Response:
    name = ctx.param("name")
    async with ctx.services.store.transaction() as q:
        await q.satellite(name)
    await _remove_robot(ctx, name)
    async with ctx.services.store.transaction() as q:
        await q.delete_satellite(name)
    return Response(status_code=204)


async def create_join_token(ctx: Ctx) -> Response:
    body = await read_json(ctx.request) if _has_body(ctx.request) else {}
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    only_keys(body, {"ttl"})
    token = await registration.create_join_token(
        ctx.services.store, ctx.services.config, ctx.param("name"), ctx.now, _ttl(body.get("ttl"))
    )
    return ok(token, 201)


def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") not in ("", "0") or (
        "transfer-encoding" in request.headers
    )


async def revoke_satellite(ctx: Ctx) -> Response:
    name = ctx.param("name")
    async with ctx.services.store.transaction() as q:
        await q.revoke_satellite(name, int(ctx.now))
        sat = await q.satellite(name)
    problem = await _remove_robot(ctx, name)
    body = satellite_json(ctx.services, sat, ctx.now)
    if problem is not None:
        body["warnings"] = [f"Harbor robot not deleted: {problem}"]
    return ok(body)


async def publish_satellite(ctx: Ctx) -> Response:
    name = ctx.param("name")
    async with ctx.services.store.transaction() as q:
        await q.satellite(name)
    published = await ctx.services.publisher.publish_now([name], ctx.now, force=True)
    return ok({"published": published_json(published)})


async def list_checkins(ctx: Ctx) -> Response:
    name = ctx.param("name")
    limit = _int_param(ctx.request, "limit", 50, 1, 1000)
    before = _int_param(ctx.request, "before", None, 1)
    async with ctx.services.store.transaction() as q:
        await q.satellite(name)
        rows = await q.checkins(name, limit, before)
    return ok(
        {
            "checkins": [
                {
                    "seq": r["seq"],
                    "received_at": iso(r["received_at"]),
                    "state_version": r["state_version"],
                    "report": json.loads(r["report"]),
                }
                for r in rows
            ]
        }
    )


def _int_param(
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


async def fleet_items(ctx: Ctx) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every satellite as the API shows it, and how many there are of each status."""
    async with ctx.services.store.transaction() as q:
        sats = await q.satellites()
    items = [satellite_json(ctx.services, s, ctx.now) for s in sats]
    return items, dict(Counter(item["status"] for item in items))


async def fleet_status(ctx: Ctx) -> Response:
    items, counts = await fleet_items(ctx)
    return ok(
        {
            "counts": counts,
            "satellites": [
                {
                    k: item[k]
                    for k in (
                        "name",
                        "status",
                        "connectivity",
                        "last_seen",
                        "published_version",
                        "applied_version",
                        "behind",
                        "failing_images",
                    )
                }
                for item in items
            ],
            # pushes of signed state to the registry as OCI artifacts (null when off)
            "state_registry": (
                ctx.services.artifacts.stats.to_dict() if ctx.services.artifacts.enabled else None
            ),
        }
    )


# --- operator tokens -------------------------------------------------------------------


async def list_tokens(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        rows = await q.list_api_tokens()
    return ok({"tokens": [token_json(r) for r in rows]})


def token_json(row: Any) -> dict[str, Any]:
    """An operator token as the API and ``admin token list`` show it (never its hash)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "created_at": iso(row["created_at"]),
        "revoked_at": iso(row["revoked_at"]),
        "last_used_at": iso(row["last_used_at"]),
    }


async def create_token(ctx: Ctx) -> Response:
    body = await read_object(ctx.request)
    only_keys(body, {"name"})
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        raise BadRequest("name must be 1-100 characters", code="invalid_name")
    token_id, token = new_operator_token()
    async with ctx.services.store.transaction() as q:
        await q.insert_api_token(token_id, name, hash_token(token), int(ctx.now))
    return ok({"id": token_id, "name": name, "token": token}, 201)


async def revoke_token(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        await q.revoke_api_token(ctx.param("token_id"), int(ctx.now))
    return Response(status_code=204)


# --- upstream credentials --------------------------------------------------------------


async def list_credentials(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        rows = await q.upstream_credentials()
    return ok(
        {
            "credentials": [
                {
                    "registry": r["registry"],
                    "kind": r["kind"],
                    "username": r["username"],
                    "groups": r["groups"],
                    "updated_at": iso(r["updated_at"]),
                }
                for r in rows
            ]
        }
    )


async def put_credential(ctx: Ctx) -> Response:
    registry = check_registry_host(ctx.param("registry"))
    body = await read_object(ctx.request)
    only_keys(body, {"username", "password", "groups"})
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not 0 < len(username) <= 255:
        raise BadRequest("username is required", code="invalid_credential")
    if not isinstance(password, str) or not 0 < len(password) <= 4096:
        raise BadRequest("password is required", code="invalid_credential")
    groups = parse_group_names(body.get("groups", []))
    sealed = ctx.services.sealer.seal(password, f"upstream:{registry}")
    async with ctx.services.store.transaction() as q:
        await q.check_groups_exist(groups)
        await q.put_upstream_credential(
            registry, "static", username, sealed, list(groups), int(ctx.now)
        )
    return ok(
        {"registry": registry, "kind": "static", "username": username, "groups": list(groups)}
    )


async def delete_credential(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        await q.delete_upstream_credential(check_registry_host(ctx.param("registry")))
    return Response(status_code=204)


async def satellite_credentials(s: Services, name: str, now: float) -> list[dict[str, Any]]:
    """The upstream credentials a satellite may use: the static ones for all or for one of
    its groups, and its own Harbor robot when Harbor is configured."""
    async with s.store.transaction() as q:
        sat = await q.satellite(name)
        rows = await q.upstream_credentials()
    out = []
    if s.harbor is not None:
        robot = await s.harbor.ensure(s.store, name, now)
        out.append(
            {
                "registry": robot.registry,
                "username": robot.username,
                "password": robot.password,
                "expires_at": robot.expires_at,
            }
        )
    for r in rows:
        if s.harbor is not None and r["registry"] == s.harbor.client.host:
            continue  # the satellite's own robot replaces a shared static credential
        if r["groups"] and not set(r["groups"]) & set(sat.groups):
            continue
        out.append(
            {
                "registry": r["registry"],
                "username": r["username"],
                "password": s.sealer.open(r["secret"], f"upstream:{r['registry']}"),
            }
        )
    return out


# --- what satellites call ---------------------------------------------------------------


async def register(ctx: Ctx) -> Response:
    client = ctx.request.client
    source = client.host if client else "unknown"
    await registration.count_attempt(ctx.services.store, ctx.services.config, source, ctx.now)
    body = await read_json(ctx.request, 64 * 1024)
    name, credential, kid = await registration.register(
        ctx.services.store, ctx.services.config, source, body, ctx.now
    )
    root = await _root_envelope(ctx)
    # the join token is spent and the credential exists only in this answer: what fails
    # from here on (the registry, Harbor) is a warning, not an error that would lose it;
    # the satellite fetches its state and credentials again with the credential
    warnings: list[str] = []
    state: dict[str, Any] | None = None
    creds: list[dict[str, Any]] = []
    try:
        state = await _current_state(ctx, name)
    except GroundControlError as exc:
        warnings.append(f"state: {exc.code}: {exc.message}")
    try:
        creds = await satellite_credentials(ctx.services, name, ctx.now)
    except GroundControlError as exc:
        warnings.append(f"upstream_credentials: {exc.code}: {exc.message}")
    for warning in warnings:
        log.warning("registration of %s: %s", name, warning)
    async with ctx.services.store.transaction() as q:
        sat = await q.satellite(name)
    return ok(
        {
            "satellite": name,
            "keyid": kid,
            "credential": credential,
            "root": json.loads(root),
            "state": json.loads(state["envelope"]) if state else None,
            "upstream_credentials": creds,
            "config": effective_config(ctx.services.config, sat.config).to_dict(),
            "warnings": warnings,
        },
        201,
    )


async def _root_envelope(ctx: Ctx, version: int | None = None) -> str:
    async with ctx.services.store.transaction() as q:
        text = await q.root(version)
    if text is None:
        raise NotFound("no such trust root version", code="root_not_found")
    return text


async def _current_state(ctx: Ctx, name: str) -> dict[str, Any] | None:
    """The latest state, re-signed with a new version first when it nears expiry."""
    return (await _satellite_state(ctx, name))[1]


async def _satellite_state(ctx: Ctx, name: str) -> tuple[Satellite, dict[str, Any] | None]:
    async with ctx.services.store.transaction() as q:
        sat = await q.satellite(name)
        latest = await q.latest_state(name)
    if sat.revoked_at is None and (
        latest is None or latest["expires_at"] - ctx.now < ctx.services.config.state_refresh_before
    ):
        try:
            await ctx.services.publisher.publish_now([name], ctx.now, force=True)
        except GroundControlError as exc:
            if latest is None or latest["expires_at"] <= ctx.now:
                raise
            # the early refresh exists for outages like this one: the state still holds
            log.warning("state of %s not re-signed yet: %s", name, exc.message)
            return sat, latest
        async with ctx.services.store.transaction() as q:
            latest = await q.latest_state(name)
    return sat, latest


WAIT_DIGITS_MAX = 6


def _wait_param(request: Request, cap: int) -> int | None:
    """``?wait=SECONDS``: ASCII digits only, at most ``cap`` honoured."""
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > WAIT_DIGITS_MAX:
        raise BadRequest(
            f"wait must be a whole number of seconds with at most {WAIT_DIGITS_MAX} digits",
            code="invalid_wait",
        )
    return min(int(raw), cap)


async def get_state(ctx: Ctx) -> Response:
    """The latest signed state; ``?have=N`` answers 304 when it is not newer than N, and
    ``&wait=S`` holds that 304 for up to S seconds (capped by ``[state] long_poll_max``)
    until a newer state is published. ``X-State-Wait`` tells the caller how long the
    server holds, so a satellite knows that long-polling works here."""
    name = ctx.param("name")
    have = _int_param(ctx.request, "have", None, 0)
    wait = _wait_param(ctx.request, ctx.services.config.long_poll_max)
    extra = {} if wait is None else {"X-State-Wait": str(wait)}
    latest = await _current_state(ctx, name)
    if wait and have is not None and latest is not None and int(latest["version"]) <= have:
        latest = await _long_poll(ctx, name, have, wait)
    if latest is None:
        raise NotFound(f"no state published for {name}", code="state_not_found")
    version = int(latest["version"])
    headers = {
        "ETag": f'"{version}"',
        "X-State-Version": str(version),
        "Cache-Control": "no-store",
        **extra,
    }
    if have is not None and have >= version:
        return Response(status_code=304, headers=headers)
    return Response(latest["envelope"], media_type="application/json", headers=headers)


async def _long_poll(ctx: Ctx, name: str, have: int, wait: int) -> dict[str, Any] | None:
    """Read until a state newer than ``have`` is there or the deadline passes.

    The waiter subscribes, then reads again (the caller's read came before it
    subscribed), and clears its event before each read, so a publish that commits
    between a read and the wait still wakes it. Each further pass needs a wake-up and
    the deadline bounds them all; shutdown and a revocation end the wait at once."""
    watch = ctx.services.watch
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    with watch.subscribe(name) as woken:
        while True:
            woken.clear()
            now = ctx.services.now()
            sat, latest = await _satellite_state(dataclasses.replace(ctx, now=now), name)
            if sat.revoked_at is not None:
                if isinstance(ctx.principal, SatellitePrincipal):
                    raise Forbidden(f"satellite {name} is revoked", code="satellite_revoked")
                return latest
            if latest is None or int(latest["version"]) > have or watch.closed:
                return latest
            remaining = deadline - loop.time()
            if remaining <= 0:
                return latest
            if not await wait_event(woken, remaining):
                return latest


async def list_roots(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        versions = await q.root_versions()
    return ok({"versions": versions, "latest": versions[-1] if versions else None})


async def get_root(ctx: Ctx) -> Response:
    raw = ctx.param("version")
    try:
        version = None if raw == "latest" else parse_int(raw, 1)
    except ValueError:
        raise BadRequest(
            "version must be a positive integer or 'latest'", code="invalid_version"
        ) from None
    return Response(await _root_envelope(ctx, version), media_type="application/json")


async def post_checkins(ctx: Ctx) -> Response:
    name = ctx.param("name")
    # each envelope is kept as the bytes that arrived: never parsed and re-serialised
    envelopes = checkins.split_batch(await read_body(ctx.request, MAX_CHECKIN_BODY))
    if len(envelopes) > ctx.services.config.checkin_batch_max:
        raise PayloadTooLarge(
            f"at most {ctx.services.config.checkin_batch_max} check-ins per batch"
        )
    config = ctx.services.config
    result = await checkins.ingest(
        ctx.services.store,
        name,
        envelopes,
        ctx.now,
        config.checkins_kept,
        offline_after=config.offline_after,
        late_after=config.stale_after,
    )
    return ok(result.to_dict())


async def get_credentials(ctx: Ctx) -> Response:
    creds = await satellite_credentials(ctx.services, ctx.param("name"), ctx.now)
    return ok({"upstream_credentials": creds})


async def rotate_credentials(ctx: Ctx) -> Response:
    name = ctx.param("name")
    async with ctx.services.store.transaction() as q:
        sat = await q.satellite(name)
    if ctx.services.harbor is None:
        raise Unprocessable("no Harbor configured ([harbor] url)", code="harbor_not_configured")
    if sat.revoked_at is not None:
        raise Forbidden(f"satellite {name} is revoked", code="satellite_revoked")
    robot = await ctx.services.harbor.ensure(ctx.services.store, name, ctx.now, rotate=True)
    return ok(
        {"registry": robot.registry, "username": robot.username, "expires_at": robot.expires_at}
    )


async def _remove_robot(ctx: Ctx, name: str) -> str | None:
    return await actions.remove_robot(ctx.services, name)


# --- the table ----------------------------------------------------------------------------

V1 = "/api/v1"
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/healthz", healthz, "public", "Liveness and database check"),
    Endpoint("GET", f"{V1}/openapi.json", openapi, "public", "This API as OpenAPI 3.1"),
    Endpoint("POST", f"{V1}/register", register, "join", "Register a satellite with a join token"),
    Endpoint("GET", f"{V1}/groups", list_groups, "operator", "List groups"),
    Endpoint("POST", f"{V1}/groups", create_group, "operator", "Create a group"),
    Endpoint("GET", f"{V1}/groups/{{group}}", get_group, "operator", "Get a group"),
    Endpoint("PUT", f"{V1}/groups/{{group}}", update_group, "operator", "Change a group's images"),
    Endpoint("DELETE", f"{V1}/groups/{{group}}", delete_group, "operator", "Delete an empty group"),
    Endpoint("GET", f"{V1}/satellites", list_satellites, "operator", "List satellites"),
    Endpoint("POST", f"{V1}/satellites", create_satellite, "operator", "Create a satellite"),
    Endpoint("GET", f"{V1}/satellites/{{name}}", get_satellite, "operator", "Get a satellite"),
    Endpoint(
        "PATCH", f"{V1}/satellites/{{name}}", update_satellite, "operator", "Change a satellite"
    ),
    Endpoint(
        "DELETE", f"{V1}/satellites/{{name}}", delete_satellite, "operator", "Delete a satellite"
    ),
    Endpoint(
        "POST",
        f"{V1}/satellites/{{name}}/join-tokens",
        create_join_token,
        "operator",
        "Issue a one-time join token",
    ),
    Endpoint(
        "POST",
        f"{V1}/satellites/{{name}}/revoke",
        revoke_satellite,
        "operator",
        "Revoke a satellite's credential",
    ),
    Endpoint(
        "POST",
        f"{V1}/satellites/{{name}}/publish",
        publish_satellite,
        "operator",
        "Re-resolve and re-sign a satellite's state",
    ),
    Endpoint(
        "GET",
        f"{V1}/satellites/{{name}}/checkins",
        list_checkins,
        "operator",
        "Recent check-in reports",
    ),
    Endpoint(
        "POST",
        f"{V1}/satellites/{{name}}/checkins",
        post_checkins,
        "self",
        "Post a batch of signed check-ins",
    ),
    Endpoint(
        "GET",
        f"{V1}/satellites/{{name}}/state",
        get_state,
        "satellite",
        "The signed state (?have=N gives 304 when not newer; &wait=S long-polls)",
    ),
    Endpoint(
        "GET",
        f"{V1}/satellites/{{name}}/credentials",
        get_credentials,
        "self",
        "Upstream credentials for this satellite",
    ),
    Endpoint(
        "POST",
        f"{V1}/satellites/{{name}}/credentials/rotate",
        rotate_credentials,
        "operator",
        "Rotate the satellite's Harbor robot secret",
    ),
    Endpoint("GET", f"{V1}/status", fleet_status, "operator", "Fleet status"),
    Endpoint("GET", f"{V1}/roots", list_roots, "any", "Trust root versions"),
    Endpoint("GET", f"{V1}/roots/{{version}}", get_root, "any", "One signed trust root"),
    Endpoint("GET", f"{V1}/tokens", list_tokens, "operator", "List operator API tokens"),
    Endpoint("POST", f"{V1}/tokens", create_token, "operator", "Create an operator API token"),
    Endpoint(
        "DELETE", f"{V1}/tokens/{{token_id}}", revoke_token, "operator", "Revoke an API token"
    ),
    Endpoint(
        "GET",
        f"{V1}/upstream-credentials",
        list_credentials,
        "operator",
        "List upstream credentials (no secrets)",
    ),
    Endpoint(
        "PUT",
        f"{V1}/upstream-credentials/{{registry}}",
        put_credential,
        "operator",
        "Set the static credential for a registry",
    ),
    Endpoint(
        "DELETE",
        f"{V1}/upstream-credentials/{{registry}}",
        delete_credential,
        "operator",
        "Remove a registry credential",
    ),
)


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


__all__ = [
    "ENDPOINTS",
    "Ctx",
    "Endpoint",
    "Operator",
    "SatellitePrincipal",
    "check_access",
    "principal_of",
]
