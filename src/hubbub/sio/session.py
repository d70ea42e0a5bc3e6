"""One Socket.IO client (an Engine.IO connection and its namespaces), as a sans-I/O
:class:`~hubbub.core.ClientCore`.

Every rule goes through the client core: the first namespace ``CONNECT`` authenticates
(``auth.token`` is the connection JWT; the ``on_connect`` hook or the connect proxy see
``auth`` as the connect data), connections per user, ``client_command_rate`` per event,
``client_channel_limit`` for rooms, and the output bound (the WebSocket's
:class:`~hubbub.writer.Writer`, or :class:`PollingOut`'s bounded queue between polls).

Rooms are hub channels (docs/design.md, "Socket.IO"): room ``R`` of namespace ``/N`` is
channel ``socketio:/N:R``, and each namespace connection's ``sid`` is a room of its own.
Emitting to a room publishes ``{"event": name, "args": [...]}`` to its channel, so it
reaches every node through the broker, and the server API can publish the same.

Protocol sources: :mod:`hubbub.sio.engineio` and :mod:`hubbub.sio.packets`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from ..brokers.base import ClientInfo, Publication, StreamPosition
from ..codes import DISCONNECT_REASONS, DisconnectCode, ErrorCode
from ..config import NamespaceOptions
from ..core import ClientContext, ClientCore, HandshakeDecision, Refusal
from ..errors import BadRequest, ConnectRefused, Disconnect, ProtocolError
from ..hub import SubscribeResult
from ..outbox import FrameBatch, FrameEncoder, Outbox
from ..stats import Stats
from ..strictjson import dumps, loads
from . import engineio
from .packets import RESERVED_EVENTS, Decoder, PacketError, PacketType, SocketIOPacket, encode, reconstruct

__all__ = [
    "CHANNEL_PREFIX", "ConnectRefused", "HubHandlers", "PollingOut", "SocketIOHandlers", "SocketIOSession", "SocketIOWire",
    "publication_data", "room_channel",
]

log = logging.getLogger("hubbub.socketio")

#: The hub namespace of Socket.IO rooms: room ``R`` of namespace ``/N`` is channel ``socketio:/N:R``.
CHANNEL_PREFIX: Final = "socketio"

#: python-socketio's disconnect reasons (``socketio.AsyncServer.reason``).
CLIENT_DISCONNECT: Final = "client disconnect"
SERVER_DISCONNECT: Final = "server disconnect"
PING_TIMEOUT: Final = "ping timeout"
TRANSPORT_CLOSE: Final = "transport close"
TRANSPORT_ERROR: Final = "transport error"

#: Event handlers of one connection running at once; past it, reading waits (backpressure).
MAX_HANDLERS = 64
#: Lost namespace connections a node keeps for connection state recovery at once (the oldest
#: go first past it; each is kept ``socketio_recovery_window`` seconds at most).
MAX_RECOVERABLE = 100_000
#: Server-to-client acknowledgements one namespace connection may wait for at once
#: (the oldest is dropped past it).
MAX_PENDING_ACKS = 1024


def room_channel(namespace: str, room: str) -> str:
    """The hub channel of ``room`` in Socket.IO ``namespace``: ``socketio:{namespace}:{room}``."""
    return f"{CHANNEL_PREFIX}:{namespace}:{room}"


def channel_room(channel: str) -> tuple[str, str] | None:
    """``(namespace, room)`` of a room's channel, or ``None`` for another channel."""
    if not channel.startswith(CHANNEL_PREFIX + ":/"):
        return None
    namespace, sep, room = channel[len(CHANNEL_PREFIX) + 1:].partition(":")
    return (namespace, room) if sep else None


def publication_data(event: str, args: list[Any]) -> Any:
    """The publication of an event to a room: ``{"event": name, "args": [...]}``; ``bytes``
    arguments become ``{"_placeholder": true, "num": N}`` with their base64 in ``"attachments"``."""
    buffers: list[bytes] = []
    parts = encode(PacketType.EVENT, "/", [event, *args])
    if len(parts) > 1:
        buffers = parts[1:]
        text = parts[0]
        payload = loads(text[text.index(b"-") + 1:])
        return {"event": event, "args": payload[1:], "attachments": [base64.b64encode(b).decode() for b in buffers]}
    return {"event": event, "args": list(args)}


class SocketIOHandlers(Protocol):
    """What a :class:`SocketIOSession` needs of the application (:class:`hubbub.socketio.AsyncServer`,
    or :class:`HubHandlers` without one)."""

    def has_namespace(self, namespace: str) -> bool:
        """Whether clients may connect to ``namespace``."""
        ...

    async def connect(self, session: SocketIOSession, namespace: str, sid: str, auth: Any) -> None:
        """A client connected to ``namespace`` as ``sid``.

        Raises:
            ConnectRefused: refuse it (``CONNECT_ERROR``).
        """
        ...

    async def event(self, session: SocketIOSession, namespace: str, sid: str, event: str,
                    args: list[Any]) -> list[Any] | None:
        """Run the handler of ``event``; returns the acknowledgement's arguments (``None``: no
        handler, no acknowledgement)."""
        ...

    async def disconnect(self, session: SocketIOSession, namespace: str, sid: str, reason: str) -> None: ...


class HubHandlers:
    """The handlers of a node without a Python Socket.IO application (``hubbub serve``, a
    :class:`hubbub.App` with no :class:`~hubbub.socketio.AsyncServer`): namespace ``/``, where a
    client uses hub channels itself, under the client's permissions and hooks, as a Centrifugo
    client does:

    - ``emit("subscribe", channel[, {"token": subscription JWT}], ack)``,
      ``emit("unsubscribe", channel, ack)``, ``emit("publish", channel, data, ack)``;
      the acknowledgement is ``{"ok": true}`` (``publish``: ``{"ok": true, "offset": N}``) or
      ``{"error": {"code": C, "message": text}}`` (the protocol's error codes: 102, 103, 106, 107, ...);
    - a publication of a subscribed channel arrives as event ``"publication"`` with
      ``(channel, data)``; a server-side unsubscribe as ``"unsubscribe"`` with
      ``(channel, {"code", "reason"})``. Other events are ignored (no acknowledgement).
    """

    def has_namespace(self, namespace: str) -> bool:
        return namespace == "/"

    async def connect(self, session: SocketIOSession, namespace: str, sid: str, auth: Any) -> None:
        return None

    async def event(self, session: SocketIOSession, namespace: str, sid: str, event: str,
                    args: list[Any]) -> list[Any] | None:
        if event not in ("subscribe", "unsubscribe", "publish"):
            return None
        try:
            if not args or not isinstance(args[0], str):
                raise BadRequest(f"{event} takes a channel name first")
            channel = args[0]
            if event == "subscribe":
                options = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
                token = options.get("token")
                await session.subscribe_channel(channel, token if isinstance(token, str) else "")
                return [{"ok": True}]
            if event == "unsubscribe":
                session.leave(channel)
                return [{"ok": True}]
            position = await session.publish(channel, args[1] if len(args) > 1 else None)
            return [{"ok": True, "offset": position.offset} if position.offset else {"ok": True}]
        except ProtocolError as exc:
            return [{"error": {"code": exc.code, "message": exc.message}}]

    async def disconnect(self, session: SocketIOSession, namespace: str, sid: str, reason: str) -> None:
        return None


class SocketIOWire:
    """Encodes a room channel's publications as Socket.IO ``EVENT`` packets (Engine.IO message
    ``4``), once per publication for every subscriber. A publication that is not
    ``{"event", "args"}`` (a Centrifugo client's, the server API's other data) arrives as event
    ``"message"`` with its data as the one argument. With history on the ``socketio`` namespace the
    packet's last argument is its offset (connection state recovery). Binary events are several
    messages: :func:`pack_messages`."""

    __slots__ = ("joinable",)

    def __init__(self) -> None:
        self.joinable = False

    def __hash__(self) -> int:
        return id(self)

    def encode_publication(self, channel: str, pub: Publication) -> bytes | None:
        found = channel_room(channel)
        try:
            value = loads(pub.data)
        except ValueError:
            return None
        if found is None:  # a hub channel a client subscribed to itself (HubHandlers)
            data = pub.raw if pub.binary and pub.raw is not None else value
            return self._packed(encode(PacketType.EVENT, "/", ["publication", channel, data]))
        namespace = found[0]
        if isinstance(value, dict) and value.get("close_room") is True:
            return _CLOSE_ROOM + channel.encode()
        if isinstance(value, dict) and isinstance(value.get("event"), str) and isinstance(value.get("args"), list):
            event, args = value["event"], list(value["args"])
            attachments = value.get("attachments")
            if isinstance(attachments, list) and attachments:
                try:
                    buffers = [base64.b64decode(str(item), validate=True) for item in attachments]
                    args = reconstruct(args, buffers)
                except (ValueError, PacketError):
                    return None
        else:
            event, args = "message", [value]
        if pub.offset:
            args.append(f"{pub.epoch}:{pub.offset}:{channel}")
        encoded = self._packed(encode(PacketType.EVENT, namespace, [event, *args]))
        skip = value.get("skip") if isinstance(value, dict) else None
        if isinstance(skip, list) and skip:
            return _SKIP + dumps([str(sid) for sid in skip]) + b"\n" + encoded
        return encoded

    @staticmethod
    def _packed(parts: list[bytes]) -> bytes:
        if len(parts) == 1:
            return engineio.MESSAGE + parts[0]
        return pack_messages([(engineio.MESSAGE + parts[0], False), *((b, True) for b in parts[1:])])

    def encode_join(self, channel: str, info: ClientInfo) -> None:
        return None

    def encode_leave(self, channel: str, info: ClientInfo) -> None:
        return None


#: The first byte of several messages packed into one delivery (a binary event): a text
#: packet starts with an Engine.IO type digit, never with it.
_PACKED = 0
#: The first byte of a delivery that some sids skip: their JSON list, a line break, the delivery.
_SKIP = b"\x01"
#: The delivery of ``{"close_room": true}``: the room's channel follows; its members leave it.
_CLOSE_ROOM = b"\x02"


def pack_messages(messages: list[engineio.Packet]) -> bytes:
    """Several Engine.IO messages as one delivery (see :func:`unpack_messages`)."""
    out = bytearray([_PACKED])
    for data, binary in messages:
        out += (len(data) << 1 | binary).to_bytes(5, "big")
        out += data
    return bytes(out)


def unpack_messages(packed: bytes) -> list[engineio.Packet]:
    out: list[engineio.Packet] = []
    pos = 1
    while pos < len(packed):
        head = int.from_bytes(packed[pos:pos + 5], "big")
        size = head >> 1
        out.append((packed[pos + 5:pos + 5 + size], bool(head & 1)))
        pos += 5 + size
    return out


class PollingOut:
    """The :class:`~hubbub.outbox.Outbox` of a session on HTTP long-polling: the Engine.IO packets
    waiting for the next ``GET``, bounded by ``limit`` bytes (past it what waits is dropped, the
    close packet queued and the session closed with 3008, as a slow WebSocket is).

    ``stats``: the node's :class:`~hubbub.stats.Stats`: a session closed over the bound counts in
    ``slow``, and every close in ``disconnects`` by its code (Engine.IO's close packet carries no
    code; the WebSocket transports count theirs where they send the close frame)."""

    __slots__ = ("packets", "size", "limit", "open", "waiter", "on_slow", "closing", "stats")

    def __init__(self, limit: int, on_slow: Callable[[], None], stats: Stats) -> None:
        self.packets: list[engineio.Packet] = []
        self.size = 0
        self.limit = limit
        self.open = True
        #: resolved when packets arrive while a poll waits
        self.waiter: asyncio.Future[None] | None = None
        self.on_slow = on_slow
        #: the close packet is queued: the session ends after the poll that carries it
        self.closing = False
        self.stats = stats

    def _add(self, data: bytes, binary: bool) -> None:
        if not self.open:
            return
        self.packets.append((data, binary))
        self.size += len(data)
        if self.size > self.limit:
            self.open = False
            self.packets.clear()
            self.size = 0
            self.stats.slow += 1
            self.on_slow()
            return
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send_text(self, payload: bytes) -> None:
        self._add(payload, False)

    def send_binary(self, payload: bytes) -> None:
        self._add(payload, True)

    def deliver(self, frame: bytes | FrameBatch) -> None:
        self._add(frame if isinstance(frame, bytes) else frame.join(), False)

    def send_ping(self) -> None:
        self._add(engineio.PING, False)

    def close(self, code: int, reason: str = "") -> None:
        if self.closing:
            return
        self.packets.append((engineio.CLOSE, False))  # after the bound: the close packet alone
        self.open = False
        self.closing = True
        self.stats.disconnects[code] += 1
        self.wake()

    def take(self) -> list[engineio.Packet]:
        packets, self.packets, self.size = self.packets, [], 0
        return packets


@dataclass(slots=True)
class NamespaceConnection:
    """One namespace of a connection: its ``sid``, rooms, application session and pending acks."""

    namespace: str
    sid: str
    pid: str = ""
    rooms: set[str] = field(default_factory=set)
    data: dict[str, Any] = field(default_factory=dict)
    acks: dict[int, Callable[[list[Any]], None]] = field(default_factory=dict)
    next_ack: int = 0


@dataclass(slots=True)
class _Recoverable:
    """What a namespace connection leaves behind for connection state recovery."""

    sid: str
    namespace: str
    user: str
    rooms: set[str]
    data: dict[str, Any]
    positions: dict[str, StreamPosition]
    until: float


class SocketIOSession(ClientCore):
    """One Engine.IO connection and its Socket.IO namespaces (see the module docstring).

    Args:
        context: the node's :class:`~hubbub.core.ClientContext`.
        out: the transport's output: the WebSocket connection, or a :class:`PollingOut`.
        wire: the :class:`SocketIOWire`.
        handlers: the application's :class:`SocketIOHandlers`.
        sid: the Engine.IO session id.
        registry: what the node keeps for recovery (``pid`` -> state), shared.
        headers: the handshake's headers; ``request``: its path, query and peer, for the
            application's ``environ``.
    """

    transport = "socketio"
    kind = "socketio"
    awaits_connect = True

    __slots__ = ("handlers", "sid", "namespaces", "decoder", "polling", "request", "recovery", "_tasks",
                 "_token_channels", "frames",
                 "_pending_since", "_closing_reason", "websocket", "on_gone", "last_seen", "deadline")

    def __init__(self, context: ClientContext, out: Outbox, wire: SocketIOWire, handlers: SocketIOHandlers, *,
                 sid: str, recovery: dict[str, _Recoverable], headers: dict[str, str] | None = None,
                 request: dict[str, Any] | None = None, polling: bool) -> None:
        super().__init__(context, out, wire, headers=headers, client_id=sid)
        self.handlers = handlers
        self.sid = sid
        self.namespaces: dict[str, NamespaceConnection] = {}
        config = context.config
        self.decoder = Decoder(config.socketio_max_attachments, config.max_message_size)
        #: whether the session is on long-polling (False once upgraded to a WebSocket)
        self.polling = polling
        #: whether a WebSocket carries it (from the start, or since the upgrade)
        self.websocket = not polling
        #: the WebSocket's frame encoder, once one carries it (room events are framed once per encoder)
        self.frames: FrameEncoder | None = None
        self.request = request or {}
        self.recovery = recovery
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_since = 0.0
        self._closing_reason = TRANSPORT_CLOSE
        self._token_channels: tuple[str, ...] = ()
        #: called once when the session ends (the node's registry forgets it)
        self.on_gone: Callable[[SocketIOSession], None] | None = None
        #: monotonic seconds of the last request or message (the polling sweep)
        self.last_seen = time.monotonic()
        #: monotonic seconds by which the client must connect a namespace (``connect_timeout``)
        self.deadline = self.last_seen + config.connect_timeout

    # -- the Engine.IO handshake ------------------------------------------------------------

    def open_packet(self, upgrades: list[str]) -> bytes:
        """The Engine.IO open packet (``0`` + the handshake JSON)."""
        config = self.config
        return engineio.OPEN + dumps({
            "sid": self.sid, "upgrades": upgrades,
            "pingInterval": int(config.ping_interval * 1000) or 25000,
            "pingTimeout": int(config.pong_timeout * 1000),
            "maxPayload": config.max_message_size,
        })

    # WebSocketSession: the connection asks; a Socket.IO client authenticates in CONNECT

    def handshake_nowait(self) -> HandshakeDecision:
        return None

    async def handshake(self) -> Refusal | None:
        return None

    def open_nowait(self) -> bool:
        self.out.send_text(self.open_packet([]))
        return True

    async def open(self) -> None:
        self.open_nowait()

    async def handle_message(self, payload: bytes, binary: bool) -> None:
        await self.handle_engine(payload, binary)

    # -- output ---------------------------------------------------------------------------

    def _send(self, parts: list[bytes]) -> None:
        """Send one Socket.IO packet (its text, then its attachments)."""
        out = self.out
        out.send_text(engineio.MESSAGE + parts[0])
        for buffer in parts[1:]:
            out.send_binary(buffer)

    def _deliver(self, frame: bytes | FrameBatch) -> None:
        data = frame if isinstance(frame, bytes) else frame.join()
        if data[:1] == engineio.MESSAGE:  # one text message: the hot path of a room's fan-out
            frames = self.frames
            if frames is None:
                self.out.send_text(data)
            else:
                self.out.deliver(_framed(frames, data))
            return
        first = data[:1]
        if first == _SKIP:
            head, _, data = data.partition(b"\n")
            skip = loads(head[1:])
            if any(conn.sid in skip for conn in self.namespaces.values()):
                return
            first = data[:1]
        elif first == _CLOSE_ROOM:
            found = channel_room(data[1:].decode())
            conn = self.namespaces.get(found[0]) if found is not None else None
            if conn is not None and found is not None:  # not during the hub's fan-out
                asyncio.get_running_loop().call_soon(self.leave_room, conn, found[1])
            return
        if first == b"\x00":
            for message, binary in unpack_messages(data):
                if binary:
                    self.out.send_binary(message)
                else:
                    self.out.send_text(message)
        else:
            self.out.send_text(data)

    def send_packet(self, type: PacketType, namespace: str, data: Any = None, id: int | None = None) -> None:
        """Send a packet to this client (nothing once closed).

        Raises:
            ValueError: ``data`` is not JSON.
        """
        if not self.closed:
            self._send(encode(type, namespace, data, id))

    def emit(self, namespace: str, event: str, args: list[Any],
             callback: Callable[[list[Any]], None] | None = None) -> None:
        """Send event ``event`` with ``args`` to this client in ``namespace``, directly (not through
        a room); ``callback(args)`` gets the client's acknowledgement.

        Raises:
            ValueError: ``args`` are not JSON (bytes allowed).
        """
        conn = self.namespaces.get(namespace)
        if conn is None or self.closed:
            return
        ack = None
        if callback is not None:
            ack = conn.next_ack
            conn.next_ack += 1
            if len(conn.acks) >= MAX_PENDING_ACKS:
                conn.acks.pop(next(iter(conn.acks)))
            conn.acks[ack] = callback
        self.send_packet(PacketType.EVENT, namespace, [event, *args], ack)

    # -- input ----------------------------------------------------------------------------

    async def handle_engine(self, payload: bytes, binary: bool) -> None:
        """One Engine.IO packet from the client (a WebSocket message, or one packet of a POST).
        A malformed one closes the connection (3501; ``transport error`` for the application)."""
        if self.closed:
            return
        self.last_seen = time.monotonic()
        try:
            if binary:
                packet = self.decoder.binary(payload)
                if packet is None:
                    return
                await self._packet(packet)
                return
            kind = payload[:1]
            if kind == engineio.MESSAGE:
                decoded = self.decoder.text(payload[1:])
                if decoded is None:
                    self._pending_since = time.monotonic()
                    return
                await self._packet(decoded)
            elif kind == engineio.PONG:
                self.pong_expected = False
            elif kind == engineio.PING:  # a v3 client's ping, or a probe on the current transport
                self.out.send_text(engineio.PONG + payload[1:])
            elif kind == engineio.CLOSE:
                self._closing_reason = CLIENT_DISCONNECT
                self.close_transport()
            elif kind in (engineio.NOOP, engineio.UPGRADE):
                pass
            else:
                raise PacketError("unknown Engine.IO packet")
        except PacketError as exc:
            log.info("socket.io client %s sent a malformed packet: %s", self.sid, exc)
            self._closing_reason = TRANSPORT_ERROR
            self.disconnect(DisconnectCode.BAD_REQUEST, "malformed packet")
        except Disconnect as exc:
            self.disconnect(exc.code, exc.reason)

    def attachments_overdue(self, now: float, timeout: float) -> bool:
        """Whether a binary packet has waited for its attachments more than ``timeout`` seconds."""
        return self.decoder.pending is not None and now - self._pending_since > timeout

    async def _packet(self, packet: SocketIOPacket) -> None:
        ptype = packet.type
        if ptype is PacketType.CONNECT:
            await self._connect(packet.namespace, packet.data)
        elif ptype in (PacketType.EVENT, PacketType.BINARY_EVENT):
            await self._event(packet)
        elif ptype in (PacketType.ACK, PacketType.BINARY_ACK):
            conn = self.namespaces.get(packet.namespace)
            callback = conn.acks.pop(packet.id, None) if conn is not None and packet.id is not None else None
            if callback is not None:
                try:
                    callback(packet.data)
                except Exception:
                    log.exception("error in a socket.io ack callback")
        elif ptype is PacketType.DISCONNECT:
            conn = self.namespaces.pop(packet.namespace, None)
            if conn is not None:
                await self._left(conn, CLIENT_DISCONNECT)

    async def _connect(self, namespace: str, auth: Any) -> None:
        if namespace in self.namespaces:
            self.send_packet(PacketType.CONNECT_ERROR, namespace, {"message": "already connected"})
            return
        if ":" in namespace or not self.handlers.has_namespace(namespace):
            self.send_packet(PacketType.CONNECT_ERROR, namespace, {"message": "Invalid namespace"})
            return
        auth = auth if isinstance(auth, dict) else {}
        if not self.connected:
            token = auth.get("token")
            try:
                result = await self.authenticate(token if isinstance(token, str) else "", data=auth)
            except (ProtocolError, Disconnect) as exc:
                code = exc.code
                message = exc.message if isinstance(exc, ProtocolError) else (exc.reason or DISCONNECT_REASONS.get(
                    code, "refused"))
                self.send_packet(PacketType.CONNECT_ERROR, namespace, {"message": message, "data": {"code": code}})
                return
            self._token_channels = result.channels
        recovered = self._recover(namespace, auth)
        auth = {key: value for key, value in auth.items() if key not in ("pid", "offset")}
        if recovered is not None:
            await self._resume(recovered, namespace, auth)
            return
        conn = NamespaceConnection(namespace, _new_id())
        if self._history():
            conn.pid = _new_id()
        self.namespaces[namespace] = conn
        try:
            await self.enter_room(conn, conn.sid)
            await self.handlers.connect(self, namespace, conn.sid, auth)
        except ConnectRefused as exc:
            body: dict[str, Any] = {"message": exc.message}
            if exc.data is not None:
                body["data"] = exc.data
            self._refuse_connect(conn, namespace, body)
            return
        except (ProtocolError, BadRequest) as exc:
            self._refuse_connect(conn, namespace, {"message": exc.message, "data": {"code": exc.code}})
            return
        except Disconnect:
            self.namespaces.pop(namespace, None)
            raise
        except Exception:
            log.exception("error in socket.io connect handler")
            self._refuse_connect(conn, namespace, {"message": "internal server error"})
            return
        if self.namespaces.get(namespace) is not conn:  # the handler disconnected it
            return
        channels, self._token_channels = self._token_channels, ()
        for channel in channels:  # the connection token's channels: server-side subscriptions
            try:
                ns, _ = await self.authorize_subscribe(channel, server_side=True)
                await self.join(channel, ns)
            except (ProtocolError, BadRequest) as exc:
                log.warning("server-side subscription to %r failed: %s", channel, exc.message)
        reply: dict[str, Any] = {"sid": conn.sid}
        if conn.pid:
            reply["pid"] = conn.pid
        self.send_packet(PacketType.CONNECT, namespace, reply)

    async def _event(self, packet: SocketIOPacket) -> None:
        conn = self.namespaces.get(packet.namespace)
        if conn is None:
            return  # Socket.IO servers ignore events of a namespace not connected
        data = packet.data
        event = data[0]
        if not isinstance(event, str) or event in RESERVED_EVENTS:
            raise PacketError("invalid event name")
        if not self.allow_command():
            if packet.id is not None:
                self.send_packet(PacketType.ACK, packet.namespace, [{"error": {
                    "code": int(ErrorCode.TOO_MANY_REQUESTS), "message": "too many requests"}}], packet.id)
            return
        while len(self._tasks) >= MAX_HANDLERS:
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(self._run_event(conn, event, data[1:], packet.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_event(self, conn: NamespaceConnection, event: str, args: list[Any], ack: int | None) -> None:
        try:
            reply = await self.handlers.event(self, conn.namespace, conn.sid, event, args)
        except Exception:
            log.exception("error in socket.io event handler %r", event)
            return
        if ack is not None and reply is not None and not self.closed:
            try:
                self.send_packet(PacketType.ACK, conn.namespace, reply, ack)
            except ValueError:
                log.error("socket.io ack of %r is not JSON", event)

    # -- hub channels the client uses itself (HubHandlers) ----------------------------------

    async def subscribe_channel(self, channel: Any, token: str = "") -> None:
        """Subscribe to hub channel ``channel`` as this client (its permissions, subscription
        token, ``on_subscribe``, ``client_channel_limit``); room channels (``socketio:``) are
        the application's, not the client's.

        Raises:
            ProtocolError: 102, 103, 105, 106, 107, 109 as the protocol's ``subscribe``.
        """
        if isinstance(channel, str) and channel.startswith(CHANNEL_PREFIX + ":"):
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "rooms are joined by the server")
        ns, info = await self.authorize_subscribe(channel, token)
        await self.join(channel, ns, info)

    async def publish(self, channel: Any, data: Any = None, *, publication: Publication | None = None,
                      source: str = "client") -> StreamPosition:
        """:meth:`~hubbub.core.ClientCore.publish`; room channels are the application's."""
        if isinstance(channel, str) and channel.startswith(CHANNEL_PREFIX + ":"):
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "rooms are emitted to by the server")
        return await super().publish(channel, data, publication=publication, source=source)

    def _push_subscribed(self, channel: str, result: SubscribeResult, ns: NamespaceOptions) -> None:
        if "/" in self.namespaces and channel_room(channel) is None:
            self.send_packet(PacketType.EVENT, "/", ["subscribe", channel])

    def _push_unsubscribed(self, channel: str, code: int, reason: str) -> None:
        if "/" in self.namespaces and channel_room(channel) is None:
            self.send_packet(PacketType.EVENT, "/", ["unsubscribe", channel, {"code": code, "reason": reason}])

    # -- rooms ----------------------------------------------------------------------------

    def _history(self) -> bool:
        ns = self.config.namespaces.get(CHANNEL_PREFIX)
        return ns is not None and ns.history

    async def enter_room(self, conn: NamespaceConnection, room: str,
                         since: StreamPosition | None = None) -> list[Publication]:
        """Join ``room`` (a hub channel, server-side: validated and within
        ``client_channel_limit``); with ``since``, returns the publications missed since.

        Raises:
            BadRequest: an invalid room name. ProtocolError, Disconnect: as
            :meth:`~hubbub.core.ClientCore.authorize_subscribe`.
        """
        channel = room_channel(conn.namespace, room)
        if channel in self.channels:
            conn.rooms.add(room)
            return []
        ns, _ = await self.authorize_subscribe(channel, server_side=True)
        conn.rooms.add(room)
        try:
            result = await self.join(channel, ns, recover_since=since, recoverable=since is not None)
        except BaseException:
            conn.rooms.discard(room)
            raise
        return result.publications + result.late

    def leave_room(self, conn: NamespaceConnection, room: str) -> None:
        conn.rooms.discard(room)
        self.leave(room_channel(conn.namespace, room))

    def _refuse_connect(self, conn: NamespaceConnection, namespace: str, body: dict[str, Any]) -> None:
        """Take back a namespace connect that a handler or a rule refused (the namespace and
        the rooms it entered) and answer CONNECT_ERROR with ``body``."""
        self.namespaces.pop(namespace, None)
        self._forget_rooms(conn)
        self.send_packet(PacketType.CONNECT_ERROR, namespace, body)

    def _forget_rooms(self, conn: NamespaceConnection) -> None:
        for room in list(conn.rooms):
            self.leave_room(conn, room)

    async def _left(self, conn: NamespaceConnection, reason: str) -> None:
        """The client ended a namespace (``DISCONNECT``): leave its rooms (nothing kept for
        recovery: it left on purpose), tell the application."""
        self._forget_rooms(conn)
        try:
            await self.handlers.disconnect(self, conn.namespace, conn.sid, reason)
        except Exception:
            log.exception("error in socket.io disconnect handler")

    # -- connection state recovery ------------------------------------------------------------

    def _keep_for_recovery(self, conn: NamespaceConnection) -> None:
        """Keep what recovery needs of a namespace whose connection was lost (not one the
        server ended: then the client does not come back)."""
        if not conn.pid or self._closing_reason == SERVER_DISCONNECT:
            return
        positions = {}
        for room in conn.rooms:
            position = self.hub.position(room_channel(conn.namespace, room))
            if position is not None:
                positions[room] = position
        now = time.monotonic()
        recovery = self.recovery
        for pid in [pid for pid, kept in recovery.items() if kept.until < now]:
            del recovery[pid]
        while len(recovery) >= MAX_RECOVERABLE:  # the oldest first (insertion order)
            del recovery[next(iter(recovery))]
        recovery[conn.pid] = _Recoverable(conn.sid, conn.namespace, self.user, set(conn.rooms), conn.data,
                                               positions, now + self.config.socketio_recovery_window)

    def _recover(self, namespace: str, auth: dict[str, Any]) -> _Recoverable | None:
        pid, offset = auth.get("pid"), auth.get("offset")
        if not isinstance(pid, str) or not isinstance(offset, str):
            return None
        kept = self.recovery.get(pid)
        if kept is None or kept.namespace != namespace or kept.user != self.user or kept.until < time.monotonic():
            return None
        del self.recovery[pid]
        epoch, _, rest = offset.partition(":")
        number, _, channel = rest.partition(":")
        found = channel_room(channel)
        if found is not None and found[0] == namespace and found[1] in kept.rooms and number.isdigit():
            kept.positions[found[1]] = StreamPosition(int(number), epoch)
        kept.positions["\x00pid"] = StreamPosition(0, pid)
        return kept

    async def _resume(self, kept: _Recoverable, namespace: str, auth: dict[str, Any]) -> None:
        """Connection state recovery: the same sid, rooms and session, then what was missed
        (the application's ``connect`` runs again, as Socket.IO's ``connection`` event does)."""
        pid = kept.positions.pop("\x00pid").epoch
        conn = NamespaceConnection(namespace, kept.sid, pid, data=kept.data)
        self.namespaces[namespace] = conn
        missed: list[tuple[str, Publication]] = []
        for room in sorted(kept.rooms, key=lambda r: r != kept.sid):
            position = kept.positions.get(room)
            try:
                for pub in await self.enter_room(conn, room, position):
                    missed.append((room, pub))
            except (ProtocolError, BadRequest, Disconnect) as exc:
                log.info("socket.io recovery of room %r failed: %s", room, exc)
        try:
            await self.handlers.connect(self, namespace, conn.sid, auth)
        except ConnectRefused as exc:
            self._refuse_connect(conn, namespace, {"message": exc.message, "data": exc.data})
            return
        except Exception:
            log.exception("error in socket.io connect handler")
            self._refuse_connect(conn, namespace, {"message": "internal server error"})
            return
        self.send_packet(PacketType.CONNECT, namespace, {"sid": conn.sid, "pid": pid})
        wire = self.wire
        assert isinstance(wire, SocketIOWire)
        for room, pub in missed:
            if pub.exclude_client == self.client_id:
                continue
            encoded = wire.encode_publication(room_channel(namespace, room), pub)
            if encoded is not None:
                self._deliver(encoded)

    # -- keepalive and the end -------------------------------------------------------------

    def ping(self) -> None:
        """An Engine.IO ping (``2``): the client answers ``3``."""
        if not self.closed:
            self.pong_expected = True
            self.out.send_text(engineio.PING)

    def check_pong(self) -> None:
        if self.pong_expected and not self.closed:
            self._closing_reason = PING_TIMEOUT
            self.disconnect(DisconnectCode.NO_PONG, "ping timeout")

    def disconnect(self, code: int, reason: str | None = None) -> None:
        """Close the connection with ``code``. A code that tells a client not to reconnect
        (3500-3999, 1000) first ends each namespace with ``DISCONNECT`` (``io server disconnect``)."""
        if self.closed:
            return
        if code == DisconnectCode.NORMAL or 3500 <= code < 4000:
            if self._closing_reason == TRANSPORT_CLOSE:
                self._closing_reason = SERVER_DISCONNECT
            for namespace in self.namespaces:
                self.send_packet(PacketType.DISCONNECT, namespace)
        self.closed = True
        self.out.close(code, reason or "")
        # the end runs soon, not now: this may be called during the hub's fan-out (a slow client)
        try:
            asyncio.get_running_loop().call_soon(self._end)
        except RuntimeError:
            self._end()

    def disconnect_namespace(self, namespace: str) -> None:
        """End one namespace from the server side (``DISCONNECT``): the application's ``disconnect``."""
        conn = self.namespaces.pop(namespace, None)
        if conn is None:
            return
        self.send_packet(PacketType.DISCONNECT, namespace)
        self._forget_rooms(conn)
        self._spawn_final(self._handler_disconnect(conn, SERVER_DISCONNECT))

    async def _handler_disconnect(self, conn: NamespaceConnection, reason: str) -> None:
        try:
            await self.handlers.disconnect(self, conn.namespace, conn.sid, reason)
        except Exception:
            log.exception("error in socket.io disconnect handler")

    def _spawn_final(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a ``disconnect`` handler: a task of :data:`FINAL_TASKS`, not cancelled with the session."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        task = loop.create_task(coro)
        FINAL_TASKS.add(task)
        task.add_done_callback(FINAL_TASKS.discard)

    def close_transport(self) -> None:
        """The client closed (Engine.IO ``1``): end the session without a close packet."""
        if self.closed:
            return
        self.closed = True
        self.out.close(DisconnectCode.NORMAL, "")
        self._end()

    def _end(self) -> None:
        """Tell the application each namespace ended, then leave every room (:meth:`on_closed`)."""
        namespaces, self.namespaces = self.namespaces, {}
        for conn in namespaces.values():
            self._keep_for_recovery(conn)
            conn.acks.clear()
            if self.handlers is not None:
                self._spawn_final(self._handler_disconnect(conn, self._closing_reason))
        self.on_closed()

    def abandon(self) -> None:
        self.closed = True
        self._end()

    def on_closed(self) -> None:
        """The transport is gone: end the namespaces (once), leave every channel, forget the session."""
        if self.namespaces:
            self.closed = True
            self._end()
            return
        self.closed = True
        current = _current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        super().on_closed()
        gone, self.on_gone = self.on_gone, None
        if gone is not None:
            gone(self)


#: The ``disconnect`` handlers running after their sessions ended (owned here until done).
FINAL_TASKS: set[asyncio.Task[None]] = set()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


#: The last message framed for a WebSocket: ``[payload, encoder, frame]``. The hub hands every
#: subscriber of a publication the same payload object in a row, so it is framed once per encoder
#: (plain, compressing, ASGI), not once per subscriber.
_LAST_FRAMED: list[Any] = [None, None, b""]


def _framed(frames: FrameEncoder, payload: bytes) -> bytes:
    last = _LAST_FRAMED
    if last[0] is payload and last[1] is frames:
        frame: bytes = last[2]
        return frame
    frame = frames.text(payload)
    last[0], last[1], last[2] = payload, frames, frame
    return frame


def _new_id() -> str:
    return secrets.token_urlsafe(15)
