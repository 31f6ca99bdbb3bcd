"""No route answers without the right credential: every endpoint by every kind of caller.

The endpoint table is the one the app routes from, so a new route is covered here the
moment it exists.
"""

from __future__ import annotations

import base64
import re

import httpx

from groundcontrol import api, dashboard
from groundcontrol.api import Endpoint
from groundcontrol.contract import generate_key, public_key_b64
from groundcontrol.services import Services
from tests.groundcontrol.conftest import FakeClock
from tests.groundcontrol.fleet import SimSatellite

ALL = api.ENDPOINTS + dashboard.ENDPOINTS
DENIED = (401, 403)


def path_for(ep: Endpoint, satellite: str, group: str) -> str:
    values = {
        "name": satellite,
        "group": group,
        "token_id": "0000000000000000",
        "registry": "r.example",
        "version": "1",
    }
    return re.sub(r"{(\w+)}", lambda m: values[m.group(1)], ep.path)


async def call(
    client: httpx.AsyncClient, ep: Endpoint, path: str, headers: dict[str, str]
) -> httpx.Response:
    body = b"{}" if ep.method in ("POST", "PUT", "PATCH") else None
    return await client.request(
        ep.method, path, content=body, headers={**headers, "content-type": "application/json"}
    )


async def test_every_route_refuses_the_wrong_caller(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sats = {}
    for name in ("s1", "s2", "victim"):
        r = await client.post("/api/v1/satellites", json={"name": name}, headers=op)
        sat = SimSatellite(client, name)
        await sat.register(r.json()["join_token"]["token"], clock.now)
        sats[name] = sat
    await client.post("/api/v1/groups", json={"name": "gv"}, headers=op)
    r = await client.post("/api/v1/tokens", json={"name": "old"}, headers=op)
    revoked_token = r.json()["token"]
    await client.delete(f"/api/v1/tokens/{r.json()['id']}", headers=op)
    r = await client.post("/api/v1/tokens", json={"name": "revoked-sat"}, headers=op)

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    callers: dict[str, dict[str, str]] = {
        "nobody": {},
        "garbage": bearer("gco_not-a-token"),
        "garbage-sat": bearer("gcs_not-a-credential"),
        "malformed": {"Authorization": "Bearer"},
        "basic-garbage": {"Authorization": "Basic " + base64.b64encode(b"x:y").decode()},
        "revoked-operator": bearer(revoked_token),
        "other-satellite": sats["s2"].headers,
        "own-satellite": sats["s1"].headers,
        "operator": op,
    }
    expected_ok = {
        "public": set(callers),
        "join": set(),  # registration is authenticated by the join token in the body
        "operator": {"operator"},
        "satellite": {"own-satellite", "operator"},
        "self": {"own-satellite"},
        "any": {"own-satellite", "other-satellite", "operator"},
    }
    checked = 0
    for ep in ALL:
        for caller, headers in callers.items():
            # destructive operator calls target a satellite nobody else uses
            victim = caller == "operator"
            path = path_for(ep, "victim" if victim else "s1", "gv" if victim else "g")
            r = await call(client, ep, path, headers)
            if caller in expected_ok[ep.access]:
                assert r.status_code not in DENIED, (ep.method, ep.path, caller, r.text)
            elif ep.access == "join":
                assert r.status_code in (400, 401), (ep.path, caller, r.text)
            else:
                assert r.status_code in DENIED, (ep.method, ep.path, caller, r.status_code)
                assert r.json()["error"]["code"] in ("unauthorized", "forbidden")
                if r.status_code == 401:
                    assert "www-authenticate" in r.headers
            checked += 1
    assert checked == len(ALL) * len(callers)

    # registration with a forged token never answers with an identity
    r = await client.post(
        "/api/v1/register",
        json={
            "token": "gcj_0000000000000000.guess",
            "public_key": public_key_b64(generate_key().public_key()),
        },
    )
    assert r.status_code == 401


async def test_dashboard_accepts_the_token_as_basic_password(
    client: httpx.AsyncClient, operator_token: str
) -> None:
    r = await client.get("/dashboard")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic")
    basic = base64.b64encode(f"anyone:{operator_token}".encode()).decode()
    r = await client.get("/dashboard", headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200 and "<table" in r.text
