"""The plain relay at ``/ws/{channel}``, as a sans-I/O session.

Every message a relay client sends is published to ``{channel}``, and every
publication reaches each relay client of the channel (the sender too, unless
``?echo=false``) as one WebSocket message: a relay message as it was sent (text
stays text, binary stays binary), any other publication as its JSON ``data`` in
a text message. What protocol subscribers see: ``docs/protobuf.md``;
authentication and refusals: ``docs/security.md``.

See ``docs/design.md``, "Choke points: one rule, one place" (``RelaySession``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping
from typing import Any

from .brokers.base import ClientInfo, Publication, StreamPosition
from .codes import DISCONNECT_REASONS, DisconnectCode, ErrorCode
from .config import NamespaceOptions
from .core import PENDING, ClientContext, ClientCore, HandshakeDecision, Refusal
from .errors import Disconnect, ProtocolError
from .outbox import FrameEncoder, Outbox
from .strictjson import dumps, loads, one_line

log = logging.getLogger("hubbub.relay")

_NO_TOKENS = ("", "")

#: Publishes of one relay client in flight at once on a pipelined broker
#: (Redis); past it the client's next message waits for the oldest, so reading
#: from its socket pauses (backpressure, not a buffer).
MAX_INFLIGHT = 1024


#: HTTP status of a refused handshake, by protocol error or disconnect code.
REFUSAL_STATUS: dict[int, int] = {
    DisconnectCode.INVALID_TOKEN: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    DisconnectCode.PERMISSION_DENIED: 403,
    ErrorCode.UNKNOWN_CHANNEL: 404,
    ErrorCode.BAD_REQUEST: 400,
    DisconnectCode.BAD_REQUEST: 400,
    DisconnectCode.CONNECTION_LIMIT: 429,
    ErrorCode.LIMIT_EXCEEDED: 429,
    ErrorCode.INTERNAL: 503,
}


#: Close code for a refusal, when the handshake is already answered.
_CLOSE_FOR_STATUS: dict[int, int] = {
    401: DisconnectCode.INVALID_TOKEN,
    403: DisconnectCode.PERMISSION_DENIED,
    400: DisconnectCode.BAD_REQUEST,
    404: DisconnectCode.BAD_REQUEST,
    429: DisconnectCode.CONNECTION_LIMIT,
    503: 1013,
}


def refusal(exc: ProtocolError | Disconnect) -> Refusal:
    """The HTTP refusal for an error raised by the client core."""
    if isinstance(exc, ProtocolError):
        return REFUSAL_STATUS.get(exc.code, 403), exc.message
    return REFUSAL_STATUS.get(exc.code, 403), exc.reason


def handshake_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The connection token of a handshake: ``Authorization: Bearer`` or ``?token=``."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return query.get("token", "")


class RelayWire:
    """Encodes publications for relay clients: the payload alone, one frame."""

    __slots__ = ("frames", "joinable")

    def __init__(self, frames: FrameEncoder) -> None:
        self.frames = frames
        self.joinable = frames.joinable

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        if pub.raw is None:
            return self.frames.text(pub.data)
        if pub.binary:
            return self.frames.binary(pub.raw)
        return self.frames.text(pub.raw)

    def encode_join(self, channel: str, info: ClientInfo) -> None:
        return None

    def encode_leave(self, channel: str, info: ClientInfo) -> None:
        return None


#: The first bytes a JSON text can start with (RFC 8259 2, after whitespace): text starting
#: otherwise is not JSON, without a parse attempt (a failed parse costs an exception).
_JSON_STARTS = frozenset(bytes([c]) for c in b'{["-0123456789tfn')


def relay_publication(payload: bytes, *, binary: bool) -> Publication:
    """The publication for one relay message (see the module docstring)."""
    if binary:
        return Publication(dumps(base64.b64encode(payload).decode()), raw=payload, binary=True)
    start = payload.lstrip(b" \t\r\n")[:1]
    if start and start in _JSON_STARTS:
        try:
            loads(payload)
        except ValueError:
            pass
        else:
            data = one_line(payload)  # JSON subscribers frame by lines; relay clients get what was sent
            return Publication(data, raw=None if data is payload else payload)
    # the connection checked UTF-8; text that is not JSON travels as a JSON string
    return Publication(dumps(payload.decode("utf-8", "replace")), raw=payload)


class RelaySession(ClientCore):
    """One relay client on ``/ws/{channel}``.

    Args:
        context: the node's shared :class:`~hubbub.core.ClientContext`.
        out: the connection's output.
        wire: the relay wire (shared by every relay connection).
        channel: the channel of the path.
        echo: whether the client receives its own messages.
        headers: the handshake's headers (lower-case names).
        query: the handshake's query parameters (``token``, ``sub_token``).
    """

    transport = "relay"
    kind = "relay"
    #: anonymous relay clients are not filed under user "" (memory per connection)
    register_anonymous = False

    __slots__ = ("channel", "echo", "subscribed", "_tokens", "_auth", "_inflight", "_room")

    def __init__(self, context: ClientContext, out: Outbox, wire: RelayWire, channel: str, *, echo: bool = True,
                 headers: dict[str, str] | None = None, query: Mapping[str, str] | None = None) -> None:
        super().__init__(context, out, wire, headers=headers)
        query = query or {}
        self.channel = channel
        self.echo = echo
        self.subscribed = False
        #: publishes in flight on a pipelined broker
        self._inflight = 0
        #: resolved when a publish in flight is answered (made when a message waits for room)
        self._room: asyncio.Future[None] | None = None
        #: (connection token, subscription token), until the handshake is decided
        self._tokens: tuple[str, str] | None = (
            (handshake_token(self.headers, query), query.get("sub_token", ""))
            if query or "authorization" in self.headers else _NO_TOKENS)
        #: (namespace, channel info) once authorized
        self._auth: tuple[NamespaceOptions, Any] | None = None

    # -- handshake: authenticate and authorize before 101 ----------------------------

    def handshake_nowait(self) -> HandshakeDecision:
        """Decide the handshake at once: ``None`` accepts, a :data:`Refusal`
        refuses, :data:`PENDING` means :meth:`handshake` must be awaited."""
        token, sub_token = self._tokens or ("", "")
        try:
            if not self.connected and self.authenticate_nowait(token) is None:
                return PENDING
            authorized = self.authorize_subscribe_nowait(self.channel, sub_token)
        except (ProtocolError, Disconnect) as exc:
            return refusal(exc)
        if authorized is None:
            return PENDING
        self._auth, self._tokens = authorized, None
        return None

    async def handshake(self) -> Refusal | None:
        """Decide the handshake, awaiting hooks and key lookups."""
        token, sub_token = self._tokens or ("", "")
        try:
            if not self.connected:
                await self.authenticate(token)
            self._auth = await self.authorize_subscribe(self.channel, sub_token)
        except (ProtocolError, Disconnect) as exc:
            return refusal(exc)
        self._tokens = None
        return None

    # -- open: subscribe ----------------------------------------------------------------

    async def open(self) -> None:
        """Subscribe to the channel. Closes the connection if that fails.

        Without a handshake first (a session driven directly, not by a
        connection) the handshake runs here, and a refusal is a close code:
        3500 for 401, 3507 for 403, 3501 for 400/404, 1013 for 503."""
        if self._auth is None:
            refused = await self.handshake()
            if refused is not None:
                status, reason = refused
                self.disconnect(_CLOSE_FOR_STATUS.get(status, DisconnectCode.PERMISSION_DENIED), reason)
                return
        assert self._auth is not None
        try:
            await self.join(self.channel, *self._auth)
        except (ProtocolError, Disconnect) as exc:
            self._refused(exc)
            return
        self._subscribed()

    def open_nowait(self) -> bool:
        """:meth:`open` without waiting, if the hub can subscribe at once;
        False means :meth:`open` must run."""
        assert self._auth is not None, "handshake first"
        try:
            if self.subscribe_nowait(self.channel, *self._auth) is None:
                return False
        except (ProtocolError, Disconnect) as exc:
            self._refused(exc)
            return True
        self._subscribed()
        return True

    def _subscribed(self) -> None:
        if self.closed:
            self.leave(self.channel)

    # -- messages -----------------------------------------------------------------------

    async def handle_message(self, payload: bytes, binary: bool) -> None:
        """Publish one message to the channel. A refused or failed publish
        closes the connection (the client cannot tell which message was lost
        otherwise): 3507 not allowed, 3013 over the command rate, 1013 broker
        failure (try again), 3501 invalid data."""
        if self.closed:
            return
        self.pong_expected = False
        try:
            if not self.allow_command():
                raise Disconnect(DisconnectCode.TOO_MANY_REQUESTS)
            pub = relay_publication(payload, binary=binary)
            if not self.echo:
                pub.exclude_client = self.client_id
            if self.hub.broker.pipelined and not self.context.hooks_active:
                await self._publish_pipelined(pub)
            else:
                await self.publish(self.channel, publication=pub, source="relay")
        except (Disconnect, ProtocolError) as exc:
            self._refused(exc)

    def _refused(self, exc: BaseException) -> None:
        """Close for a refused or failed subscribe or publish (see :meth:`handle_message`)."""
        if isinstance(exc, Disconnect):
            self.disconnect(exc.code, exc.reason)
        elif isinstance(exc, ProtocolError):
            if exc.code == ErrorCode.PERMISSION_DENIED:
                self.disconnect(DisconnectCode.PERMISSION_DENIED, exc.message)
            else:
                self.disconnect(1013 if exc.temporary else DisconnectCode.BAD_REQUEST, exc.message)
        else:
            log.error("relay publish failed", exc_info=exc)
            self.disconnect(1011, "internal error")

    async def _publish_pipelined(self, pub: Publication) -> None:
        """Start the publish and return without waiting for the broker: the
        client's next messages go out in the same broker pipeline, in order
        (:attr:`~hubbub.brokers.base.Broker.pipelined`); no task, the broker
        calls back. A failure closes the connection as a refused publish does.
        At most :data:`MAX_INFLIGHT` are in flight; past it this waits for room.

        Raises:
            ProtocolError: refused before anything was sent.
        """
        self.publish_nowait(self.channel, self._published, publication=pub, source="relay")
        self._inflight += 1
        while self._inflight >= MAX_INFLIGHT:
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await self._room

    def _published(self, position: StreamPosition | None, exc: BaseException | None) -> None:
        self._inflight -= 1
        room = self._room
        if room is not None:
            self._room = None
            if not room.done():
                room.set_result(None)
        if exc is not None and not self.closed:
            self._refused(exc)

    def check_pong(self) -> None:
        """Close with 1011 if the last ping went unanswered."""
        if self.pong_expected and not self.closed:
            self.disconnect(1011, "keepalive ping timeout")

    def disconnect(self, code: int, reason: str | None = None) -> None:
        if not self.closed:
            self.closed = True
            self.out.close(code, reason or "")

    async def server_subscribe(self, channel: str) -> None:
        """A relay connection holds exactly its path's channel: refused (108)."""
        raise ProtocolError(ErrorCode.NOT_AVAILABLE, "relay connections hold one channel")

    # The one channel of a relay client is its path's: a flag, not a dict (memory per connection).

    def subscribed_to(self, channel: str) -> bool:
        return channel == self.channel

    def _subscription_expired(self, channel: str) -> None:
        """A relay connection is its one subscription: closed with 3006."""
        self.disconnect(DisconnectCode.SUBSCRIPTION_EXPIRED, DISCONNECT_REASONS[DisconnectCode.SUBSCRIPTION_EXPIRED])

    def _remember(self, channel: str, info: ClientInfo | None) -> None:
        self.subscribed = True

    def _forget(self, channel: str) -> ClientInfo | None:
        self.subscribed = False
        return self._info_of_channel()

    def _info_of_channel(self) -> ClientInfo | None:
        return self._channel_info(self._auth[1], self._auth[0]) if self._auth is not None else None

    def leave(self, channel: str) -> bool:
        if channel != self.channel or not self.subscribed:
            return False
        info = self._forget(channel)
        self.hub.unsubscribe(channel, self.client_id, info=info)
        return True

    def on_closed(self) -> None:
        self.leave(self.channel)
        super().on_closed()
