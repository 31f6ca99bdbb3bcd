"""What satellites call: registration, their signed state (long-polled), the trust-root
chain, check-ins and their upstream credentials."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from groundcontrol import checkins, registration, satellite_credentials
from groundcontrol.api.base import MAX_CHECKIN_BODY, Ctx, int_param, ok, read_body, read_json
from groundcontrol.auth import SatellitePrincipal
from groundcontrol.config import parse_int
from groundcontrol.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from groundcontrol.keys import root_envelope
from groundcontrol.models import Satellite
from registry_proxy.waits import wait_event


async def register(ctx: Ctx) -> Response:
    client = ctx.request.client
    source = client.host if client else "unknown"
    # counted before the body is read: a client trickling its body is counted at once
    await registration.count_attempt(ctx.services.store, ctx.services.config, source, ctx.now)
    body = await read_json(ctx.request, 64 * 1024)
    return ok(await registration.join(ctx.services, source, body, ctx.now), 201)


async def _current_state(ctx: Ctx, name: str) -> dict[str, Any] | None:
    """The latest state, re-signed with a new version first when it nears expiry."""
    return (await _satellite_state(ctx, name))[1]


async def _satellite_state(ctx: Ctx, name: str) -> tuple[Satellite, dict[str, Any] | None]:
    return await ctx.services.publisher.state_for_read(name, ctx.now)


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
    have = int_param(ctx.request, "have", None, 0)
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
    envelope = await root_envelope(ctx.services.store, version)
    return Response(envelope, media_type="application/json")


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
    creds = await satellite_credentials.for_satellite(ctx.services, ctx.param("name"), ctx.now)
    return ok({"upstream_credentials": creds})


async def rotate_credentials(ctx: Ctx) -> Response:
    robot = await satellite_credentials.rotate_robot(ctx.services, ctx.param("name"), ctx.now)
    return ok(
        {"registry": robot.registry, "username": robot.username, "expires_at": robot.expires_at}
    )
