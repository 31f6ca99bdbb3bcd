"""/api/v1/upstream-credentials: the registry credentials satellites are given."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from groundcontrol.api.base import Ctx, iso, ok, only_keys, read_object
from groundcontrol.errors import BadRequest
from groundcontrol.models import check_registry_host, parse_group_names
from groundcontrol.services import Services


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
