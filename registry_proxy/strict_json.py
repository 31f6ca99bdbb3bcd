"""JSON from untrusted peers, parsed to one meaning only (in the spirit of I-JSON, RFC 7493).

``json.loads`` is lenient in ways that let two readers of the same bytes disagree, or
that turn input into a 500: it guesses UTF-16 and UTF-32 from bytes, keeps the last of
duplicate keys, accepts ``NaN``/``Infinity`` and turns ``1e400`` into ``inf``, parses
lone surrogate escapes that cannot be encoded again, and recurses once per nesting
level until RecursionError. ``loads`` refuses all of that with StrictJSONError:

- UTF-8 only, without a byte order mark;
- no duplicate keys in any object;
- no NaN, Infinity or float that overflows to infinity; integers of at most
  ``MAX_INT_DIGITS`` digits;
- no string (or key) holding a lone surrogate;
- at most ``max_depth`` nested arrays and objects, checked before parsing, so that no
  depth of input reaches the parser's recursion.

The common case is cheap: a document with no more brackets in all than ``max_depth``
cannot nest deeper, so only larger documents pay for the depth walk; the decoder and
its hooks are built once.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, NoReturn

DEFAULT_MAX_DEPTH: Final = 64
MAX_INT_DIGITS: Final = 20  # an int64 or uint64 with its sign; callers bound the value

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class StrictJSONError(ValueError):
    """The bytes are not JSON this module accepts; the message says why."""


def _fail(message: str) -> NoReturn:
    raise StrictJSONError(message)


def _check_depth(data: bytes, max_depth: int) -> None:
    """Refuses nesting deeper than `max_depth` without recursing: with the strings cut
    out, each pass removes the innermost ``[]`` and ``{}`` pairs. Nesting needs an
    opening bracket per level, so with at most `max_depth` of them in all (those in
    strings included) there is nothing to walk."""
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    if re.search(rb"[\[{]{%d}" % (max_depth + 1), brackets) is not None:
        _fail(f"nested deeper than {max_depth} levels")  # the common attack, at once
    for _ in range(max_depth):
        if not brackets:
            return
        reduced = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if reduced == brackets:
            _fail("invalid JSON: unbalanced brackets")
        brackets = reduced
    if brackets:
        _fail(f"nested deeper than {max_depth} levels")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # a key was given twice: name the first one repeated
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                _fail(f"duplicate key {key[:100]!r}")
            seen.add(key)
    return obj


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _fail(f"number {text[:40]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        _fail(f"integer of {len(text)} digits is out of range")
    return int(text)


def _constant(name: str) -> NoReturn:
    _fail(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_object, parse_float=_float, parse_int=_int, parse_constant=_constant
)


def loads(data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The JSON value in `data`, or StrictJSONError (a ValueError)."""
    if data.startswith(b"\xef\xbb\xbf"):
        _fail("a byte order mark is not allowed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        _fail("not UTF-8")
    _check_depth(data, max_depth)
    try:
        value = _DECODER.decode(text)
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as exc:
        _fail(f"invalid JSON: {exc}")
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:  # only lone surrogates fail to encode: pairs were joined by the parser
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            _fail("a string holds a lone surrogate")
    return value
