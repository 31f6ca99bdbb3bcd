"""Signing keys on disk and the trust root chain, checked with the contract's verifiers."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from groundcontrol.contract import (
    Envelope,
    RotationError,
    Signature,
    SignatureError,
    verify_root,
    verify_root_chain,
    verify_state,
)
from groundcontrol.errors import BadRequest, Unavailable
from groundcontrol.keys import KeyStore, current_root, init_trust, rotate
from groundcontrol.services import Services
from tests.groundcontrol.conftest import FakeClock
from tests.groundcontrol.fleet import SimSatellite


def at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


async def test_keys_are_private_files_and_root_v1_verifies(
    services: Services, clock: FakeClock
) -> None:
    directory = services.keys.directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(p.name for p in directory.iterdir())
    assert [f.split("-")[0] for f in files] == ["root", "state"]
    for f in directory.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    trusted = await current_root(services.store)
    assert trusted is not None
    root = verify_root(trusted.envelope, None, at(clock.now))
    assert root.version == 1 and root.state_threshold == 1


async def test_state_key_rotation_is_followed_by_satellites(
    client: httpx.AsyncClient, op: dict[str, str], services: Services, clock: FakeClock
) -> None:
    r = await client.post("/api/v1/satellites", json={"name": "s1"}, headers=op)
    sat = SimSatellite(client, "s1")
    await sat.register(r.json()["join_token"]["token"], clock.now)
    v1 = sat.root
    assert v1 is not None
    old_state = await sat.state(clock.now)

    v2 = await rotate(services.store, services.keys, "state", clock.now)
    assert v2.root.version == 2 and set(v2.root.state_keys).isdisjoint(v1.state_keys)
    # satellites walk the chain from the API
    listing = (await client.get("/api/v1/roots", headers=sat.headers)).json()
    assert listing == {"versions": [1, 2], "latest": 2}
    chain = [(await client.get("/api/v1/roots/2", headers=sat.headers)).content]
    new_root = verify_root_chain(chain, v1, at(clock.now))
    assert new_root.version == 2

    r = await client.post("/api/v1/satellites/s1/publish", headers=op)
    assert r.json()["published"] == [{"satellite": "s1", "version": 2}]
    fetched = await client.get("/api/v1/satellites/s1/state", headers=sat.headers)
    doc = verify_state(fetched.content, new_root, "s1", at(clock.now), old_state.version)
    assert doc.version == 2
    # the new state key is not trusted by root v1
    with pytest.raises(SignatureError):
        verify_state(fetched.content, v1, "s1", at(clock.now), old_state.version)


async def test_root_rotation_is_signed_by_old_and_new_keys(
    services: Services, clock: FakeClock
) -> None:
    first = await current_root(services.store)
    assert first is not None
    v2 = await rotate(services.store, services.keys, "root", clock.now)
    assert set(v2.root.root_keys).isdisjoint(first.root.root_keys)
    assert len({s.keyid for s in _sigs(v2.envelope)}) == 2
    verify_root(v2.envelope, first.root, at(clock.now))
    v3 = await rotate(services.store, services.keys, "state", clock.now)
    # skipping a version is refused by satellites
    with pytest.raises((RotationError, SignatureError)):
        verify_root(v3.envelope, first.root, at(clock.now))
    assert verify_root_chain([v2.envelope, v3.envelope], first.root, at(clock.now)).version == 3


def _sigs(envelope: bytes) -> list[Signature]:
    return list(Envelope.from_json(envelope, len(envelope)).signatures)


async def test_missing_state_key_refuses_to_sign(
    client: httpx.AsyncClient, op: dict[str, str], services: Services
) -> None:
    for f in services.keys.directory.glob("state-*.pem"):
        f.unlink()
    services.signer._cached = None
    r = await client.post("/api/v1/satellites", json={"name": "s1"}, headers=op)
    assert r.status_code == 503 and r.json()["error"]["code"] == "signing_unavailable"
    # nothing half-done was stored
    r = await client.get("/api/v1/satellites/s1", headers=op)
    assert r.status_code == 404


async def test_rotation_needs_the_root_keys(services: Services, clock: FakeClock) -> None:
    for f in services.keys.directory.glob("root-*.pem"):
        f.unlink()
    with pytest.raises(Unavailable) as exc:
        await rotate(services.store, services.keys, "state", clock.now)
    assert exc.value.code == "root_keys_unavailable"


async def test_impossible_thresholds_are_refused_before_any_key_is_written(
    services: Services, clock: FakeClock, tmp_path: Path
) -> None:
    before = sorted(services.keys.directory.iterdir())
    with pytest.raises(BadRequest, match="threshold"):
        await rotate(services.store, services.keys, "state", clock.now, count=1, threshold=3)
    with pytest.raises(BadRequest, match="threshold"):
        await rotate(services.store, services.keys, "root", clock.now, count=2, threshold=5)
    assert sorted(services.keys.directory.iterdir()) == before
    fresh = KeyStore(tmp_path / "keys")
    with pytest.raises(BadRequest, match="threshold"):
        await init_trust(services.store, fresh, clock.now, root_keys=1, root_threshold=2)
    assert not fresh.directory.exists() or not any(fresh.directory.iterdir())
