"""/api/v1/upstream-credentials: the registry credentials satellites are given."""

from __future__ import annotations

from starlette.responses import Response

from groundcontrol import satellite_credentials
from groundcontrol.api.base import Ctx, iso, ok, only_keys, read_object
from groundcontrol.errors import BadRequest
from groundcontrol.models import check_registry_host, parse_group_names


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
    await satellite_credentials.put_static(
        ctx.services, registry, username, password, groups, ctx.now
    )
    return ok(
        {"registry": registry, "kind": "static", "username": username, "groups": list(groups)}
    )


async def delete_credential(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        await q.delete_upstream_credential(check_registry_host(ctx.param("registry")))
    return Response(status_code=204)
