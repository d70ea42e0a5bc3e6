"""Varint-delimited Protobuf frames as the Centrifugo SDKs write and read them
(the protocol's Protobuf framing), for tests that speak it with the SDK's own
generated classes (``centrifuge.protocol.client_pb2``), not hubbub's."""

from __future__ import annotations

from typing import Any


def varint(n: int) -> bytes:
    """``n`` as a Protobuf varint."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def frame(*commands: Any) -> bytes:
    """Commands (SDK messages) as one frame: each prefixed with its length."""
    return b"".join(varint(c.ByteSize()) + c.SerializeToString() for c in commands)


def read_replies(payload: bytes, reply: type) -> list[Any]:
    """The ``reply`` messages (the SDK's ``Reply`` class) of one frame, in order."""
    out, pos = [], 0
    while pos < len(payload):
        n, shift = 0, 0
        while True:
            byte = payload[pos]
            pos += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        message = reply()
        message.ParseFromString(payload[pos:pos + n])
        out.append(message)
        pos += n
    return out
