"""The contract between the server and a client's connection: what a transport
(:class:`hubbub.connection.Connection` on hubbub's own server,
:class:`hubbub.asgi.ASGIConnection` and its streams under another server) offers the
server, what the server offers it, and what either needs of the session behind it.

Declared here, once, so that the server, the transports and the sessions meet through
types and not through ``getattr`` probes (docs/design.md, "Choke points").
"""

from __future__ import annotations

from typing import Any, Protocol

from .config import Config
from .core import HandshakeDecision, Refusal
from .http import HTTPRequest, HTTPResponse
from .outbox import FrameEncoder, Outbox
from .stats import Stats
from .writer import Flusher


class WebSocketSession(Protocol):
    """What a transport needs from the session behind it (a
    :class:`~hubbub.core.ClientCore` subclass): a WebSocket endpoint's session, or the
    session that holds a streamed HTTP response."""

    closed: bool
    #: whether the client has authenticated (a protocol session: its ``connect`` command)
    connected: bool
    #: whether the client must authenticate after the transport opened (the protocol's
    #: ``connect`` command), within ``connect_timeout``; other sessions decide at the handshake
    awaits_connect: bool
    #: the WebSocket subprotocol to name in the ``101`` (``None``: none)
    subprotocol: str | None
    #: whether a text message ``{}`` is a pong, answered without a task (the protocol's JSON pong)
    inline_pong: bool
    #: what the node's counters call it: ``"protocol"``, ``"relay"`` or ``"endpoint"``
    kind: str

    def handshake_nowait(self) -> HandshakeDecision:
        """``None`` to accept the upgrade, ``(status, reason)`` to refuse it,
        :data:`~hubbub.core.PENDING` when :meth:`handshake` must be awaited."""
        ...

    async def handshake(self) -> Refusal | None: ...

    async def open(self) -> None: ...

    def open_nowait(self) -> bool:
        """Open at once if nothing must be awaited; False: ``open`` must run."""
        ...

    async def handle_message(self, payload: bytes, binary: bool) -> None: ...

    @property
    def expires(self) -> bool:
        """Whether the client's token has an expiry for the sweep to check."""
        ...

    def check_expiry(self, now: float) -> None:
        """Close (3005) if the token expired by ``now`` (unix seconds)."""
        ...

    def ping(self) -> None: ...

    def pong(self) -> None: ...

    def check_pong(self) -> None: ...

    def disconnect(self, code: int, reason: str | None = None) -> None: ...

    def abandon(self) -> None: ...

    def on_closed(self) -> None: ...


class ClientTransport(Protocol):
    """A client's connection as the server sees it, whoever frames its bytes: what the
    shared timers (ping, sweep), the counters and shutdown use. Its output is the bounded
    :class:`~hubbub.writer.Writer`; the session writes to it as an
    :class:`~hubbub.outbox.Outbox` (a WebSocket connection itself, or the stream's
    :class:`~hubbub.framing.StreamOut`)."""

    #: the session behind it, once there is one
    session: WebSocketSession | None
    #: the slot of the server's ping wheel that pings it (set by the server)
    ping_slot: int
    #: ``time.monotonic()`` by which its client must have connected (``connect_timeout``)
    deadline: float

    @property
    def open(self) -> bool:
        """Whether it still accepts output."""
        ...

    @property
    def frames(self) -> FrameEncoder:
        """How pushes are framed for it (one encoder shared by every connection of its kind)."""
        ...

    @property
    def pending(self) -> int:
        """Output bytes queued and not yet written."""
        ...

    @property
    def idle(self) -> bool:
        """Whether it is plain HTTP with no request being served (the sweep may drop it)."""
        ...

    def close(self, code: int, reason: str = "") -> None:
        """End it as gracefully as its kind allows (a close frame, the end of a stream)."""
        ...

    def abort(self) -> None:
        """Drop the connection at once."""
        ...


class WebSocketTransport(ClientTransport, Outbox, Protocol):
    """A WebSocket connection: a :class:`ClientTransport` whose session writes to it directly."""


class Host(Protocol):
    """What a transport needs from the server that accepted it (:class:`hubbub.server.Server`)."""

    config: Config
    stats: Stats
    origins: Any
    closing: bool

    @property
    def flusher(self) -> Flusher:
        """The shared flusher of the running node (one ``writelines`` per connection per iteration)."""
        ...

    def connection_opened(self, conn: ClientTransport) -> None: ...

    def connection_closed(self, conn: ClientTransport) -> None: ...

    def websocket_opened(self, conn: ClientTransport) -> None: ...

    def stream_opened(self, conn: ClientTransport) -> None:
        """``conn`` answers its request with a stream held by a session."""
        ...

    def websocket_session(self, conn: WebSocketTransport, request: HTTPRequest) -> WebSocketSession | Refusal:
        """The session for an upgrade, or a refusal ``(status, reason)``."""
        ...

    async def handle_http(self, request: HTTPRequest) -> HTTPResponse: ...


__all__ = ["ClientTransport", "Host", "WebSocketSession", "WebSocketTransport"]
