"""Engine.IO v4, the transport layer under Socket.IO: its packets and payloads (sans-I/O).

Source: the Engine.IO protocol, v4 (github.com/socketio/engine.io-protocol, ``README.md``):

- a packet is a type digit and its data: ``0`` open (the handshake's JSON), ``1`` close,
  ``2`` ping, ``3`` pong, ``4`` message, ``5`` upgrade, ``6`` noop; ``2probe``/``3probe``
  test a WebSocket before the upgrade;
- over WebSocket one packet is one message; a binary message is a message packet whose
  data is binary (no type digit);
- over HTTP long-polling a payload holds several packets separated by the record
  separator ``\\x1e``; a binary message travels as ``b`` and its base64.

Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

__all__ = [
    "BINARY", "CLOSE", "MESSAGE", "NOOP", "OPEN", "PING", "PONG", "PROBE", "RECORD_SEPARATOR", "UPGRADE",
    "EngineError", "Packet", "decode_payload", "encode_payload", "error_body",
]

OPEN: Final = b"0"
CLOSE: Final = b"1"
PING: Final = b"2"
PONG: Final = b"3"
MESSAGE: Final = b"4"
UPGRADE: Final = b"5"
NOOP: Final = b"6"
#: the data of the probe pings and pongs of an upgrade
PROBE: Final = b"probe"
#: separates packets in a long-polling payload
RECORD_SEPARATOR: Final = b"\x1e"
#: the prefix of a binary packet in a long-polling payload (base64 follows)
BINARY: Final = b"b"

#: Error codes of Engine.IO's HTTP answers (engine.io ``server.ts``, ``Server.errors``).
UNKNOWN_TRANSPORT = 0
UNKNOWN_SID = 1
BAD_HANDSHAKE_METHOD = 2
BAD_REQUEST = 3
FORBIDDEN = 4
UNSUPPORTED_PROTOCOL_VERSION = 5

_MESSAGES = {
    UNKNOWN_TRANSPORT: "Transport unknown",
    UNKNOWN_SID: "Session ID unknown",
    BAD_HANDSHAKE_METHOD: "Bad handshake method",
    BAD_REQUEST: "Bad request",
    FORBIDDEN: "Forbidden",
    UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


def error_body(code: int, message: str | None = None) -> dict[str, object]:
    """The JSON body of an Engine.IO HTTP error: ``{"code": N, "message": text}``."""
    return {"code": code, "message": message or _MESSAGES.get(code, "Bad request")}


class EngineError(ValueError):
    """A malformed Engine.IO packet or payload (the transport answers 400 or closes)."""


#: One packet: ``(payload, binary)``; a text packet's payload starts with its type digit,
#: a binary one is the message data alone.
Packet = tuple[bytes, bool]


def encode_payload(packets: list[Packet]) -> bytes:
    """The body of a long-polling GET answer: packets separated by ``\\x1e``, binary ones
    as ``b`` + base64."""
    if len(packets) == 1 and not packets[0][1]:
        return packets[0][0]
    return RECORD_SEPARATOR.join(BINARY + base64.b64encode(data) if binary else data for data, binary in packets)


def decode_payload(body: bytes, max_packets: int) -> list[Packet]:
    """The packets of a long-polling POST body.

    Raises:
        EngineError: an empty packet, a type that is not ``0``-``6``, bad base64,
            bytes that are not UTF-8, or more than ``max_packets`` packets.
    """
    if not body:
        raise EngineError("empty payload")
    parts = body.split(RECORD_SEPARATOR)
    if len(parts) > max_packets:
        raise EngineError("too many packets in one payload")
    out: list[Packet] = []
    for part in parts:
        if not part:
            raise EngineError("empty packet")
        if part[:1] == BINARY:
            try:
                out.append((base64.b64decode(part[1:], validate=True), True))
            except (binascii.Error, ValueError):
                raise EngineError("bad base64 in a binary packet") from None
            continue
        if not b"0" <= part[:1] <= b"6":
            raise EngineError("unknown packet type")
        try:
            part.decode("utf-8")
        except UnicodeDecodeError:
            raise EngineError("packet is not UTF-8") from None
        out.append((part, False))
    return out
