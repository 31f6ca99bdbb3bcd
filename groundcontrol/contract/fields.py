"""Field checks for wire documents: each names the path of what is missing or mistyped."""

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, NoReturn, TypeVar, cast

from groundcontrol.contract.encoding import _typename
from groundcontrol.contract.errors import MalformedDocument
from groundcontrol.contract.keys import keyid, load_public_key_b64

_T = TypeVar("_T")

_KEYID_RE: Final = re.compile(r"[0-9a-f]{64}")
_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_PATH_COMPONENT: Final = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# OCI repository name, optionally behind a registry host with a port ("localhost:5000/x").
# The same grammar as registry_proxy.names (a test holds the two together); a copy, so
# that the contract depends on the standard library and its crypto libraries only.
_DOMAIN_COMPONENT: Final = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST: Final = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[A-Fa-f0-9:]+\])"
_REPOSITORY_RE: Final = re.compile(
    rf"(?:{_HOST}:[0-9]{{1,5}}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
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


def _fail(where: str, message: str) -> NoReturn:
    raise MalformedDocument(f"{where}: {message}")


# Every integer on the wire is stored by both databases as a signed 64-bit BIGINT.
INT64_MAX: Final = 2**63 - 1


def _check_int(where: str, value: object, minimum: int, maximum: int = INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"expected an integer, got {_typename(value)}")
    if value < minimum:
        _fail(where, f"must be >= {minimum}, got {value}")
    if value > maximum:
        _fail(where, f"must be <= {maximum}, got {str(value)[:40]}")
    return value


def _check_float(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(where, f"expected a number, got {_typename(value)}")
    if isinstance(value, int) and not 0 <= value <= INT64_MAX:
        _fail(where, f"must be a number from 0 to {INT64_MAX}, got {str(value)[:40]}")
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
    if value.tzinfo is UTC:
        return value
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
    if not value:
        return {}  # a fresh one all the same: the caller's dict may change later
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


def _take(
    data: object,
    where: str,
    required: tuple[str, ...],
    optional: tuple[tuple[str, Any], ...] = (),
) -> tuple[list[Any], dict[str, Any]]:
    """The values of the ``required`` fields, then of the ``optional`` ones (or their
    defaults), in order, and the fields not named: what ``_Fields`` gives, in one call
    for the documents parsed most often (check-ins and their image statuses)."""
    if not isinstance(data, dict):
        _fail(where, f"expected an object, got {_typename(data)}")
    try:
        values = [data[name] for name in required]
    except KeyError:
        missing = next(name for name in required if name not in data)
        _fail(f"{where}.{missing}", "required field is missing")
    known = len(required)
    for name, default in optional:
        if name in data:
            values.append(data[name])
            known += 1
        else:
            values.append(default)
    if known == len(data):
        return values, {}
    named = set(required).union(name for name, _default in optional)
    return values, {key: value for key, value in data.items() if key not in named}


def _check_list(where: str, value: object) -> list[Any]:
    if not isinstance(value, list):
        _fail(where, f"expected a list, got {_typename(value)}")
    return value


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
        return _check_list(f"{self._where}.{name}", self.required(name))

    def required_items(self, name: str, parse: Callable[[object], _T]) -> tuple[_T, ...]:
        """A required list whose every item is parsed; errors name the item's index."""
        return _parse_items(f"{self._where}.{name}", self.required_list(name), parse)

    def required_time(self, name: str) -> datetime:
        return _parse_time(f"{self._where}.{name}", self.required(name))

    def rest(self) -> dict[str, Any]:
        return self._data


def _parse_items(where: str, raw: list[Any], parse: Callable[[object], _T]) -> tuple[_T, ...]:
    items = []
    for i, item in enumerate(raw):
        try:
            items.append(parse(item))
        except MalformedDocument as exc:
            raise MalformedDocument(f"{where}[{i}]: {exc}") from exc
    return tuple(items)


def _checked_instance(cls: type[_T], fields: dict[str, Any]) -> _T:
    """An instance of the frozen dataclass ``cls`` holding ``fields`` as given, without
    running its constructor: only for fields that went through the class's own checks
    (a ``from_dict`` calls them itself, then builds the object once)."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalising fields of a frozen dataclass
