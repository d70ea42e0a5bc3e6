"""Strict JSON: the one place where hubbub encodes and decodes JSON.

RFC 8259 as every client's parser accepts it: no NaN or Infinity (refused both
ways); nesting bounded (:func:`loads`: :data:`MAX_DEPTH`, :func:`dumps`: the
recursion limit); output valid UTF-8 (:func:`dumps` refuses lone surrogates,
which :func:`loads` accepts and :mod:`hubbub.validation` refuses where it
matters), compact, not ASCII-escaped. :func:`loads` and :func:`dumps` raise
:class:`ValueError`; :func:`encode_data` raises
:class:`~hubbub.errors.BadRequest` (107).

See ``docs/design.md``, "Choke points" (JSON).
"""

from __future__ import annotations

import json
from typing import Any

from .errors import BadRequest

#: Deepest nesting of arrays and objects accepted, in either direction.
MAX_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays and objects deeper than ``limit``
    (an explicit stack: no recursion, whatever the input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


def loads(data: str | bytes | bytearray) -> Any:
    """Parse one strict JSON document.

    Args:
        data: JSON text, or its UTF-8 bytes.

    Raises:
        ValueError: not UTF-8, not JSON, NaN or Infinity, nested deeper than
            :data:`MAX_DEPTH`.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not UTF-8") from None
    else:
        text = data
    try:
        value = _decode(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH}") from None
    # cannot be deeper than its number of openers: the walk runs only for big documents
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth_exceeds(value, MAX_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH}")
    return value


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON bytes.

    Raises:
        ValueError: NaN or Infinity, a lone surrogate, nesting beyond the
            recursion limit, or a value of a type JSON cannot hold
            (``TypeError`` is turned into ``ValueError``).
    """
    try:
        text = _encode(value)
    except RecursionError:
        raise ValueError("value nested too deeply for JSON") from None
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("string holds a lone surrogate") from None


def encode_data(value: Any) -> bytes:
    """Encode a JSON value that a client or an application gave as data.

    Raises:
        BadRequest: 107 "bad request" when :func:`dumps` refuses it, or it
            nests deeper than :data:`MAX_DEPTH` (so it can be read back).
    """
    try:
        data = dumps(value)
    except ValueError as exc:
        raise BadRequest(f"data is not valid JSON: {exc}") from None
    # what is stored must read back: the depth limit of loads applies here too
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _depth_exceeds(value, MAX_DEPTH):
        raise BadRequest(f"data is not valid JSON: nested deeper than {MAX_DEPTH}")
    return data


def one_line(data: bytes) -> bytes:
    """Valid JSON text ``data`` made safe for line framing: the same bytes when they hold no
    line break (one ``memchr``), else with every CR and LF turned into a space.

    In valid JSON a raw CR or LF can only be whitespace between tokens (RFC 8259 section 7:
    control characters inside strings are escaped), so the value is unchanged. JSON that
    enters the hub as bytes (a relay text message, a Protobuf client's ``data``) passes here,
    because JSON subscribers receive it embedded in newline-delimited replies (WebSocket
    JSON frames, ``http_stream``) and SSE ``data:`` lines, where a raw line break would split
    one push into two lines that do not parse.
    """
    if b"\n" in data or b"\r" in data:
        return data.replace(b"\r", b" ").replace(b"\n", b" ")
    return data


def dumps_str(value: Any) -> str:
    """:func:`dumps` as text (same errors)."""
    return dumps(value).decode("utf-8")
