"""A satellite for in-process API tests: the appliance's own Ground Control client, a real
device key, real signatures, the real API.

It speaks through the appliance's ``GroundControlClient`` (the code a running satellite
uses), carried over whatever ``httpx.AsyncClient`` the test holds (an in-process ASGI app
or a server process), so tests keep control of time (``now``) while the wire code is the
real one. ``post`` alone sends raw bodies: tests of hostile input need to send what no real
client would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx

from appliance.gcclient import GroundControlClient
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


class _Through(httpx.AsyncBaseTransport):
    """A transport that hands each request to an existing client (public API only)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.client.send(request, stream=True)


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

    def ground_control(self) -> GroundControlClient:
        """The appliance's client, over the test's current ``client``."""
        return GroundControlClient(
            str(self.client.base_url), self.credential, transport=_Through(self.client)
        )

    async def register(self, token: str, now: float) -> dict[str, Any]:
        async with self.ground_control() as gc:
            data = await gc.register(token, public_key_b64(self.key.public_key()))
        self.registration = data
        self.credential = data["credential"]
        self.root = verify_root(canonical_json(data["root"]), None, at(now))
        return data

    async def state(self, now: float, have: int | None = None) -> StateDocument:
        async with self.ground_control() as gc:
            answer = await gc.state(self.name, have or 0)
        assert answer.envelope is not None, "no newer state"
        assert self.root is not None
        return verify_state(answer.envelope, self.root, self.name, at(now), have)

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
