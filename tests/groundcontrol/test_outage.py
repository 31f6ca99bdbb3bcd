"""A central registry outage: satellites keep a state that still holds, and a registration
that has spent its join token is never lost to it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from groundcontrol.config import Config
from groundcontrol.services import Services
from tests.groundcontrol.conftest import FakeClock
from tests.groundcontrol.fleet import SimSatellite
from tests.groundcontrol.test_api import make_satellite
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry


@pytest.fixture
def registry(
    upstream_registry_factory: Callable[..., UpstreamRegistry], image_layout: Any, skopeo: Skopeo
) -> UpstreamRegistry:
    registry = upstream_registry_factory()
    skopeo.copy(image_layout.oci("app:v1"), f"docker://{registry.host}/library/app:v1")
    return registry


@pytest.fixture
def gc_config(gc_config: Config, registry: UpstreamRegistry) -> Config:
    return dataclasses.replace(gc_config, registry_url=registry.url, registry_timeout=2)


async def satellite_in_group(client: httpx.AsyncClient, op: dict[str, str]) -> str:
    r = await client.post(
        "/api/v1/groups", json={"name": "g", "images": ["library/app:v1"]}, headers=op
    )
    assert r.status_code == 201, r.text
    created = await make_satellite(client, op, "s", groups=["g"])
    token: str = created["join_token"]["token"]
    return token


async def test_a_state_that_still_holds_is_served_while_the_registry_is_down(
    client: httpx.AsyncClient,
    op: dict[str, str],
    clock: FakeClock,
    services: Services,
    registry: UpstreamRegistry,
) -> None:
    sat = SimSatellite(client, "s")
    await sat.register(await satellite_in_group(client, op), clock.now)
    first = await sat.state(clock.now)
    registry.stop()
    # inside the refresh window: the re-signing fails, the state still holds
    config = services.config
    clock.advance(config.state_expires - config.state_refresh_before + 1)
    assert (await sat.state(clock.now)).version == first.version
    registry.start()
    assert (await sat.state(clock.now)).version == first.version + 1
    # once expired there is nothing left to serve: the outage is the answer
    registry.stop()
    clock.advance(config.state_expires + 1)
    r = await client.get("/api/v1/satellites/s/state", headers=sat.headers)
    assert r.status_code == 502 and r.json()["error"]["code"] == "registry_unavailable"


async def test_registration_during_an_outage_keeps_its_credential(
    client: httpx.AsyncClient,
    op: dict[str, str],
    clock: FakeClock,
    services: Services,
    registry: UpstreamRegistry,
) -> None:
    await satellite_in_group(client, op)
    registry.stop()
    clock.advance(services.config.state_expires + 1)  # the first state has expired
    r = await client.post("/api/v1/satellites/s/join-tokens", json={"ttl": 600}, headers=op)
    token = r.json()["token"]
    sat = SimSatellite(client, "s")
    data = await sat.register(token, clock.now)  # 201: the join token is spent
    assert data["state"] is None
    assert any("registry_unavailable" in w for w in data["warnings"])
    registry.start()
    doc = await sat.state(clock.now)  # the credential from the registration works
    assert doc.satellite == "s" and len(doc.images) == 1
