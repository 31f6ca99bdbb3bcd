"""No route answers without the right credential: every endpoint by every kind of caller.

The endpoint table is the one the app routes from, so a new route is covered here the
moment it exists. The API takes only Bearer credentials and JSON bodies; the dashboard
takes its own session cookie (with CSRF checks) or a Bearer token on GET.
"""

from __future__ import annotations

import base64
import re

import httpx

from groundcontrol import dashboard, fleetview
from groundcontrol.api.base import Endpoint
from groundcontrol.api.table import ENDPOINTS
from groundcontrol.contract import generate_key, public_key_b64
from groundcontrol.services import Services
from tests.groundcontrol.conftest import FakeClock
from tests.groundcontrol.fleet import SimSatellite

ALL = ENDPOINTS + fleetview.API_ENDPOINTS + dashboard.ENDPOINTS
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
    kind = "application/json"
    if ep.access in ("dashboard", "login"):
        body = b"csrf=x&token=x" if ep.method == "POST" else None
        kind = "application/x-www-form-urlencoded"
        headers = {**headers, "origin": "http://127.0.0.1"}
    return await client.request(
        ep.method, path, content=body, headers={**headers, "content-type": kind}
    )


async def test_every_route_refuses_the_wrong_caller(
    client: httpx.AsyncClient,
    op: dict[str, str],
    operator_token: str,
    clock: FakeClock,
    services: Services,
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
        # the operator's own token as HTTP Basic (what a browser keeps after a prompt)
        "basic-operator": {
            "Authorization": "Basic " + base64.b64encode(f"op:{operator_token}".encode()).decode()
        },
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
        "dashboard": {"operator"},  # on GET; a POST needs the session (below)
        "login": set(callers),
    }
    checked = 0
    for ep in ALL:
        for caller, headers in callers.items():
            # destructive operator calls target a satellite nobody else uses
            victim = caller == "operator"
            path = path_for(ep, "victim" if victim else "s1", "gv" if victim else "g")
            r = await call(client, ep, path, headers)
            ok = caller in expected_ok[ep.access]
            if ep.access == "dashboard" and ep.method == "POST":
                ok = False  # a dashboard form never answers to a header credential
            if ep.access == "login" and ep.method == "POST":
                # the form's token ("x") is checked, not the caller's header
                assert r.status_code == 401 and "Sign in" in r.text, (caller, r.text)
            elif ok:
                assert r.status_code not in DENIED, (ep.method, ep.path, caller, r.text)
            elif ep.access == "join":
                assert r.status_code in (400, 401), (ep.path, caller, r.text)
            elif ep.access == "dashboard" and caller == "nobody":
                assert r.status_code == 303, (ep.method, ep.path, r.status_code)
                assert r.headers["location"] == "/dashboard/login"
            else:
                assert r.status_code in DENIED, (ep.method, ep.path, caller, r.status_code)
                assert r.json()["error"]["code"] in ("unauthorized", "forbidden")
                if r.status_code == 401:
                    assert r.headers["www-authenticate"].startswith("Bearer")
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


async def test_api_refuses_bodies_that_are_not_json(
    client: httpx.AsyncClient, op: dict[str, str]
) -> None:
    """What a cross-site form can send (text/plain crafted as JSON, urlencoded, multipart)
    never reaches a handler, even with a valid credential."""
    await client.post("/api/v1/satellites", json={"name": "s1"}, headers=op)
    forged = [
        ("POST", "/api/v1/tokens", b'{"name": "evil"}'),
        ("POST", "/api/v1/groups", b'{"name": "evil"}'),
        ("POST", "/api/v1/satellites", b'{"name": "evil"}'),
        ("POST", "/api/v1/satellites/s1/revoke", b""),
        ("POST", "/api/v1/satellites/s1/join-tokens", b'{"ttl": 600}'),
        ("PATCH", "/api/v1/satellites/s1", b'{"labels": {"x": "y"}}'),
        ("DELETE", "/api/v1/satellites/s1", b""),
        ("PUT", "/api/v1/upstream-credentials/r.example", b'{"username":"u","password":"p"}'),
        ("POST", "/api/v1/register", b'{"token": "gcj_x.y", "public_key": "AAAA"}'),
    ]
    kinds = [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        None,  # a body without a type
    ]
    for method, path, body in forged:
        for kind in kinds:
            if kind is None and not body:
                continue  # a bodiless POST without a type is what the CLI sends
            headers = dict(op) if kind is None else {**op, "content-type": kind}
            r = await client.request(method, path, content=body, headers=headers)
            assert r.status_code == 415, (method, path, kind, r.status_code, r.text)
            assert r.json()["error"]["code"] == "unsupported_media_type"
    r = await client.get("/api/v1/tokens", headers=op)
    assert [t["name"] for t in r.json()["tokens"]] == ["test operator"]
    r = await client.get("/api/v1/satellites/s1", headers=op)
    assert r.status_code == 200 and r.json()["revoked_at"] is None and r.json()["labels"] == {}
    r = await client.get("/api/v1/groups", headers=op)
    assert r.json()["groups"] == []
    # JSON, with or without a charset, and a bodiless POST, still work
    r = await client.post(
        "/api/v1/tokens",
        content=b'{"name": "ok"}',
        headers={**op, "content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 201
    r = await client.post("/api/v1/satellites/s1/publish", headers=op)
    assert r.status_code == 200


async def test_openapi_lists_415_on_state_changing_routes(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/api/v1/openapi.json")).json()
    for ep in ENDPOINTS:
        responses = doc["paths"][ep.path][ep.method.lower()]["responses"]
        changing = ep.method in ("POST", "PUT", "PATCH", "DELETE")
        assert ("415" in responses) == changing, (ep.method, ep.path)
        if changing:
            assert "unsupported_media_type" in responses["415"]["description"]
    schemes = doc["components"]["securitySchemes"]
    assert {s["scheme"] for s in schemes.values()} == {"bearer"}


ORIGIN = {"origin": "http://127.0.0.1"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


async def login(client: httpx.AsyncClient, token: str) -> str:
    """Signs in through the form; returns the CSRF token of the session's pages."""
    r = await client.post(
        "/dashboard/login", content=f"token={token}".encode(), headers={**ORIGIN, **FORM}
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard", r.text
    cookie = r.headers["set-cookie"]
    assert "gc_session=" in cookie
    lowered = cookie.lower()
    for attribute in ("httponly", "samesite=strict", "path=/dashboard", "max-age="):
        assert attribute in lowered, cookie
    assert "secure" not in lowered  # plain HTTP here; the TLS case is below
    page = await client.get("/dashboard")
    assert page.status_code == 200 and "<table" in page.text
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


async def test_dashboard_login_session_and_logout(
    client: httpx.AsyncClient, op: dict[str, str], operator_token: str
) -> None:
    r = await client.get("/dashboard")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    form = await client.get("/dashboard/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    assert "script-src" not in form.headers["content-security-policy"]
    assert "default-src 'none'" in form.headers["content-security-policy"]
    assert "<script" not in form.text

    # HTTP Basic with the operator token no longer opens anything
    basic = base64.b64encode(f"anyone:{operator_token}".encode()).decode()
    r = await client.get("/dashboard", headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 401
    # an operator's Bearer token answers on GET (scripts), with no session and no form
    r = await client.get("/dashboard", headers=op)
    assert r.status_code == 200 and 'id="logout"' not in r.text

    # a wrong token: the form again, no cookie
    r = await client.post(
        "/dashboard/login", content=b"token=gco_wrong", headers={**ORIGIN, **FORM}
    )
    assert r.status_code == 401 and "not a valid operator token" in r.text
    assert "set-cookie" not in r.headers
    # login from another origin (login CSRF), or naming none
    for headers in ({"origin": "http://127.0.0.1:9"}, {"origin": "null"}, {}):
        r = await client.post(
            "/dashboard/login",
            content=f"token={operator_token}".encode(),
            headers={**headers, **FORM},
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    # a Referer of this server stands in for a missing Origin
    r = await client.post(
        "/dashboard/login",
        content=f"token={operator_token}".encode(),
        headers={"referer": "http://127.0.0.1/dashboard/login", **FORM},
    )
    assert r.status_code == 303
    client.cookies.clear()

    csrf = await login(client, operator_token)
    # the API ignores the session cookie entirely
    r = await client.get("/api/v1/status")
    assert r.status_code == 401
    # logout needs the CSRF token and this origin
    for body, headers in (
        (b"csrf=wrong", ORIGIN),
        (b"", ORIGIN),
        (f"csrf={csrf}".encode(), {"origin": "http://evil.example"}),
        (f"csrf={csrf}".encode(), {}),
    ):
        r = await client.post("/dashboard/logout", content=body, headers={**headers, **FORM})
        assert r.status_code == 403, (body, headers)
    r = await client.post(
        "/dashboard/logout",
        content=f"csrf={csrf}".encode(),
        headers={**ORIGIN, "content-type": "text/plain"},
    )
    assert r.status_code == 415
    assert (await client.get("/dashboard")).status_code == 200
    r = await client.post(
        "/dashboard/logout", content=f"csrf={csrf}".encode(), headers={**ORIGIN, **FORM}
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    cookie = client.cookies.get("gc_session")
    assert not cookie
    assert (await client.get("/dashboard")).status_code == 303


async def test_revoking_the_token_ends_its_sessions(
    client: httpx.AsyncClient, op: dict[str, str], services: Services
) -> None:
    r = await client.post("/api/v1/tokens", json={"name": "browser"}, headers=op)
    token, token_id = r.json()["token"], r.json()["id"]
    await login(client, token)
    cookie = client.cookies["gc_session"]
    r = await client.delete(f"/api/v1/tokens/{token_id}", headers=op)
    assert r.status_code == 204
    r = await client.get("/dashboard")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    # not even the same cookie presented again
    client.cookies.set("gc_session", cookie)
    assert (await client.get("/dashboard/satellites/x")).status_code == 303


async def test_session_expires(
    client: httpx.AsyncClient, operator_token: str, clock: FakeClock, services: Services
) -> None:
    await login(client, operator_token)
    clock.advance(services.config.dashboard_session_ttl + 1)
    assert (await client.get("/dashboard")).status_code == 303


async def test_session_cookie_is_secure_over_tls(services: Services, operator_token: str) -> None:
    from groundcontrol.app import build_app

    transport = httpx.ASGITransport(app=build_app(services), client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="https://gc.example") as c:
        r = await c.post(
            "/dashboard/login",
            content=f"token={operator_token}".encode(),
            headers={"origin": "https://gc.example", **FORM},
        )
        assert r.status_code == 303
        assert "; secure" in r.headers["set-cookie"].lower()
    # behind a TLS-terminating proxy that says so
    transport = httpx.ASGITransport(app=build_app(services), client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gc.example") as c:
        r = await c.post(
            "/dashboard/login",
            content=f"token={operator_token}".encode(),
            headers={"origin": "https://gc.example", "x-forwarded-proto": "https", **FORM},
        )
        assert r.status_code == 303
        assert "; secure" in r.headers["set-cookie"].lower()
        r = await c.post(
            "/dashboard/login",
            content=f"token={operator_token}".encode(),
            headers={"origin": "https://gc.example", **FORM},
        )
        assert r.status_code == 403  # the proxy did not say TLS: the origins differ
