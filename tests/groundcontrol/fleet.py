"""A simulated satellite for API tests: a real device key, real signatures, the real API."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx

from groundcontrol.contract import (
    CheckIn,
    ImageStatus,
    Root,
    StateDocument,
    canonical_json,
    generate_key,
    public_key_b64,
    sign_checkin,
    verify_root,
    verify_state,
)


class SimSatellite:
    def __init__(self, client: httpx.AsyncClient, name: str) -> None:
        self.client = client
        self.name = name
        self.key = generate_key()
        self.credential: str | None = None
        self.root: Root | None = None
        self.registration: dict[str, Any] = {}
        self.seq = 0

    @property
    def headers(self) -> dict[str, str]:
        assert self.credential is not None
        return {"Authorization": f"Bearer {self.credential}"}

    async def register(self, token: str, now: float) -> dict[str, Any]:
        r = await self.client.post(
            "/api/v1/register",
            json={"token": token, "public_key": public_key_b64(self.key.public_key())},
        )
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        self.registration = data
        self.credential = data["credential"]
        self.root = verify_root(canonical_json(data["root"]), None, at(now))
        return data

    async def state(self, now: float, have: int | None = None) -> StateDocument:
        params = {"have": str(have)} if have is not None else {}
        r = await self.client.get(
            f"/api/v1/satellites/{self.name}/state", params=params, headers=self.headers
        )
        assert r.status_code == 200, r.text
        assert self.root is not None
        return verify_state(r.content, self.root, self.name, at(now), have)

    def checkin(
        self,
        now: float,
        state_version: int,
        images: tuple[ImageStatus, ...] = (),
        *,
        seq: int | None = None,
        errors: tuple[str, ...] = (),
        state_expired: bool = False,
    ) -> dict[str, Any]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        report = CheckIn(
            satellite=self.name,
            seq=seq,
            sent_at=at(now),
            state_version=state_version,
            images=images,
            cache_bytes_used=1000,
            cache_bytes_max=10_000,
            errors=errors,
            offline_seconds=0.0,
            state_expired=state_expired,
        )
        out: dict[str, Any] = json.loads(sign_checkin(report, self.key).to_json())
        return out

    async def post(self, envelopes: list[dict[str, Any]]) -> httpx.Response:
        return await self.client.post(
            f"/api/v1/satellites/{self.name}/checkins",
            json={"checkins": envelopes},
            headers=self.headers,
        )


def at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)
