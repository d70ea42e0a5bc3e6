"""Framework endpoints: the connection object a handler gets, and the
session that runs a handler for one connection.

An endpoint is either

* a class with any of ``connect(ws)``, ``handle_message(ws, message)``,
  ``disconnect(ws)`` and ``produce(ws)``; a new instance serves each
  connection; or
* a plain ``async def handler(ws)`` function that runs for the life of the
  connection (typically ``async for message in ws: ...``).

Life cycle (the consumer/producer pattern of the ``websockets`` docs, built
in): ``connect``, then ``handle_message`` for each message in order, alongside
``produce`` if the class has one. A function endpoint, or a class with
``produce``, runs in one task for the connection's life; a class without
``produce`` has a task only while one of its hooks runs (``connect``, a burst of
``handle_message`` calls, ``disconnect``), so an idle connection holds none.
When the client goes away a running hook is cancelled (``disconnect`` still
runs); when the handler returns, or ``produce`` ends, the connection is closed
with 1000. An exception
in a handler is logged with its traceback and closes that connection with
1011; :class:`~hubbub.errors.Disconnect` closes with its code. No task
outlives its connection.

Handlers written for the ``websockets`` library (its "patterns" guide) work
unchanged: once the connection is closed (by either side), :meth:`WebSocket.send`
and :meth:`WebSocket.recv` raise ``websockets.exceptions.ConnectionClosedOK``
(codes 1000, 1001, 1005) or ``ConnectionClosedError`` (any other code, 1006
when the connection dropped without a close frame), ``async for message in
ws`` ends on a normal close and raises ``ConnectionClosedError`` otherwise,
and :meth:`WebSocket.wait_closed` returns. The exceptions are hubbub's
subclasses :class:`ConnectionClosedOK` and :class:`ConnectionClosedError`
(defined in :mod:`hubbub.endpoint_errors`, importable from here), which are
also ``ConnectionError``. A handler that ends with one of them because its
connection closed ends normally: no traceback, the close code stays. Tasks a
handler starts itself (``asyncio.create_task``) are its own: they are not
cancelled with the endpoint's task, but a loop in them that sends or receives
ends with the connection.

:class:`Registry` keeps the open connections of each endpoint (a read-only
set per path pattern) and :func:`broadcast` sends one message to many
connections, framing it once.

A :class:`WebSocket` is a client of the hub like any other, decided at the
handshake, before ``101`` (tokens, ``anonymous=True/False``, limits, expiry,
command rate): ``docs/security.md``, "One set of rules for every way in", and
``docs/design.md``, "Choke points: one rule, one place".
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Protocol

from .brokers.base import Publication, StreamPosition
from .codes import DisconnectCode, ErrorCode
from .core import PENDING, ClientContext, ClientCore, HandshakeDecision, Refusal
from .errors import Disconnect, ProtocolError
from .http import HTTPRequest
from .outbox import Outbox
from .relay import RelayWire, handshake_token, refusal
from .strictjson import encode_data

if TYPE_CHECKING:
    from .endpoint_errors import ConnectionClosedError, ConnectionClosedOK

log = logging.getLogger("hubbub.endpoint")

#: Bytes of messages queued for a handler before reading from the socket pauses
#: (a message is always accepted; reading resumes below half of it). Bounded in
#: bytes, so that many small messages are handled in one pass of the event loop
#: and their deliveries share the writes of that pass.
MAX_QUEUED_BYTES = 256 * 1024
#: Messages queued for a handler, whatever their size, before reading pauses.
MAX_QUEUED_MESSAGES = 4096

Message = str | bytes

#: The close code when the connection dropped without a close frame.
ABNORMAL_CLOSURE = 1006

_Close = tuple[int, str]  # (code, reason) of a close frame

# -- exceptions -----------------------------------------------------------------------------
# Plain classes in hubbub.endpoint_errors, which imports websockets: loaded on first use, so
# that importing this module does not load websockets (the sans-I/O layering, tests/test_core.py).


def __getattr__(name: str) -> Any:
    """``ConnectionClosedOK`` and ``ConnectionClosedError`` of :mod:`hubbub.endpoint_errors`
    (PEP 562: imported on first use)."""
    if name == "ConnectionClosedOK":
        from .endpoint_errors import ConnectionClosedOK

        return ConnectionClosedOK
    if name == "ConnectionClosedError":
        from .endpoint_errors import ConnectionClosedError

        return ConnectionClosedError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the transport contract -------------------------------------------------------------------


class ClosingHandshake(Protocol):
    """The state of a WebSocket closing handshake, as websockets' sans-I/O ``Protocol``
    object keeps it on hubbub's own server."""

    @property
    def close_rcvd(self) -> Any:
        """The close frame received (``code``, ``reason``), or ``None``."""

    @property
    def close_sent(self) -> Any:
        """The close frame sent (``code``, ``reason``), or ``None``."""

    @property
    def close_rcvd_then_sent(self) -> bool | None:
        """Whether the close frame was received before one was sent (``None`` until both)."""


class EndpointOut(Outbox, Protocol):
    """What an endpoint needs from its connection: an :class:`~hubbub.outbox.Outbox` that
    shows its closing handshake. ``ws`` is websockets' protocol object on hubbub's own
    server (``hubbub.connection.Connection.ws``) and ``None`` under ASGI, where the ASGI
    server frames (``hubbub.asgi.ASGIConnection.ws``): the endpoint then knows only the
    close it asked for."""

    @property
    def ws(self) -> ClosingHandshake | None: ...


# -- connections of an endpoint ---------------------------------------------------------------


class Connections(AbstractSet["WebSocket"]):
    """The open connections of one endpoint: a read-only, live, set-like view
    (``len``, ``in``, iteration, and the comparisons and operators of
    :class:`collections.abc.Set`, which return plain sets).

    A connection is in it from the start of its endpoint task (after the
    handshake) until it closes (as soon as either side closes it).
    Iteration goes over a snapshot, in the order the connections opened: the
    view may change while a loop awaits.
    """

    __slots__ = ("_members",)

    def __init__(self) -> None:
        self._members: dict[WebSocket, None] = {}

    def __contains__(self, ws: object) -> bool:
        return ws in self._members

    def __iter__(self) -> Iterator[WebSocket]:
        return iter(list(self._members))

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        return f"<Connections: {len(self._members)} open>"

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        # the operators of a view (``|``, ``&``, ...) make plain sets
        return set(it)

    def _add(self, ws: WebSocket) -> None:
        self._members[ws] = None

    def _discard(self, ws: WebSocket) -> None:
        self._members.pop(ws, None)


class Registry:
    """The open connections of an application's endpoints, by path pattern.

    ``registry.connections("/rooms/{room}")`` is the live :class:`Connections`
    view of the endpoint at that pattern (every room). A :class:`WebSocket`
    made with ``registry=`` and ``route=`` (its endpoint's pattern) joins it.
    """

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[str, Connections] = {}

    def connections(self, pattern: str) -> Connections:
        """The live view of the open connections of the endpoint at ``pattern``
        (empty, and filled later, for a pattern that has none yet)."""
        group = self._groups.get(pattern)
        if group is None:
            group = self._groups[pattern] = Connections()
        return group

    def __iter__(self) -> Iterator[WebSocket]:
        """Every open connection, of every endpoint."""
        for group in list(self._groups.values()):
            yield from group

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())


def broadcast(connections: Iterable[WebSocket], message: str | bytes) -> None:
    """Send ``message`` to every open connection of ``connections``, like
    ``websockets.broadcast``: ``str`` as one text message, ``bytes`` (or
    ``bytearray``, ``memoryview``) as one binary message.

    ``connections`` is any iterable of :class:`WebSocket`: the live view
    ``app.connections(path)``, or a set of the application's own (the
    "registration" pattern). Connections that are closed or closing are
    skipped silently.

    The message is framed once per kind of connection (hubbub's own server,
    ASGI) and the same bytes are queued to each connection, without awaiting
    and without a task per connection: it is written at the end of the
    event-loop iteration. Like any push it counts against
    ``max_pending_output``: a client that does not read fast enough is not
    waited for; once its pending output passes the bound, its queue is
    dropped and the connection closed with 3008 ("slow"), and it leaves the
    endpoint's connections (its handler sees ``ConnectionClosedError``).

    Raises:
        TypeError: ``message`` is neither ``str`` nor bytes-like.
    """
    if isinstance(message, str):
        payload, binary = message.encode(), False
    elif isinstance(message, (bytes, bytearray, memoryview)):
        payload, binary = bytes(message), True
    else:
        raise TypeError(f"broadcast() takes str or bytes, not {type(message).__name__}")
    frames: dict[type, bytes] = {}  # encoder type -> frame
    for ws in connections:
        out = ws.out
        if ws.closed or not out.open:
            continue
        encoder = ws.wire.frames
        kind = type(encoder)
        frame = frames.get(kind)
        if frame is None:
            frame = frames[kind] = encoder.binary(payload) if binary else encoder.text(payload)
        out.deliver(frame)


class WebSocket(ClientCore):
    """The connection object handed to endpoint handlers, and the session that
    runs the endpoint for it.

    The connection API follows ``websockets``' ``ServerConnection`` where it
    makes sense (``send``, ``recv``, ``async for``, ``close``, ``wait_closed``,
    ``close_code``, ``close_reason``, ``remote_address``), so handlers written
    for ``websockets`` run unchanged (see the module docstring).

    It is authenticated at the handshake by the client core, like a relay
    client (see the module docstring): the connection token, the
    ``on_connect`` hook, anonymous access, the per-user connection limit;
    then held to the token's expiry and the command rate. A handler can take
    a new connection token for the same user with ``await ws.refresh(token)``
    (:meth:`ClientCore.refresh <hubbub.core.ClientCore.refresh>`: raises
    ``ProtocolError`` 109 for an expired token, ``Disconnect`` 3500 for an
    invalid one or another user's), which moves :attr:`expire_at`.

    Attributes:
        request: the handshake request (``path``, ``params`` of the route,
            ``query``, ``headers`` with lower-case names).
        client_id: a unique id of this connection.
        user: the user of the connection token, or the one the ``on_connect``
            hook returned (``""``: anonymous).
        expire_at: unix time (seconds) when the connection is closed with
            3005 unless refreshed; ``None``: never.
        state: a dict for the handler's own per-connection data.
        closed: whether the connection is closed, or closing: set as soon as
            the server closes it (:meth:`close`, a hub disconnect such as 3008
            "slow") or the connection is gone.

    Args:
        context, out, wire, request: from the server (see ``App``).
        endpoint: the endpoint class or ``async def handler(ws)``.
        registry: a :class:`Registry` the connection joins while open, under
            ``route``.
        route: the endpoint's path pattern (``/rooms/{room}``); by default
            the request's path.
        anonymous: whether clients without a connection token are accepted:
            ``None`` (the default) as the hub decides (``allow_anonymous``),
            ``True`` even when the hub requires tokens, ``False`` never.
    """

    transport = "endpoint"
    #: anonymous endpoint clients are not filed under user "" (memory per connection)
    register_anonymous = False

    wire: RelayWire
    out: EndpointOut

    __slots__ = ("request", "state", "_endpoint", "_messages", "_queued", "_room", "_task", "_token", "_group",
                 "_sent", "_final", "_gone", "_instance", "_reactive", "_ended", "_connected_hook", "_connect_done")

    def __init__(self, context: ClientContext, out: EndpointOut, wire: RelayWire, request: HTTPRequest,
                 endpoint: Any = None, *, registry: Registry | None = None, route: str | None = None,
                 anonymous: bool | None = None) -> None:
        if anonymous is not None and anonymous != context.anonymous:
            context = _with_anonymous(context, anonymous)
        super().__init__(context, out, wire, headers=request.headers)
        self.request = request
        self.state: dict[str, Any] = {}
        self._endpoint = endpoint
        # made on first use, dropped again while a reactive endpoint is idle (memory per connection)
        self._messages: asyncio.Queue[Message | None] | None = None  # bounded by handle_message
        self._queued = 0  # bytes (characters of text) of the queued messages
        self._room: asyncio.Future[None] | None = None  # handle_message waits on it while the queue is full
        self._task: asyncio.Task[None] | None = None
        self._token = handshake_token(request.headers, request.query)  # until the handshake is decided
        self._group = None if registry is None else registry.connections(request.path if route is None else route)
        self._sent: _Close | None = None  # the close frame the server asked for (without a protocol object)
        self._final: tuple[_Close | None, _Close | None, bool | None] | None = None  # close frames, once gone
        self._gone: asyncio.Event | bool = False  # True once gone; an Event while wait_closed() waits
        #: a class endpoint without ``produce`` has a task only while a handler runs (see _react)
        self._instance: Any = None
        self._reactive = not inspect.iscoroutinefunction(endpoint) and endpoint is not None \
            and getattr(endpoint, "produce", None) is None
        self._ended = False  # the endpoint's end (disconnect hook) has run
        self._connected_hook = False  # the connect hook was started
        self._connect_done = False  # ... and returned

    @property
    def params(self) -> dict[str, str]:
        """Path parameters, e.g. ``{"room": "lobby"}`` for ``/rooms/{room}``."""
        return self.request.params

    @property
    def path(self) -> str:
        """The request's path (without the query string)."""
        return self.request.path

    @property
    def request_headers(self) -> dict[str, str]:
        """The handshake's HTTP headers (lower-case names), without the upgrade's own
        (``upgrade``, ``connection``, ``sec-websocket-key``, ``-version``, ``-extensions``)."""
        return self.request.headers

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The client's ``(host, port)``, as seen by the server (``None`` if unknown)."""
        return self.request.client

    @property
    def close_code(self) -> int | None:
        """The close code: ``None`` while the connection is open; the
        client's code if the client closed first, the server's if the server
        did (``close()``, 3008 "slow", ...); 1006 if the connection dropped
        without a close frame."""
        return None if not self._ending() else self._close_frame()[0]

    @property
    def close_reason(self) -> str | None:
        """The close reason that goes with :attr:`close_code` (``None`` while open)."""
        return None if not self._ending() else self._close_frame()[1]

    async def send(self, message: str | bytes) -> None:
        """Send one message: ``str`` as text, ``bytes`` as binary.

        Once the server closed the connection (:meth:`close`, a hub
        disconnect), ``send`` raises at once; while a closing handshake started
        by the client is in progress it waits for its end, then raises.

        Raises:
            ConnectionClosedOK: the connection is closed normally.
            ConnectionClosedError: the connection is closed with an error code,
                or dropped. Both are ``ConnectionError`` too.
            TypeError: for any other type.
        """
        if isinstance(message, str):
            if self._ending():
                await self._send_failed()
            self.out.send_text(message.encode())
        elif isinstance(message, (bytes, bytearray, memoryview)):
            if self._ending():
                await self._send_failed()
            self.out.send_binary(bytes(message))
        else:
            raise TypeError(f"send() takes str or bytes, not {type(message).__name__}")

    async def _send_failed(self) -> None:
        if not self.closed:
            # the client started the closing handshake: like websockets, wait
            # for its end (the endpoint's task is cancelled then), then raise
            await self.wait_closed()
        raise self._closed_error()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` (1000, 3000-4999) and ``reason``.
        Returns at once; :meth:`wait_closed` waits for the end of the connection."""
        self.disconnect(code, reason)

    async def recv(self) -> Message:
        """The next message (``str`` or ``bytes``). Messages received before the
        close are still returned.

        Raises:
            ConnectionClosedOK: the connection is closed (or closing) normally.
            ConnectionClosedError: the connection is closed with an error code,
                or dropped. Both are ``ConnectionError`` too.
        """
        messages = self._queue()
        if messages.empty() and self._ending():
            raise self._closed_error()
        message = await messages.get()
        if message is None:
            if messages.empty():
                messages.put_nowait(None)  # wakes another waiting recv(), if any
            raise self._closed_error()
        self._queued -= len(message)
        room = self._room
        if room is not None and self._queued <= MAX_QUEUED_BYTES // 2 and messages.qsize() <= MAX_QUEUED_MESSAGES // 2:
            self._room = None
            if not room.done():
                room.set_result(None)
        return message

    def _queue(self) -> asyncio.Queue[Message | None]:
        messages = self._messages
        if messages is None:
            messages = self._messages = asyncio.Queue()
        return messages

    def __aiter__(self) -> AsyncIterator[Message]:
        """``async for message in ws``: ends when the connection closes
        normally, raises :class:`ConnectionClosedError` otherwise."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        from .endpoint_errors import ConnectionClosedOK

        while True:
            try:
                message = await self.recv()
            except ConnectionClosedOK:
                return
            yield message

    async def wait_closed(self) -> None:
        """Return once the connection is closed (the TCP connection is gone:
        after the closing handshake, or ``close_timeout``).

        When the client goes away the endpoint's task is cancelled: code that
        must run after ``await ws.wait_closed()`` in a handler belongs in a
        ``finally`` block (as in the websockets guide's registration pattern).
        """
        gone = self._gone
        if gone is True:
            return
        if gone is False:
            gone = self._gone = asyncio.Event()
        await gone.wait()

    # -- close state -----------------------------------------------------------------------

    def _ending(self) -> bool:
        """Whether the connection is closed or closing (either side)."""
        return self.closed or not self.out.open

    def _close_frames(self) -> tuple[_Close | None, _Close | None, bool | None]:
        """The close frames received and sent so far, and their order."""
        if self._final is not None:
            return self._final
        protocol = self.out.ws
        if protocol is None:  # no closing handshake of its own (ASGI): the close asked for
            return None, self._sent, None
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        return (None if rcvd is None else (rcvd.code, rcvd.reason),
                None if sent is None else (sent.code, sent.reason),
                protocol.close_rcvd_then_sent)

    def _close_frame(self) -> _Close:
        """The close frame that closed the connection (the first one), or 1006."""
        rcvd, sent, rcvd_then_sent = self._close_frames()
        if rcvd is not None and (sent is None or rcvd_then_sent):
            return rcvd
        if sent is not None:
            return sent
        return ABNORMAL_CLOSURE, ""

    def _closed_error(self) -> ConnectionClosedOK | ConnectionClosedError:
        from .endpoint_errors import closed_error

        return closed_error(*self._close_frames())

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel``'s publications on this connection: each arrives
        as one message (its JSON data as text; relay messages as sent).

        Raises:
            ProtocolError: 107/102 for a bad channel, 105 if subscribed
                already, 106 over ``client_channel_limit``.
        """
        try:
            ns, _ = await self.authorize_subscribe(channel, server_side=True)
        except Disconnect:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, "channel limit exceeded") from None
        await self.join(channel, ns)

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``'s publications."""
        self.leave(channel)

    async def publish(self, channel: str, data: Any) -> StreamPosition:  # type: ignore[override]  # the application publishes data, without the client options of ClientCore.publish
        """Publish ``data`` (any JSON value) to ``channel``, as the application
        (like :meth:`Hub.publish <hubbub.hub.Hub.publish>`, which returns the
        same): the publication's stream position (``offset`` 0 and ``epoch``
        ``""`` without history).

        Raises:
            BadRequest: 107 for an invalid channel name or data.
            ProtocolError: 102 unknown namespace, 100 if the broker failed.
        """
        return await self.hub.publish(channel, Publication(encode_data(data)), source="app")

    def disconnect(self, code: int, reason: str | None = None) -> None:
        """Close with ``code`` (what the hub uses: 3008, 3010, ...)."""
        if not self.closed:
            self.closed = True
            if self._sent is None:
                self._sent = (code, reason or "")
            self._leave_registry()
            self._wake_readers()
        self.out.close(code, reason or "")

    def _leave_registry(self) -> None:
        if self._group is not None:
            self._group._discard(self)

    def _wake_readers(self) -> None:
        self._queue().put_nowait(None)
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)  # nothing more will be read for the handler
        self._kick()  # a reactive endpoint's end (disconnect hook) runs now, as the handler's would

    def _kick(self) -> None:
        """Start a reactive endpoint's task if it has work and none runs."""
        task = self._task
        if self._reactive and (task is None or task.done()) and not self._ended and self._instance is not None:
            self._task = asyncio.get_running_loop().create_task(self._react())
            self._task.add_done_callback(self._task_done)

    # -- the session side (called by the connection) -----------------------------------

    def handshake_nowait(self) -> HandshakeDecision:
        """Authenticate at once (:meth:`ClientCore.authenticate_nowait`): ``None``
        accepts, a :data:`~hubbub.core.Refusal` refuses (401 for a missing,
        invalid or expired token, 429 over the user's connection limit),
        :data:`~hubbub.core.PENDING` when :meth:`handshake` must be awaited
        (an ``on_connect`` hook, a JWKS lookup)."""
        try:
            if self.authenticate_nowait(self._token) is None:
                return PENDING
        except (ProtocolError, Disconnect) as exc:
            return refusal(exc)
        self._token = ""
        return None

    async def handshake(self) -> Refusal | None:
        """Authenticate, awaiting the ``on_connect`` hook and key lookups
        (:meth:`ClientCore.authenticate`); refusals as :meth:`handshake_nowait`."""
        try:
            await self.authenticate(self._token)
        except (ProtocolError, Disconnect) as exc:
            return refusal(exc)
        finally:
            self._token = ""
        return None

    async def open(self) -> None:
        self.open_nowait()

    def open_nowait(self) -> bool:
        """Start the endpoint: the connection joins its endpoint's :class:`Connections`.
        A function endpoint, or a class with ``produce``, gets its task now (it runs for
        the connection's life). A class without ``produce`` is made now and gets a task
        only while a hook runs: ``connect`` now, if it has one; ``handle_message`` when
        messages arrive; ``disconnect`` at the end. An idle connection holds no task."""
        if self._group is not None and not self.closed:
            self._group._add(self)
        if not self._reactive:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(self._task_done)
            return True
        try:
            self._instance = self._endpoint()
        except Exception:
            log.exception("error in WebSocket endpoint %s", self.request.path)
            self._ended = True
            self.disconnect(DisconnectCode.INTERNAL_ERROR, "internal error")
            return True
        if getattr(self._instance, "connect", None) is not None:
            self._kick()
        return True

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:  # a reactive endpoint may have started its next run already
            self._task = None

    async def handle_message(self, payload: bytes, binary: bool) -> None:
        """Queue one message for the handler. Each counts as a command against
        ``client_command_rate``: one over it closes the connection with 3013,
        as on the relay."""
        if self.closed:
            return
        self.pong_expected = False
        try:
            if not self.allow_command():
                raise Disconnect(DisconnectCode.TOO_MANY_REQUESTS)
        except Disconnect as exc:
            self.disconnect(exc.code, exc.reason)
            return
        message: Message = payload if binary else payload.decode()
        messages = self._queue()
        messages.put_nowait(message)
        self._queued += len(message)
        self._kick()
        if (self._queued > MAX_QUEUED_BYTES or messages.qsize() > MAX_QUEUED_MESSAGES) and not self.closed:
            # full: wait for the handler (the connection's inbox fills, then reading pauses)
            self._room = room = asyncio.get_running_loop().create_future()
            await room

    def check_pong(self) -> None:
        if self.pong_expected and not self.closed:
            self.disconnect(1011, "keepalive ping timeout")

    def on_closed(self) -> None:
        if self._final is None:
            self._final = self._close_frames()
        super().on_closed()
        running = self._task  # cancelled below; a reactive endpoint's end runs in a task of its own
        self._leave_registry()
        self._wake_readers()
        gone, self._gone = self._gone, True
        if gone is not True and gone is not False:
            gone.set()
        if running is not None and not running.done():
            running.cancel()

    async def _react(self) -> None:
        """One run of a class endpoint without ``produce``: its ``connect`` hook (the
        first run), then the messages queued; it ends once they are handled (the next
        message starts another run) or, once the connection is closing, with the
        endpoint's end (``disconnect`` hook), as :meth:`_run` does for the others."""
        instance = self._instance
        final = True
        try:
            if not self._connected_hook:
                self._connected_hook = True
                connect = getattr(instance, "connect", None)
                if connect is not None:
                    await connect(self)
                self._connect_done = True
            handle: Callable[[WebSocket, Message], Awaitable[None]] | None = getattr(instance, "handle_message", None)
            while True:
                messages = self._messages
                if (messages is None or messages.empty()) and not self._ending():
                    break
                message = await self.recv()  # raises once the connection is closing and all are read
                if handle is not None:
                    await handle(self, message)
            if self._messages is not None and self._messages.empty() and self._room is None:
                self._messages = None  # idle: nothing held (the next message makes another)
            final = False
        except asyncio.CancelledError:
            pass
        except Disconnect as exc:
            await self.close(exc.code, exc.reason)
        except Exception as exc:
            from .endpoint_errors import ConnectionClosedError, ConnectionClosedOK

            if isinstance(exc, ConnectionClosedOK) and self._ending():
                if not self.closed:
                    await self.close(1000)
            elif isinstance(exc, ConnectionClosedError) and self._ending():
                pass  # the connection closed under the handler: a normal end
            else:
                log.exception("error in WebSocket endpoint %s", self.request.path)
                await self.close(DisconnectCode.INTERNAL_ERROR, "internal error")
        finally:
            if final:
                await self._end(instance)

    async def _end(self, instance: Any) -> None:
        """A reactive endpoint's end: leave its channels, run its ``disconnect`` hook
        (once ``connect`` has returned), as :meth:`_run`'s ``finally`` does."""
        if self._ended:
            return
        self._ended = True
        for channel in list(self.channels):
            self.leave(channel)
        disconnect = getattr(instance, "disconnect", None)
        if disconnect is not None and self._connect_done:
            try:
                await disconnect(self)
            except Exception:
                log.exception("error in disconnect() of endpoint %s", self.request.path)

    async def _run(self) -> None:
        endpoint = self._endpoint
        instance = None
        connected = False
        try:
            if inspect.iscoroutinefunction(endpoint):
                await endpoint(self)
            else:
                instance = endpoint()
                connect = getattr(instance, "connect", None)
                if connect is not None:
                    await connect(self)
                connected = True
                await self._serve_instance(instance)
            if not self.closed:
                await self.close(1000)
        except asyncio.CancelledError:
            pass
        except Disconnect as exc:
            await self.close(exc.code, exc.reason)
        except Exception as exc:
            from .endpoint_errors import ConnectionClosedError, ConnectionClosedOK

            if isinstance(exc, (ConnectionClosedOK, ConnectionClosedError)) and self._ending():
                pass  # the connection closed under the handler: a normal end
            else:
                log.exception("error in WebSocket endpoint %s", self.request.path)
                await self.close(DisconnectCode.INTERNAL_ERROR, "internal error")
        finally:
            for channel in list(self.channels):
                self.leave(channel)
            if instance is not None and connected:
                disconnect = getattr(instance, "disconnect", None)
                if disconnect is not None:
                    try:
                        await disconnect(self)
                    except Exception:
                        log.exception("error in disconnect() of endpoint %s", self.request.path)

    async def _serve_instance(self, instance: Any) -> None:
        handle: Callable[[WebSocket, Message], Awaitable[None]] | None = getattr(instance, "handle_message", None)
        produce = getattr(instance, "produce", None)

        async def consume() -> None:
            async for message in self:
                if handle is not None:
                    await handle(self, message)

        if produce is None:
            await consume()
            return
        tasks = [asyncio.ensure_future(consume()), asyncio.ensure_future(produce(self))]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # re-raise a handler's exception


def _with_anonymous(context: ClientContext, anonymous: bool) -> ClientContext:
    """``context`` for the clients of an endpoint that decides anonymous access itself: the
    same hub, verifier, hooks and clocks, with :attr:`ClientContext.anonymous` set (read by
    :meth:`ClientCore.authenticate` at the handshake)."""
    own = ClientContext(context.hub, verifier=context.verifier, hooks=context.hooks, clock=context.clock,
                        wall=context.wall, proxy=context.proxy)
    own.anonymous = anonymous
    return own
