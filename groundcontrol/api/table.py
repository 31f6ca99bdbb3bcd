"""The endpoint table of /api/v1 (see groundcontrol/api/__init__.py)."""

from __future__ import annotations

from starlette.responses import Response

from groundcontrol.api.agent import (
    get_credentials,
    get_root,
    get_state,
    list_roots,
    post_checkins,
    register,
    rotate_credentials,
)
from groundcontrol.api.base import V1, Ctx, Endpoint, ok
from groundcontrol.api.credentials import delete_credential, list_credentials, put_credential
from groundcontrol.api.groups import (
    create_group,
    delete_group,
    get_group,
    list_groups,
    update_group,
)
from groundcontrol.api.satellites import (
    create_join_token,
    create_satellite,
    delete_satellite,
    fleet_status,
    get_satellite,
    list_checkins,
    list_satellites,
    publish_satellite,
    revoke_satellite,
    update_satellite,
)
from groundcontrol.api.tokens import create_token, list_tokens, revoke_token
from groundcontrol.fleetview import API_ENDPOINTS
from groundcontrol.openapi import openapi_document


async def healthz(ctx: Ctx) -> Response:
    async with ctx.services.store.transaction() as q:
        await q.root_versions()
    return ok({"status": "ok"})


async def openapi(ctx: Ctx) -> Response:
    return ok(openapi_document(ENDPOINTS + API_ENDPOINTS))


# --- the table ----------------------------------------------------------------------------

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
