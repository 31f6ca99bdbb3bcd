"""What an operator can do from the dashboard, each leaving an audit entry (who, what,
when) in ``audit_log``.

Each action reuses the service the API uses (the publisher, join tokens, revocation, the
Harbor robots) and writes its audit entry in the same transaction as the change where
the change is one transaction (publishing, revoking); otherwise right after it succeeded.
The caller (:mod:`groundcontrol.dashboard`) has already checked the session, the
request's origin and its CSRF token.
"""

from __future__ import annotations

import logging
from typing import Any

from groundcontrol import registration, satellite_credentials
from groundcontrol.errors import BadRequest, GroundControlError
from groundcontrol.models import ImageRef, parse_images
from groundcontrol.publish import Published
from groundcontrol.services import Services
from groundcontrol.store import Queries

log = logging.getLogger("groundcontrol")
MAX_IMAGE_LINES = 1000


async def audit(q: Queries, actor: str, action: str, target: str, detail: str, now: float) -> None:
    await q.insert_audit(actor, action, target, detail, int(now))


def _versions(published: list[Published]) -> str:
    if not published:
        return "nothing new to publish"
    versions = sorted(p.version for p in published)
    return f"{len(published)} state(s) published, version(s) {versions[0]}-{versions[-1]}"


async def publish_satellite(services: Services, actor: str, name: str, now: float) -> str:
    """Re-resolve and re-sign one satellite's state (as ``POST .../publish`` does)."""

    async def mutate(q: Queries) -> tuple[None, list[str]]:
        await q.satellite(name)
        return None, [name]

    _, published = await services.publisher.run(mutate, now, force=True)
    detail = _versions(published)
    async with services.store.transaction() as q:
        await audit(q, actor, "publish", f"satellite/{name}", detail, now)
    return detail


def parse_image_lines(text: str) -> tuple[ImageRef, ...]:
    """One image a line: ``REFERENCE`` or ``REFERENCE linux/amd64,linux/arm64``."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_IMAGE_LINES:
        raise BadRequest(f"at most {MAX_IMAGE_LINES} images", code="invalid_images")
    items: list[Any] = []
    for words in lines:
        if len(words) > 2:
            raise BadRequest(
                f"{' '.join(words)!r}: expected a reference and optional platforms",
                code="invalid_images",
            )
        platforms = words[1].split(",") if len(words) == 2 else []
        items.append({"reference": words[0], "platforms": platforms})
    return parse_images(items)


async def publish_group(
    services: Services, actor: str, name: str, images_text: str, now: float
) -> str:
    """Set a group's images and publish to its members (as ``PUT /groups/{name}``); the
    same images again re-resolves their tags and re-signs every member."""
    images = parse_image_lines(images_text)

    async def mutate(q: Queries) -> tuple[None, list[str]]:
        current = await q.group(name)
        if images == current.images:
            await q.record_group_change(name, f"re-published by {actor}", images, int(now))
        else:
            await q.update_group(name, current.description, images, int(now))
        await audit(q, actor, "publish", f"group/{name}", f"{len(images)} image(s)", now)
        return None, await q.group_members(name)

    _, published = await services.publisher.run(mutate, now, force=True)
    return _versions(published)


async def new_join_token(services: Services, actor: str, name: str, now: float) -> dict[str, Any]:
    token = await registration.create_join_token(services.store, services.config, name, now)
    async with services.store.transaction() as q:
        detail = f"join token {token['token_id']}, expires at {token['expires_at']}"
        await audit(q, actor, "join_token", f"satellite/{name}", detail, now)
    return token


async def revoke(
    services: Services, actor: str, name: str, confirmation: str, now: float
) -> str | None:
    """Revoke after the operator typed the satellite's name; returns a warning when its
    Harbor robot could not be deleted (the revocation stands)."""
    if confirmation != name:
        raise BadRequest(
            f"type the satellite's name ({name}) to confirm the revocation",
            code="confirmation_required",
        )
    async with services.store.transaction() as q:
        await q.revoke_satellite(name, int(now))
        await audit(q, actor, "revoke", f"satellite/{name}", "credential revoked", now)
    return await remove_robot(services, name)


async def remove_robot(services: Services, name: str) -> str | None:
    """Best effort: a revocation or deletion stands even when Harbor is unreachable."""
    if services.harbor is None:
        return None
    try:
        await services.harbor.remove(services.store, name)
    except GroundControlError as exc:
        log.warning("could not delete the Harbor robot of %s: %s", name, exc.message)
        return exc.message
    return None


async def rotate_credentials(services: Services, actor: str, name: str, now: float) -> str:
    robot = await satellite_credentials.rotate_robot(services, name, now)
    detail = f"robot {robot.username} on {robot.registry} rotated"
    async with services.store.transaction() as q:
        await audit(q, actor, "rotate_credentials", f"satellite/{name}", detail, now)
    return detail
