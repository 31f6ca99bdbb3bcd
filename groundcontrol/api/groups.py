"""/api/v1/groups: groups of satellites and the images they run."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from groundcontrol.api.base import Ctx, iso, ok, only_keys, published_json, read_object
from groundcontrol.errors import BadRequest
from groundcontrol.models import Group, check_name, parse_images
from groundcontrol.store import Queries


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
