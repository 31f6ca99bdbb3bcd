"""Check-in ingest keeps the bytes as received: the envelope stored is the envelope the
satellite sent, byte for byte, whatever its spacing, key order or non-ASCII text."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from groundcontrol.checkins import split_batch
from groundcontrol.contract import CHECKIN_PAYLOAD_TYPE, CheckIn, sign_envelope
from groundcontrol.errors import BadRequest
from groundcontrol.services import Services
from tests.groundcontrol.conftest import FakeClock
from tests.groundcontrol.fleet import SimSatellite, at
from tests.groundcontrol.test_api import error, registered


def hand_signed(sat: SimSatellite, seq: int, now: float) -> tuple[bytes, bytes]:
    """(payload, envelope): a payload in indented JSON and an envelope written by hand,
    keys reordered, odd spacing and a non-ASCII unknown field (DSSE ignores it)."""
    report = CheckIn(
        satellite=sat.name,
        seq=seq,
        sent_at=at(now),
        state_version=1,
        images=(),
        cache_bytes_used=1,
        cache_bytes_max=2,
        errors=("disque presque plein ✓",),
        offline_seconds=0.0,
        state_expired=False,
    )
    payload = json.dumps(report.to_dict(), indent=3, ensure_ascii=False).encode()
    signed = sign_envelope(CHECKIN_PAYLOAD_TYPE, payload, [sat.key])
    sig = signed.signatures[0]
    b64 = base64.b64encode(payload).decode()
    envelope = (
        f'{{ "signatures" :[ {{"sig":"{sig.sig}" ,"keyid": "{sig.keyid}"}} ],\n'
        f'  "payload":  "{b64}",  "note": "envoyé ✓",\t"payloadType" : "{CHECKIN_PAYLOAD_TYPE}" }}'
    ).encode()
    return payload, envelope


async def test_stored_envelopes_are_the_bytes_the_satellite_signed(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    sat = await registered(client, op, clock, "s1")
    (p1, e1), (p2, e2) = hand_signed(sat, 1, clock.now), hand_signed(sat, 2, clock.now)
    body = b'{ "checkins" : [\n  ' + e1 + b" ,\n" + e2 + b"\n] }\n"
    r = await client.post(
        "/api/v1/satellites/s1/checkins",
        content=body,
        headers={**sat.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == [1, 2] and r.json()["rejected"] == []
    async with services.store.transaction() as q:
        rows = await q.tx.fetchall(
            "SELECT seq, envelope FROM checkins WHERE satellite = ? ORDER BY seq", "s1"
        )
    assert [r["envelope"].encode() for r in rows] == [e1, e2]
    stored_payloads = [base64.b64decode(json.loads(r["envelope"])["payload"]) for r in rows]
    assert stored_payloads == [p1, p2]
    # the report the operator sees is parsed from those verified bytes
    r = await client.get("/api/v1/satellites/s1/checkins", headers=op)
    assert r.json()["checkins"][0]["report"]["errors"] == ["disque presque plein ✓"]


async def test_envelopes_from_the_sim_satellite_are_stored_verbatim(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    """The JSON batch as clients send it today keeps working, stored as it was sent."""
    sat = await registered(client, op, clock, "s1")
    envs: list[object] = [sat.checkin(clock.now, 1), "not an envelope", sat.checkin(clock.now, 1)]
    body = json.dumps({"checkins": envs}).encode()  # ", " and ": " separators
    r = await client.post(
        "/api/v1/satellites/s1/checkins",
        content=body,
        headers={**sat.headers, "Content-Type": "application/json"},
    )
    assert r.json()["accepted"] == [1, 2]
    assert [x["index"] for x in r.json()["rejected"]] == [1]
    async with services.store.transaction() as q:
        rows = await q.tx.fetchall("SELECT envelope FROM checkins ORDER BY seq")
    assert [r["envelope"] for r in rows] == [json.dumps(envs[0]), json.dumps(envs[2])]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"[]", "invalid_json"),
        (b"{}", "invalid_checkins"),
        (b'{"checkins": []}', "invalid_checkins"),
        (b'{"checkins": "x"}', "invalid_checkins"),
        (b'{"checkins": {}}', "invalid_checkins"),
        (b'{"checkins": [{}], "more": 1}', "unknown_field"),
        (b'{"checkins": [{}], "checkins": [{}]}', "invalid_checkins"),
        (b'{"checkins": [{}]} x', "invalid_json"),
        (b'{"checkins": [{}] ', "invalid_json"),
        (b'{"checkins": [{},]}', "invalid_json"),
        (b'{"checkins": [{} {}]}', "invalid_json"),
        (b'{"checkins" [{}]}', "invalid_json"),
        (b'{"checkins": [{"a": "\xff"}]}', "invalid_json"),
        (b'{"checkins": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", "invalid_json"),
        (b'{"checkins": [{"a": "1]}', "invalid_json"),
        (b'{"checkins": [NaN]}', "invalid_json"),
    ],
)
def test_bad_batch_bodies_are_refused_whole(body: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as raised:
        split_batch(body)
    assert raised.value.code == code


def test_spans_are_exact_and_non_objects_are_marked() -> None:
    body = '\t{"checkins":[ {"a" : "é" } ,1, "s" ,{"b":[1, {"c":null}]}\n]}\r\n'.encode()
    assert split_batch(body) == ['{"a" : "é" }'.encode(), None, None, b'{"b":[1, {"c":null}]}']


async def test_bad_bodies_get_a_clear_error(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock
) -> None:
    sat = await registered(client, op, clock, "s1")
    for body, code in ((b"{", "invalid_json"), (b'{"checkins": 5}', "invalid_checkins")):
        r = await client.post(
            "/api/v1/satellites/s1/checkins",
            content=body,
            headers={**sat.headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 400 and error(r) == code
