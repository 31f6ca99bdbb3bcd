"""/api/v1/satellites and /api/v1/status: satellites as operators manage them, their
check-ins and the fleet's status."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from starlette.responses import Response

from groundcontrol import actions, registration
from groundcontrol.api.base import (
    Ctx,
    has_body,
    int_param,
    iso,
    ok,
    only_keys,
    published_json,
    read_json,
    read_object,
)
from groundcontrol.errors import BadRequest
from groundcontrol.models import (
    Satellite,
    check_name,
    effective_config,
    parse_config_overrides,
    parse_group_names,
    parse_labels,
)
from groundcontrol.services import Services
from groundcontrol.status import SUMMARIES, derive_status
from groundcontrol.store import Queries


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
    sat, token, published = await registration.enrol(
        ctx.services, name, groups, labels, config, ttl, ctx.now
    )
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
    await actions.remove_robot(ctx.services, name)
    async with ctx.services.store.transaction() as q:
        await q.delete_satellite(name)
    return Response(status_code=204)


async def create_join_token(ctx: Ctx) -> Response:
    body = await read_json(ctx.request) if has_body(ctx.request) else {}
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    only_keys(body, {"ttl"})
    token = await registration.create_join_token(
        ctx.services.store, ctx.services.config, ctx.param("name"), ctx.now, _ttl(body.get("ttl"))
    )
    return ok(token, 201)


async def revoke_satellite(ctx: Ctx) -> Response:
    name = ctx.param("name")
    async with ctx.services.store.transaction() as q:
        await q.revoke_satellite(name, int(ctx.now))
        sat = await q.satellite(name)
    problem = await actions.remove_robot(ctx.services, name)
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
    limit = int_param(ctx.request, "limit", 50, 1, 1000)
    before = int_param(ctx.request, "before", None, 1)
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
