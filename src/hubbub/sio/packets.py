"""Socket.IO v5 packets (sans-I/O): encoding, decoding, and binary attachments.

Source: the Socket.IO protocol, v5 (github.com/socketio/socket.io-protocol, ``README.md``).
A packet is one Engine.IO message::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]

with types ``0`` CONNECT, ``1`` DISCONNECT, ``2`` EVENT, ``3`` ACK, ``4`` CONNECT_ERROR,
``5`` BINARY_EVENT, ``6`` BINARY_ACK. The namespace is written only when it is not ``/``.
A binary packet's data holds ``{"_placeholder": true, "num": N}`` where its N-th binary
attachment goes; the attachments follow as binary Engine.IO messages.

:class:`Decoder` turns a client's messages into packets, bounded: at most
``max_attachments`` attachments per packet, and a binary packet waiting for its
attachments blocks nothing else (its owner times it out).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final

from ..strictjson import dumps, loads

__all__ = ["PacketError", "PacketType", "SocketIOPacket", "Decoder", "encode", "has_binary", "reconstruct"]


class PacketType(enum.IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


#: Events a client may not emit: the client library's own (socket.io ``socket.ts``, ``RESERVED_EVENTS``).
RESERVED_EVENTS: Final = frozenset(("connect", "connect_error", "disconnect", "disconnecting",
                                    "newListener", "removeListener"))

#: The longest ack id accepted (digits): JavaScript's safe integers.
_MAX_ID_DIGITS = 15


class PacketError(ValueError):
    """A malformed Socket.IO packet (the session closes the connection)."""


@dataclass(slots=True)
class SocketIOPacket:
    """One decoded packet.

    Attributes:
        type: the packet type.
        namespace: ``"/"`` or ``"/name"``.
        data: the JSON data (``None`` when absent), attachments put in place.
        id: the ack id, or ``None``.
        attachments: how many binary attachments are still expected.
    """

    type: PacketType
    namespace: str = "/"
    data: Any = None
    id: int | None = None
    attachments: int = 0
    buffers: list[bytes] = field(default_factory=list)


def has_binary(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` holds ``bytes`` somewhere (lists, tuples, dicts)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    if depth > 32:
        return False
    if isinstance(value, (list, tuple)):
        return any(has_binary(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return any(has_binary(item, depth + 1) for item in value.values())
    return False


def _deconstruct(value: Any, buffers: list[bytes]) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        buffers.append(bytes(value))
        return {"_placeholder": True, "num": len(buffers) - 1}
    if isinstance(value, (list, tuple)):
        return [_deconstruct(item, buffers) for item in value]
    if isinstance(value, dict):
        return {key: _deconstruct(item, buffers) for key, item in value.items()}
    return value


def reconstruct(value: Any, buffers: list[bytes]) -> Any:
    """``value`` with each ``{"_placeholder": true, "num": N}`` replaced by ``buffers[N]``.

    Raises:
        PacketError: a placeholder whose ``num`` is out of range.
    """
    if isinstance(value, list):
        return [reconstruct(item, buffers) for item in value]
    if isinstance(value, dict):
        if value.get("_placeholder") is True and len(value) == 2:
            num = value.get("num")
            if type(num) is not int or not 0 <= num < len(buffers):
                raise PacketError("attachment placeholder out of range")
            return buffers[num]
        return {key: reconstruct(item, buffers) for key, item in value.items()}
    return value


def encode(type: PacketType, namespace: str = "/", data: Any = None, id: int | None = None) -> list[bytes]:
    """The messages of one packet: its text (without the Engine.IO type digit), then its
    binary attachments. ``data`` holding ``bytes`` makes an EVENT a BINARY_EVENT and an ACK
    a BINARY_ACK.

    Raises:
        ValueError: ``data`` is not JSON (NaN, a lone surrogate, another type).
    """
    buffers: list[bytes] = []
    if data is not None and type in (PacketType.EVENT, PacketType.ACK) and has_binary(data):
        data = _deconstruct(data, buffers)
        type = PacketType.BINARY_EVENT if type is PacketType.EVENT else PacketType.BINARY_ACK
    head = str(int(type))
    if buffers:
        head += f"{len(buffers)}-"
    if namespace != "/":
        head += namespace + ","
    if id is not None:
        head += str(id)
    text = head.encode()
    if data is not None:
        text += dumps(data)
    return [text, *buffers]


def decode_text(text: bytes, max_attachments: int) -> SocketIOPacket:
    """Parse one text packet (its Engine.IO type digit removed).

    Raises:
        PacketError: an unknown type, a malformed head, JSON that does not parse, data of
            the wrong shape for the type, or more than ``max_attachments`` attachments.
    """
    if not text or not 0x30 <= text[0] <= 0x36:
        raise PacketError("unknown packet type")
    ptype = PacketType(text[0] - 0x30)
    pos, end = 1, len(text)
    attachments = 0
    if ptype in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
        dash = text.find(b"-", pos, pos + 8)
        if dash < 0 or not text[pos:dash].isdigit():
            raise PacketError("malformed attachment count")
        attachments = int(text[pos:dash])
        if attachments > max_attachments:
            raise PacketError(f"more than {max_attachments} attachments")
        pos = dash + 1
    namespace = "/"
    if pos < end and text[pos] == 0x2F:  # "/"
        comma = text.find(b",", pos)
        stop = end if comma < 0 else comma
        try:
            namespace = text[pos:stop].decode("utf-8")
        except UnicodeDecodeError:
            raise PacketError("namespace is not UTF-8") from None
        if not namespace.isprintable() or len(namespace) > 255:
            raise PacketError("malformed namespace")
        pos = end if comma < 0 else comma + 1
    ack_id = None
    digits = pos
    while digits < end and 0x30 <= text[digits] <= 0x39:
        digits += 1
    if digits > pos:
        if digits - pos > _MAX_ID_DIGITS:
            raise PacketError("ack id too long")
        ack_id = int(text[pos:digits])
        pos = digits
    data = None
    if pos < end:
        try:
            data = loads(text[pos:])
        except ValueError:
            raise PacketError("malformed JSON data") from None
    _check_shape(ptype, data, ack_id)
    return SocketIOPacket(ptype, namespace, data, ack_id, attachments)


def _check_shape(ptype: PacketType, data: Any, ack_id: int | None) -> None:
    """What socket.io-parser's ``isPayloadValid`` accepts, for packets a client sends."""
    if ptype is PacketType.CONNECT:
        ok = data is None or isinstance(data, dict)
    elif ptype is PacketType.DISCONNECT:
        ok = data is None
    elif ptype in (PacketType.EVENT, PacketType.BINARY_EVENT):
        ok = isinstance(data, list) and bool(data) and isinstance(data[0], (str, int)) and not isinstance(data[0], bool)
    elif ptype in (PacketType.ACK, PacketType.BINARY_ACK):
        ok = isinstance(data, list) and ack_id is not None
    else:  # CONNECT_ERROR comes from servers only
        ok = False
    if not ok:
        raise PacketError(f"invalid {ptype.name} packet")


class Decoder:
    """Decodes one client's messages into packets, putting binary attachments in place.

    Args:
        max_attachments: attachments one binary packet may announce.
        max_attachment_bytes: bytes all attachments of one packet may hold.
    """

    __slots__ = ("max_attachments", "max_attachment_bytes", "pending", "_size")

    def __init__(self, max_attachments: int, max_attachment_bytes: int) -> None:
        self.max_attachments = max_attachments
        self.max_attachment_bytes = max_attachment_bytes
        #: a binary packet waiting for attachments
        self.pending: SocketIOPacket | None = None
        self._size = 0

    def text(self, text: bytes) -> SocketIOPacket | None:
        """A text message: the packet, or ``None`` if it waits for attachments.

        Raises:
            PacketError: malformed, or a text packet while attachments are expected.
        """
        if self.pending is not None:
            raise PacketError("text packet while binary attachments are expected")
        packet = decode_text(text, self.max_attachments)
        if packet.attachments:
            self.pending, self._size = packet, 0
            return None
        if packet.type in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
            packet.data = reconstruct(packet.data, [])
        return packet

    def binary(self, data: bytes) -> SocketIOPacket | None:
        """A binary message: the completed packet, or ``None`` while more are expected.

        Raises:
            PacketError: no binary packet expects it, or the attachments exceed
                ``max_attachment_bytes``.
        """
        packet = self.pending
        if packet is None:
            raise PacketError("unexpected binary attachment")
        self._size += len(data)
        if self._size > self.max_attachment_bytes:
            self.pending = None
            raise PacketError("attachments too large")
        packet.buffers.append(data)
        if len(packet.buffers) < packet.attachments:
            return None
        self.pending = None
        packet.data = reconstruct(packet.data, packet.buffers)
        packet.buffers = []
        packet.attachments = 0
        return packet
