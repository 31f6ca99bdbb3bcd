"""Per-satellite Harbor robot accounts through Harbor's published v2.0 API.

When ``[harbor] url`` is configured, each registered satellite gets its own system-level
robot account limited to ``repository:pull`` on the Harbor projects its images come from
(the first path component of each repository). The adapter keeps it in step lazily,
whenever the satellite asks for its credentials:

- no robot yet → ``POST /api/v2.0/robots`` (RobotCreate → RobotCreated);
- its projects changed → ``PUT /api/v2.0/robots/{id}`` with the new permissions;
- its secret expires within a quarter of its lifetime, or an operator asks →
  ``PATCH /api/v2.0/robots/{id}`` (RobotSec: refresh the secret);
- the satellite is revoked or deleted → ``DELETE /api/v2.0/robots/{id}``.

The secret is sealed at rest like every other upstream secret. Harbor errors
(``{"errors": [{"code", "message"}]}``) become ``harbor_error`` (502).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from groundcontrol.errors import HarborError
from groundcontrol.publish import desired_images
from groundcontrol.sealing import Sealer
from groundcontrol.store import Store

API = "/api/v2.0"


def robot_name(satellite: str) -> str:
    return f"satellite-{satellite}"


def permissions(projects: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "kind": "project",
            "namespace": project,
            "access": [{"resource": "repository", "action": "pull"}],
        }
        for project in sorted(projects)
    ]


def projects_of(repositories: list[str]) -> list[str]:
    """Harbor repositories are ``project/name…``: the projects a satellite pulls from."""
    return sorted({r.split("/", 1)[0] for r in repositories if "/" in r})


class HarborClient:
    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/") + API,
            headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )
        self.host = urlsplit(url).netloc

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            r = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise HarborError(f"Harbor unreachable: {type(exc).__name__}") from None
        if r.status_code >= 400:
            try:
                errors = r.json().get("errors") or [{}]
                detail = f"{errors[0].get('code', '')}: {errors[0].get('message', '')}"
            except (ValueError, AttributeError):
                detail = r.text[:200]
            raise HarborError(
                f"Harbor {method} {path} answered {r.status_code} ({detail})",
                http_status=r.status_code,
            )
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise HarborError(f"Harbor {method} {path}: not JSON") from None

    async def create_robot(self, name: str, projects: list[str], days: int) -> dict[str, Any]:
        created: dict[str, Any] = await self._call(
            "POST",
            "/robots",
            {
                "name": name,
                "description": "Satellite pull credential, managed by Ground Control",
                "level": "system",
                "disable": False,
                "duration": days,
                "permissions": permissions(projects),
            },
        )
        return created

    async def find_robot(self, name: str) -> dict[str, Any] | None:
        """The robot created as `name` (Harbor prefixes it, by default with ``robot$``)."""
        found = await self._call("GET", f"/robots?q=name%3D~{name}&page_size=100")
        for robot in found if isinstance(found, list) else []:
            if isinstance(robot, dict) and str(robot.get("name", "")).split("$")[-1] == name:
                return robot
        return None

    async def get_robot(self, robot_id: int) -> dict[str, Any]:
        robot: dict[str, Any] = await self._call("GET", f"/robots/{robot_id}")
        return robot

    async def update_permissions(self, robot_id: int, projects: list[str]) -> None:
        robot = await self.get_robot(robot_id)
        robot["permissions"] = permissions(projects)
        await self._call("PUT", f"/robots/{robot_id}", robot)

    async def refresh_secret(self, robot_id: int) -> str:
        sec = await self._call("PATCH", f"/robots/{robot_id}", {})
        secret = sec.get("secret") if isinstance(sec, dict) else None
        if not isinstance(secret, str) or not secret:
            raise HarborError("Harbor refreshed the robot secret but returned none")
        return secret

    async def delete_robot(self, robot_id: int) -> None:
        await self._call("DELETE", f"/robots/{robot_id}")


@dataclass
class RobotCredential:
    registry: str
    username: str
    password: str
    expires_at: int


class HarborRobots:
    """Keeps one robot per satellite in step with the satellite's images."""

    def __init__(self, client: HarborClient, sealer: Sealer, ttl_days: int) -> None:
        self.client = client
        self.sealer = sealer
        self.ttl_days = ttl_days

    def _context(self, satellite: str) -> str:
        return f"harbor:{self.client.host}:{satellite}"

    async def ensure(
        self, store: Store, name: str, now: float, *, rotate: bool = False
    ) -> RobotCredential:
        """Create, re-scope or rotate the satellite's robot; return its credential.

        Harbor is called outside any database transaction (a slow Harbor must not hold
        the SQLite write lock); two racing first calls make Harbor refuse the second
        robot by name, and that caller's retry finds the stored one.
        """
        async with store.transaction() as q:
            sat = await q.satellite(name)
            groups = {g.name: g for g in await q.groups()}
            row = await q.robot_account(name, self.client.host)
        refs = desired_images(groups[g] for g in sat.groups if g in groups)
        projects = projects_of([r.repository for r in refs])
        lifetime = self.ttl_days * 86400
        if row is None:
            try:
                created = await self.client.create_robot(robot_name(name), projects, self.ttl_days)
            except HarborError as exc:
                if exc.http_status != 409:
                    raise
                created = await self._adopt(name, projects, now + lifetime)
            robot_id, username = int(created["id"]), str(created["name"])
            secret = str(created["secret"])
            expires = _expiry(created, now + lifetime)
        else:
            robot_id, username = int(row["robot_id"]), str(row["username"])
            secret = self.sealer.open(row["secret"], self._context(name))
            expires = int(row["expires_at"])
            rescope = json.loads(row["projects"]) != projects
            renew = rotate or expires - now < lifetime / 4
            if not (rescope or renew):  # the usual ask: nothing to change or to store
                return RobotCredential(self.client.host, username, secret, expires)
            if rescope:
                await self.client.update_permissions(robot_id, projects)
            if renew:
                secret = await self.client.refresh_secret(robot_id)
                expires = _expiry(await self.client.get_robot(robot_id), now + lifetime)
        async with store.transaction() as q:
            await q.put_robot_account(
                name,
                self.client.host,
                robot_id,
                username,
                self.sealer.seal(secret, self._context(name)),
                projects,
                expires,
                int(now),
            )
        return RobotCredential(self.client.host, username, secret, expires)

    async def _adopt(self, name: str, projects: list[str], default_expiry: float) -> dict[str, Any]:
        """Harbor has a robot of this name that Ground Control holds no record of: left
        by a delete while Harbor was unreachable, or by a racing first call. It is taken
        over with a new secret and this satellite's projects."""
        robot = await self.client.find_robot(robot_name(name))
        if robot is None:
            raise HarborError(
                f"Harbor refused robot {robot_name(name)} as a duplicate, then had none"
            )
        robot_id = int(robot["id"])
        await self.client.update_permissions(robot_id, projects)
        secret = await self.client.refresh_secret(robot_id)
        current = await self.client.get_robot(robot_id)
        return {**current, "id": robot_id, "secret": secret}

    async def remove(self, store: Store, name: str) -> None:
        async with store.transaction() as q:
            row = await q.robot_account(name, self.client.host)
        if row is not None:
            await self.client.delete_robot(int(row["robot_id"]))
            async with store.transaction() as q:
                await q.delete_robot_account(name, self.client.host)


def _expiry(robot: dict[str, Any], default: float) -> int:
    value = robot.get("expires_at")
    return int(value) if isinstance(value, int) and value > 0 else int(default)
