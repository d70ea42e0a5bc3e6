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

    #: Whether the connection still accepts output.
    open: bool

    def send_text(self, payload: bytes) -> None:
        """Queue one text message (``payload`` is UTF-8)."""

    def send_binary(self, payload: bytes) -> None:
        """Queue one binary message."""

    def deliver(self, frame: bytes) -> None:
        """Queue bytes already encoded by a :class:`~hubbub.hub.Wire` (a whole frame)."""

    def send_ping(self) -> None:
        """Queue a WebSocket ping frame."""

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with this close code; later output is dropped."""


class FrameEncoder(Protocol):
    """Encodes one whole WebSocket message as frame bytes, once, for many connections."""

    def text(self, payload: bytes) -> bytes: ...

    def binary(self, payload: bytes) -> bytes: ...
