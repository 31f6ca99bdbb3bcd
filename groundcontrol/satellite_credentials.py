"""The upstream credentials satellites are given, as a service the API and the dashboard
share: static credentials (sealed at rest, for every satellite or for some groups) and
each satellite's own Harbor robot, created or rotated on demand.

(``registry_credentials`` is the other direction: what Ground Control itself presents
to a registry.)
"""

from __future__ import annotations

from typing import Any

from groundcontrol.errors import Forbidden, Unprocessable
from groundcontrol.harbor import RobotCredential
from groundcontrol.registry_credentials import sealed_for
from groundcontrol.services import Services


async def for_satellite(s: Services, name: str, now: float) -> list[dict[str, Any]]:
    """The upstream credentials a satellite may use: the static ones for all or for one of
    its groups, and its own Harbor robot when Harbor is configured (created, or renewed
    when near expiry, by this call)."""
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
                "password": s.sealer.open(r["secret"], sealed_for(r["registry"])),
            }
        )
    return out


async def rotate_robot(s: Services, name: str, now: float) -> RobotCredential:
    """A new secret for the satellite's Harbor robot (the old one stops working)."""
    async with s.store.transaction() as q:
        sat = await q.satellite(name)
    if s.harbor is None:
        raise Unprocessable("no Harbor configured ([harbor] url)", code="harbor_not_configured")
    if sat.revoked_at is not None:
        raise Forbidden(f"satellite {name} is revoked", code="satellite_revoked")
    return await s.harbor.ensure(s.store, name, now, rotate=True)


async def put_static(
    s: Services,
    registry: str,
    username: str,
    password: str,
    groups: tuple[str, ...],
    now: float,
) -> None:
    """Stores (or replaces) the static credential for ``registry``, sealed; ``groups``
    empty: for every satellite."""
    sealed = s.sealer.seal(password, sealed_for(registry))
    async with s.store.transaction() as q:
        await q.check_groups_exist(groups)
        await q.put_upstream_credential(
            registry, "static", username, sealed, list(groups), int(now)
        )
