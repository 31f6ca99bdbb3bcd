"""Ingesting batches of satellite-signed check-ins.

Each envelope is verified against the satellite's device key (the contract returns the
report parsed from the verified bytes; nothing else is read). Ingest is idempotent by
(satellite, seq): a report already stored, or older than the retention floor, is
acknowledged as a duplicate so the satellite can drop it from its outbox. Retention keeps
the newest ``keep`` reports per satellite; the floor remembers what was pruned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from groundcontrol.config import INT64_MAX
from groundcontrol.contract import (
    CheckIn,
    ContractError,
    MalformedDocument,
    OversizeError,
    SignatureError,
    WrongSatelliteError,
    load_public_key_b64,
    verify_checkin,
)
from groundcontrol.errors import Forbidden
from groundcontrol.store import Store

MAX_ENVELOPE_BYTES = 1024 * 1024


@dataclass
class IngestResult:
    accepted: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "acked": sorted(self.accepted + self.duplicates),
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
        }


def _code(exc: ContractError) -> str:
    if isinstance(exc, SignatureError):
        return "invalid_signature"
    if isinstance(exc, WrongSatelliteError):
        return "wrong_satellite"
    if isinstance(exc, OversizeError):
        return "too_large"
    if isinstance(exc, MalformedDocument):
        return "malformed"
    return "refused"


def verify_batch(
    name: str, public_key: str, envelopes: list[Any]
) -> tuple[list[tuple[CheckIn, bytes]], list[dict[str, Any]]]:
    """Pure: the verified reports and the refused entries (with their index and a code)."""
    key = load_public_key_b64(public_key)
    good, bad = [], []
    for index, raw in enumerate(envelopes):
        data = json.dumps(raw).encode() if isinstance(raw, dict) else None
        if data is None:
            bad.append(
                {"index": index, "code": "malformed", "message": "expected an envelope object"}
            )
            continue
        try:
            checkin = verify_checkin(data, key, name, MAX_ENVELOPE_BYTES)
        except ContractError as exc:
            bad.append({"index": index, "code": _code(exc), "message": str(exc)[:300]})
            continue
        if max(checkin.seq, checkin.state_version) > INT64_MAX:
            # signed, but the database cannot hold it: one bad entry, not a failed batch
            # that the satellite would retry forever
            message = f"seq and state_version must be at most {INT64_MAX}"
            bad.append({"index": index, "code": "malformed", "message": message})
            continue
        good.append((checkin, data))
    return good, bad


async def ingest(
    store: Store, name: str, envelopes: list[Any], now: float, keep: int
) -> IngestResult:
    async with store.transaction() as q:
        sat = await q.satellite(name)
    if sat.revoked_at is not None or sat.public_key is None:
        raise Forbidden(f"satellite {name} is not registered", code="satellite_revoked")
    verified, rejected = verify_batch(name, sat.public_key, envelopes)
    result = IngestResult(rejected=rejected)
    async with store.transaction() as q:
        _last_seq, floor = await q.checkin_bounds(name)
        newest: CheckIn | None = None
        for checkin, data in sorted(verified, key=lambda v: v[0].seq):
            if checkin.seq <= floor:
                result.duplicates.append(checkin.seq)
                continue
            report = checkin.to_dict()
            if await q.insert_checkin(
                name, checkin.seq, checkin.state_version, report, data.decode(), int(now)
            ):
                result.accepted.append(checkin.seq)
                newest = checkin
            else:
                result.duplicates.append(checkin.seq)
        await q.record_checkin_summary(
            name,
            int(now),
            last_seq=newest.seq if newest else None,
            applied_version=newest.state_version if newest else None,
            last_report=newest.to_dict() if newest else None,
        )
        if result.accepted:
            await q.prune_checkins(name, keep)
    return result
