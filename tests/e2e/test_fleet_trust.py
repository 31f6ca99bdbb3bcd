"""A satellite refuses any state that Ground Control did not sign for it, now, and newer
than what it has: a relay in the middle replays, swaps, flips and forges, and each is
refused with its reason, reported in a check-in, and nothing is applied. Root rotation is
followed; an expired state is kept, served and reported, never re-accepted as fresh."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from starlette.requests import Request

from groundcontrol.contract import Envelope, StateDocument, generate_key, sign_state
from tests.support.fleet import Fleet, run_satellite_cli, state_version, status, wait_until
from tests.support.satellite import SatelliteProcess
from tests.support.staterelay import Answer, StateRelay


def document(envelope: bytes) -> StateDocument:
    payload = Envelope.from_json(envelope, 1 << 20).payload
    return StateDocument.from_dict(json.loads(payload))


def state_of(fleet: Fleet, name: str) -> bytes:
    """The state Ground Control serves for ``name``, as an operator may read it."""
    response = httpx.get(
        f"{fleet.url}/api/v1/satellites/{name}/state",
        headers={"Authorization": f"Bearer {fleet.token}"},
    )
    assert response.status_code == 200, response.text
    return response.content


def sync(sat: SatelliteProcess) -> str:
    done = run_satellite_cli("sync", "--now", "--data-dir", str(sat.data_dir), check=False)
    return done.stdout + done.stderr


def refusal_events(fleet: Fleet, name: str) -> list[dict[str, Any]]:
    return [
        event
        for row in fleet.checkins(name)
        for event in row["report"].get("events", [])
        if event["type"] == "state_refused"
    ]


def test_a_relay_cannot_make_a_satellite_take_a_state(fleet: Fleet) -> None:
    other_token = fleet.create_satellite("shop-b", "shops")
    token = fleet.create_satellite("shop-a", "shops", {"checkin_interval": "1s"})
    with StateRelay(fleet.url) as relay:
        fleet.register(fleet.satellite("shop-b"), other_token)
        other_state = state_of(fleet, "shop-b")
        v1 = state_of(fleet, "shop-a")
        sat = fleet.satellite("shop-a")
        run_satellite_cli(
            "register",
            "--ground-control",
            relay.url,
            "--token",
            token,
            "--data-dir",
            str(sat.data_dir),
        )
        with sat:
            wait_until(lambda: status(sat)["running"], what="daemon")
            fleet.api("POST", "/api/v1/satellites/shop-a/publish")
            wait_until(lambda: state_version(sat) >= 2, what="version 2 followed")
            applied = state_version(sat)
            assert applied >= 2
            assert document(v1).version == 1
            current = relay.states_seen[-1]
            flipped = bytearray(current)
            start = current.index(b'"payload":"') + len(b'"payload":"') + 20
            flipped[start] = ord("B") if flipped[start] != ord("B") else ord("C")
            doc = document(current)
            newer = replace(doc, version=doc.version + 5)
            unknown_key = sign_state(newer, [generate_key()]).to_json()
            cases = {
                "RollbackError": v1,
                "WrongSatelliteError": other_state,
                "SignatureError": bytes(flipped),
                "SignatureError ": unknown_key,  # an unknown key, after the root refresh
            }
            for reason, forged in cases.items():

                def serve_forged(request: Request, real: Answer, body: bytes = forged) -> bytes:
                    return body

                relay.state_answer = serve_forged
                out = sync(sat)
                assert out.startswith("refused:"), out
                assert reason.strip() in out, out
                assert state_version(sat) == applied  # nothing applied
                last = status(sat)["last_refusal"]
                assert last["reason"] == reason.strip() and last["source"] == "groundcontrol"
            relay.state_answer = None
            reasons = wait_until(
                lambda: (
                    {e["reason"] for e in refusal_events(fleet, "shop-a")}
                    >= {
                        "RollbackError",
                        "WrongSatelliteError",
                        "SignatureError",
                    }
                    and {e["reason"] for e in refusal_events(fleet, "shop-a")}
                ),
                what="refusals reported in check-ins",
            )
            assert "SignatureError" in reasons
            metrics = httpx.get(f"{sat.url}/metrics").text
            assert 'satellite_state_verification_failures_total{reason="RollbackError"} 1.0' in (
                metrics
            )
        # refused across a restart too: the highest accepted version is persisted
        assert state_version(sat) == applied


def test_root_rotation_is_followed(fleet: Fleet) -> None:
    token = fleet.create_satellite("shop-r", "shops")
    sat = fleet.satellite("shop-r")
    fleet.register(sat, token)
    with sat:
        wait_until(lambda: status(sat)["running"], what="daemon")
        assert status(sat)["trust"]["root_version"] == 1
        fleet.cli("keys", "rotate", "state", "--data-dir", str(fleet.data))
        fleet.stop()  # a restarted Ground Control signs with the new state key
        fleet.start()
        fleet.api("POST", "/api/v1/satellites/shop-r/publish")
        wait_until(lambda: status(sat)["trust"]["root_version"] == 2, what="root 2 followed")
        current = status(sat)
        assert current["trust"]["root_version"] == 2
        assert current["state"]["version"] >= 2
    assert status(sat)["trust"]["root_version"] == 2  # persisted


def test_an_expired_state_is_kept_reported_and_never_fresh_again(fleet: Fleet) -> None:
    token = fleet.create_satellite("shop-x", "shops", {"checkin_interval": "1s"})
    with StateRelay(fleet.url) as relay:
        sat = fleet.satellite("shop-x")
        run_satellite_cli(
            "register", "--ground-control", relay.url, "--token", token,
            "--data-dir", str(sat.data_dir),
        )  # fmt: skip
        keys = fleet.state_keys()
        with sat:
            wait_until(lambda: status(sat)["running"], what="daemon")
            base = document(state_of(fleet, "shop-x"))
            now = datetime.now(UTC)
            short = replace(
                base, version=base.version + 1, issued_at=now, expires=now + timedelta(seconds=3)
            )
            short_lived = sign_state(short, keys).to_json()
            relay.state_answer = lambda request, real: short_lived
            assert sync(sat).startswith("accepted:")
            relay.state_answer = None
            wait_until(lambda: status(sat)["state"]["expired"], what="expiry", timeout=20)
            current = status(sat)
            assert current["state"]["version"] == base.version + 1  # still served
            # the gauge follows at the agent's next pass (status computes it when asked)
            wait_until(
                lambda: "satellite_state_expired 1.0" in httpx.get(f"{sat.url}/metrics").text,
                what="the expiry gauge",
                timeout=20,
            )
            wait_until(
                lambda: any(
                    row["report"]["state_expired"]
                    and any(e["type"] == "state_expired" for e in row["report"].get("events", []))
                    for row in fleet.checkins("shop-x")
                ),
                what="the expiry reported",
            )
            # an expired state offered as new is refused, not taken as fresh
            stale = replace(
                base,
                version=base.version + 2,
                issued_at=now - timedelta(hours=2),
                expires=now - timedelta(hours=1),
            )
            stale_bytes = sign_state(stale, keys).to_json()
            relay.state_answer = lambda request, real: stale_bytes
            out = sync(sat)
            assert out.startswith("refused:") and "ExpiredError" in out, out
            assert status(sat)["state"]["version"] == base.version + 1
