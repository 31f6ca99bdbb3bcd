"""Signing and private keys: what Ground Control signs with, and a satellite's device key.

Verification never needs this module; a satellite uses it only for its own device key
and its check-ins.
"""

from collections.abc import Sequence

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from groundcontrol.contract.bundle import ACKS_PAYLOAD_TYPE, Acks
from groundcontrol.contract.documents import (
    CHECKIN_PAYLOAD_TYPE,
    ROOT_PAYLOAD_TYPE,
    STATE_PAYLOAD_TYPE,
    CheckIn,
    Root,
    StateDocument,
)
from groundcontrol.contract.dsse import Envelope, Signature, pae
from groundcontrol.contract.encoding import _b64encode, canonical_json
from groundcontrol.contract.errors import MalformedDocument
from groundcontrol.contract.keys import keyid


def generate_key() -> Ed25519PrivateKey:
    """A new Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS8 PEM, unencrypted: protect the file (0600), not the bytes."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    """Load an unencrypted PKCS8 PEM Ed25519 key; ``MalformedDocument`` for anything else."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise MalformedDocument("private key: not an unencrypted PKCS8 PEM key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise MalformedDocument(f"private key: expected Ed25519, got {type(key).__name__}")
    return key


def sign_envelope(payload_type: str, payload: bytes, keys: Sequence[Ed25519PrivateKey]) -> Envelope:
    """Sign ``pae(payload_type, payload)`` with each key (a key given twice signs once)."""
    if not keys:
        raise ValueError("sign_envelope needs at least one key")
    message = pae(payload_type, payload)
    signatures: list[Signature] = []
    seen: set[str] = set()
    for key in keys:
        kid = keyid(key.public_key())
        if kid not in seen:
            seen.add(kid)
            signatures.append(Signature(kid, _b64encode(key.sign(message))))
    return Envelope(payload_type, payload, tuple(signatures))


def sign_root(root: Root, keys: Sequence[Ed25519PrivateKey]) -> Envelope:
    """Sign a root. For a rotation pass the old root's keys *and* the new root's keys."""
    return sign_envelope(ROOT_PAYLOAD_TYPE, canonical_json(root.to_dict()), keys)


def sign_state(doc: StateDocument, keys: Sequence[Ed25519PrivateKey]) -> Envelope:
    """Sign a state document with (a threshold of) the root's state keys."""
    return sign_envelope(STATE_PAYLOAD_TYPE, canonical_json(doc.to_dict()), keys)


def sign_checkin(checkin: CheckIn, device_key: Ed25519PrivateKey) -> Envelope:
    """Sign a check-in with the satellite's device key."""
    return sign_envelope(CHECKIN_PAYLOAD_TYPE, canonical_json(checkin.to_dict()), [device_key])


def sign_acks(acks: Acks, keys: Sequence[Ed25519PrivateKey]) -> Envelope:
    """Sign a bundle's ack list with (a threshold of) the root's state keys."""
    return sign_envelope(ACKS_PAYLOAD_TYPE, canonical_json(acks.to_dict()), keys)
