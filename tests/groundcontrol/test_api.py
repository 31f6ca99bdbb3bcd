"""The /api/v1 surface in process (ASGI), against both storage backends."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

import groundcontrol
from groundcontrol import errors
from groundcontrol.contract import ImageStatus
from groundcontrol.errors import CODES, BadRequest, GroundControlError
from groundcontrol.services import Services
from tests.groundcontrol.conftest import FakeClock
from tests.groundcontrol.fleet import SimSatellite

ERROR_CLASSES = {
    name
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, GroundControlError)
}


def error(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    code: str = body["error"]["code"]
    return code


async def make_satellite(
    client: httpx.AsyncClient, op: dict[str, str], name: str, **extra: Any
) -> dict[str, Any]:
    r = await client.post("/api/v1/satellites", json={"name": name, **extra}, headers=op)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def registered(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, name: str, **extra: Any
) -> SimSatellite:
    created = await make_satellite(client, op, name, **extra)
    sat = SimSatellite(client, name)
    await sat.register(created["join_token"]["token"], clock.now)
    return sat


# --- documents and errors ----------------------------------------------------------------


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    from groundcontrol.api.table import ENDPOINTS

    r = await client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    for ep in ENDPOINTS:
        assert ep.method.lower() in doc["paths"][ep.path]


async def test_openapi_lists_every_error_code_with_its_status(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/api/v1/openapi.json")).json()
    schema = doc["components"]["schemas"]["Error"]
    assert schema["properties"]["error"]["properties"]["code"]["enum"] == sorted(CODES)
    assert schema["x-error-codes"] == CODES
    assert schema["x-error-codes"]["satellite_revoked"] == 403


def test_every_error_code_is_in_the_one_table() -> None:
    """Read from the source: each code= given to an error, and each error class, lives in
    groundcontrol/errors.py's table; an unregistered code is refused when raised."""
    root = Path(groundcontrol.__file__).parent
    seen: set[str] = set()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and path.name != "errors.py":
                bases = {ast.unparse(b) for b in node.bases}
                assert not bases & ERROR_CLASSES, f"{path.name}: {node.name} subclasses {bases}"
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "code" and isinstance(kw.value, ast.Constant):
                        seen.add(str(kw.value.value))
    assert seen and seen <= set(CODES), seen - set(CODES)
    with pytest.raises(ValueError, match="not registered"):
        BadRequest("x", code="made_up_here")
    assert BadRequest("x", code="group_in_use").status == 409  # the status is the code's


async def test_unknown_route_and_method_are_json_errors(
    client: httpx.AsyncClient, op: dict[str, str]
) -> None:
    r = await client.get("/api/v1/nope", headers=op)
    assert r.status_code == 404 and error(r) == "not_found"
    r = await client.put("/api/v1/status", headers=op)
    assert r.status_code == 405 and error(r) == "method_not_allowed"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/groups"),
        ("PUT", "/api/v1/groups/g"),
        ("POST", "/api/v1/satellites"),
        ("PATCH", "/api/v1/satellites/s"),
        ("POST", "/api/v1/satellites/s/join-tokens"),
        ("POST", "/api/v1/tokens"),
        ("PUT", "/api/v1/upstream-credentials/reg.example"),
        ("POST", "/api/v1/register"),
    ],
)
async def test_bad_input_never_gives_500(
    client: httpx.AsyncClient, op: dict[str, str], method: str, path: str
) -> None:
    async def seed() -> None:
        await client.post("/api/v1/groups", json={"name": "g"}, headers=op)
        await client.post("/api/v1/satellites", json={"name": "s"}, headers=op)

    await seed()
    bodies: list[Any] = [
        b"{not json",
        b"[]",
        b'"x"',
        b"null",
        b'{"name": 5}',
        b'{"name": "UPPER case"}',
        b'{"images": "x"}',
        b'{"images": [{"reference": "Bad Ref"}]}',
        b'{"images": [{"reference": "a:b", "platforms": "linux/amd64"}]}',
        b'{"groups": [1]}',
        b'{"labels": {"k": 1}}',
        b'{"config": {"state_interval": "soon"}}',
        b'{"config": {"upstreams": [{"name": "x", "url": "ftp://x"}]}}',
        b'{"ttl": true}',
        b'{"token": "gcj_zz.zz", "public_key": "AAAA"}',
        b'{"username": "", "password": 1}',
        b'{"unexpected": 1}',
        b'{"name": "\\ud800"}',
        b"[" * 5000,
    ]
    for body in bodies:
        r = await client.request(
            method, path, content=body, headers={**op, "content-type": "application/json"}
        )
        assert r.status_code < 500, (body, r.status_code, r.text)
        if r.status_code >= 400:
            error(r)


async def test_oversize_body_is_refused(client: httpx.AsyncClient, op: dict[str, str]) -> None:
    r = await client.post(
        "/api/v1/groups",
        content=b'{"name": "' + b"a" * (2 * 1024 * 1024) + b'"}',
        headers={**op, "content-type": "application/json"},
    )
    assert r.status_code == 413 and error(r) == "payload_too_large"


# --- groups and satellites -----------------------------------------------------------------


async def test_group_and_satellite_lifecycle(client: httpx.AsyncClient, op: dict[str, str]) -> None:
    r = await client.post(
        "/api/v1/groups", json={"name": "shops", "description": "all shops"}, headers=op
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/groups", json={"name": "shops"}, headers=op)
    assert r.status_code == 409 and error(r) == "group_exists"

    created = await make_satellite(
        client,
        op,
        "shop-1",
        groups=["shops"],
        labels={"region": "eu"},
        config={"state_interval": "5m", "cache_max_bytes": "1GiB"},
    )
    assert created["join_token"]["token"].startswith("gcj_")
    assert created["published_version"] == 1
    assert created["status"] == "pending"
    assert created["effective_config"]["state_interval"] == 300
    assert created["effective_config"]["cache_max_bytes"] == 2**30

    r = await client.post(
        "/api/v1/satellites", json={"name": "shop-2", "groups": ["nope"]}, headers=op
    )
    assert r.status_code == 404 and error(r) == "group_not_found"
    r = await client.post("/api/v1/satellites", json={"name": "shop-1"}, headers=op)
    assert r.status_code == 409 and error(r) == "satellite_exists"

    r = await client.get("/api/v1/groups/shops", headers=op)
    assert r.json()["members"] == ["shop-1"]
    r = await client.delete("/api/v1/groups/shops", headers=op)
    assert r.status_code == 409 and error(r) == "group_in_use"

    r = await client.get("/api/v1/satellites", params={"label": "region=eu"}, headers=op)
    assert [s["name"] for s in r.json()["satellites"]] == ["shop-1"]
    r = await client.get("/api/v1/satellites", params={"label": "region=us"}, headers=op)
    assert r.json()["satellites"] == []
    r = await client.get("/api/v1/satellites", params={"status": "pending"}, headers=op)
    assert [s["name"] for s in r.json()["satellites"]] == ["shop-1"]
    r = await client.get("/api/v1/satellites", params={"status": "online"}, headers=op)
    assert r.json()["satellites"] == []
    # a status no satellite can have is a mistake, not an empty fleet
    for bogus in ("bogus", "Online", "online\n", ""):
        r = await client.get("/api/v1/satellites", params={"status": bogus}, headers=op)
        assert r.status_code == 400 and error(r) == "invalid_status", bogus
        assert "online" in r.json()["error"]["message"]

    r = await client.patch("/api/v1/satellites/shop-1", json={"groups": []}, headers=op)
    assert r.status_code == 200 and r.json()["groups"] == []
    assert (await client.delete("/api/v1/groups/shops", headers=op)).status_code == 204
    assert (await client.delete("/api/v1/satellites/shop-1", headers=op)).status_code == 204
    r = await client.get("/api/v1/satellites/shop-1", headers=op)
    assert r.status_code == 404 and error(r) == "satellite_not_found"


async def test_config_change_publishes_only_for_that_satellite(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock
) -> None:
    a = await registered(client, op, clock, "a")
    b = await registered(client, op, clock, "b")
    doc_a = await a.state(clock.now)
    doc_b = await b.state(clock.now)
    assert (doc_a.version, doc_b.version) == (1, 1)

    r = await client.patch(
        "/api/v1/satellites/a",
        json={"config": {"bandwidth_bytes_per_second": "10MiB", "checkin_interval": 30}},
        headers=op,
    )
    assert r.json()["published"] == [{"satellite": "a", "version": 2}]
    new_a = await a.state(clock.now, have=1)
    assert new_a.version == 2
    assert new_a.config["bandwidth_bytes_per_second"] == 10 * 2**20
    assert new_a.config["checkin_interval"] == 30
    r = await client.get("/api/v1/satellites/b/state", params={"have": "1"}, headers=b.headers)
    assert r.status_code == 304

    # the same config again changes nothing, so nothing is published
    r = await client.patch(
        "/api/v1/satellites/a", json={"config": {"checkin_interval": 30}}, headers=op
    )
    assert r.json()["published"] == []
    # null resets a key to the default
    r = await client.patch(
        "/api/v1/satellites/a", json={"config": {"checkin_interval": None}}, headers=op
    )
    assert r.json()["published"] == [{"satellite": "a", "version": 3}]
    assert "checkin_interval" not in r.json()["config"]


async def test_state_is_conditional_and_resigned_before_expiry(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sat = await registered(client, op, clock, "s")
    doc = await sat.state(clock.now)
    r = await client.get("/api/v1/satellites/s/state", params={"have": "1"}, headers=sat.headers)
    assert r.status_code == 304 and r.headers["etag"] == '"1"'
    r = await client.get("/api/v1/satellites/s/state", params={"have": "x"}, headers=sat.headers)
    assert r.status_code == 400 and error(r) == "invalid_have"

    # close to expiry the state is re-signed under a new version with the same content
    clock.advance(services.config.state_expires - services.config.state_refresh_before + 1)
    renewed = await sat.state(clock.now, have=doc.version)
    assert renewed.version == doc.version + 1
    assert renewed.expires > doc.expires
    assert renewed.images == doc.images and renewed.config == doc.config


# --- registration ----------------------------------------------------------------------------


async def test_registration_gives_identity_root_state_and_credentials(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock
) -> None:
    await client.post("/api/v1/groups", json={"name": "g"}, headers=op)
    await client.post("/api/v1/groups", json={"name": "other"}, headers=op)
    r = await client.put(
        "/api/v1/upstream-credentials/registry.example:5000",
        json={"username": "robot", "password": "s3cret", "groups": ["g"]},
        headers=op,
    )
    assert r.status_code == 200, r.text
    await client.put(
        "/api/v1/upstream-credentials/other.example",
        json={"username": "u", "password": "p", "groups": ["other"]},
        headers=op,
    )
    await client.put(
        "/api/v1/upstream-credentials/everyone.example",
        json={"username": "u2", "password": "p2"},
        headers=op,
    )
    sat = await registered(client, op, clock, "s1", groups=["g"])
    data = sat.registration
    assert data["satellite"] == "s1"
    assert data["credential"].startswith("gcs_")
    assert data["state"] is not None
    assert {c["registry"]: c["password"] for c in data["upstream_credentials"]} == {
        "registry.example:5000": "s3cret",
        "everyone.example": "p2",
    }
    r = await client.get("/api/v1/satellites/s1/credentials", headers=sat.headers)
    assert len(r.json()["upstream_credentials"]) == 2
    # the operator listing never shows secrets
    listing = (await client.get("/api/v1/upstream-credentials", headers=op)).text
    assert "s3cret" not in listing
    doc = await sat.state(clock.now)
    assert doc.satellite == "s1"


async def test_upstream_secrets_are_sealed_at_rest(
    client: httpx.AsyncClient, op: dict[str, str], services: Services
) -> None:
    await client.put(
        "/api/v1/upstream-credentials/r.example",
        json={"username": "u", "password": "plain-text-password"},
        headers=op,
    )
    async with services.store.transaction() as q:
        rows = await q.upstream_credentials()
    assert rows[0]["secret"].startswith("v1:")
    assert "plain-text-password" not in json.dumps(rows)


async def test_join_token_is_single_use_and_expires(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock
) -> None:
    created = await make_satellite(client, op, "s1")
    token = created["join_token"]["token"]
    first = SimSatellite(client, "s1")
    await first.register(token, clock.now)
    again = await client.post(
        "/api/v1/register", json={"token": token, "public_key": created_key()}
    )
    assert again.status_code == 401 and error(again) == "invalid_join_token"

    r = await client.post("/api/v1/satellites/s1/join-tokens", json={"ttl": 60}, headers=op)
    late = r.json()["token"]
    clock.advance(61)
    r = await client.post("/api/v1/register", json={"token": late, "public_key": created_key()})
    assert r.status_code == 401 and error(r) == "invalid_join_token"


def created_key() -> str:
    from groundcontrol.contract import generate_key, public_key_b64

    return public_key_b64(generate_key().public_key())


async def test_wrong_secrets_lock_the_token(
    client: httpx.AsyncClient, op: dict[str, str], services: Services
) -> None:
    created = await make_satellite(client, op, "s1")
    token: str = created["join_token"]["token"]
    prefix = token.split(".")[0]
    for i in range(services.config.join_token_max_failures):
        r = await client.post(
            "/api/v1/register", json={"token": f"{prefix}.wrong{i}", "public_key": created_key()}
        )
        assert r.status_code == 401
    # the right secret no longer works: the token is locked
    r = await client.post("/api/v1/register", json={"token": token, "public_key": created_key()})
    assert r.status_code == 401 and error(r) == "invalid_join_token"


async def test_registration_attempts_are_rate_limited(
    client: httpx.AsyncClient, op: dict[str, str], services: Services, clock: FakeClock
) -> None:
    limit = services.config.register_rate_limit
    object.__setattr__(services.config, "register_rate_limit", 3)
    try:
        codes = []
        for _ in range(5):
            r = await client.post(
                "/api/v1/register", json={"token": "gcj_nothing", "public_key": created_key()}
            )
            codes.append(r.status_code)
        assert codes == [401, 401, 401, 429, 429]
        clock.advance(60)
        r = await client.post(
            "/api/v1/register", json={"token": "gcj_nothing", "public_key": created_key()}
        )
        assert r.status_code == 401
    finally:
        object.__setattr__(services.config, "register_rate_limit", limit)


async def test_revoked_satellite_gets_nothing_further(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock
) -> None:
    sat = await registered(client, op, clock, "s1")
    pending = (await client.post("/api/v1/satellites/s1/join-tokens", headers=op)).json()["token"]
    r = await client.post("/api/v1/satellites/s1/revoke", headers=op)
    assert r.json()["status"] == "revoked"
    for method, path in [
        ("GET", "/api/v1/satellites/s1/state"),
        ("GET", "/api/v1/satellites/s1/credentials"),
        ("GET", "/api/v1/roots"),
    ]:
        r = await client.request(method, path, headers=sat.headers)
        assert r.status_code == 401, path
    r = await sat.post([sat.checkin(clock.now, 1)])
    assert r.status_code == 401
    r = await client.post("/api/v1/register", json={"token": pending, "public_key": created_key()})
    assert r.status_code in (401, 403)
    r = await client.post("/api/v1/satellites/s1/join-tokens", headers=op)
    assert r.status_code == 403 and error(r) == "satellite_revoked"


async def test_reregistration_replaces_key_and_credential(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock
) -> None:
    old = await registered(client, op, clock, "s1")
    token = (await client.post("/api/v1/satellites/s1/join-tokens", headers=op)).json()["token"]
    new = SimSatellite(client, "s1")
    await new.register(token, clock.now)
    r = await client.get("/api/v1/satellites/s1/state", headers=old.headers)
    assert r.status_code == 401
    # reports signed by the old device key are refused
    r = await new.post([old.checkin(clock.now, 1)])
    assert r.json()["rejected"][0]["code"] == "invalid_signature"
    r = await new.post([new.checkin(clock.now, 1)])
    assert r.json()["accepted"] == [1]


# --- check-ins and status --------------------------------------------------------------------

DIGEST = "sha256:" + "ab" * 32


async def test_checkins_are_verified_idempotent_and_drive_status(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sat = await registered(client, op, clock, "s1")
    other = await registered(client, op, clock, "s2")
    envs = [sat.checkin(clock.now, 1) for _ in range(3)]
    r = await sat.post(envs)
    assert r.status_code == 200
    assert r.json()["accepted"] == [1, 2, 3] and r.json()["acked"] == [1, 2, 3]
    r = await sat.post(envs[1:])
    assert r.json()["accepted"] == [] and r.json()["duplicates"] == [2, 3]

    # signed by another satellite's key, a tampered payload, garbage: refused per entry
    forged = other.checkin(clock.now, 1, seq=9)
    tampered = dict(sat.checkin(clock.now, 1, seq=10))
    tampered["payload"] = other.checkin(clock.now, 1, seq=10)["payload"]
    r = await sat.post([forged, tampered, {"payloadType": 1}, "x", sat.checkin(clock.now, 1)])
    body = r.json()
    assert body["accepted"] == [4]
    assert [x["index"] for x in body["rejected"]] == [0, 1, 2, 3]
    assert {x["code"] for x in body["rejected"]} <= {
        "invalid_signature",
        "malformed",
        "wrong_satellite",
    }

    r = await client.get("/api/v1/satellites/s1", headers=op)
    assert r.json()["status"] == "online" and r.json()["applied_version"] == 1

    # the state moves on: behind until a report says it applied the new version
    await client.patch(
        "/api/v1/satellites/s1", json={"labels": {}, "config": {"state_interval": 10}}, headers=op
    )
    r = await client.get("/api/v1/satellites/s1", headers=op)
    assert r.json()["status"] == "behind" and r.json()["published_version"] == 2
    failed = ImageStatus("library/app", DIGEST, "failed", "manifest unknown upstream")
    await sat.post([sat.checkin(clock.now, 2, (failed,))])
    r = await client.get("/api/v1/satellites/s1", headers=op)
    assert r.json()["status"] == "failing"
    assert r.json()["failing_images"] == [f"library/app@{DIGEST}: manifest unknown upstream"]
    await sat.post([sat.checkin(clock.now, 2)])
    assert (await client.get("/api/v1/satellites/s1", headers=op)).json()["status"] == "online"

    clock.advance(services.config.stale_after + 1)
    assert (await client.get("/api/v1/satellites/s1", headers=op)).json()["status"] == "stale"
    clock.advance(services.config.offline_after)
    r = await client.get("/api/v1/status", headers=op)
    statuses = {s["name"]: s["status"] for s in r.json()["satellites"]}
    assert statuses == {"s1": "offline", "s2": "offline"}
    assert r.json()["counts"] == {"offline": 2}

    # a late, older report does not overwrite the newer summary
    await sat.post([sat.checkin(clock.now, 2, seq=100)])
    await sat.post([sat.checkin(clock.now, 1, seq=50)])
    r = await client.get("/api/v1/satellites/s1", headers=op)
    assert r.json()["applied_version"] == 2 and r.json()["last_seq"] == 100


async def test_checkin_retention_is_bounded(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    object.__setattr__(services.config, "checkins_kept", 5)
    sat = await registered(client, op, clock, "s1")
    envs = [sat.checkin(clock.now, 1) for _ in range(12)]
    for i in range(0, 12, 4):
        r = await sat.post(envs[i : i + 4])
        assert r.status_code == 200
    r = await client.get("/api/v1/satellites/s1/checkins", params={"limit": "100"}, headers=op)
    assert [c["seq"] for c in r.json()["checkins"]] == [12, 11, 10, 9, 8]
    # pruned reports sent again are acknowledged, not stored again
    r = await sat.post(envs[:2])
    assert r.json()["duplicates"] == [1, 2]
    r = await client.get("/api/v1/satellites/s1/checkins", params={"limit": "100"}, headers=op)
    assert len(r.json()["checkins"]) == 5


async def test_checkin_batch_limits(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sat = await registered(client, op, clock, "s1")
    r = await sat.post([])
    assert r.status_code == 400 and error(r) == "invalid_checkins"
    too_many = [sat.checkin(clock.now, 1, seq=1)] * (services.config.checkin_batch_max + 1)
    r = await sat.post(too_many)
    assert r.status_code == 413


# --- operator tokens ---------------------------------------------------------------------------


async def test_operator_tokens_are_hashed_and_revocable(
    client: httpx.AsyncClient, op: dict[str, str], services: Services
) -> None:
    r = await client.post("/api/v1/tokens", json={"name": "ci"}, headers=op)
    assert r.status_code == 201
    token, token_id = r.json()["token"], r.json()["id"]
    async with services.store.transaction() as q:
        rows = await q.tx.fetchall("SELECT token_hash FROM api_tokens")
    assert all(token not in row["token_hash"] for row in rows)
    new = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/status", headers=new)).status_code == 200
    assert (await client.delete(f"/api/v1/tokens/{token_id}", headers=op)).status_code == 204
    r = await client.get("/api/v1/status", headers=new)
    assert r.status_code == 401 and error(r) == "unauthorized"
    listing = (await client.get("/api/v1/tokens", headers=op)).json()["tokens"]
    assert {t["id"]: t["revoked_at"] is not None for t in listing}[token_id]
    r = await client.delete("/api/v1/tokens/nope", headers=op)
    assert r.status_code == 404 and error(r) == "token_not_found"


async def test_a_bug_is_a_500_whose_request_id_finds_its_traceback_in_the_log(
    services: Services,
    op: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import groundcontrol.api.groups
    from groundcontrol.app import build_app

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(groundcontrol.api.groups, "ok", broken)
    # the server's view: Starlette answers the 500, then lets the server see the exception
    transport = httpx.ASGITransport(app=build_app(services), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        with caplog.at_level(logging.ERROR, logger="groundcontrol"):
            r = await client.get("/api/v1/groups", headers=op)
            again = await client.get("/api/v1/groups", headers=op)
        assert r.status_code == 500
        request_id = r.headers["x-request-id"]
        assert r.json() == {
            "error": {
                "code": "internal_error",
                "message": f"internal error; see the server log for request {request_id}",
                "request_id": request_id,
            }
        }
        assert again.headers["x-request-id"] != request_id  # one id per failure
        logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None
        assert "a bug" in str(logged[0].exc_info[1])
        assert "/api/v1/groups" in logged[0].getMessage()
        monkeypatch.undo()
        assert (await client.get("/api/v1/groups", headers=op)).status_code == 200
