"""Ingesting batches of satellite-signed check-ins.

The stored envelope is the bytes the satellite sent, never a re-serialisation:
:func:`split_batch` finds each envelope's byte span in the request body
(``{"checkins": [<envelope>, ...]}``) and those exact bytes are verified and stored. Each
envelope is verified against the satellite's device key (the contract returns the report
parsed from the verified bytes; nothing else is read). Ingest is idempotent by
(satellite, seq): a report already stored, or older than the retention floor, is
acknowledged as a duplicate so the satellite can drop it from its outbox. A batch is one
transaction with one multi-row insert. Retention keeps the newest ``keep`` reports per
satellite; the floor remembers what was pruned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from groundcontrol.contract import (
    CheckIn,
    ContractError,
    MalformedDocument,
    OversizeError,
    SignatureError,
    WrongSatelliteError,
    keyid,
    load_public_key_b64,
    verify_checkin,
)
from groundcontrol.errors import BadRequest, Forbidden
from groundcontrol.status import contact_kind, contact_runs
from groundcontrol.store import Store
from registry_proxy.units import INT64_MAX

MAX_ENVELOPE_BYTES = 1024 * 1024
CONTACTS_KEPT = 8 * 86400  # the dashboard draws the last 7 days


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)  # NaN, Infinity: not JSON
_WHITESPACE = frozenset(" \t\n\r")


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


# --- the batch body ----------------------------------------------------------------------


class _Cursor:
    """A position in the decoded body; every step refuses what is not JSON."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip(self) -> str:
        """Skip JSON whitespace; the next character, or '' at the end."""
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        self.pos = pos
        return text[pos] if pos < len(text) else ""

    def expect(self, char: str) -> None:
        if self.skip() != char:
            raise _invalid_json()
        self.pos += 1

    def value(self) -> tuple[int, int, Any]:
        """Parse one JSON value here: (start, end, value)."""
        self.skip()
        start = self.pos
        try:
            value, end = _DECODER.raw_decode(self.text, start)
        except (ValueError, RecursionError):
            raise _invalid_json() from None
        self.pos = end
        return start, end, value


def _invalid_json() -> BadRequest:
    return BadRequest("the body is not valid JSON", code="invalid_json")


def split_batch(body: bytes) -> list[bytes | None]:
    """The envelopes of ``{"checkins": [...]}`` as the exact bytes received, in order.

    An element that is not a JSON object is ``None`` (refused per entry, like a bad
    signature); a body of any other shape is refused whole with :class:`BadRequest`.
    Each span is a slice of the UTF-8 text, so encoding it again gives back the bytes
    on the wire (UTF-8 decoding is one-to-one on valid input).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_json() from None
    cursor = _Cursor(text)
    cursor.expect("{")
    spans: list[tuple[int, int, bool]] | None = None
    if cursor.skip() == "}":
        cursor.pos += 1
    else:
        while True:
            _s, _e, key = cursor.value()
            if not isinstance(key, str):
                raise _invalid_json()
            cursor.expect(":")
            if key != "checkins":
                raise BadRequest(f"unknown field(s): {key}", code="unknown_field")
            if spans is not None:
                raise BadRequest("checkins is given twice", code="invalid_checkins")
            spans = _array_spans(cursor)
            following = cursor.skip()
            cursor.pos += 1
            if following == "}":
                break
            if following != ",":
                raise _invalid_json()
    if cursor.skip() != "":
        raise _invalid_json()
    if not spans:
        raise BadRequest("checkins must be a non-empty list of envelopes", code="invalid_checkins")
    return [
        text[start:end].encode("utf-8") if is_object else None for start, end, is_object in spans
    ]


def _array_spans(cursor: _Cursor) -> list[tuple[int, int, bool]]:
    if cursor.skip() != "[":
        cursor.value()  # the value must still be JSON before we call it the wrong type
        raise BadRequest("checkins must be a non-empty list of envelopes", code="invalid_checkins")
    cursor.pos += 1
    spans: list[tuple[int, int, bool]] = []
    if cursor.skip() == "]":
        cursor.pos += 1
        return spans
    while True:
        start, end, value = cursor.value()
        spans.append((start, end, isinstance(value, dict)))
        following = cursor.skip()
        cursor.pos += 1
        if following == "]":
            return spans
        if following != ",":
            raise _invalid_json()


# --- verification and storage --------------------------------------------------------------


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
    name: str, public_key: str, envelopes: Sequence[bytes | None]
) -> tuple[list[tuple[CheckIn, bytes]], list[dict[str, Any]]]:
    """Pure: the verified reports with their envelope bytes, and the refused entries
    (with their index and a code)."""
    key = load_public_key_b64(public_key)
    kid = keyid(key)
    good, bad = [], []
    for index, data in enumerate(envelopes):
        if data is None:
            bad.append(
                {"index": index, "code": "malformed", "message": "expected an envelope object"}
            )
            continue
        try:
            checkin = verify_checkin(data, key, name, MAX_ENVELOPE_BYTES, device_keyid=kid)
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
    store: Store,
    name: str,
    envelopes: Sequence[bytes | None],
    now: float,
    keep: int,
    *,
    offline_after: int = 3600,
    late_after: int = 600,
) -> IngestResult:
    """Verify and store one batch in one transaction (verification is CPU work that
    holds the event loop anyway, so holding the transaction through it costs nothing).
    The accepted reports also extend the satellite's contact history (the dashboard's
    connectivity strip): ``offline_after`` and ``late_after`` are the status thresholds."""
    async with store.transaction() as q:
        target = await q.checkin_target(name)
        if target["revoked_at"] is not None or target["public_key"] is None:
            raise Forbidden(f"satellite {name} is not registered", code="satellite_revoked")
        verified, rejected = verify_batch(name, target["public_key"], envelopes)
        result = IngestResult(rejected=rejected)
        last_seq, floor = int(target["last_seq"]), int(target["seq_floor"])
        fresh: dict[int, tuple[CheckIn, bytes]] = {}
        for checkin, data in sorted(verified, key=lambda v: v[0].seq):
            if checkin.seq <= floor or checkin.seq in fresh:
                result.duplicates.append(checkin.seq)
            else:
                fresh[checkin.seq] = (checkin, data)
        inserted = await q.insert_checkins(
            name,
            [(c.seq, c.state_version, c.to_dict(), d.decode("utf-8")) for c, d in fresh.values()],
            int(now),
        )
        newest: CheckIn | None = None
        for seq, (checkin, _data) in fresh.items():
            if seq in inserted:
                result.accepted.append(seq)
                newest = checkin
            else:
                result.duplicates.append(seq)
        result.duplicates.sort()
        points = [
            (int(c.sent_at.timestamp()), contact_kind(c.sent_at.timestamp(), now, late_after))
            for seq, (c, _data) in fresh.items()
            if seq in inserted
        ]
        if points:
            await q.record_contacts(
                name, contact_runs(points, offline_after), offline_after, int(now) - CONTACTS_KEPT
            )
        await q.record_checkin_summary(
            name,
            int(now),
            last_seq=newest.seq if newest else None,
            applied_version=newest.state_version if newest else None,
            last_report=newest.to_dict() if newest else None,
        )
        # rows lie in (floor, highest seq]: only more than `keep` of those can need pruning
        if result.accepted and max(last_seq, result.accepted[-1]) - floor > keep:
            await q.prune_checkins(name, keep)
    return result
