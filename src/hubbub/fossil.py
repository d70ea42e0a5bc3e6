"""Fossil deltas: the difference between two byte strings, as Centrifugo sends it.

The format is Fossil SCM's (fossil-scm.org ``www/delta_format.wiki``): a delta is

* the target's length as a base-64 integer, then ``\\n``;
* commands: ``N@O,`` copies ``N`` bytes of the source from offset ``O``, and
  ``N:`` followed by ``N`` bytes inserts those bytes;
* ``C;`` where ``C`` is the target's checksum (the sum of its bytes read as
  big-endian 32-bit words, the last one padded with zero bytes, modulo 2**32).

Integers are written most significant digit first in the alphabet
``0-9 A-Z _ a-z ~`` (digit values 0 to 63).

:func:`create` finds copies its own way (not Fossil's rolling hash, which costs
a Python loop turn per byte): the source is cut into 16-byte blocks looked up
by their bytes, a block found in the target is extended forwards by comparing
slices (bisection, so in C) and backwards byte by byte. Unchanged stretches are
therefore skipped at C speed, and the per-byte loop runs only where the target
differs. Copies never start or end inside a UTF-8 sequence, so the delta of
UTF-8 text is UTF-8 text itself, which the protocol's JSON format needs (it
sends a delta as a JSON string: centrifuge-js reads it back with
``TextEncoder``).

:func:`apply` checks everything a delta says (sizes, offsets, checksum) and
raises :class:`ValueError` for any inconsistency; hubbub itself only creates
deltas, :func:`apply` is for tests and tools.
"""

from __future__ import annotations

import sys
from array import array

__all__ = ["apply", "checksum", "create"]

#: the digits of the delta's integers, by value
_DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
_VALUES = {d: v for v, d in enumerate(_DIGITS)}

#: the block size (bytes) of the source index; copies shorter than this are not looked for
BLOCK = 16

#: the longest a UTF-8 sequence's tail (continuation bytes) can be
_MAX_TAIL = 3


def _int(n: int) -> bytes:
    """``n`` (>= 0) in the delta's base-64 digits."""
    if n == 0:
        return b"0"
    out = bytearray()
    while n:
        out.append(_DIGITS[n & 63])
        n >>= 6
    out.reverse()
    return bytes(out)


def checksum(data: bytes) -> int:
    """The Fossil checksum of ``data``: its big-endian 32-bit words summed modulo 2**32
    (a last partial word padded with zero bytes on the right)."""
    pad = -len(data) % 4
    words = array("I", data + b"\0" * pad if pad else data)
    if words.itemsize != 4:  # pragma: no cover - every platform CPython runs on has 4-byte unsigned int
        words = array("L", data + b"\0" * pad)
    if sys.byteorder == "little":
        words.byteswap()
    return sum(words) & 0xFFFFFFFF


def _common_prefix(a: bytes, ai: int, b: bytes, bi: int, limit: int) -> int:
    """How many bytes ``a[ai:]`` and ``b[bi:]`` have in common, at most ``limit``:
    slices compared with doubling, then bisection, so the byte loop is in C."""
    n = 0
    step = 64
    width = 0
    while n < limit:
        width = min(step, limit - n)
        if a[ai + n : ai + n + width] != b[bi + n : bi + n + width]:
            break
        n += width
        step <<= 1
    else:
        return n
    # the first difference lies in [n, n + width)
    while width > 1:
        half = width >> 1
        if a[ai + n : ai + n + half] == b[bi + n : bi + n + half]:
            n += half
            width -= half
        else:
            width = half
    return n


def _is_tail(byte: int) -> bool:
    """Whether ``byte`` continues a UTF-8 sequence (``10xxxxxx``)."""
    return byte & 0xC0 == 0x80


def create(source: bytes, target: bytes) -> bytes:
    """The Fossil delta that turns ``source`` into ``target`` (any bytes).

    The delta may be longer than ``target`` (nothing in common): the caller
    compares sizes and sends the target itself then, as Centrifugo does.
    """
    out = [_int(len(target)), b"\n"]
    len_src, len_tgt = len(source), len(target)
    lit = 0  # the first target byte not yet covered by a command
    if len_src >= BLOCK and len_tgt >= BLOCK:
        index: dict[bytes, int] = {}
        for i in range(len_src - len_src % BLOCK - BLOCK, -1, -BLOCK):
            index[source[i : i + BLOCK]] = i  # the first occurrence wins (lowest offset)
        get = index.get
        pos = 0
        last = len_tgt - BLOCK
        while pos <= last:
            src = get(target[pos : pos + BLOCK])
            if src is None:
                pos += 1
                continue
            # extend backwards over bytes not yet covered
            start, s = pos, src
            while start > lit and s > 0 and target[start - 1] == source[s - 1]:
                start -= 1
                s -= 1
            end = pos + BLOCK
            end += _common_prefix(source, src + BLOCK, target, end, min(len_src - src - BLOCK, len_tgt - end))
            # whole UTF-8 characters only: neither the copy nor the inserts around it cut one
            cut = 0
            while cut < _MAX_TAIL and start < end and _is_tail(target[start]):
                start += 1
                s += 1
                cut += 1
            cut = 0
            while cut < _MAX_TAIL and end < len_tgt and end > start and _is_tail(target[end]):
                end -= 1
                cut += 1
            count = end - start
            if count < BLOCK // 2:
                pos += 1
                continue
            if start > lit:
                out += (_int(start - lit), b":", target[lit:start])
            out += (_int(count), b"@", _int(s), b",")
            lit = pos = end
    if lit < len_tgt:
        out += (_int(len_tgt - lit), b":", target[lit:])
    out += (_int(checksum(target)), b";")
    return b"".join(out)


class _Reader:
    """Reads a delta: integers, operators, bytes."""

    __slots__ = ("delta", "pos")

    def __init__(self, delta: bytes) -> None:
        self.delta = delta
        self.pos = 0

    def integer(self) -> int:
        delta, pos, value = self.delta, self.pos, 0
        start = pos
        while pos < len(delta):
            digit = _VALUES.get(delta[pos])
            if digit is None:
                break
            value = (value << 6) | digit
            pos += 1
        if pos == start:
            raise ValueError(f"fossil delta: an integer expected at byte {start}")
        self.pos = pos
        return value

    def operator(self) -> int:
        if self.pos >= len(self.delta):
            raise ValueError("fossil delta: unterminated (no checksum)")
        op = self.delta[self.pos]
        self.pos += 1
        return op


def apply(source: bytes, delta: bytes) -> bytes:
    """The target that ``delta`` (made by :func:`create`, or by any Fossil encoder)
    makes of ``source``.

    Raises:
        ValueError: a malformed delta, one that reads outside ``source`` or
            itself, or whose output's size or checksum is not the one it declares.
    """
    reader = _Reader(delta)
    size = reader.integer()
    if reader.operator() != ord("\n"):
        raise ValueError("fossil delta: the size is not followed by a newline")
    out = bytearray()
    while True:
        count = reader.integer()
        op = reader.operator()
        if op == ord("@"):
            offset = reader.integer()
            if reader.operator() != ord(","):
                raise ValueError("fossil delta: a copy command not terminated by ','")
            if offset + count > len(source):
                raise ValueError("fossil delta: a copy past the end of the source")
            out += source[offset : offset + count]
        elif op == ord(":"):
            if reader.pos + count > len(delta):
                raise ValueError("fossil delta: an insert past the end of the delta")
            out += delta[reader.pos : reader.pos + count]
            reader.pos += count
        elif op == ord(";"):
            if len(out) != size:
                raise ValueError(f"fossil delta: {len(out)} bytes made, {size} declared")
            if checksum(bytes(out)) != count:
                raise ValueError("fossil delta: bad checksum")
            if reader.pos != len(delta):
                raise ValueError("fossil delta: bytes after the checksum")
            return bytes(out)
        else:
            raise ValueError(f"fossil delta: unknown operator {chr(op)!r}")
        if len(out) > size:
            raise ValueError("fossil delta: the output is larger than declared")
