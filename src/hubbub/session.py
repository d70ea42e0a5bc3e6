"""The Centrifugo client protocol as a sans-I/O session, over any codec.

Wire format (centrifugal/protocol ``client.proto``; centrifugal.dev
``docs/transports/client_protocol.md``): a command is ``{"id": N, "<method>":
{...}}`` (``send`` has no id and no reply), a reply ``{"id": N, "<method>":
{...}}`` or ``{"id": N, "error": {...}}``, a push has no id; the server's ping
is ``{}``, and a client told ``"pong": true`` answers ``{}``.

See ``docs/design.md``, "Choke points" (``ClientSession``) and "The write path"
(3: replies flushed every :data:`REPLY_FLUSH_BYTES`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from ._version import __version__
from .brokers.base import Publication, StreamPosition
from .codec import Codec, DeltaProtocolWire, ProtocolWire
from .codes import DISCONNECT_REASONS, DisconnectCode, ErrorCode
from .config import DELTA_TYPES, NamespaceOptions
from .core import ClientContext, ClientCore, ConnectRequest, ConnectResult, Refusal, SessionHooks
from .errors import BadRequest, Disconnect, ProtocolError
from .hub import SubscribeResult, Wire
from .outbox import FrameBatch, Outbox
from .validation import Params

__all__ = ["ClientSession", "ConnectRequest", "ConnectResult", "SessionHooks"]

log = logging.getLogger("hubbub.session")

#: Subscribe ``flag`` bit: answer 112 instead of ``recovered: false``.
FLAG_REJECT_UNRECOVERED = 2

#: Replies waiting in the session are handed to the outbox once they pass this
#: many bytes (and at the end of every message).
REPLY_FLUSH_BYTES = 65536

#: A session that has run its commands for this many seconds without the event
#: loop getting a turn yields (checked every COMMANDS_PER_CHECK commands), so
#: one client pipelining thousands of commands does not hold up the others,
#: while a normal burst still runs in one iteration (one write per subscriber).
MAX_SLICE = 0.005

#: Publishes of one client in flight at once on a pipelined broker (Redis);
#: past it the client's next command waits for the oldest, so reading from its
#: socket pauses (backpressure, not a buffer).
MAX_INFLIGHT = 1024
COMMANDS_PER_CHECK = 64

_METHODS = frozenset((
    "connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history", "ping",
    "send", "rpc", "refresh", "sub_refresh",
))


class ClientSession(ClientCore):
    """One protocol client. See the module docstring.

    Args:
        context: the node's shared :class:`~hubbub.core.ClientContext`.
        out: the connection's output.
        wire: the push encoder of this session's codec and framing.
        headers: the handshake's HTTP headers (lower-cased names), without the
            WebSocket upgrade's own (``upgrade``, ``connection``, ``sec-websocket-key``, ...).
        client_id: connection id; a random UUID by default.
        subprotocol: the WebSocket subprotocol the transport answers in its
            ``101`` (``centrifuge-protobuf``, ``centrifuge-json``), if the client
            asked for one (:func:`hubbub.formats.negotiate`).
    """

    #: the connection may drop a lone ``{}`` message (a pong) before it reaches the session
    inline_pong = True
    awaits_connect = True
    kind = "protocol"
    transport = "websocket"

    __slots__ = ("codec", "subprotocol", "created_at", "_replies", "_reply_bytes", "_late", "_commands", "_slice_start",
                 "_inflight", "_progress")

    def __init__(self, context: ClientContext, out: Outbox, wire: ProtocolWire, *,
                 headers: dict[str, str] | None = None, client_id: str | None = None,
                 subprotocol: str | None = None) -> None:
        super().__init__(context, out, wire, headers=headers, client_id=client_id)
        self.codec: Codec = wire.codec
        self.subprotocol = subprotocol
        self.created_at = time.monotonic()
        self._replies: list[bytes] | None = None  # created when a reply waits (memory per connection)
        self._reply_bytes = 0
        #: publications of a subscribe's stream read that follow its reply: channel, them, the wire
        self._late: tuple[str, list[Publication], Wire] | None = None
        self._commands = 0
        self._slice_start = 0.0
        #: publishes in flight on a pipelined broker and the replies queued behind
        #: them, in command order: [encoded reply, or None while the broker has not answered]
        self._inflight: collections.deque[list[bytes | None]] | None = None
        #: resolved when the oldest publish in flight is answered (made when a command waits for it)
        self._progress: asyncio.Future[None] | None = None

    @property
    def hooks(self) -> SessionHooks:
        return self.context.hooks

    @property
    def protocol(self) -> str:
        """The session's codec: ``"json"`` or ``"protobuf"``."""
        return self.codec.name

    # -- handshake and messages ---------------------------------------------------

    def handshake_nowait(self) -> Refusal | None:
        """Accept every handshake: protocol clients authenticate with ``connect``."""
        return None

    async def handshake(self) -> Refusal | None:
        """As :meth:`handshake_nowait` (never pending)."""
        return None

    async def open(self) -> None:
        """Called once after the handshake; the client speaks first."""

    def open_nowait(self) -> bool:
        """Open without waiting: there is nothing to do until the client speaks."""
        return True

    async def handle_message(self, data: bytes, binary: bool = False) -> None:
        """Handle one message: one or more commands.

        Never raises for bad input: errors become error replies or a close.
        """
        if self.closed:
            return
        self._slice_start = time.perf_counter()
        try:
            for command in self.codec.decode_commands(data):
                await self._handle_command(command)
                if self.closed:
                    return
                self._commands += 1
                if self._commands >= COMMANDS_PER_CHECK:
                    self._commands = 0
                    now = time.perf_counter()
                    if now - self._slice_start >= MAX_SLICE:
                        self._flush_replies()
                        await asyncio.sleep(0)
                        self._slice_start = time.perf_counter()
                        if self.closed:
                            return
        except Disconnect as exc:
            self.disconnect(exc.code, exc.reason)
        finally:
            self._flush_replies()

    async def _handle_command(self, command: dict[str, Any]) -> None:
        self.pong_expected = False  # any message answers a ping
        cid = command.get("id", 0)
        if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "invalid command id")
        methods = [key for key in command if key != "id"]
        if not methods:
            if cid == 0:  # {} is a pong
                return
            raise Disconnect(DisconnectCode.BAD_REQUEST, "command without method")
        if len(methods) != 1 or methods[0] not in _METHODS:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "unknown command")
        method = methods[0]
        if not self.allow_command():
            if cid:
                self._reply(self.codec.encode_error(cid, ProtocolError(ErrorCode.TOO_MANY_REQUESTS, temporary=True)))
            return
        params = command[method]
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise Disconnect(DisconnectCode.BAD_REQUEST, f"{method} must be an object")
        if method == "send":
            if not self.connected:
                raise Disconnect(DisconnectCode.BAD_REQUEST, "send before connect")
            await self._guard_hook(params.get("data"))
            return
        if cid == 0:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "command without id")
        if method != "connect" and not self.connected:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "command before connect")
        if method == "publish" and self.hub.broker.pipelined and not self.context.hooks_active:
            await self._publish_pipelined(cid, params)
            return
        if self._inflight:  # replies stay in command order: wait for the publishes before this
            await self._drain_inflight()
            if self.closed:
                return
        handler = getattr(self, "_cmd_" + method)
        started = time.perf_counter()
        try:
            result = await handler(params)
        except ProtocolError as exc:
            self._reply(self.codec.encode_error(cid, exc))
            return
        except Disconnect:
            raise
        except Exception:
            log.exception("error in %s command", method)
            self._reply(self.codec.encode_error(cid, ProtocolError(ErrorCode.INTERNAL, "internal server error")))
            return
        finally:
            self.hub.stats.commands[method].observe(time.perf_counter() - started)
        if self.closed:
            return
        self._reply(self.codec.encode_reply(cid, method, result))
        if method == "subscribe" and self._late:
            self._flush_replies()
            channel, late, wire = self._late
            self._late = None
            for pub in late:  # in full: the hub sends the next one in full too
                frame = wire.encode_publication(channel, pub)
                if frame is not None:
                    self._deliver(frame)

    async def _guard_hook(self, data: Any) -> None:
        try:
            await self.hooks.on_message(self, data)
        except (ProtocolError, Disconnect):
            raise
        except Exception:
            log.exception("error in on_message hook")

    # -- output ---------------------------------------------------------------------

    # -- publishes in flight (pipelined brokers) ---------------------------------------

    async def _publish_pipelined(self, cid: int, params: dict[str, Any]) -> None:
        """Start a ``publish`` and go on to the client's next command without
        waiting for the broker, so a client's publishes share one broker
        pipeline (:attr:`~hubbub.brokers.base.Broker.pipelined`); no task: the
        broker calls back once it answered, and the reply is queued in command
        order. At most :data:`MAX_INFLIGHT` are in flight; past it this waits
        for the oldest."""
        inflight = self._inflight
        if inflight is None:
            inflight = self._inflight = collections.deque()
        entry: list[bytes | None] = [None]
        inflight.append(entry)
        started = time.perf_counter()
        try:
            self.publish_nowait(params.get("channel"),
                                lambda position, exc: self._published(entry, cid, started, position, exc),
                                publication=self.codec.publication(_publish_data(params)))
        except (ProtocolError, Disconnect) as exc:  # refused before anything was sent
            self._published(entry, cid, started, None, exc)
            return
        if len(inflight) >= MAX_INFLIGHT:
            await self._inflight_progress()

    def _published(self, entry: list[bytes | None], cid: int, started: float,
                   position: StreamPosition | None, exc: BaseException | None) -> None:
        """The broker answered the publish of ``entry`` (or it was refused): its reply, then release."""
        self.hub.stats.commands["publish"].observe(time.perf_counter() - started)
        if exc is None:
            entry[0] = self.codec.encode_reply(cid, "publish", _publish_result(position))  # type: ignore[arg-type]
        elif isinstance(exc, ProtocolError):
            entry[0] = self.codec.encode_error(cid, exc)
        elif isinstance(exc, Disconnect):
            self.disconnect(exc.code, exc.reason)
            entry[0] = b""
        else:
            log.error("error in publish command", exc_info=exc)
            entry[0] = self.codec.encode_error(cid, ProtocolError(ErrorCode.INTERNAL, "internal server error"))
        self._release_inflight()

    def _release_inflight(self) -> None:
        """Move the answered head of the in-flight queue to the replies, and send them."""
        inflight = self._inflight
        released = False
        while inflight and inflight[0][0] is not None:
            payload = inflight.popleft()[0]
            if payload:
                if self._replies is None:
                    self._replies = [payload]
                else:
                    self._replies.append(payload)
                self._reply_bytes += len(payload)
            released = True
        if released:
            progress = self._progress
            if progress is not None:
                self._progress = None
                if not progress.done():
                    progress.set_result(None)
            if not self.closed:
                self._flush_replies()

    async def _inflight_progress(self) -> None:
        """Wait until the oldest publish in flight is answered."""
        if self._progress is None:
            self._progress = asyncio.get_running_loop().create_future()
        await self._progress

    async def _drain_inflight(self) -> None:
        """Wait until every publish in flight has its reply queued."""
        while self._inflight:
            if self._inflight[0][0] is None:
                await self._inflight_progress()
            self._release_inflight()

    # -- replies ---------------------------------------------------------------------

    def _reply(self, payload: bytes) -> None:
        if self._inflight:  # behind publishes in flight
            self._inflight.append([payload])
            return
        if self._replies is None:
            self._replies = [payload]
        else:
            self._replies.append(payload)
        self._reply_bytes += len(payload)
        if self._reply_bytes >= REPLY_FLUSH_BYTES:
            self._flush_replies()

    def _send(self, payload: bytes) -> None:
        if self.codec.binary:
            self.out.send_binary(payload)
        else:
            self.out.send_text(payload)

    def _flush_replies(self) -> None:
        if self._replies:
            replies = self._replies
            self._replies = None
            self._reply_bytes = 0
            if self.out.open:
                self._send(self.codec.join(replies))

    def _deliver(self, frame: bytes | FrameBatch) -> None:
        """Queue a push; replies computed before it go first (a subscribe reply
        must precede the channel's pushes)."""
        if self._replies:
            self._flush_replies()
        self.out.deliver(frame)

    def _push_subscribed(self, channel: str, result: SubscribeResult, ns: NamespaceOptions) -> None:
        self._flush_replies()
        self._send(self.codec.encode_push(channel, "subscribe", _subscribe_reply(ns, result, False, False)))

    def _push_unsubscribed(self, channel: str, code: int, reason: str) -> None:
        self._flush_replies()
        self._send(self.codec.encode_push(channel, "unsubscribe", {"code": code, "reason": reason}))

    # -- commands -----------------------------------------------------------------------

    async def _cmd_connect(self, params: dict[str, Any]) -> dict[str, Any]:
        p = Params(params, "connect.")
        result = await self.authenticate(p.str("token"), data=params.get("data"), name=p.str("name"),
                                         version=p.str("version"))
        reply: dict[str, Any] = {"client": self.client_id, "version": __version__}
        interval = self.config.ping_interval
        if interval > 0:
            reply["ping"] = max(1, round(interval))
            reply["pong"] = True
        if result.data is not None:
            reply["data"] = result.data
        if self.client_refreshes():
            reply.update(self._expiry(result.expire_at))
        subs: dict[str, Any] = {}
        for channel in result.channels:
            try:
                ns, _ = await self.authorize_subscribe(channel, server_side=True)
                joined = await self.join(channel, ns)
            except ProtocolError as exc:
                log.warning("server-side subscription to %r failed: %s", channel, exc.message)
                continue
            subs[channel] = _subscribe_reply(ns, joined, False, False)
        if subs:
            reply["subs"] = subs
        return reply

    async def _cmd_subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        p = Params(params, "subscribe.")
        channel: Any = params.get("channel")  # validated by authorize_subscribe (107)
        ns, chan_info = await self.authorize_subscribe(channel, p.str("token"), params)
        recover = bool(params.get("recover"))
        positioned = bool(params.get("positioned"))
        recoverable = ns.history and (ns.force_recovery or recover or bool(params.get("recoverable")))
        since: StreamPosition | None = None
        if recover and recoverable:
            since = StreamPosition(p.int("offset", minimum=0), p.str("epoch"))
        delta = self._delta_wire(p.str("delta"), ns)
        result = await self.join(channel, ns, chan_info, recover_since=since, recoverable=recoverable,
                                 positioned=positioned, delta=delta)
        if self.closed:
            return {}
        reply = _subscribe_reply(ns, result, recoverable, positioned)
        if delta is not None:
            reply["delta"] = True
        if self.client_refreshes(channel):
            reply.update(self._expiry(self.subscription_expires(channel)))
        if since is not None:
            reply["was_recovering"] = True
            reply["recovered"] = result.recovered
            if result.recovered:
                # As Centrifugo: the reply keeps the client's offset and the
                # publications advance it (client.go, res.Offset = req.Offset).
                reply["offset"] = since.offset
                if result.publications:
                    # never deltas: in full (in the delta form when a delta was negotiated)
                    if delta is not None:
                        reply["publications"] = [self.codec.delta_reply_publication(pub)
                                                 for pub in result.publications]
                    else:
                        reply["publications"] = (result.publications if self.codec.publication_objects
                                                 else [pub.to_json() for pub in result.publications])
            elif _flag(params.get("flag")) & FLAG_REJECT_UNRECOVERED:
                self.leave(channel)
                raise ProtocolError(ErrorCode.UNRECOVERABLE_POSITION)
        if result.late:
            self._late = (channel, result.late, delta or self.wire)
        return reply

    def _delta_wire(self, kind: str, ns: NamespaceOptions) -> DeltaProtocolWire | None:
        """The wire for a subscribe that asked for delta ``kind`` (``""``: none asked).

        As Centrifugo (client.go): a type it does not know closes the connection
        with 3501 (bad request); a known type the namespace does not allow
        (``allowed_delta_types``) is not negotiated (the reply has no ``delta``)
        and publications come in full.

        Raises:
            Disconnect: 3501, an unknown delta type.
        """
        if not kind:
            return None
        if kind not in DELTA_TYPES:
            raise Disconnect(DisconnectCode.BAD_REQUEST, f"unknown delta type in subscribe request: {kind}")
        wire = self.wire
        if kind not in ns.allowed_delta_types or not isinstance(wire, ProtocolWire):
            return None
        return wire.delta

    async def _cmd_unsubscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        channel: Any = params.get("channel")
        self.hub.namespace(channel)  # validates the name (107)
        self.leave(channel)
        return {}

    async def _cmd_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        publication = self.codec.publication(_publish_data(params))
        position = await self.publish(params.get("channel"), publication=publication)
        return _publish_result(position)

    async def _cmd_history(self, params: dict[str, Any]) -> dict[str, Any]:
        p = Params(params, "history.")
        limit = p.int("limit")
        since_params = p.object("since")
        since = None
        if since_params is not None:
            since = StreamPosition(since_params.int("offset", minimum=0), since_params.str("epoch"))
        return await self.history(params.get("channel"), since=since, limit=limit, reverse=p.bool("reverse"),
                                  as_objects=self.codec.publication_objects)

    async def _cmd_presence(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self.presence(params.get("channel"))

    async def _cmd_presence_stats(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self.presence_stats(params.get("channel"))

    async def _cmd_ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _cmd_rpc(self, params: dict[str, Any]) -> dict[str, Any]:
        method = Params(params, "rpc.").str("method")
        data = await self.rpc(method, params.get("data"))
        return {} if data is None else {"data": data}

    async def _cmd_refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        await self.refresh(Params(params, "refresh.").str("token"))
        reply: dict[str, Any] = {"client": self.client_id, "version": __version__}
        reply.update(self._expiry(self.expire_at))
        return reply

    async def _cmd_sub_refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        expire_at = await self.refresh_subscription(params.get("channel"), Params(params, "sub_refresh.").str("token"))
        return self._expiry(expire_at)

    def _expiry(self, expire_at: float | None) -> dict[str, Any]:
        """``expires`` and ``ttl`` (whole seconds left, rounded down) of a
        token's ``exp``, as connect, refresh, subscribe and sub_refresh
        replies carry them (``client.proto``)."""
        if expire_at is None:
            return {}
        return {"expires": True, "ttl": max(0, int(expire_at - self.context.wall()))}

    # -- server-side ------------------------------------------------------------------

    def ping(self) -> None:
        """Send the protocol's ping, an empty reply (called by the server's
        shared ping timer). Clients that have not connected are not pinged."""
        if self.closed or not self.connected:
            return
        self.pong_expected = True
        self._deliver(self.wire.ping)  # type: ignore[attr-defined]

    def disconnect(self, code: int, reason: str | None = None) -> None:
        """Close the connection with a disconnect code (see :mod:`hubbub.codes`)."""
        if self.closed:
            return
        self._flush_replies()
        self.closed = True
        self.out.close(code, DISCONNECT_REASONS.get(code, "") if reason is None else reason)


def _subscribe_reply(ns: NamespaceOptions, result: SubscribeResult, recoverable: bool,
                     positioned: bool) -> dict[str, Any]:
    reply: dict[str, Any] = {}
    if ns.history:
        reply["epoch"] = result.position.epoch
        reply["offset"] = result.position.offset
        if recoverable:
            reply["recoverable"] = True
        if positioned or recoverable:
            reply["positioned"] = True
    if ns.join_leave:
        reply["join_leave"] = True
    return reply


def _flag(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


#: The ``SubscribeResult`` shape of a subscription (for other sessions of the protocol: hubbub.uni).
subscribe_reply = _subscribe_reply


def _publish_data(params: dict[str, Any]) -> Any:
    """A publish command's ``data``.

    Raises:
        BadRequest: 107, the command has none.
    """
    if "data" not in params:
        raise BadRequest("publish without data")
    return params["data"]


def _publish_result(position: StreamPosition) -> dict[str, Any]:
    """The protocol's ``PublishResult``: the position only with history."""
    if position.epoch:
        return {"offset": position.offset, "epoch": position.epoch}
    return {}
