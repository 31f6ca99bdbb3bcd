"""A fake Harbor that follows the robot-account part of Harbor's v2.0 swagger.

``/api/v2.0/robots`` (GET ListRobot with ``q=name=…`` or ``q=name=~…``, POST RobotCreate →
201 RobotCreated + Location) and
``/api/v2.0/robots/{robot_id}`` (GET Robot, PUT Robot, PATCH RobotSec → RobotSec,
DELETE). Bodies are checked against the swagger definitions (known properties, types);
errors use Harbor's ``{"errors": [{"code", "message"}]}``; Basic auth as admin.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ADMIN = ("admin", "Harbor12345")
ROBOT_PREFIX = "robot$"

ROBOT_CREATE = {
    "name": str,
    "description": str,
    "secret": str,
    "level": str,
    "disable": bool,
    "duration": int,
    "permissions": list,
}
ROBOT = {
    **ROBOT_CREATE,
    "id": int,
    "editable": bool,
    "expires_at": int,
    "creation_time": str,
    "update_time": str,
}
PERMISSION = {"kind": str, "namespace": str, "access": list}
ACCESS = {"resource": str, "action": str, "effect": str}


def _err(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=status)


def _check(obj: Any, schema: dict[str, type], where: str) -> str | None:
    if not isinstance(obj, dict):
        return f"{where}: expected an object"
    for key, value in obj.items():
        if key not in schema:
            return f"{where}: unknown property {key}"
        want = schema[key]
        if (want is int and isinstance(value, bool)) or not isinstance(value, want):
            return f"{where}.{key}: expected {want.__name__}"
    return None


def _check_permissions(perms: list[Any]) -> str | None:
    for i, p in enumerate(perms):
        problem = _check(p, PERMISSION, f"permissions[{i}]")
        if problem:
            return problem
        for j, a in enumerate(p.get("access", [])):
            problem = _check(a, ACCESS, f"permissions[{i}].access[{j}]")
            if problem:
                return problem
    return None


@dataclass
class FakeHarbor:
    now: int = 1_750_000_000
    robots: dict[int, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    next_id: int = 1

    def can_pull(self, username: str, secret: str, project: str) -> bool:
        for r in self.robots.values():
            if r["name"] == username and r["secret"] == secret and not r["disable"]:
                return any(
                    p["kind"] == "project"
                    and p["namespace"] == project
                    and {"resource": "repository", "action": "pull"} in p["access"]
                    for p in r["permissions"]
                )
        return False

    def _auth(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        expected = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        return header == f"Basic {expected}"

    def _public(self, robot: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in robot.items() if k != "secret"}

    async def robots_endpoint(self, request: Request) -> Response:
        self.calls.append((request.method, request.url.path))
        if not self._auth(request):
            return _err(401, "UNAUTHORIZED", "unauthorized")
        if request.method == "GET":  # ListRobot: q=name=exact or q=name=~fuzzy
            query = request.query_params.get("q", "")
            if query and not query.startswith("name="):
                return _err(400, "BAD_REQUEST", f"unsupported query {query!r}")
            want = query.removeprefix("name=")
            robots = [
                self._public(r)
                for r in self.robots.values()
                if not want
                or (want[1:] in r["name"] if want.startswith("~") else r["name"] == want)
            ]
            return JSONResponse(robots, headers={"X-Total-Count": str(len(robots))})
        body = await request.json()
        problem = _check(body, ROBOT_CREATE, "robot") or _check_permissions(
            body.get("permissions", [])
        )
        if problem:
            return _err(400, "BAD_REQUEST", problem)
        if body.get("level") not in ("system", "project"):
            return _err(400, "BAD_REQUEST", "level must be system or project")
        name = ROBOT_PREFIX + body["name"]
        if any(r["name"] == name for r in self.robots.values()):
            return _err(409, "CONFLICT", f"robot {name} already exists")
        robot_id, self.next_id = self.next_id, self.next_id + 1
        duration = body.get("duration", -1)
        robot = {
            "id": robot_id,
            "name": name,
            "description": body.get("description", ""),
            "secret": body.get("secret") or secrets.token_urlsafe(24),
            "level": body["level"],
            "duration": duration,
            "editable": True,
            "disable": body.get("disable", False),
            "expires_at": -1 if duration == -1 else self.now + duration * 86400,
            "permissions": body.get("permissions", []),
            "creation_time": "2025-06-15T00:00:00.000Z",
            "update_time": "2025-06-15T00:00:00.000Z",
        }
        self.robots[robot_id] = robot
        created = {k: robot[k] for k in ("id", "name", "secret", "creation_time", "expires_at")}
        return JSONResponse(
            created, status_code=201, headers={"Location": f"/api/v2.0/robots/{robot_id}"}
        )

    async def robot_endpoint(self, request: Request) -> Response:
        self.calls.append((request.method, request.url.path))
        if not self._auth(request):
            return _err(401, "UNAUTHORIZED", "unauthorized")
        robot = self.robots.get(int(request.path_params["robot_id"]))
        if robot is None:
            return _err(404, "NOT_FOUND", "robot not found")
        if request.method == "GET":
            return JSONResponse(self._public(robot))
        if request.method == "DELETE":
            del self.robots[robot["id"]]
            return Response(status_code=200)
        body = await request.json()
        if request.method == "PATCH":
            problem = _check(body, {"secret": str}, "robotSec")
            if problem:
                return _err(400, "BAD_REQUEST", problem)
            robot["secret"] = body.get("secret") or secrets.token_urlsafe(24)
            if robot["duration"] != -1:
                robot["expires_at"] = self.now + robot["duration"] * 86400
            return JSONResponse({"secret": robot["secret"]})
        problem = _check(body, ROBOT, "robot") or _check_permissions(body.get("permissions", []))
        if problem:
            return _err(400, "BAD_REQUEST", problem)
        if body.get("name") != robot["name"] or body.get("level") != robot["level"]:
            return _err(400, "BAD_REQUEST", "name and level cannot be changed")
        robot["permissions"] = body.get("permissions", [])
        robot["description"] = body.get("description", robot["description"])
        robot["disable"] = body.get("disable", robot["disable"])
        return Response(status_code=200)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v2.0/robots", self.robots_endpoint, methods=["GET", "POST"]),
                Route(
                    "/api/v2.0/robots/{robot_id:int}",
                    self.robot_endpoint,
                    methods=["GET", "PUT", "PATCH", "DELETE"],
                ),
            ]
        )
