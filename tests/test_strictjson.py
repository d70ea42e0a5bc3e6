"""Strict JSON (hubbub.strictjson): what hubbub reads and writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hubbub.errors import BadRequest
from hubbub.strictjson import MAX_DEPTH, dumps, dumps_str, encode_data, loads


def nested(depth: int, kind: str = "arrays") -> str:
    """JSON text nesting ``depth`` arrays (``[[...]]``) or objects (``{"a":{"a":1}}``)."""
    if kind == "arrays":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def nested_value(depth: int) -> Any:
    """A scalar inside ``depth`` arrays."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, (list, dict)):
        depth += 1
        value = (value[0] if value else None) if isinstance(value, list) else value.get("a")
    return depth


# -- NaN and Infinity ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "[1, NaN]", '{"a": Infinity}',
                                  '{"a": [{"b": -Infinity}]}'])
def test_loads_refuses_nan_infinity(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)
    with pytest.raises(ValueError):
        loads(text.encode())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), [1.0, float("nan")],
                                   {"a": {"b": float("inf")}}])
def test_dumps_refuses_nan_infinity(value: Any) -> None:
    with pytest.raises(ValueError):
        dumps(value)
    with pytest.raises(BadRequest) as exc:
        encode_data(value)
    assert exc.value.code == 107


def test_large_finite_numbers_pass() -> None:
    assert loads("1e308") == 1e308
    assert dumps(1e308) == b"1e+308"
    assert loads("-0.0") == 0.0


# -- nesting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_loads_accepts_max_depth(kind: str) -> None:
    assert depth_of(loads(nested(MAX_DEPTH, kind))) == MAX_DEPTH


@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_loads_refuses_beyond_max_depth(kind: str) -> None:
    with pytest.raises(ValueError, match="nested deeper"):
        loads(nested(MAX_DEPTH + 1, kind))
    with pytest.raises(ValueError, match="nested deeper"):
        loads(nested(MAX_DEPTH + 1, kind).encode())


def test_wide_but_shallow_is_fine() -> None:
    text = "[" + ",".join(["[[1]]"] * 1000) + "]"  # 3000 openers, depth 3
    assert len(loads(text)) == 1000


def test_loads_refuses_beyond_max_depth_mixed() -> None:
    text = '{"a":[' * 33 + "1" + "]}" * 33  # 66 levels
    with pytest.raises(ValueError, match="nested deeper"):
        loads(text)
    shallow = '{"a":[' * 32 + "1" + "]}" * 32  # 64 levels
    assert loads(shallow)["a"][0]["a"]


def test_loads_refuses_nesting_beyond_recursion_limit() -> None:
    with pytest.raises(ValueError):
        loads(nested(200_000))


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps(["[" * 500 + "{" * 500])
    assert loads(text) == ["[" * 500 + "{" * 500]


def test_dumps_refuses_nesting_beyond_recursion_limit() -> None:
    with pytest.raises(ValueError):
        dumps(nested_value(200_000))


def test_dumps_accepts_max_depth() -> None:
    assert loads(dumps(nested_value(MAX_DEPTH - 1))) == nested_value(MAX_DEPTH - 1)


def test_encode_data_refuses_what_loads_refuses() -> None:
    """MAX_DEPTH is "the deepest nesting accepted, in either direction", but
    dumps / encode_data accept any depth below the recursion limit. hubbub
    stores what encode_data makes and reads it back with loads (history
    replies, ClientInfo.to_json), which then fails. See the report: bug 2."""
    deep = nested_value(MAX_DEPTH + 1)
    with pytest.raises(BadRequest):
        encode_data(deep)


# -- Unicode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["\ud800", "a\udfffb", ["\ud83d"], {"k": "\udc00"}, {"\ud800": 1}],
                         ids=["high", "low-inside", "in-list", "in-value", "in-key"])
def test_dumps_refuses_lone_surrogate(value: Any) -> None:
    with pytest.raises(ValueError, match="surrogate"):
        dumps(value)
    with pytest.raises(BadRequest) as exc:
        encode_data(value)
    assert exc.value.code == 107 and not exc.value.temporary


def test_surrogate_pair_is_fine() -> None:
    assert dumps("\U0001f600") == b'"' + "\U0001f600".encode() + b'"'
    assert loads('"\\ud83d\\ude00"') == "\U0001f600"


def test_loads_accepts_escaped_lone_surrogate() -> None:
    assert loads('"\\ud800"') == "\ud800"  # grammatical JSON; validators refuse it where it matters


def test_output_is_compact_utf8() -> None:
    out = dumps({"a": [1, 2], "b": "é€😀", "c": None, "d": True})
    assert out == '{"a":[1,2],"b":"é€😀","c":null,"d":true}'.encode()
    assert b"\\u" not in out
    assert dumps_str({"x": "é"}) == '{"x":"é"}'


def test_dumps_control_characters_escaped() -> None:
    assert dumps("a\nb\x00") == b'"a\\nb\\u0000"'


@pytest.mark.parametrize("data", [b"\xff", b'"\xc3"', b'{"a":"\xed\xa0\x80"}', bytearray(b"\x80")],
                         ids=["ff", "truncated", "encoded-surrogate", "bytearray"])
def test_loads_refuses_bytes_not_utf8(data: bytes) -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        loads(data)


def test_loads_bytes_and_bytearray() -> None:
    assert loads(b'{"a":"\xc3\xa9"}') == {"a": "é"}
    assert loads(bytearray(b"[1]")) == [1]


@pytest.mark.parametrize("text", ["", "   ", "{", "[1,]", "{'a':1}", "01", "1 2", "undefined"])
def test_loads_refuses_invalid_json(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", {(1, 2): 3}])
def test_dumps_refuses_non_json_types_as_value_error(value: Any) -> None:
    with pytest.raises(ValueError):
        dumps(value)
    with pytest.raises(BadRequest):
        encode_data(value)


def test_one_line_keeps_the_value_and_drops_line_breaks() -> None:
    from hubbub.strictjson import loads, one_line

    text = b'{"a":\r\n1, "b": ["x\\ny", 2]\n}'
    assert b"\n" not in one_line(text) and b"\r" not in one_line(text)
    assert loads(one_line(text)) == loads(text) == {"a": 1, "b": ["x\ny", 2]}
    plain = b'{"a":1}'
    assert one_line(plain) is plain  # no copy when there is nothing to change
