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
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .brokers.base import Publication
from .codes import DisconnectCode
from .errors import Disconnect, ProtocolError
from .http import HTTPRequest
from .hub import Hub, Subscriber, Wire
from .outbox import Outbox
from .session import encode_data

log = logging.getLogger("hubbub.endpoint")

#: Messages queued for a handler before reading from the socket pauses.
MAX_QUEUED_MESSAGES = 64

Message = str | bytes


class WebSocket:
    """The connection object handed to endpoint handlers.

    Attributes:
        request: the handshake request (``path``, ``params`` of the route,
            ``query``, ``headers`` with lower-case names).
        client_id: a unique id of this connection.
        state: a dict for the handler's own per-connection data.
    """

    def __init__(self, hub: Hub, out: Outbox, wire: Wire, request: HTTPRequest) -> None:
        self.hub = hub
        self.request = request
        self.client_id = str(uuid.uuid4())
        self.state: dict[str, Any] = {}
        self._out = out
        self._wire = wire
        self._messages: asyncio.Queue[Message | None] = asyncio.Queue(MAX_QUEUED_MESSAGES)
        self._channels: set[str] = set()
        self._subscriber = Subscriber(self.client_id, wire, out.deliver, self._disconnect_code)
        self.closed = False

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
            self._out.send_text(message.encode())
        elif isinstance(message, (bytes, bytearray, memoryview)):
            self._out.send_binary(bytes(message))
        else:
            raise TypeError(f"send() takes str or bytes, not {type(message).__name__}")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` (1000, 3000-4999) and ``reason``."""
        self.closed = True
        self._out.close(code, reason)

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
            ProtocolError: 107/102 for a bad channel, 105 if subscribed already.
        """
        ns = self.hub.namespace(channel)
        if channel in self._channels:
            from .codes import ErrorCode

            raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED)
        self._channels.add(channel)
        try:
            await self.hub.subscribe(channel, self._subscriber, ns=ns)
        except BaseException:
            self._channels.discard(channel)
            raise
        if self.closed:
            self._unsubscribe_all()

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``'s publications."""
        if channel in self._channels:
            self._channels.discard(channel)
            self.hub.unsubscribe(channel, self.client_id)

    async def publish(self, channel: str, data: Any) -> int:
        """Publish ``data`` (any JSON value) to ``channel``; returns its offset
        (0 without history).

        Raises:
            ProtocolError: 107/102 for a bad channel, 100 if the broker failed.
        """
        position = await self.hub.publish(channel, Publication(encode_data(data)))
        return position.offset

    def _disconnect_code(self, code: int) -> None:
        self.closed = True
        self._out.close(code, "")

    def _unsubscribe_all(self) -> None:
        for channel in self._channels:
            self.hub.unsubscribe(channel, self.client_id)
        self._channels.clear()


class EndpointSession:
    """Runs one endpoint for one connection (see the module docstring)."""

    def __init__(self, endpoint: Any, ws: WebSocket, out: Outbox) -> None:
        self.endpoint = endpoint
        self.ws = ws
        self.out = out
        self.pong_expected = False
        self._task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self.ws.closed = value

    async def open(self) -> None:
        self.open_nowait()

    def open_nowait(self) -> bool:
        """Start the endpoint's task (it runs the ``connect`` hook)."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def handle_message(self, payload: bytes, binary: bool) -> None:
        message: Message = payload if binary else payload.decode()
        await self.ws._messages.put(message)  # waits when full: the inbox then pauses reading

    def ping(self) -> None:
        if not self.closed:
            self.pong_expected = True
            self.out.send_ping()

    def check_pong(self) -> None:
        if self.pong_expected and not self.closed:
            self.ws._disconnect_code(1011)

    def on_closed(self) -> None:
        self.ws.closed = True
        self.ws._unsubscribe_all()
        try:
            self.ws._messages.put_nowait(None)
        except asyncio.QueueFull:
            pass
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        ws = self.ws
        endpoint = self.endpoint
        instance = None
        connected = False
        try:
            if inspect.iscoroutinefunction(endpoint):
                await endpoint(ws)
            else:
                instance = endpoint()
                connect = getattr(instance, "connect", None)
                if connect is not None:
                    await connect(ws)
                connected = True
                await self._serve_instance(instance)
            if not ws.closed:
                await ws.close(1000)
        except asyncio.CancelledError:
            pass
        except Disconnect as exc:
            await ws.close(exc.code, exc.reason)
        except Exception:
            log.exception("error in WebSocket endpoint %s", ws.request.path)
            await ws.close(DisconnectCode.INTERNAL_ERROR, "internal error")
        finally:
            ws._unsubscribe_all()
            if instance is not None and connected:
                disconnect = getattr(instance, "disconnect", None)
                if disconnect is not None:
                    try:
                        await disconnect(ws)
                    except Exception:
                        log.exception("error in disconnect() of endpoint %s", ws.request.path)

    async def _serve_instance(self, instance: Any) -> None:
        ws = self.ws
        handle: Callable[[WebSocket, Message], Awaitable[None]] | None = getattr(instance, "handle_message", None)
        produce = getattr(instance, "produce", None)

        async def consume() -> None:
            async for message in ws:
                if handle is not None:
                    await handle(ws, message)

        if produce is None:
            await consume()
            return
        tasks = [asyncio.ensure_future(consume()), asyncio.ensure_future(produce(ws))]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # re-raise a handler's exception
