"""Per-satellite Harbor robot accounts, against a fake that follows Harbor's swagger."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from groundcontrol.config import Config
from groundcontrol.harbor import projects_of
from groundcontrol.models import parse_images
from groundcontrol.services import Services
from tests.groundcontrol.conftest import CentralRegistry, FakeClock
from tests.groundcontrol.fake_harbor import ADMIN, FakeHarbor
from tests.groundcontrol.fleet import SimSatellite

HARBOR = "http://127.0.0.1:9443"


@pytest.fixture
def harbor() -> FakeHarbor:
    return FakeHarbor()


@pytest.fixture
def gc_config(gc_config: Config, central_registry: CentralRegistry) -> Config:
    return dataclasses.replace(
        gc_config,
        registry_url=central_registry.url,
        harbor_url=HARBOR,
        harbor_username=ADMIN[0],
        harbor_password=ADMIN[1],
    )


@pytest.fixture
async def services(
    gc_config: Config, clock: FakeClock, harbor: FakeHarbor
) -> AsyncIterator[Services]:
    s = await Services.open(
        gc_config, clock=clock, harbor_transport=httpx.ASGITransport(app=harbor.app())
    )
    yield s
    await s.close()


def test_projects_of_repositories() -> None:
    assert projects_of(["library/app", "team/x/y", "library/db", "solo"]) == ["library", "team"]
    assert [r.repository for r in parse_images(["team/x/y:1"])] == ["team/x/y"]


async def test_robot_per_satellite_scoped_rotated_and_removed(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, harbor: FakeHarbor
) -> None:
    await client.post(
        "/api/v1/groups", json={"name": "g", "images": ["library/app:v1"]}, headers=op
    )
    r = await client.post("/api/v1/satellites", json={"name": "s1", "groups": ["g"]}, headers=op)
    sat = SimSatellite(client, "s1")
    data = await sat.register(r.json()["join_token"]["token"], clock.now)
    (robot,) = [c for c in data["upstream_credentials"] if c["registry"] == "127.0.0.1:9443"]
    assert robot["username"] == "robot$satellite-s1"
    assert harbor.can_pull(robot["username"], robot["password"], "library")
    assert not harbor.can_pull(robot["username"], robot["password"], "other")

    # asking again changes nothing at Harbor
    calls = len(harbor.calls)
    again = (await client.get("/api/v1/satellites/s1/credentials", headers=sat.headers)).json()
    assert again["upstream_credentials"][0]["password"] == robot["password"]
    assert len(harbor.calls) == calls

    # the satellite leaves the group: the robot loses the project at the next ask
    await client.patch("/api/v1/satellites/s1", json={"groups": []}, headers=op)
    await client.get("/api/v1/satellites/s1/credentials", headers=sat.headers)
    assert next(iter(harbor.robots.values()))["permissions"] == []
    assert not harbor.can_pull(robot["username"], robot["password"], "library")
    await client.patch("/api/v1/satellites/s1", json={"groups": ["g"]}, headers=op)
    await client.get("/api/v1/satellites/s1/credentials", headers=sat.headers)
    assert harbor.can_pull(robot["username"], robot["password"], "library")

    # operator rotation: the old secret stops working
    r = await client.post("/api/v1/satellites/s1/credentials/rotate", headers=op)
    assert r.status_code == 200 and "password" not in r.json()
    assert not harbor.can_pull(robot["username"], robot["password"], "library")
    fresh = (await client.get("/api/v1/satellites/s1/credentials", headers=sat.headers)).json()
    new = fresh["upstream_credentials"][0]
    assert new["password"] != robot["password"]
    assert harbor.can_pull(new["username"], new["password"], "library")

    # revocation deletes the robot at Harbor
    await client.post("/api/v1/satellites/s1/revoke", headers=op)
    assert harbor.robots == {}


async def test_robot_near_expiry_is_rotated(
    client: httpx.AsyncClient,
    op: dict[str, str],
    clock: FakeClock,
    harbor: FakeHarbor,
    services: Services,
) -> None:
    r = await client.post("/api/v1/satellites", json={"name": "s1"}, headers=op)
    sat = SimSatellite(client, "s1")
    first = (await sat.register(r.json()["join_token"]["token"], clock.now))[
        "upstream_credentials"
    ][0]
    clock.advance(services.config.harbor_robot_ttl_days * 86400 * 0.8)
    harbor.now = int(clock.now)
    later = (await client.get("/api/v1/satellites/s1/credentials", headers=sat.headers)).json()
    cred = later["upstream_credentials"][0]
    assert cred["password"] != first["password"]
    assert cred["expires_at"] > first["expires_at"]


async def test_harbor_failure_is_a_clear_502(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, harbor: FakeHarbor
) -> None:
    r = await client.post("/api/v1/satellites", json={"name": "s1"}, headers=op)
    sat = SimSatellite(client, "s1")
    await sat.register(r.json()["join_token"]["token"], clock.now)
    harbor.robots.clear()  # someone deleted the robot behind our back
    r = await client.post("/api/v1/satellites/s1/credentials/rotate", headers=op)
    assert r.status_code == 502 and r.json()["error"]["code"] == "harbor_error"


async def test_a_robot_left_in_harbor_is_adopted(
    client: httpx.AsyncClient,
    op: dict[str, str],
    clock: FakeClock,
    harbor: FakeHarbor,
    services: Services,
) -> None:
    """A robot Ground Control has no record of (the satellite was deleted while Harbor
    was unreachable): creating it again is refused with 409, so it is taken over."""
    await client.post(
        "/api/v1/groups", json={"name": "g", "images": ["library/app:v1"]}, headers=op
    )
    r = await client.post("/api/v1/satellites", json={"name": "s1", "groups": []}, headers=op)
    sat = SimSatellite(client, "s1")
    await sat.register(r.json()["join_token"]["token"], clock.now)
    (left,) = harbor.robots.values()
    old_secret = left["secret"]
    async with services.store.transaction() as q:  # what a failed Harbor delete leaves
        await q.tx.execute("DELETE FROM robot_accounts WHERE satellite = ?", "s1")
    await client.patch("/api/v1/satellites/s1", json={"groups": ["g"]}, headers=op)
    r = await client.get("/api/v1/satellites/s1/credentials", headers=sat.headers)
    assert r.status_code == 200, r.text
    (robot,) = [c for c in r.json()["upstream_credentials"] if c["registry"] == "127.0.0.1:9443"]
    assert len(harbor.robots) == 1 and robot["username"] == left["name"]
    assert robot["password"] != old_secret  # a new secret: the old one may have leaked
    assert harbor.can_pull(robot["username"], robot["password"], "library")
