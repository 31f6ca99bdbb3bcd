"""Ground Control reads every JSON request body one way only (registry_proxy.strict_json):
what two JSON parsers could read differently is refused as ``invalid_json`` (400)."""

from __future__ import annotations

import httpx
import pytest

BODIES = {
    "duplicate key": b'{"name": "evil", "name": "shops"}',
    "UTF-16": '{"name": "shops"}'.encode("utf-16"),
    "UTF-16 without BOM": '{"name": "shops"}'.encode("utf-16-le"),
    "byte order mark": b'\xef\xbb\xbf{"name": "shops"}',
    "NaN": b'{"name": "shops", "description": NaN}',
    "Infinity": b'{"name": "shops", "description": -Infinity}',
    "overflowing float": b'{"name": "shops", "description": 1e400}',
    "5000-digit integer": b'{"name": "shops", "description": ' + b"9" * 5000 + b"}",
    "lone surrogate": b'{"name": "shops", "description": "\\ud800"}',
    "nested 100,000 deep": b'{"name": "shops", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_ambiguous_json_bodies_are_refused(
    client: httpx.AsyncClient, op: dict[str, str], body: bytes
) -> None:
    headers = {**op, "content-type": "application/json"}
    r = await client.post("/api/v1/groups", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"
    listed = (await client.get("/api/v1/groups", headers=op)).json()
    assert listed["groups"] == [], listed


async def test_a_strict_body_is_still_read(client: httpx.AsyncClient, op: dict[str, str]) -> None:
    body = '{"name": "shops", "description": "Läden \\ud83d\\ude00"}'.encode()
    r = await client.post(
        "/api/v1/groups", content=body, headers={**op, "content-type": "application/json"}
    )
    assert r.status_code == 201, r.text
