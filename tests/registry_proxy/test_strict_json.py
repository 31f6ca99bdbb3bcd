"""The one strict JSON loader and the one wire-number parser, as pure functions."""

from __future__ import annotations

import json

import pytest

from registry_proxy.numbers import INT64_MAX, parse_uint
from registry_proxy.strict_json import StrictJSONError, loads


@pytest.mark.parametrize("text", ["0", "7", "007", "10240", str(INT64_MAX)])
def test_parse_uint_accepts_ascii_int64(text: str) -> None:
    assert parse_uint(text) == int(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "0x10",
        "²",
        "①",
        "١٢",
        "\uff11",  # FULLWIDTH DIGIT ONE
        "1_000",
        str(INT64_MAX + 1),
        "9" * 5000,
    ],
)
def test_parse_uint_refuses_everything_else(text: str) -> None:
    assert parse_uint(text) is None


ACCEPTED = [
    b'{"a": [1, -2, 3.5, true, false, null, "x"]}',
    b'{"s": "brackets [[{{ and \\" quotes in strings"}',
    '{"k": "Läden 😀 \\ud83d\\ude00"}'.encode(),
    b"[" * 64 + b"]" * 64,
    b'{"n": -12345678901234567890}',
    b" [] ",
]


@pytest.mark.parametrize("data", ACCEPTED)
def test_loads_accepts_what_json_means_one_way(data: bytes) -> None:
    assert loads(data) == json.loads(data)


REFUSED = {
    "UTF-16": ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
    "UTF-32": ('{"a": 1}'.encode("utf-32"), "not UTF-8"),
    "BOM": (b'\xef\xbb\xbf{"a": 1}', "byte order mark"),
    "duplicate key": (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
    "nested duplicate": (b'[{"b": {"c": 1, "c": 1}}]', "duplicate key 'c'"),
    "NaN": (b"[NaN]", "NaN"),
    "Infinity": (b"[Infinity]", "Infinity"),
    "-Infinity": (b"[-Infinity]", "-Infinity"),
    "1e400": (b"[1e400]", "out of range"),
    "21-digit integer": (b"[" + b"1" * 21 + b"]", "out of range"),
    "5000-digit integer": (b"[" + b"1" * 5000 + b"]", "out of range"),
    "lone surrogate": (b'["\\ud800"]', "lone surrogate"),
    "lone surrogate key": (b'{"\\udfff": 1}', "lone surrogate"),
    "65 levels": (b"[" * 65 + b"]" * 65, "nested deeper than 64"),
    "100,000 levels": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested deeper"),
    "100,000 unclosed": (b"[" * 100_000, "nested deeper"),
    "mixed deep": (b"[{" * 40 + b"}]" * 40, "nested deeper"),
    "unbalanced": (b"[}", "invalid JSON"),
    "trailing comma": (b"[1,]", "invalid JSON"),
    "empty": (b"", "invalid JSON"),
    "two values": (b"[] []", "invalid JSON"),
}


@pytest.mark.parametrize(("data", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_loads_refuses_what_readers_could_disagree_on(data: bytes, reason: str) -> None:
    with pytest.raises(StrictJSONError) as exc:
        loads(data)
    assert reason in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_depth_is_a_parameter() -> None:
    assert loads(b"[[[]]]", max_depth=3) == [[[]]]
    with pytest.raises(StrictJSONError):
        loads(b"[[[[]]]]", max_depth=3)


@pytest.mark.parametrize(
    ("data", "max_depth"),
    [
        (b"[[]]", 2),  # as many brackets as the limit: nothing to walk
        (b"[" + b"[]," * 100 + b"[]]", 2),  # many brackets, shallow: walked, accepted
        (b'["[[[[", {"k": "{{"}]', 2),  # brackets in strings count for nothing
    ],
)
def test_depth_limit_accepts_shallow_documents_with_many_brackets(
    data: bytes, max_depth: int
) -> None:
    assert loads(data, max_depth=max_depth) == json.loads(data)


@pytest.mark.parametrize(
    "data",
    [b"[[[]]]", b'[{"a": [1]}]', b'["x", [["y"]]]', b"[[[", b'{"a": {"b": {}}, "c": 1}'],
)
def test_depth_limit_refuses_one_level_too_many(data: bytes) -> None:
    with pytest.raises(StrictJSONError, match="nested deeper than 2 levels"):
        loads(data, max_depth=2)


def test_duplicate_key_named_among_many() -> None:
    data = b'{"a": 1, "b": 2, "c": {"x": 1, "y": 2, "x": 3}, "d": 4}'
    with pytest.raises(StrictJSONError, match="duplicate key 'x'"):
        loads(data)
