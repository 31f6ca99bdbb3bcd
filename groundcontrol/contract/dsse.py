"""DSSE envelopes: the pre-authentication encoding and the envelope structure."""

from dataclasses import dataclass
from typing import cast

from groundcontrol.contract.encoding import (
    _b64decode,
    _b64encode,
    _loads,
    _typename,
    canonical_json,
)
from groundcontrol.contract.errors import MalformedDocument, OversizeError
from groundcontrol.contract.fields import _Fields


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: the exact bytes that are signed.

    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` with lengths in bytes as ASCII
    decimals. Signing the type with the body is what stops payload-type confusion.
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    """One DSSE signature: ``keyid`` (hex SHA-256 of the raw key) and base64 ``sig``."""

    keyid: str
    sig: str


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope. Holding one proves nothing: pass its bytes to a ``verify_*``."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_json(self) -> bytes:
        return canonical_json(
            {
                "payloadType": self.payload_type,
                "payload": _b64encode(self.payload),
                "signatures": [{"keyid": s.keyid, "sig": s.sig} for s in self.signatures],
            }
        )

    @classmethod
    def from_json(cls, data: bytes, max_bytes: int) -> "Envelope":
        """Parse envelope bytes; the size cap is enforced before anything is parsed.

        Only the envelope structure is checked here; signatures are not verified and the
        payload is not interpreted. Unknown top-level envelope fields are ignored (DSSE).
        """
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"envelope data must be bytes, not {type(data).__name__}")
        if len(data) > max_bytes:
            raise OversizeError(f"envelope is {len(data)} bytes, the limit is {max_bytes}")
        fields = _Fields(_loads(bytes(data), "envelope"), "envelope")
        payload_type = fields.required("payloadType")
        if not isinstance(payload_type, str):
            raise MalformedDocument(
                f"envelope.payloadType: expected a string, got {_typename(payload_type)}"
            )
        payload = _b64decode(fields.required("payload"), "envelope.payload")
        raw_signatures = fields.required("signatures")
        if not isinstance(raw_signatures, list):
            raise MalformedDocument(
                f"envelope.signatures: expected a list, got {_typename(raw_signatures)}"
            )
        signatures = []
        for i, raw in enumerate(raw_signatures):
            where = f"envelope.signatures[{i}]"
            sig_fields = _Fields(raw, where)
            kid = sig_fields.required("keyid")
            if not isinstance(kid, str):
                raise MalformedDocument(f"{where}.keyid: expected a string, got {_typename(kid)}")
            sig = sig_fields.required("sig")
            _b64decode(sig, f"{where}.sig")
            signatures.append(Signature(kid, cast(str, sig)))
        return cls(payload_type, payload, tuple(signatures))
