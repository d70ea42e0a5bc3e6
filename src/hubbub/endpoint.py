"""Framework endpoints: the connection object a handler gets, and the
session that runs a handler for one connection.

An endpoint is either

* a class with any of ``connect(ws)``, ``handle_message(ws, message)``,
  ``disconnect(ws)`` and ``produce(ws)``; a new instance serves each
  connection; or
* a plain ``async def handler(ws)`` function that runs for the life of the
  connection (typically ``async for message in ws: ...``).

Life cycle (the consumer/producer pattern of the ``websockets`` docs, built
in): one task per connection runs ``connect``, then ``handle_message`` for each
message in order, alongside ``produce`` if the class has one. When the client
goes away the task is cancelled (``disconnect`` still runs); when the handler
returns, or ``produce`` ends, the connection is closed with 1000. An exception
in a handler is logged with its traceback and closes that connection with
1011; :class:`~hubbub.errors.Disconnect` closes with its code. No task
outlives its connection.

The :class:`WebSocket` is a client of the hub like any other
(:class:`~hubbub.core.ClientCore`): the channels it subscribes to count
against ``client_channel_limit``, names are validated the same way, and a
connection token given at the handshake (``?token=`` or ``Authorization:
Bearer``) is verified before ``101`` (an invalid one gets HTTP 401) and sets
:attr:`WebSocket.user`. Without a token the user is ``""``: an endpoint
decides itself, in ``connect``, whom it serves. Its ``subscribe`` and
``publish`` are the application's own calls, so namespace permissions meant
for clients (``allow_subscribe_for_client``, ...) do not apply to them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .brokers.base import Publication
from .auth import TokenError
from .codes import DisconnectCode, ErrorCode
from .core import ClientContext, ClientCore
from .errors import Disconnect, ProtocolError
from .http import HTTPRequest
from .hub import Wire
from .outbox import Outbox
from .relay import PENDING, Refusal, handshake_token
from .strictjson import encode_data

log = logging.getLogger("hubbub.endpoint")

#: Messages queued for a handler before reading from the socket pauses.
MAX_QUEUED_MESSAGES = 64

Message = str | bytes


class WebSocket(ClientCore):
    """The connection object handed to endpoint handlers, and the session that
    runs the endpoint for it.

    Attributes:
        request: the handshake request (``path``, ``params`` of the route,
            ``query``, ``headers`` with lower-case names).
        client_id: a unique id of this connection.
        user: the user of a verified connection token (``""`` without one).
        state: a dict for the handler's own per-connection data.
    """

    transport = "endpoint"

    __slots__ = ("request", "state", "_endpoint", "_messages", "_task", "_token")

    def __init__(self, context: ClientContext, out: Outbox, wire: Wire, request: HTTPRequest,
                 endpoint: Any = None) -> None:
        super().__init__(context, out, wire, headers=request.headers)
        self.request = request
        self.state: dict[str, Any] = {}
        self._endpoint = endpoint
        self._messages: asyncio.Queue[Message | None] = asyncio.Queue(MAX_QUEUED_MESSAGES)
        self._task: asyncio.Task[None] | None = None
        self._token = handshake_token(request.headers, request.query)

    @property
    def params(self) -> dict[str, str]:
        """Path parameters, e.g. ``{"room": "lobby"}`` for ``/rooms/{room}``."""
        return self.request.params

    async def send(self, message: str | bytes) -> None:
        """Send one message: ``str`` as text, ``bytes`` as binary.

        Raises:
            TypeError: for any other type.
        """
        if isinstance(message, str):
            self.out.send_text(message.encode())
        elif isinstance(message, (bytes, bytearray, memoryview)):
            self.out.send_binary(bytes(message))
        else:
            raise TypeError(f"send() takes str or bytes, not {type(message).__name__}")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` (1000, 3000-4999) and ``reason``."""
        self.disconnect(code, reason)

    async def recv(self) -> Message:
        """The next message (``str`` or ``bytes``).

        Raises:
            ConnectionError: the connection is closed.
        """
        message = await self._messages.get()
        if message is None:
            self._messages.put_nowait(None)  # stays closed for later calls
            raise ConnectionError("connection closed")
        return message

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.recv()
            except ConnectionError:
                return

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

    async def publish(self, channel: str, data: Any) -> int:  # type: ignore[override]
        """Publish ``data`` (any JSON value) to ``channel``; returns its offset
        (0 without history).

        Raises:
            ProtocolError: 107/102 for a bad channel or data, 100 if the broker failed.
        """
        position = await self.hub.publish(channel, Publication(encode_data(data)))
        return position.offset

    def disconnect(self, code: int, reason: str | None = None) -> None:
        """Close with ``code`` (what the hub uses: 3008, 3010, ...)."""
        if not self.closed:
            self.closed = True
        self.out.close(code, reason or "")

    # -- the session side (called by the connection) -----------------------------------

    def handshake_nowait(self) -> Refusal | None:
        """Verify a connection token if one was given (401 if invalid)."""
        if not self._token:
            return None
        verifier = self.context.verifier
        if not verifier.enabled:
            return None
        if verifier.needs_lookup:
            return PENDING
        try:
            claims = verifier.connection_nowait(self._token)
        except TokenError:
            return 401, "invalid token"
        self.user = claims.user
        return None

    async def handshake(self) -> Refusal | None:
        try:
            claims = await self.context.verifier.connection(self._token)
        except TokenError:
            return 401, "invalid token"
        self.user = claims.user
        return None

    async def open(self) -> None:
        self.open_nowait()

    def open_nowait(self) -> bool:
        """Start the endpoint's task (it runs the ``connect`` hook)."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._task_done)
        return True

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._task = None

    async def handle_message(self, payload: bytes, binary: bool) -> None:  # type: ignore[override]
        message: Message = payload if binary else payload.decode()
        self.pong_expected = False
        await self._messages.put(message)  # waits when full: the inbox then pauses reading

    def check_pong(self) -> None:
        if self.pong_expected and not self.closed:
            self.disconnect(1011, "keepalive ping timeout")

    def on_closed(self) -> None:
        super().on_closed()
        try:
            self._messages.put_nowait(None)
        except asyncio.QueueFull:
            pass
        if self._task is not None and not self._task.done():
            self._task.cancel()

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
        except Exception:
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


#: The session behind a framework endpoint is its :class:`WebSocket`.
EndpointSession = WebSocket
