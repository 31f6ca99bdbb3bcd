"""Bytes on the wire: canonical JSON for producing, strict JSON and base64 for reading."""

import base64
import binascii
import json
from typing import Any

from groundcontrol.contract.errors import MalformedDocument
from registry_proxy import strict_json


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
    """Strict JSON (registry_proxy.strict_json, the project's one strict reader): UTF-8
    without BOM, no duplicate keys, no NaN/Infinity or overflowing numbers, no lone
    surrogates, bounded nesting. ``MalformedDocument`` names ``where``."""
    try:
        return strict_json.loads(bytes(data))
    except strict_json.StrictJSONError as exc:
        raise MalformedDocument(f"{where}: {exc}") from exc


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
