"""What a session needs from its connection: the :class:`Outbox` interface.

Sessions (protocol, relay, framework endpoints) are written against this
interface, never against sockets, so they are tested without I/O. The
WebSocket connection in :mod:`hubbub.connection` implements it.
"""

from __future__ import annotations

from typing import Protocol


class Outbox(Protocol):
    """A connection's output side.

    None of these methods block or await: they queue, and the connection
    writes its queue once per event-loop iteration.
    """

    @property
    def open(self) -> bool:
        """Whether the connection still accepts output."""
        ...

    def send_text(self, payload: bytes) -> None:
        """Queue one text message (``payload`` is UTF-8)."""

    def send_binary(self, payload: bytes) -> None:
        """Queue one binary message."""

    def deliver(self, frame: bytes | FrameBatch) -> None:
        """Queue bytes already encoded by a :class:`~hubbub.hub.Wire` (a whole
        frame), or a :class:`FrameBatch` of them."""

    def send_ping(self) -> None:
        """Queue a WebSocket ping frame."""

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with this close code; later output is dropped."""


class FrameBatch:
    """Frames of one channel published during one event-loop iteration.

    The hub queues the batch once to every subscriber when a channel's first
    publication of the iteration arrives, and appends the later ones to it: a
    burst of publications costs one queue operation per subscriber per
    iteration, not one per publication (docs/design.md, write-path rules 1 and 2). When the
    first connection writes it, :meth:`join` makes the bytes once and closes
    the batch; the hub starts a new one for later publications.
    """

    __slots__ = ("frames", "size", "_joined")

    def __init__(self, frame: bytes) -> None:
        self.frames = [frame]
        self.size = len(frame)
        self._joined: bytes | None = None

    @property
    def closed(self) -> bool:
        """Whether some connection has written it (no more appends)."""
        return self._joined is not None

    def append(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.size += len(frame)

    def join(self) -> bytes:
        """All frames as one bytes object, made once for every connection."""
        if self._joined is None:
            frames = self.frames
            self._joined = frames[0] if len(frames) == 1 else b"".join(frames)
            self.frames = []
        return self._joined

    def __len__(self) -> int:
        return self.size


class FrameEncoder(Protocol):
    """Encodes one whole WebSocket message as frame bytes, once, for many connections.

    ``joinable``: whether frames may be concatenated (see :class:`FrameBatch`).
    """

    joinable: bool

    def text(self, payload: bytes) -> bytes: ...

    def binary(self, payload: bytes) -> bytes: ...
