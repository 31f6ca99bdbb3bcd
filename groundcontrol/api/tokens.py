"""/api/v1/tokens: operator API tokens."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from groundcontrol.api.base import Ctx, iso, ok, only_keys, read_object
from groundcontrol.auth import hash_token, new_operator_token
from groundcontrol.errors import BadRequest


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
