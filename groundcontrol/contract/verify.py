"""Verification: envelope bytes, a trusted root and a reference time in, verified documents out."""

import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from groundcontrol.contract.bundle import ACKS_PAYLOAD_TYPE, MAX_ACKS_BYTES, Acks
from groundcontrol.contract.documents import (
    CHECKIN_PAYLOAD_TYPE,
    DEFAULT_CHECKIN_MAX_BYTES,
    DEFAULT_CLOCK_SKEW,
    DEFAULT_ROOT_MAX_BYTES,
    DEFAULT_STATE_MAX_BYTES,
    ROOT_PAYLOAD_TYPE,
    STATE_PAYLOAD_TYPE,
    CheckIn,
    Root,
    StateDocument,
)
from groundcontrol.contract.dsse import Envelope, pae
from groundcontrol.contract.encoding import _b64decode, _loads
from groundcontrol.contract.errors import (
    ContractError,
    ExpiredError,
    MalformedDocument,
    NotYetValidError,
    RollbackError,
    RotationError,
    SignatureError,
    WrongSatelliteError,
)
from groundcontrol.contract.fields import _check_now, _format_time
from groundcontrol.contract.keys import keyid, load_public_key_b64


def _public_keys(keys: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    return {kid: load_public_key_b64(b64) for kid, b64 in keys.items()}


def _verify_one(public: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """``BadSignatureError`` unless ``signature`` is ``public``'s over ``message``."""
    if len(signature) != nacl.bindings.crypto_sign_BYTES:
        raise nacl.exceptions.BadSignatureError("a signature is 64 bytes")
    nacl.bindings.crypto_sign_open(signature + message, public.public_bytes_raw())


def _check_payload_type(envelope: Envelope, expected: str, what: str) -> None:
    if envelope.payload_type != expected:
        raise MalformedDocument(
            f"{what}: payloadType is {envelope.payload_type[:100]!r}, expected {expected!r}"
        )


def _verify_signatures(
    envelope: Envelope, keys: Mapping[str, Ed25519PublicKey], threshold: int, what: str
) -> None:
    """Require ``threshold`` distinct keys from ``keys`` with a valid signature over the PAE.

    Only the first signature per keyid is tried, so a key cannot count twice and a flood
    of signatures claiming one keyid costs one verification. Signatures by unknown keyids
    are skipped without cost; they never count.

    The check itself is libsodium's (PyNaCl), in half the time of OpenSSL's: it accepts
    every signature an honest Ed25519 signer makes and refuses what OpenSSL refuses, plus
    a signature whose R is a point of small order (no honest signer makes one).
    """
    message = pae(envelope.payload_type, envelope.payload)
    tried: set[str] = set()
    valid = unknown = invalid = 0
    for signature in envelope.signatures:
        if signature.keyid in tried:
            continue
        public = keys.get(signature.keyid)
        if public is None:
            unknown += 1
            continue
        tried.add(signature.keyid)
        try:
            _verify_one(public, _b64decode(signature.sig, "signature"), message)
        except (nacl.exceptions.BadSignatureError, MalformedDocument):
            invalid += 1
            continue
        valid += 1
    if valid < threshold:
        raise SignatureError(
            f"{what}: {valid} valid signature(s) from trusted keys, threshold is {threshold}"
            f" ({invalid} invalid, {unknown} by unknown keys)"
        )


def _verify_root_step(envelope_bytes: bytes, trusted: Root | None, max_bytes: int) -> Root:
    # Signatures by the trusted root come first: nothing of the payload is read before.
    envelope = Envelope.from_json(envelope_bytes, max_bytes)
    _check_payload_type(envelope, ROOT_PAYLOAD_TYPE, "root")
    if trusted is not None:
        _verify_signatures(
            envelope,
            _public_keys(trusted.root_keys),
            trusted.root_threshold,
            f"root: signatures by the keys of trusted root version {trusted.version}",
        )
    new = Root.from_dict(_loads(envelope.payload, "root payload"))
    if trusted is not None:
        if new.version <= trusted.version:
            raise RollbackError(
                f"root: version {new.version} is not newer than trusted version {trusted.version}"
            )
        if new.version != trusted.version + 1:
            raise RotationError(
                f"root: version {new.version} skips versions after trusted version"
                f" {trusted.version}; every root from {trusted.version + 1} is needed"
            )
    _verify_signatures(
        envelope,
        _public_keys(new.root_keys),
        new.root_threshold,
        f"root: signatures by the keys of new root version {new.version}",
    )
    return new


def verify_root(
    envelope_bytes: bytes,
    trusted: Root | None,
    now: datetime,
    max_bytes: int = DEFAULT_ROOT_MAX_BYTES,
) -> Root:
    """Verify one root envelope and return the root parsed from its verified payload.

    With ``trusted``: the new root must be version ``trusted.version + 1`` (lower or equal
    is ``RollbackError``, higher is ``RotationError``) and signed by
    ``trusted.root_threshold`` of the trusted root keys *and* by its own ``root_threshold``
    of its own root keys, so neither the old nor the new keys alone can rotate trust.

    With ``trusted=None`` (registration, first USB bundle) the root must be signed by a
    threshold of its own root keys. That proves only that the document is consistent,
    not that it comes from Ground Control: this is trust on first use, and authenticity
    must come from the channel it arrived by (registration over TLS with a join token)
    or from comparing its root keyids with a fingerprint given out of band.

    An expired new root is refused (``ExpiredError``). To catch up over several versions
    use ``verify_root_chain``, which tolerates expired intermediate roots.
    """
    now = _check_now(now)
    new = _verify_root_step(envelope_bytes, trusted, max_bytes)
    if new.is_expired(now):
        raise ExpiredError(f"root: version {new.version} expired at {_format_time(new.expires)}")
    return new


def verify_root_chain(
    chain: Sequence[bytes],
    trusted: Root,
    now: datetime,
    max_bytes: int = DEFAULT_ROOT_MAX_BYTES,
) -> Root:
    """Walk ``trusted`` → N+1 → N+2 … through ``chain`` and return the last root.

    Each step is checked as in ``verify_root``. As in TUF, only the *final* root has to be
    unexpired: a satellite that was offline for long must still be able to walk through
    roots that have expired since. The final root (``trusted`` itself for an empty chain)
    being expired is ``ExpiredError``: trust cannot be refreshed from this chain. Errors
    name the position in the chain.
    """
    now = _check_now(now)
    current = trusted
    for position, envelope_bytes in enumerate(chain):
        try:
            current = _verify_root_step(envelope_bytes, current, max_bytes)
        except ContractError as exc:
            raise type(exc)(f"root chain[{position}]: {exc}") from exc
    if current.is_expired(now):
        raise ExpiredError(
            f"root chain: final root version {current.version} expired at"
            f" {_format_time(current.expires)}"
        )
    return current


def _verify_state_document(
    envelope_bytes: bytes, root: Root, satellite: str, max_bytes: int
) -> StateDocument:
    """Signatures, fields and addressee of a state; no time or version checks."""
    envelope = Envelope.from_json(envelope_bytes, max_bytes)
    _check_payload_type(envelope, STATE_PAYLOAD_TYPE, "state")
    _verify_signatures(envelope, _public_keys(root.state_keys), root.state_threshold, "state")
    doc = StateDocument.from_dict(_loads(envelope.payload, "state payload"))
    if doc.satellite != satellite:
        raise WrongSatelliteError(
            f"state: addressed to satellite {doc.satellite!r}, this is {satellite!r}"
        )
    return doc


def verify_state(
    envelope_bytes: bytes,
    root: Root,
    satellite: str,
    now: datetime,
    trusted_version: int | None,
    max_bytes: int = DEFAULT_STATE_MAX_BYTES,
    *,
    max_clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> StateDocument:
    """Verify a state envelope for ``satellite`` and return the verified document.

    In order: size cap, envelope structure, payloadType, a ``root.state_threshold`` of
    distinct valid signatures by ``root.state_keys`` (``SignatureError``); then, on the
    verified payload: document fields, addressed to ``satellite`` (``WrongSatelliteError``),
    version above ``trusted_version`` (``RollbackError``; ``None`` = none applied yet),
    not expired at ``now`` (``ExpiredError``), ``issued_at`` no further than
    ``max_clock_skew`` ahead of ``now`` (``NotYetValidError``). ``root`` itself must not be
    expired (``ExpiredError``), as in TUF: refresh it with ``verify_root_chain`` first.

    A version equal to ``trusted_version`` is refused too. Polling that finds the state
    already applied should test ``is_same_state(fetched, stored_envelope_bytes)`` first
    and treat a match as "nothing new" rather than as an attack; Ground Control bumps the
    version whenever it re-signs, so equal versions with different bytes are suspect.

    Expiry never makes a satellite drop what it serves: it keeps its current state,
    reports ``state_is_expired`` loudly, and only refuses to take an expired one as new.
    """
    now = _check_now(now)
    if root.is_expired(now):
        raise ExpiredError(
            f"state: trusted root version {root.version} expired at"
            f" {_format_time(root.expires)}; refresh the root chain first"
        )
    doc = _verify_state_document(envelope_bytes, root, satellite, max_bytes)
    if trusted_version is not None and doc.version <= trusted_version:
        raise RollbackError(
            f"state: version {doc.version} is not newer than trusted version {trusted_version}"
        )
    if state_is_expired(doc, now):
        raise ExpiredError(f"state: version {doc.version} expired at {_format_time(doc.expires)}")
    if doc.issued_at > now + max_clock_skew:
        raise NotYetValidError(
            f"state: version {doc.version} issued at {_format_time(doc.issued_at)}, later than"
            f" now ({_format_time(now)}) plus the allowed clock skew"
        )
    return doc


def state_is_expired(doc: StateDocument, now: datetime) -> bool:
    """True from the instant ``doc.expires`` is reached."""
    return _check_now(now) >= doc.expires


def is_same_state(envelope_bytes: bytes, trusted_envelope_bytes: bytes) -> bool:
    """True if the fetched envelope is byte for byte the one already verified and stored.

    Signing is deterministic (Ed25519, canonical JSON), so re-serving the current state
    yields identical bytes. Nothing is parsed; a match needs no verification because the
    stored bytes were verified when they were accepted.
    """
    return hmac.compare_digest(envelope_bytes, trusted_envelope_bytes)


def verify_checkin(
    envelope_bytes: bytes,
    device_public_key: Ed25519PublicKey,
    satellite: str,
    max_bytes: int = DEFAULT_CHECKIN_MAX_BYTES,
    *,
    device_keyid: str | None = None,
) -> CheckIn:
    """Verify a check-in signed by ``satellite``'s device key and return it.

    No time or sequence checks: check-ins queue for days offline and arrive late or
    twice; Ground Control deduplicates by ``(satellite, seq)``. ``device_keyid`` is
    ``keyid(device_public_key)`` when the caller has it already (a batch computes it once).
    """
    envelope = Envelope.from_json(envelope_bytes, max_bytes)
    _check_payload_type(envelope, CHECKIN_PAYLOAD_TYPE, "check-in")
    kid = device_keyid or keyid(device_public_key)
    _verify_signatures(envelope, {kid: device_public_key}, 1, "check-in")
    checkin = CheckIn.from_dict(_loads(envelope.payload, "check-in payload"))
    if checkin.satellite != satellite:
        raise WrongSatelliteError(
            f"check-in: from satellite {checkin.satellite!r}, signed by the key of {satellite!r}"
        )
    return checkin


def verify_acks(
    envelope_bytes: bytes, root: Root, satellite: str, max_bytes: int = MAX_ACKS_BYTES
) -> Acks:
    """Verify a bundle's ack list for ``satellite`` and return it: payloadType, a
    ``root.state_threshold`` of valid signatures by ``root.state_keys``, then addressed to
    ``satellite`` (``WrongSatelliteError``). Which state version it must name is the
    caller's check (the bundle's)."""
    envelope = Envelope.from_json(envelope_bytes, max_bytes)
    _check_payload_type(envelope, ACKS_PAYLOAD_TYPE, "acks")
    _verify_signatures(envelope, _public_keys(root.state_keys), root.state_threshold, "acks")
    acks = Acks.from_bytes(envelope.payload)
    if acks.satellite != satellite:
        raise WrongSatelliteError(
            f"acks: addressed to satellite {acks.satellite!r}, this is {satellite!r}"
        )
    return acks
