"""permessage-deflate (RFC 7692) for the frames hubbub writes itself, compressed once.

A connection that negotiated permessage-deflate (always with ``server_no_context_takeover``,
see :func:`extension_factories`) gets the shared :class:`DeflateFrames` of its server's
settings as its ``frames``: every outgoing message is compressed alone, so the bytes of one
publication are the same for every such connection and are made once per codec and framing
(the server keys its wires on the encoder's type). Incoming messages are decompressed per
connection by websockets' own extension, bounded by ``max_message_size`` (1009 past it).

See ``docs/design.md``, "The write path".
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from websockets.extensions import Extension, ServerExtensionFactory
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory

#: what a sync or full flush ends with, and RFC 7692 7.2.1 has the sender drop
_FLUSH_TAIL = b"\x00\x00\xff\xff"
_FIN = 0x80
_RSV1 = 0x40
_TEXT = 0x1
_BINARY = 0x2


def _header(first: int, size: int) -> bytes:
    """A server (unmasked) frame header: ``first`` byte (FIN, RSV bits, opcode), payload ``size``."""
    if size < 126:
        return bytes((first, size))
    if size < 65536:
        return struct.pack("!BBH", first, 126, size)
    return struct.pack("!BBQ", first, 127, size)


class DeflateFrames:
    """Encodes unmasked server frames, compressing each message alone
    (a :class:`~hubbub.outbox.FrameEncoder`).

    A message of at least ``min_size`` bytes goes as one frame with RSV1 set and its
    payload raw-deflated with the trailing ``00 00 ff ff`` removed (RFC 7692 7.2.1); a
    smaller one goes uncompressed (RSV1 clear), which the extension allows per message.
    Control frames never pass here. One deflate stream serves every message: each
    message ends with a full flush, which empties the compressor's window, so no message
    refers to another and each decompresses alone (what ``server_no_context_takeover``
    promises the client); this avoids setting up a compressor (about 256 KiB) per message.

    One instance is shared by every connection of a server that negotiated compression
    (:func:`deflate_frames`), so a publication is compressed once for all of them.

    A client may ask for a smaller window (``server_max_window_bits``, 9 to 15): each
    window size has its own subclass (:func:`deflate_frames`), since the server's wires
    and :func:`hubbub.endpoint.broadcast` share frames per encoder *type*, and bytes
    compressed with a 32 KiB window cannot be inflated with a smaller one.

    Args:
        level: zlib compression level, 1 (fastest) to 9 (smallest).
        min_size: payloads shorter than this (bytes) are sent uncompressed.
    """

    __slots__ = ("level", "min_size", "compressions", "_compressor")

    #: the deflate window, as ``server_max_window_bits`` (9-15): set per subclass
    window_bits = 15

    #: whole frames, so frames of one connection may be written back to back (FrameBatch)
    joinable = True

    def __init__(self, level: int, min_size: int) -> None:
        self.level = level
        self.min_size = min_size
        #: messages compressed so far (tests and benchmarks count encode-once with it)
        self.compressions = 0
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -self.window_bits)

    def text(self, payload: bytes) -> bytes:
        return self._frame(_TEXT, payload)

    def binary(self, payload: bytes) -> bytes:
        return self._frame(_BINARY, payload)

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        if len(payload) < self.min_size:
            return _header(_FIN | opcode, len(payload)) + payload
        compressor = self._compressor
        data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
        if data.endswith(_FLUSH_TAIL):
            data = data[:-4]
        self.compressions += 1
        return _header(_FIN | _RSV1 | opcode, len(data)) + data


#: one encoder per (level, min_size, window bits): every connection of those settings shares it
_SHARED: dict[tuple[int, int, int], DeflateFrames] = {}
#: the encoder type of each window size (15: DeflateFrames itself)
_TYPES: dict[int, type[DeflateFrames]] = {15: DeflateFrames}


def deflate_frames(level: int, min_size: int, window_bits: int = 15) -> DeflateFrames:
    """The shared :class:`DeflateFrames` for ``level``, ``min_size`` and ``window_bits``
    (9 to 15; made once, of a type of its own per window size).

    Raises:
        ValueError: ``window_bits`` is not 9 to 15.
    """
    key = (level, min_size, window_bits)
    frames = _SHARED.get(key)
    if frames is None:
        if not 9 <= window_bits <= 15:
            raise ValueError(f"window_bits must be 9-15, got {window_bits}")
        kind = _TYPES.get(window_bits)
        if kind is None:
            kind = _TYPES[window_bits] = type(f"DeflateFrames{window_bits}", (DeflateFrames,),
                                              {"__slots__": (), "window_bits": window_bits})
        frames = _SHARED[key] = kind(level, min_size)
    return frames


def negotiated_frames(extensions: Sequence[Extension], level: int, min_size: int) -> DeflateFrames | None:
    """The shared encoder for the extensions websockets agreed on (``ServerProtocol.
    process_extensions``), or None when permessage-deflate is not among them."""
    for extension in extensions:
        if isinstance(extension, PerMessageDeflate):
            return deflate_frames(level, min_size, extension.local_max_window_bits)
    return None


def extension_factories() -> Sequence[ServerExtensionFactory]:
    """What websockets' ``ServerProtocol`` is offered to negotiate: permessage-deflate
    with ``server_no_context_takeover`` (required of our side: each message is compressed
    alone, see :class:`DeflateFrames`) and ``client_no_context_takeover`` (asked of the
    client, as Centrifugo's server does: no inflate window is kept per idle connection).
    A client's ``server_max_window_bits`` is honoured (:func:`negotiated_frames`).
    websockets inflates incoming messages with it, within ``max_size``."""
    return _FACTORIES


_FACTORIES: Sequence[ServerExtensionFactory] = (
    ServerPerMessageDeflateFactory(server_no_context_takeover=True, client_no_context_takeover=True),
)

__all__ = ["DeflateFrames", "deflate_frames", "extension_factories", "negotiated_frames"]
