"""The wire contract between Ground Control and satellites.

Everything a satellite and Ground Control exchange about trust lives here: Ed25519 keys,
DSSE envelopes, the trust root, the per-satellite state document and the signed check-in.
This package is the only part of ``groundcontrol`` that the appliance imports, so it
depends on the standard library, ``cryptography`` (keys, signing), PyNaCl (libsodium:
verifying signatures) and ``registry_proxy.strict_json`` only, and it is pure: no disk,
no network, no clock. The reference time comes in as ``now`` (a timezone-aware datetime)
and byte caps as ``max_bytes``.

Modules: ``errors``, ``encoding`` (canonical and strict JSON, base64), ``keys`` (public
keys), ``dsse`` (envelopes), ``fields`` (field checks), ``documents`` (the wire
documents), ``verify`` (the ``verify_*`` functions), ``trusted`` (``TrustedState``, the
satellite's pinned root chain and applied state) and ``signing`` (private keys and
signing; a satellite needs it only for its device key).

The shape follows python-tuf's ``trusted_metadata_set``: bytes and a reference time in,
verified objects out. As in sigstore-python, each ``verify_*`` function *returns* the
document parsed from the verified payload bytes; callers must use that object (and persist
the exact bytes they passed in) and never parse an envelope's payload themselves.

Attacks refused (TUF's list, where it applies):

- arbitrary document / unknown key / wrong key: a document counts only with a threshold
  of valid signatures from the keys the trusted root names for its role;
- key compromise below threshold: duplicate signatures by one key count once;
- rollback: ``verify_state`` refuses a version lower than or equal to the trusted one,
  ``verify_root`` accepts only version N+1;
- freeze / indefinite replay: expired states and roots are refused as *new*; a satellite
  keeps serving the state it has and reports expiry itself (``state_is_expired``);
- mix-and-match: another satellite's state is refused; the DSSE ``payloadType`` is
  covered by the signature (PAE), so a root or check-in envelope cannot pass as a state;
- endless data: every parse is preceded by a byte cap. The cap here is a second line of
  defence: the fetcher must stop reading at the same cap instead of buffering first.

Errors (``ContractError`` means "the remote data is bad", never a local bug)::

    ContractError
    ├── MalformedDocument     not valid JSON/base64/fields for the expected kind (a ValueError)
    ├── OversizeError         larger than the byte cap; refused before parsing
    ├── SignatureError        unknown key, bad signature, below threshold
    ├── RollbackError         version lower than or equal to the trusted one
    ├── RotationError         a new root that does not follow the trusted one (skipped version)
    ├── ExpiredError          expired document, or the trusted root itself has expired
    ├── NotYetValidError      issued further in the future than the allowed clock skew
    └── WrongSatelliteError   a document addressed to another satellite

Programming errors (a naive ``now``, signing with no key) raise ``ValueError``.
"""

from groundcontrol.contract.documents import (
    CHECKIN_PAYLOAD_TYPE,
    DEFAULT_CHECKIN_MAX_BYTES,
    DEFAULT_CLOCK_SKEW,
    DEFAULT_ROOT_MAX_BYTES,
    DEFAULT_STATE_MAX_BYTES,
    IMAGE_STATUSES,
    ROOT_PAYLOAD_TYPE,
    STATE_PAYLOAD_TYPE,
    CheckIn,
    ImageDescriptor,
    ImageStatus,
    ImageStatusValue,
    Root,
    StateDocument,
)
from groundcontrol.contract.dsse import Envelope, Signature, pae
from groundcontrol.contract.encoding import canonical_json, strict_loads
from groundcontrol.contract.errors import (
    ContractError,
    ExpiredError,
    MalformedDocument,
    NotYetValidError,
    OversizeError,
    RollbackError,
    RotationError,
    SignatureError,
    WrongSatelliteError,
)
from groundcontrol.contract.keys import keyid, load_public_key_b64, public_key_b64
from groundcontrol.contract.signing import (
    generate_key,
    private_key_from_pem,
    private_key_to_pem,
    sign_acks,
    sign_checkin,
    sign_envelope,
    sign_root,
    sign_state,
)
from groundcontrol.contract.trusted import TrustedState
from groundcontrol.contract.verify import (
    is_same_state,
    state_is_expired,
    verify_acks,
    verify_checkin,
    verify_root,
    verify_root_chain,
    verify_state,
)

__all__ = [
    "CHECKIN_PAYLOAD_TYPE",
    "DEFAULT_CHECKIN_MAX_BYTES",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_ROOT_MAX_BYTES",
    "DEFAULT_STATE_MAX_BYTES",
    "IMAGE_STATUSES",
    "ROOT_PAYLOAD_TYPE",
    "STATE_PAYLOAD_TYPE",
    "CheckIn",
    "ContractError",
    "Envelope",
    "ExpiredError",
    "ImageDescriptor",
    "ImageStatus",
    "ImageStatusValue",
    "MalformedDocument",
    "NotYetValidError",
    "OversizeError",
    "RollbackError",
    "Root",
    "RotationError",
    "Signature",
    "SignatureError",
    "StateDocument",
    "TrustedState",
    "WrongSatelliteError",
    "canonical_json",
    "generate_key",
    "is_same_state",
    "keyid",
    "load_public_key_b64",
    "pae",
    "private_key_from_pem",
    "private_key_to_pem",
    "public_key_b64",
    "sign_acks",
    "sign_checkin",
    "sign_envelope",
    "sign_root",
    "sign_state",
    "state_is_expired",
    "strict_loads",
    "verify_acks",
    "verify_checkin",
    "verify_root",
    "verify_root_chain",
    "verify_state",
]
