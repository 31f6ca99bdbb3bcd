"""Values in configuration files, for both programs: durations (``90``, ``"90s"``,
``"15m"``, ``"7d"``), sizes (``1024``, ``"512MiB"``, ``"1.5GiB"``) and listen addresses
(``HOST:PORT``), the one error a bad configuration value raises, and byte counts for
people to read.

Text is read as ASCII digits only (``"²"`` and ``"٣"`` are ``str.isdigit()`` too) with a
bounded number of them, so no ``int()`` of a megabyte of digits and no value past what
the databases store.
"""

from __future__ import annotations

import re
from fractions import Fraction

INT64_MAX = 2**63 - 1
"""The largest integer both databases store (BIGINT, SQLite INTEGER)."""

_DURATION = re.compile(r" *([0-9]{1,19}) *(ms|s|m|h|d)? *")
_DURATION_UNITS: dict[str | None, Fraction] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
    None: Fraction(1),
}
_SIZE = re.compile(r" *([0-9]{1,19}(?:\.[0-9]{1,9})?) *([KMGTkmgt][Ii]?[Bb]|[Bb])? *")
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PORT = re.compile(r"[0-9]{1,5}")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message starts with the key."""


def _in_range(value: float | Fraction, maximum: float, what: str) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"expected {what} from 0 to {maximum}, got {value}")


def parse_duration(value: object, *, maximum: float = 10**12) -> float:
    """Seconds, from a number or ``90s``, ``15m``, ``7d``, ``250ms``; at most `maximum`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        _in_range(value, maximum, "a duration in seconds")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match:
            seconds = int(match[1]) * _DURATION_UNITS[match[2]]
            _in_range(seconds, maximum, "a duration in seconds")
            return float(seconds)
    raise ValueError(f"expected a duration like 90s, 15m, 7d, got {value!r}")


def parse_size(value: object) -> int:
    """Bytes, from an integer or ``512MiB``, ``1.5 GB``; at most 2**63 - 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        _in_range(value, INT64_MAX, "a size in bytes")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match:
            size = int(Fraction(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()])
            _in_range(size, INT64_MAX, "a size in bytes")
            return size
    raise ValueError(f"expected a size like 512MiB, 1.5GiB or 1000000, got {value!r}")


def parse_listen(value: object) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) into host and port."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if sep and host and _PORT.fullmatch(port) and int(port) <= 65535:
            return host, int(port)
    raise ValueError(f"expected HOST:PORT, got {value!r}")


def format_bytes(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``3.0 GiB``: binary units, one decimal beyond bytes."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
