"""Durations in configuration files (``90``, ``"90s"``, ``"15m"``, ``"7d"``), and byte
counts for people to read."""

from __future__ import annotations

import re

_DURATION = re.compile(r"\s*([0-9]{1,12})\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds; ``ValueError`` naming what was expected. ASCII digits only."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 90s, 15m, 7d, got {value!r}")
    if isinstance(value, int | float):
        if not 0 <= value <= 10**12:
            raise ValueError(f"expected a duration from 0 to 10^12 seconds, got {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match:
            return int(match[1]) * _DURATION_UNITS[match[2]]
    raise ValueError(f"expected a duration like 90s, 15m, 7d, got {value!r}")


def format_bytes(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``3.0 GiB``: binary units, one decimal beyond bytes."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
