"""What a USB bundle and a reports stick carry beside the OCI layout, as pure documents.

A bundle (Ground Control → site) is an OCI image layout plus::

    satellite/state.json         the signed state envelope, the bytes Ground Control signed
    satellite/roots/<N>.json     the trust-root chain, every version 1..N as signed
    satellite/acks.json          the check-ins Ground Control holds from this satellite,
                                 a DSSE envelope signed by the root's state keys

A reports directory (site → Ground Control) holds, per satellite::

    <satellite>/checkins.json    {"checkins": [<envelope>, ...]}: the outbox's signed
                                 envelopes byte for byte, the online batch body's shape
    <satellite>/inventory.json   the digests the satellite's store holds (for delta bundles)

The state and roots are verified by ``TrustedState`` exactly as online. The ack list is
signed too (``sign_acks``/``verify_acks``: a threshold of the state keys of the root the
satellite trusts, ``ACKS_PAYLOAD_TYPE``), names its satellite and the state version of
its bundle: a forged or another satellite's list would make a satellite forget check-ins
Ground Control never got, so the import clears nothing on a list that does not verify.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from groundcontrol.contract.encoding import strict_loads
from groundcontrol.contract.errors import MalformedDocument
from groundcontrol.contract.fields import _check_satellite

STATE_FILE: Final = "satellite/state.json"
ROOTS_DIR: Final = "satellite/roots"
ACKS_FILE: Final = "satellite/acks.json"
ACKS_PAYLOAD_TYPE: Final = "application/vnd.satellite.acks.v1+json"
CHECKINS_FILE: Final = "checkins.json"
INVENTORY_FILE: Final = "inventory.json"
MAX_ACKS_BYTES: Final = 16 * 1024 * 1024
MAX_INVENTORY_BYTES: Final = 64 * 1024 * 1024


def _object(data: bytes, where: str, fields: set[str]) -> dict[str, object]:
    value = strict_loads(data, where)
    if not isinstance(value, dict):
        raise MalformedDocument(f"{where}: expected an object")
    unknown = set(value) - fields
    if unknown:
        raise MalformedDocument(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    return value


def _satellite(value: object, where: str) -> str:
    try:
        return _check_satellite(f"{where}.satellite", value)
    except ValueError as exc:
        raise MalformedDocument(str(exc)) from None


def _seq(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedDocument(f"{where}: expected a non-negative integer")
    return value


@dataclass(frozen=True)
class Acks:
    """Check-ins Ground Control has ingested: every seq up to ``through`` (pruned from
    its database but counted) and each of ``seqs``; sent with the state ``state_version``
    (the bundle's), which the import requires."""

    satellite: str
    through: int
    seqs: frozenset[int]
    state_version: int = 0

    def covers(self, seq: int) -> bool:
        return seq <= self.through or seq in self.seqs

    def to_dict(self) -> dict[str, object]:
        return {
            "satellite": self.satellite,
            "state_version": self.state_version,
            "through": self.through,
            "seqs": sorted(self.seqs),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Acks:
        if len(data) > MAX_ACKS_BYTES:
            raise MalformedDocument(f"acks: larger than {MAX_ACKS_BYTES} bytes")
        doc = _object(data, "acks", {"satellite", "state_version", "through", "seqs"})
        seqs = doc.get("seqs")
        if not isinstance(seqs, list):
            raise MalformedDocument("acks.seqs: expected a list")
        return cls(
            _satellite(doc.get("satellite"), "acks"),
            _seq(doc.get("through"), "acks.through"),
            frozenset(_seq(s, "acks.seqs[]") for s in seqs),
            _seq(doc.get("state_version"), "acks.state_version"),
        )


@dataclass(frozen=True)
class Inventory:
    """The digests a satellite's store holds, as it reported them."""

    satellite: str
    blobs: frozenset[str]

    def to_bytes(self) -> bytes:
        doc = {"satellite": self.satellite, "blobs": sorted(self.blobs)}
        return json.dumps(doc, indent=0, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Inventory:
        if len(data) > MAX_INVENTORY_BYTES:
            raise MalformedDocument(f"inventory: larger than {MAX_INVENTORY_BYTES} bytes")
        doc = _object(data, "inventory", {"satellite", "blobs"})
        blobs = doc.get("blobs")
        if not isinstance(blobs, list) or not all(isinstance(b, str) for b in blobs):
            raise MalformedDocument("inventory.blobs: expected a list of digests")
        return cls(_satellite(doc.get("satellite"), "inventory"), frozenset(blobs))


def checkins_body(envelopes: list[bytes]) -> bytes:
    """The reports file: the online batch body, each envelope's bytes unchanged."""
    return b'{"checkins": [' + b",\n".join(envelopes) + b"]}\n"
