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

from websockets.exceptions import NegotiationError
from websockets.extensions import Extension, ServerExtensionFactory
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.typing import ExtensionParameter

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

    Args:
        level: zlib compression level, 1 (fastest) to 9 (smallest).
        min_size: payloads shorter than this (bytes) are sent uncompressed.
    """

    __slots__ = ("level", "min_size", "compressions", "_compressor")

    #: whole frames, so frames of one connection may be written back to back (FrameBatch)
    joinable = True

    def __init__(self, level: int, min_size: int) -> None:
        self.level = level
        self.min_size = min_size
        #: messages compressed so far (tests and benchmarks count encode-once with it)
        self.compressions = 0
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -15)

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


#: one encoder per (level, min_size): every connection of those settings shares it
_SHARED: dict[tuple[int, int], DeflateFrames] = {}


def deflate_frames(level: int, min_size: int) -> DeflateFrames:
    """The shared :class:`DeflateFrames` for ``level`` and ``min_size`` (made once)."""
    key = (level, min_size)
    frames = _SHARED.get(key)
    if frames is None:
        frames = _SHARED[key] = DeflateFrames(level, min_size)
    return frames


def extension_factories() -> Sequence[ServerExtensionFactory]:
    """What websockets' ``ServerProtocol`` is offered to negotiate: permessage-deflate
    with ``server_no_context_takeover`` (required of our side: each message is compressed
    alone, see :class:`DeflateFrames`) and ``client_no_context_takeover`` (asked of the
    client, as Centrifugo's server does: no inflate window is kept per idle connection).
    websockets inflates incoming messages with it, within ``max_size``."""
    return _FACTORIES


class _FullWindowDeflateFactory(ServerPerMessageDeflateFactory):
    """websockets' factory, declining an offer that limits our window
    (``server_max_window_bits`` below 15): :class:`DeflateFrames` compresses with a
    32 KiB window, shared by every connection. The client then gets no compression
    (or its next offer)."""

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension],
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, extension = super().process_request_params(params, accepted_extensions)
        if extension.local_max_window_bits != 15:
            raise NegotiationError("hubbub compresses with server_max_window_bits=15 only")
        return response, extension


_FACTORIES: Sequence[ServerExtensionFactory] = (
    _FullWindowDeflateFactory(server_no_context_takeover=True, client_no_context_takeover=True),
)

__all__ = ["DeflateFrames", "deflate_frames", "extension_factories"]
