"""Framings of streaming HTTP responses, and the outbox of a session on a stream.

A *framing* says how one message becomes body bytes (:class:`StreamFraming`,
a :class:`~hubbub.outbox.FrameEncoder`): :class:`SSEFrames` (Server-Sent
Events) and :class:`LineFrames` (newline- or varint-delimited messages), each
chunked for HTTP/1.1 or not. :class:`StreamOut` is the
:class:`~hubbub.outbox.Outbox` of a session on a stream. See
``docs/design.md``, "Streaming transports".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .outbox import FrameBatch
from .stats import Stats

__all__ = ["LINES", "SSE", "Farewell", "LineFrames", "SSEFrames", "StreamFraming", "StreamOut", "StreamTransport"]


def _chunk(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body)


def _data_lines(payload: bytes) -> bytes:
    if b"\n" not in payload and b"\r" not in payload:
        return b"data: " + payload + b"\n"
    return b"".join(b"data: " + line + b"\n" for line in payload.splitlines()) or b"data: \n"


class StreamFraming(Protocol):
    """How messages become the body bytes of a stream (a
    :class:`~hubbub.outbox.FrameEncoder` with a keep-alive and last words)."""

    joinable: bool

    def text(self, payload: bytes) -> bytes: ...

    def binary(self, payload: bytes) -> bytes: ...

    def message(self, payload: bytes, event: bytes | None = None) -> bytes:
        """One message; ``event`` names it where the framing can (SSE's ``event:``)."""
        ...

    @property
    def keepalive(self) -> bytes:
        """What keeps an idle stream open (``b""``: nothing)."""
        ...


class SSEFrames:
    """Server-Sent Events (WHATWG HTML, "Server-sent events"): each message
    is one event, a ``data:`` field per line and a blank line.

    Args:
        chunked: wrap each event in an HTTP/1.1 chunk.
    """

    __slots__ = ("chunked",)

    joinable = True

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked

    def raw(self, body: bytes) -> bytes:
        """``body`` as it is (a chunk when chunked)."""
        return _chunk(body) if self.chunked else body

    def event(self, data: bytes, *, id: bytes | None = None, event: bytes | None = None) -> bytes:
        """One event; ``id`` and ``event`` name its ``id:`` and ``event:`` fields."""
        head = b""
        if event is not None:
            head = b"event: " + event + b"\n"
        if id is not None:
            head += b"id: " + id + b"\n"
        return self.raw(head + _data_lines(data) + b"\n")

    def text(self, payload: bytes) -> bytes:
        return self.event(payload)

    def binary(self, payload: bytes) -> bytes:
        """Raises ValueError: SSE carries text only."""
        raise ValueError("SSE carries text only")

    def message(self, payload: bytes, event: bytes | None = None) -> bytes:
        return self.event(payload, event=event)

    @property
    def keepalive(self) -> bytes:
        """A comment: keeps an idle stream open through proxies."""
        return self.raw(b":\n\n")


class LineFrames:
    """Newline-delimited text messages; binary messages as the codec made
    them (Protobuf: varint-length-delimited, as in its WebSocket frames).

    Args:
        chunked: wrap each message in an HTTP/1.1 chunk.
    """

    __slots__ = ("chunked",)

    joinable = True

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked

    def text(self, payload: bytes) -> bytes:
        body = payload + b"\n"
        return _chunk(body) if self.chunked else body

    def binary(self, payload: bytes) -> bytes:
        return _chunk(payload) if self.chunked else payload

    def message(self, payload: bytes, event: bytes | None = None) -> bytes:
        return self.text(payload)

    @property
    def keepalive(self) -> bytes:
        """Nothing: line streams are kept alive by the protocol's own pings."""
        return b""


#: framings by ``chunked`` (shared by every stream, so wires are shared too)
SSE = {True: SSEFrames(True), False: SSEFrames(False)}
LINES = {True: LineFrames(True), False: LineFrames(False)}


class StreamTransport(Protocol):
    """What a stream needs from the connection that carries it (hubbub's
    ``Connection``, the ASGI adapter's ``ASGIStream``): its bounded writer,
    the node's counters, and the start and end of the response."""

    open: bool
    stats: Stats

    @property
    def stream_chunked(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def deliver(self, frame: bytes | FrameBatch) -> None: ...

    def begin_stream(self, session: Any, headers: list[tuple[str, str]]) -> None: ...

    def end_stream(self, tail: bytes = b"") -> None: ...


#: A session's last words on a stream: ``(close code, reason) -> message payload``.
Farewell = Callable[[int, str], bytes]


class StreamOut:
    """The :class:`~hubbub.outbox.Outbox` of a session on a stream: messages
    framed by ``frames`` into the connection's writer (bounded).

    Args:
        transport: the connection carrying the stream.
        frames: its framing.
        farewell: the session's last words for a close code and reason (a
            ``disconnect`` push, a ``disconnect`` event's data).
        farewell_event: the SSE event name of the last words (``None``: a plain message).

    ``close(code, reason)`` sends the last words, counts the disconnect and ends the response.
    """

    __slots__ = ("transport", "frames", "deliver", "farewell", "farewell_event", "_closed")

    def __init__(self, transport: StreamTransport, frames: StreamFraming, farewell: Farewell, *,
                 farewell_event: bytes | None = None) -> None:
        self.transport = transport
        self.frames = frames
        #: the connection's own: the fan-out queues to it with no call in between
        self.deliver = transport.deliver
        self.farewell = farewell
        self.farewell_event = farewell_event
        self._closed = False

    @property
    def open(self) -> bool:
        """Whether output is still accepted (the connection is open and the stream not closed)."""
        return self.transport.open and not self._closed

    def send_text(self, payload: bytes) -> None:
        if self.open:
            self.transport.write(self.frames.text(payload))

    def send_binary(self, payload: bytes) -> None:
        if self.open:
            self.transport.write(self.frames.binary(payload))

    def send_ping(self) -> None:
        keepalive = self.frames.keepalive
        if self.open and keepalive:
            self.transport.write(keepalive)

    def close(self, code: int, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        transport = self.transport
        transport.stats.disconnects[code] += 1
        transport.end_stream(self.frames.message(self.farewell(code, reason), self.farewell_event))
