"""The wire contract between Ground Control and satellites.

Everything a satellite and Ground Control exchange about trust lives here: Ed25519 keys,
DSSE envelopes, the trust root, the per-satellite state document and the signed check-in.
The appliance imports this module, so it depends on the standard library and
``cryptography`` only, and it is pure: no disk, no network, no clock. The reference time
comes in as ``now`` (a timezone-aware datetime) and byte caps as ``max_bytes``.

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

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Literal, NoReturn, TypeVar, cast, get_args

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_T = TypeVar("_T")

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
    "sign_checkin",
    "sign_envelope",
    "sign_root",
    "sign_state",
    "state_is_expired",
    "verify_checkin",
    "verify_root",
    "verify_root_chain",
    "verify_state",
]

ROOT_PAYLOAD_TYPE: Final = "application/vnd.satellite.root+json"
STATE_PAYLOAD_TYPE: Final = "application/vnd.satellite.state+json"
CHECKIN_PAYLOAD_TYPE: Final = "application/vnd.satellite.checkin+json"

# Byte caps on whole envelopes (base64 payload included). A root lists a handful of keys;
# a state document lists ~300 bytes per image, so 8 MiB is room for >15k images.
DEFAULT_ROOT_MAX_BYTES: Final = 512 * 1024
DEFAULT_STATE_MAX_BYTES: Final = 8 * 1024 * 1024
DEFAULT_CHECKIN_MAX_BYTES: Final = 4 * 1024 * 1024

# How far in the future a state's issued_at may lie (edge clocks drift; a far-future
# issued_at means a wrong clock on one side or a crafted document).
DEFAULT_CLOCK_SKEW: Final = timedelta(minutes=5)

ImageStatusValue = Literal["present", "missing", "failed"]
IMAGE_STATUSES: Final[frozenset[str]] = frozenset(get_args(ImageStatusValue))


# --------------------------------------------------------------------------------- errors


class ContractError(Exception):
    """Base class: data received from the other side is not acceptable."""


class MalformedDocument(ContractError, ValueError):
    """Not valid JSON, base64 or fields for the expected kind of document."""


class OversizeError(ContractError):
    """Larger than the byte cap; refused before any parsing."""


class SignatureError(ContractError):
    """Unknown key, bad signature, or fewer valid signatures than the threshold."""


class RollbackError(ContractError):
    """Version lower than or equal to the trusted one."""


class RotationError(ContractError):
    """A new root that does not directly follow the trusted root (e.g. skips a version)."""


class ExpiredError(ContractError):
    """The document (or the trusted root it is checked against) has expired."""


class NotYetValidError(ContractError):
    """Issued further in the future than the allowed clock skew."""


class WrongSatelliteError(ContractError):
    """The document is addressed to another satellite (mix-and-match)."""


# ----------------------------------------------------------------------------------- keys


def generate_key() -> Ed25519PrivateKey:
    """A new Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def _raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(pub: Ed25519PublicKey) -> str:
    """The raw 32-byte public key, standard base64."""
    return _b64encode(_raw_public(pub))


def load_public_key_b64(s: str) -> Ed25519PublicKey:
    """Inverse of ``public_key_b64``; ``MalformedDocument`` if ``s`` is not one."""
    raw = _b64decode(s, "public key")
    if len(raw) != 32:
        raise MalformedDocument(f"public key: expected 32 raw bytes, got {len(raw)}")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:  # pragma: no cover - every 32-byte string loads today
        raise MalformedDocument(f"public key: {exc}") from exc


def keyid(pub: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw public key bytes: the key's name in roots and signatures."""
    return hashlib.sha256(_raw_public(pub)).hexdigest()


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


# ------------------------------------------------------------------------- JSON and base64


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity.

    Used to *produce* payloads deterministically. Verification never re-encodes: it checks
    signatures over the bytes received, so the encoding need not be canonical across
    languages.
    """
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: object, where: str) -> bytes:
    # Standard alphabet with padding, strictly: no whitespace, no URL-safe characters.
    if not isinstance(text, str):
        raise MalformedDocument(f"{where}: expected a base64 string, got {_typename(text)}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise MalformedDocument(f"{where}: invalid base64") from exc


def _loads(data: bytes, where: str) -> Any:
    """Strict JSON: UTF-8 only, no duplicate keys, no NaN/Infinity, bounded nesting."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise MalformedDocument(f"{where}: duplicate key {key!r}")
            obj[key] = value
        return obj

    def finite_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise MalformedDocument(f"{where}: number {text} is out of range")
        return value

    def no_constant(name: str) -> NoReturn:
        raise MalformedDocument(f"{where}: {name} is not valid JSON")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedDocument(f"{where}: not UTF-8") from exc
    try:
        return json.loads(
            text,
            object_pairs_hook=no_duplicates,
            parse_float=finite_float,
            parse_constant=no_constant,
        )
    except MalformedDocument:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, nesting
        raise MalformedDocument(f"{where}: invalid JSON: {exc}") from exc


# ------------------------------------------------------------------------------------ DSSE


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


# ------------------------------------------------------------------------ field validation

_KEYID_RE: Final = re.compile(r"[0-9a-f]{64}")
_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_PATH_COMPONENT: Final = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# OCI repository name, optionally behind a registry host with a port ("localhost:5000/x").
_REPOSITORY_RE: Final = re.compile(
    rf"(?:[A-Za-z0-9.-]+:[0-9]{{1,5}}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
)
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_MEDIA_TYPE_RE: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
_PLATFORM_RE: Final = re.compile(r"[a-z0-9_.-]{1,32}/[a-z0-9_.-]{1,32}(?:/[a-z0-9_.-]{1,32})?")
_TIME_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z"
)
_MAX_JSON_DEPTH: Final = 64


def _typename(value: object) -> str:
    return {
        type(None): "null",
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _fail(where: str, message: str) -> NoReturn:
    raise MalformedDocument(f"{where}: {message}")


def _check_int(where: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"expected an integer, got {_typename(value)}")
    if value < minimum:
        _fail(where, f"must be >= {minimum}, got {value}")
    return value


def _check_float(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(where, f"expected a number, got {_typename(value)}")
    if not math.isfinite(value) or value < 0:
        _fail(where, f"must be a finite number >= 0, got {value}")
    return float(value)


def _check_bool(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        _fail(where, f"expected a boolean, got {_typename(value)}")
    return value


def _check_text(where: str, value: object) -> str:
    """Any string that can be encoded as UTF-8 (no lone surrogates)."""
    if not isinstance(value, str):
        _fail(where, f"expected a string, got {_typename(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(where, "not encodable as UTF-8")
    return value


def _check_match(where: str, value: object, pattern: re.Pattern[str], expected: str) -> str:
    if not isinstance(value, str):
        _fail(where, f"expected a string, got {_typename(value)}")
    if len(value) > 255 or pattern.fullmatch(value) is None:
        _fail(where, f"expected {expected}, got {value[:80]!r}")
    return value


def _check_satellite(where: str, value: object) -> str:
    if not isinstance(value, str):
        _fail(where, f"expected a string, got {_typename(value)}")
    if not value or len(value) > 255 or not value.isprintable() or value != value.strip():
        _fail(where, f"expected a printable name of 1-255 characters, got {value[:80]!r}")
    return value


def _check_datetime(where: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        _fail(where, f"expected a datetime, got {_typename(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        _fail(where, "datetime must be timezone-aware")
    return value.astimezone(UTC)


def _check_now(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def _format_time(value: datetime) -> str:
    v = value.astimezone(UTC)
    text = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    if v.microsecond:
        text += f".{v.microsecond:06d}"
    return text + "Z"


def _parse_time(where: str, value: object) -> datetime:
    """RFC 3339 in UTC only: ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
    if not isinstance(value, str):
        _fail(where, f"expected a time string, got {_typename(value)}")
    match = _TIME_RE.fullmatch(value)
    if match is None:
        _fail(where, f"expected YYYY-MM-DDTHH:MM:SS[.ffffff]Z, got {value[:40]!r}")
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=UTC,
        )
    except ValueError as exc:
        _fail(where, f"invalid time {value!r}: {exc}")


def _json_copy(where: str, value: object, depth: int = 0) -> Any:
    """A deep copy of a JSON-compatible value (tuples become lists), or ``MalformedDocument``."""
    if depth > _MAX_JSON_DEPTH:
        _fail(where, f"nested deeper than {_MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _check_text(where, value)
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(where, f"number {value} is not valid JSON")
        return value
    if isinstance(value, list | tuple):
        return [_json_copy(f"{where}[{i}]", item, depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        copied: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(where, f"object keys must be strings, got {_typename(key)}")
            copied[_check_text(where, key)] = _json_copy(f"{where}.{key}", item, depth + 1)
        return copied
    _fail(where, f"{_typename(value)} is not a JSON value")


def _check_object(where: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, f"expected an object, got {_typename(value)}")
    return cast(dict[str, Any], _json_copy(where, value))


def _check_unrecognized(where: str, value: object, known: frozenset[str]) -> dict[str, Any]:
    copied = _check_object(where, value)
    clash = sorted(known.intersection(copied))
    if clash:
        _fail(where, f"must not repeat known fields {clash}")
    return copied


def _check_tuple(where: str, value: object) -> tuple[Any, ...]:
    # A str is a sequence too; refusing it catches platforms="linux/amd64".
    if not isinstance(value, list | tuple):
        _fail(where, f"expected a list, got {_typename(value)}")
    return tuple(value)


def _check_keys(where: str, value: object) -> dict[str, str]:
    """A non-empty ``{keyid: public_key_b64}`` map whose keyids match their keys."""
    if not isinstance(value, dict):
        _fail(where, f"expected an object, got {_typename(value)}")
    if not value:
        _fail(where, "must list at least one key")
    keys: dict[str, str] = {}
    for kid, b64 in value.items():
        _check_match(f"{where} keyid", kid, _KEYID_RE, "64 lowercase hex characters")
        entry = f"{where}[{kid[:12]}]"
        if not isinstance(b64, str):
            _fail(entry, f"expected a base64 public key, got {_typename(b64)}")
        try:
            public = load_public_key_b64(b64)
        except MalformedDocument as exc:
            _fail(entry, str(exc))
        if keyid(public) != kid:
            _fail(entry, "keyid is not the SHA-256 of the key")
        keys[kid] = b64
    return keys


def _check_threshold(where: str, value: object, keys: Mapping[str, str]) -> int:
    threshold = _check_int(where, value, 1)
    if threshold > len(keys):
        _fail(where, f"{threshold} exceeds the {len(keys)} key(s) listed, no signing can meet it")
    return threshold


class _Fields:
    """Takes fields off one wire object, naming the path of what is missing or mistyped."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            _fail(where, f"expected an object, got {_typename(data)}")
        self._data: dict[str, Any] = dict(data)
        self._where = where

    def required(self, name: str) -> Any:
        if name not in self._data:
            _fail(f"{self._where}.{name}", "required field is missing")
        return self._data.pop(name)

    def optional(self, name: str, default: Any) -> Any:
        return self._data.pop(name, default)

    def required_list(self, name: str) -> list[Any]:
        value = self.required(name)
        if not isinstance(value, list):
            _fail(f"{self._where}.{name}", f"expected a list, got {_typename(value)}")
        return value

    def required_items(self, name: str, parse: Callable[[object], _T]) -> tuple[_T, ...]:
        """A required list whose every item is parsed; errors name the item's index."""
        items = []
        for i, raw in enumerate(self.required_list(name)):
            try:
                items.append(parse(raw))
            except MalformedDocument as exc:
                raise MalformedDocument(f"{self._where}.{name}[{i}]: {exc}") from exc
        return tuple(items)

    def required_time(self, name: str) -> datetime:
        return _parse_time(f"{self._where}.{name}", self.required(name))

    def rest(self) -> dict[str, Any]:
        return self._data


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalising fields of a frozen dataclass


# ----------------------------------------------------------------------- wire documents


@dataclass(frozen=True)
class Root:
    """The trust root: which keys may sign roots and states, and how many must.

    ``root_keys``/``state_keys`` map keyid to ``public_key_b64``; the constructor checks
    that each keyid is the hash of its key and that each threshold can be met.
    """

    version: int
    expires: datetime
    root_keys: dict[str, str]
    root_threshold: int
    state_keys: dict[str, str]
    state_threshold: int
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "expires", "root_keys", "root_threshold", "state_keys", "state_threshold"}
    )

    def __post_init__(self) -> None:
        _check_int("Root.version", self.version, 1)
        _set(self, "expires", _check_datetime("Root.expires", self.expires))
        _set(self, "root_keys", _check_keys("Root.root_keys", self.root_keys))
        _check_threshold("Root.root_threshold", self.root_threshold, self.root_keys)
        _set(self, "state_keys", _check_keys("Root.state_keys", self.state_keys))
        _check_threshold("Root.state_threshold", self.state_threshold, self.state_keys)
        _set(
            self,
            "unrecognized",
            _check_unrecognized("Root.unrecognized", self.unrecognized, self._FIELDS),
        )

    def is_expired(self, now: datetime) -> bool:
        return _check_now(now) >= self.expires

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "version": self.version,
            "expires": _format_time(self.expires),
            "root_keys": dict(self.root_keys),
            "root_threshold": self.root_threshold,
            "state_keys": dict(self.state_keys),
            "state_threshold": self.state_threshold,
        }

    @classmethod
    def from_dict(cls, data: object) -> "Root":
        f = _Fields(data, "root")
        return cls(
            version=f.required("version"),
            expires=f.required_time("expires"),
            root_keys=f.required("root_keys"),
            root_threshold=f.required("root_threshold"),
            state_keys=f.required("state_keys"),
            state_threshold=f.required("state_threshold"),
            unrecognized=f.rest(),
        )


@dataclass(frozen=True)
class ImageDescriptor:
    """One image a satellite must keep: a manifest or index by digest, optionally tagged.

    ``platforms`` lists the platforms to keep from an index ("linux/amd64",
    "linux/arm64/v8"); empty means all. ``tag`` and ``platforms`` may be absent on the wire.
    """

    repository: str
    tag: str | None
    digest: str
    media_type: str
    size: int
    platforms: tuple[str, ...] = ()
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"repository", "tag", "digest", "media_type", "size", "platforms"}
    )

    def __post_init__(self) -> None:
        w = "ImageDescriptor"
        _check_match(f"{w}.repository", self.repository, _REPOSITORY_RE, "an OCI repository name")
        if self.tag is not None:
            _check_match(f"{w}.tag", self.tag, _TAG_RE, "an OCI tag")
        _check_match(f"{w}.digest", self.digest, _DIGEST_RE, "sha256:<64 hex> or sha512:<128 hex>")
        _check_match(f"{w}.media_type", self.media_type, _MEDIA_TYPE_RE, "a media type")
        _check_int(f"{w}.size", self.size, 0)
        platforms = _check_tuple(f"{w}.platforms", self.platforms)
        for i, platform in enumerate(platforms):
            _check_match(f"{w}.platforms[{i}]", platform, _PLATFORM_RE, "os/arch[/variant]")
        if len(set(platforms)) != len(platforms):
            _fail(f"{w}.platforms", "lists a platform twice")
        _set(self, "platforms", platforms)
        _set(
            self,
            "unrecognized",
            _check_unrecognized(f"{w}.unrecognized", self.unrecognized, self._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
            "platforms": list(self.platforms),
        }

    @classmethod
    def from_dict(cls, data: object) -> "ImageDescriptor":
        f = _Fields(data, "image")
        platforms = f.optional("platforms", [])
        if not isinstance(platforms, list):
            _fail("image.platforms", f"expected a list, got {_typename(platforms)}")
        return cls(
            repository=f.required("repository"),
            tag=f.optional("tag", None),
            digest=f.required("digest"),
            media_type=f.required("media_type"),
            size=f.required("size"),
            platforms=tuple(platforms),
            unrecognized=f.rest(),
        )


@dataclass(frozen=True)
class StateDocument:
    """The desired state of one satellite: images to hold and its configuration.

    ``version`` increases with every document Ground Control signs for the satellite,
    including re-signing unchanged content; ``expires`` must lie after ``issued_at``.
    Two descriptors may not give the same repository:tag different digests.
    """

    satellite: str
    version: int
    issued_at: datetime
    expires: datetime
    images: tuple[ImageDescriptor, ...]
    config: dict[str, Any] = field(default_factory=dict)
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"satellite", "version", "issued_at", "expires", "images", "config"}
    )

    def __post_init__(self) -> None:
        w = "StateDocument"
        _check_satellite(f"{w}.satellite", self.satellite)
        _check_int(f"{w}.version", self.version, 1)
        _set(self, "issued_at", _check_datetime(f"{w}.issued_at", self.issued_at))
        _set(self, "expires", _check_datetime(f"{w}.expires", self.expires))
        if self.expires <= self.issued_at:
            _fail(f"{w}.expires", "must be later than issued_at")
        images = _check_tuple(f"{w}.images", self.images)
        tagged: dict[tuple[str, str], str] = {}
        for i, image in enumerate(images):
            if not isinstance(image, ImageDescriptor):
                _fail(f"{w}.images[{i}]", f"expected an ImageDescriptor, got {_typename(image)}")
            if image.tag is not None:
                other = tagged.setdefault((image.repository, image.tag), image.digest)
                if other != image.digest:
                    _fail(
                        f"{w}.images[{i}]",
                        f"{image.repository}:{image.tag} is given two different digests",
                    )
        _set(self, "images", images)
        _set(self, "config", _check_object(f"{w}.config", self.config))
        _set(
            self,
            "unrecognized",
            _check_unrecognized(f"{w}.unrecognized", self.unrecognized, self._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "satellite": self.satellite,
            "version": self.version,
            "issued_at": _format_time(self.issued_at),
            "expires": _format_time(self.expires),
            "images": [image.to_dict() for image in self.images],
            "config": _json_copy("config", self.config),
        }

    @classmethod
    def from_dict(cls, data: object) -> "StateDocument":
        f = _Fields(data, "state")
        images = f.required_items("images", ImageDescriptor.from_dict)
        return cls(
            satellite=f.required("satellite"),
            version=f.required("version"),
            issued_at=f.required_time("issued_at"),
            expires=f.required_time("expires"),
            images=images,
            config=f.required("config"),
            unrecognized=f.rest(),
        )


@dataclass(frozen=True)
class ImageStatus:
    """What a satellite reports about one image of its state."""

    repository: str
    digest: str
    status: ImageStatusValue
    error: str | None = None
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[frozenset[str]] = frozenset({"repository", "digest", "status", "error"})

    def __post_init__(self) -> None:
        w = "ImageStatus"
        _check_match(f"{w}.repository", self.repository, _REPOSITORY_RE, "an OCI repository name")
        _check_match(f"{w}.digest", self.digest, _DIGEST_RE, "sha256:<64 hex> or sha512:<128 hex>")
        if self.status not in IMAGE_STATUSES:
            _fail(f"{w}.status", f"expected one of {sorted(IMAGE_STATUSES)}, got {self.status!r}")
        if self.error is not None:
            _check_text(f"{w}.error", self.error)
        _set(
            self,
            "unrecognized",
            _check_unrecognized(f"{w}.unrecognized", self.unrecognized, self._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "repository": self.repository,
            "digest": self.digest,
            "status": self.status,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: object) -> "ImageStatus":
        f = _Fields(data, "image")
        return cls(
            repository=f.required("repository"),
            digest=f.required("digest"),
            status=f.required("status"),
            error=f.optional("error", None),
            unrecognized=f.rest(),
        )


@dataclass(frozen=True)
class CheckIn:
    """A satellite's signed report; Ground Control ingests by (satellite, seq) idempotently.

    ``state_version`` 0 means no state applied yet. ``state_expired`` is the satellite's own
    statement that the state it serves has expired.
    """

    satellite: str
    seq: int
    sent_at: datetime
    state_version: int
    images: tuple[ImageStatus, ...]
    cache_bytes_used: int
    cache_bytes_max: int
    errors: tuple[str, ...] = ()
    offline_seconds: float = 0.0
    state_expired: bool = False
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "satellite",
            "seq",
            "sent_at",
            "state_version",
            "images",
            "cache_bytes_used",
            "cache_bytes_max",
            "errors",
            "offline_seconds",
            "state_expired",
        }
    )

    def __post_init__(self) -> None:
        w = "CheckIn"
        _check_satellite(f"{w}.satellite", self.satellite)
        _check_int(f"{w}.seq", self.seq, 1)
        _set(self, "sent_at", _check_datetime(f"{w}.sent_at", self.sent_at))
        _check_int(f"{w}.state_version", self.state_version, 0)
        images = _check_tuple(f"{w}.images", self.images)
        for i, image in enumerate(images):
            if not isinstance(image, ImageStatus):
                _fail(f"{w}.images[{i}]", f"expected an ImageStatus, got {_typename(image)}")
        _set(self, "images", images)
        _check_int(f"{w}.cache_bytes_used", self.cache_bytes_used, 0)
        _check_int(f"{w}.cache_bytes_max", self.cache_bytes_max, 0)
        errors = _check_tuple(f"{w}.errors", self.errors)
        for i, error in enumerate(errors):
            _check_text(f"{w}.errors[{i}]", error)
        _set(self, "errors", errors)
        _set(self, "offline_seconds", _check_float(f"{w}.offline_seconds", self.offline_seconds))
        _check_bool(f"{w}.state_expired", self.state_expired)
        _set(
            self,
            "unrecognized",
            _check_unrecognized(f"{w}.unrecognized", self.unrecognized, self._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "satellite": self.satellite,
            "seq": self.seq,
            "sent_at": _format_time(self.sent_at),
            "state_version": self.state_version,
            "images": [image.to_dict() for image in self.images],
            "cache_bytes_used": self.cache_bytes_used,
            "cache_bytes_max": self.cache_bytes_max,
            "errors": list(self.errors),
            "offline_seconds": self.offline_seconds,
            "state_expired": self.state_expired,
        }

    @classmethod
    def from_dict(cls, data: object) -> "CheckIn":
        f = _Fields(data, "checkin")
        images = f.required_items("images", ImageStatus.from_dict)
        return cls(
            satellite=f.required("satellite"),
            seq=f.required("seq"),
            sent_at=f.required_time("sent_at"),
            state_version=f.required("state_version"),
            images=images,
            cache_bytes_used=f.required("cache_bytes_used"),
            cache_bytes_max=f.required("cache_bytes_max"),
            errors=tuple(f.required_list("errors")),
            offline_seconds=f.required("offline_seconds"),
            state_expired=f.required("state_expired"),
            unrecognized=f.rest(),
        )


# -------------------------------------------------------------------------------- signing


def sign_root(root: Root, keys: Sequence[Ed25519PrivateKey]) -> Envelope:
    """Sign a root. For a rotation pass the old root's keys *and* the new root's keys."""
    return sign_envelope(ROOT_PAYLOAD_TYPE, canonical_json(root.to_dict()), keys)


def sign_state(doc: StateDocument, keys: Sequence[Ed25519PrivateKey]) -> Envelope:
    """Sign a state document with (a threshold of) the root's state keys."""
    return sign_envelope(STATE_PAYLOAD_TYPE, canonical_json(doc.to_dict()), keys)


def sign_checkin(checkin: CheckIn, device_key: Ed25519PrivateKey) -> Envelope:
    """Sign a check-in with the satellite's device key."""
    return sign_envelope(CHECKIN_PAYLOAD_TYPE, canonical_json(checkin.to_dict()), [device_key])


# --------------------------------------------------------------------------- verification


def _public_keys(keys: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    return {kid: load_public_key_b64(b64) for kid, b64 in keys.items()}


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
            public.verify(_b64decode(signature.sig, "signature"), message)
        except (InvalidSignature, MalformedDocument):
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
    envelope = Envelope.from_json(envelope_bytes, max_bytes)
    _check_payload_type(envelope, STATE_PAYLOAD_TYPE, "state")
    _verify_signatures(envelope, _public_keys(root.state_keys), root.state_threshold, "state")
    doc = StateDocument.from_dict(_loads(envelope.payload, "state payload"))
    if doc.satellite != satellite:
        raise WrongSatelliteError(
            f"state: addressed to satellite {doc.satellite!r}, this is {satellite!r}"
        )
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
) -> CheckIn:
    """Verify a check-in signed by ``satellite``'s device key and return it.

    No time or sequence checks: check-ins queue for days offline and arrive late or
    twice; Ground Control deduplicates by ``(satellite, seq)``.
    """
    envelope = Envelope.from_json(envelope_bytes, max_bytes)
    _check_payload_type(envelope, CHECKIN_PAYLOAD_TYPE, "check-in")
    _verify_signatures(envelope, {keyid(device_public_key): device_public_key}, 1, "check-in")
    checkin = CheckIn.from_dict(_loads(envelope.payload, "check-in payload"))
    if checkin.satellite != satellite:
        raise WrongSatelliteError(
            f"check-in: from satellite {checkin.satellite!r}, signed by the key of {satellite!r}"
        )
    return checkin
