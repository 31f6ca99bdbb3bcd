"""Bytes on the wire: canonical JSON for producing, strict JSON and base64 for reading."""

import base64
import binascii
import json
import math
from typing import Any, NoReturn

from groundcontrol.contract.errors import MalformedDocument


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


def strict_loads(data: bytes, where: str) -> Any:
    """Parse JSON by the contract's strict rules; ``MalformedDocument`` names ``where``."""
    return _loads(data, where)
