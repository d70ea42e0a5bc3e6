"""Sessions of the protocol over one-way and emulated transports (sans-I/O).

:class:`EmulatedSession` is centrifuge-js's bidirectional emulation
(``http_stream``, ``sse``; its connect reply carries ``session`` and ``node``, as
centrifugal/centrifuge ``client.go``); :class:`UniSession` the unidirectional
transports (centrifugal.dev ``docs/transports/uni_client_protocol.md``).

See ``docs/design.md``, "Streaming transports" (Emulation, One-way).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from ._version import __version__
from .brokers.base import ClientInfo, Publication, StreamPosition
from .codec import Codec, JSONCodec, ProtocolWire
from .codes import DisconnectCode, ErrorCode, should_reconnect
from .config import NamespaceOptions
from .core import ClientContext
from .errors import BadRequest, Disconnect, ProtocolError
from .outbox import FrameBatch, Outbox
from .session import ClientSession, subscribe_reply
from .strictjson import dumps, loads
from .validation import Params

log = logging.getLogger("hubbub.uni")

_PUSH_PREFIX = b'{"push":'


class UniJSONCodec(JSONCodec):
    """JSON pushes of the unidirectional protocol: the ``Push`` object alone.

    Publications, joins and leaves are the JSON codec's pushes without their
    ``{"push": ...}`` wrapper (the same bytes, sliced once per publication
    per wire); other pushes name the channel only when there is one.
    """

    __slots__ = ()

    name = "uni-json"

    def encode_push(self, channel: str, kind: str, body: dict[str, Any]) -> bytes:
        return dumps({"channel": channel, kind: body} if channel else {kind: body})

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        return super().encode_publication(channel, pub)[len(_PUSH_PREFIX):-1]

    def encode_join(self, channel: str, info: ClientInfo) -> bytes:
        return super().encode_join(channel, info)[len(_PUSH_PREFIX):-1]

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes:
        return super().encode_leave(channel, info)[len(_PUSH_PREFIX):-1]


#: The unidirectional JSON codec (stateless).
UNI_JSON = UniJSONCodec()


def disconnect_push(codec: Codec, code: int, reason: str) -> bytes:
    """The ``disconnect`` push that ends a stream (a stream has no close frame):
    ``code`` a close code, ``reason`` its text, encoded by ``codec``."""
    return codec.encode_push("", "disconnect", {"code": code, "reason": reason, "reconnect": should_reconnect(code)})


class EmulatedSession(ClientSession):
    """A protocol client on ``http_stream`` or ``sse`` (centrifuge-js emulation).

    Args:
        node: this node's id, returned in the connect reply; ``/emulation``
            requests name it.
        transport: ``"http_stream"`` or ``"sse"`` (hooks and metrics).
        (others as :class:`~hubbub.session.ClientSession`.)

    Attributes:
        session: the id that ``/emulation`` requests name (random).
        on_gone: called once with the session when it closes (the registry
            of emulated sessions removes it); ``None``: nothing.
    """

    __slots__ = ("session", "node", "transport", "on_gone")

    def __init__(self, *args: Any, node: str, transport: str = "http_stream", **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.session = str(uuid.uuid4())
        self.node = node
        self.transport = transport
        self.on_gone: Callable[[EmulatedSession], None] | None = None

    def on_closed(self) -> None:
        on_gone, self.on_gone = self.on_gone, None
        if on_gone is not None:
            on_gone(self)
        super().on_closed()

    async def _cmd_connect(self, params: dict[str, Any]) -> dict[str, Any]:
        reply = await super()._cmd_connect(params)
        reply["session"] = self.session
        reply["node"] = self.node
        return reply


class UniSession(ClientSession):
    """A client of a unidirectional transport (see the module docstring).

    Use :meth:`prepare` (authentication and permissions; nothing is sent, so
    a transport may still answer a refusal with an HTTP status), then
    :meth:`start` (subscriptions, the ``connect`` push). ``uni_websocket``
    calls both on its first message (:meth:`handle_message`).

    Args:
        transport: ``"uni_websocket"``, ``"uni_sse"`` or ``"uni_http_stream"``.
        (others as :class:`~hubbub.session.ClientSession`.)
    """

    inline_pong = False

    __slots__ = ("transport", "session", "_plan", "_held_pushes", "_connect_data", "_ping")

    def __init__(self, context: ClientContext, out: Outbox, wire: ProtocolWire, *,
                 transport: str = "uni_http_stream", **kw: Any) -> None:
        super().__init__(context, out, wire, **kw)
        #: the ping, framed once by the wire for every client of this transport
        self._ping = wire.ping
        self.transport = transport
        self.session = str(uuid.uuid4())
        #: (channel, namespace, channel info, recover since, server-side) to join at start
        self._plan: list[tuple[str, NamespaceOptions, Any, StreamPosition | None, bool]] = []
        self._held_pushes: list[bytes | FrameBatch] | None = None
        self._connect_data: Any = None

    # -- connect ----------------------------------------------------------------------

    @staticmethod
    def parse_connect(raw: bytes | str) -> dict[str, Any]:
        """The connect object of a request (``null`` and empty text count as ``{}``).

        Raises:
            BadRequest: not JSON, or not an object.
        """
        if not raw.strip():
            return {}
        try:
            value = loads(raw)
        except ValueError as exc:
            raise BadRequest(f"malformed connect object: {exc}") from None
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise BadRequest("the connect object must be a JSON object")
        return value

    async def prepare(self, params: dict[str, Any]) -> None:
        """Authenticate and decide the subscriptions of a connect object.

        Raises:
            BadRequest: malformed fields, an unknown namespace or invalid
                channel name in ``subs``.
            ProtocolError: 109 token expired; 106 past ``client_channel_limit``;
                what hooks raise.
            Disconnect: 3500 invalid token, 3504 connection limit.
        """
        p = Params(params, "connect.")
        subs = p.object("subs")
        wanted: dict[str, Params] = {}
        if subs is not None:
            for channel in subs.raw:
                wanted[channel] = subs.object(channel) or Params({}, f"connect.subs.{channel}.")
        result = await self.authenticate(p.str("token"), data=params.get("data"), name=p.str("name"),
                                         version=p.str("version"))
        self._connect_data = result
        server_side = set(result.channels)
        for channel in [*result.channels, *(c for c in wanted if c not in server_side)]:
            if channel in self.channels:
                continue
            try:
                ns, chan_info = await self.authorize_subscribe(channel, server_side=channel in server_side)
            except ProtocolError as exc:
                if channel in server_side:  # as the protocol's connect: the token's channel is left out
                    log.warning("server-side subscription to %r failed: %s", channel, exc.message)
                elif exc.code in (ErrorCode.UNKNOWN_CHANNEL, ErrorCode.BAD_REQUEST):
                    raise BadRequest(f"subs: {channel!r}: {exc.message}") from None
                elif exc.code == ErrorCode.LIMIT_EXCEEDED:
                    raise
                else:
                    log.info("uni connect: subscription to %r skipped: %s", channel, exc.message)
                continue
            self._remember(channel, None)  # reserved: the channel limit and duplicates count it
            since = None
            sub = wanted.get(channel)
            if sub is not None and sub.bool("recover") and ns.history:
                since = StreamPosition(sub.int("offset", minimum=0), sub.str("epoch"))
            self._plan.append((channel, ns, chan_info, since, channel in server_side))

    async def start(self) -> None:
        """Join the planned channels and send the ``connect`` push (then the
        publications that arrived meanwhile). A failure closes the stream with
        a ``disconnect`` push."""
        result = self._connect_data
        reply: dict[str, Any] = {"client": self.client_id, "version": __version__, "session": self.session}
        interval = self.config.ping_interval
        if interval > 0:
            reply["ping"] = max(1, round(interval))
        if result.data is not None:
            reply["data"] = result.data
        if result.expire_at is not None:
            reply["expires"] = True
            reply["ttl"] = max(0, int(result.expire_at - self.context.wall()))
        self._held_pushes = []  # pushes wait for the connect push
        subs: dict[str, Any] = {}
        late: list[tuple[str, list[Publication]]] = []
        try:
            for channel, ns, chan_info, since, _ in self._plan:
                recoverable = ns.history and (ns.force_recovery or since is not None)
                joined = await self.join(channel, ns, chan_info, recover_since=since, recoverable=recoverable)
                if self.closed:
                    return
                sub = subscribe_reply(ns, joined, recoverable, False)
                if since is not None:
                    sub["was_recovering"] = True
                    sub["recovered"] = joined.recovered
                    if joined.recovered:
                        sub["offset"] = since.offset
                        if joined.publications:
                            sub["publications"] = [pub.to_json() for pub in joined.publications]
                subs[channel] = sub
                if joined.late:
                    late.append((channel, joined.late))
        except (ProtocolError, Disconnect) as exc:
            held, self._held_pushes = self._held_pushes, None
            if isinstance(exc, Disconnect):
                self.disconnect(exc.code, exc.reason)
            else:
                self.disconnect(DisconnectCode.SERVER_ERROR if exc.temporary else DisconnectCode.BAD_REQUEST,
                                exc.message)
            return
        self._plan = []
        if subs:
            reply["subs"] = subs
        held, self._held_pushes = self._held_pushes, None
        self._send(self.codec.encode_push("", "connect", reply))
        for channel, pubs in late:
            for pub in pubs:
                pushed = self.wire.encode_publication(channel, pub)
                if pushed is not None:
                    self.out.deliver(pushed)
        for frame in held:
            self.out.deliver(frame)

    async def handle_message(self, data: bytes, binary: bool = False) -> None:
        """``uni_websocket``: the first message is the connect object; later
        messages are ignored (the transport is one-way). A refused connect
        closes with its code (3500 invalid token, 3501 bad request, ...)."""
        if self.closed or self.connected:
            return
        try:
            await self.prepare(self.parse_connect(data))
        except ProtocolError as exc:
            code = DisconnectCode.BAD_REQUEST
            if exc.code == ErrorCode.TOKEN_EXPIRED:
                code = DisconnectCode.EXPIRED
            elif exc.code == ErrorCode.PERMISSION_DENIED:
                code = DisconnectCode.PERMISSION_DENIED
            self.disconnect(code, exc.message)
            return
        except Disconnect as exc:
            self.disconnect(exc.code, exc.reason)
            return
        await self.start()

    # -- output ------------------------------------------------------------------------

    def _deliver(self, frame: bytes | FrameBatch) -> None:
        held = self._held_pushes
        if held is not None:
            held.append(frame)
        else:
            self.out.deliver(frame)

    def ping(self) -> None:
        """The unidirectional ping: ``{}``; no pong is expected."""
        if not self.closed and self.connected:
            self._deliver(self._ping)

    def check_pong(self) -> None:
        """One-way clients do not answer pings (a dead one is found by TCP or the output bound)."""
