"""Non-negative integers from the wire (query parameters, headers, JSON), parsed in one place.

``str.isdigit()`` and ``\\d`` accept far more than ASCII digits (``²``, ``①``, Arabic-Indic
digits), and ``int()`` refuses some of those and any string over 4,300 digits; either
slip turned a client's typo into a 500. Here a number is 1 to 19 ASCII digits whose value
fits the int64 columns it ends up in, or it is not a number.
"""

from __future__ import annotations

import re
from typing import Final

INT64_MAX: Final = 2**63 - 1
MAX_DIGITS: Final = 19  # len(str(INT64_MAX))

# for regexes that capture a number: ASCII digits only, whatever the flags
DIGITS: Final = "[0-9]+"
_UINT = re.compile(r"[0-9]{1,19}")


def parse_uint(text: str) -> int | None:
    """`text` as an int in [0, INT64_MAX], or None when it is anything else."""
    if _UINT.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value <= INT64_MAX else None
