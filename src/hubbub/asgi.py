"""hubbub as an ASGI application: :class:`ASGIAdapter` serves a
:class:`~hubbub.server.Server`'s endpoints to any ASGI 3 server (uvicorn,
hypercorn, granian) or host application (FastAPI and Starlette ``mount``,
Django's ASGI router).

The node starts with the ASGI lifespan, or at the first request when the host
does not pass lifespan events to mounted applications (Starlette's ``Mount``
does not). Measured cost: ``docs/benchmarks.md`` (ASGI rows).

See ``docs/design.md``, "Choke points: one rule, one place" (``ASGIConnection``,
``ASGIStream``, exposure per connection).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from .codes import DisconnectCode
from .connection import MAX_CLOSE_REASON
from .core import PENDING, HandshakeDecision
from .hosting import HostedApp
from .http import HTTPRequest, HTTPResponse
from .server import Server
from .transport import WebSocketSession
from .writer import Writer

__all__ = ["ASGIAdapter", "ASGIConnection", "ASGIFrames", "ASGIStream", "HostedApp"]

log = logging.getLogger("hubbub.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# What a WebSocket connection's queue holds: one ASGI message per item, its
# kind in the first byte (messages are bytes so that the Writer bounds and
# counts them like any other output).
_TEXT = 1  # + UTF-8 text: websocket.send
_BINARY = 2  # + bytes: websocket.send
_CLOSE = 8  # + code (2 bytes) + reason: websocket.close (before accept: a refusal)
_ACCEPT = 16  # + subprotocol (UTF-8, empty: none): websocket.accept
_REFUSAL = 17  # + packed status, headers, body: websocket.http.response.start and .body
_TEXT_KIND = bytes([_TEXT])
_BINARY_KIND = bytes([_BINARY])


def _pack(fields: Iterable[bytes]) -> bytes:
    """Fields as one bytes object, each behind its 4-byte length."""
    return b"".join(len(field).to_bytes(4, "big") + field for field in fields)


def _unpack(data: bytes) -> list[bytes]:
    """The fields of :func:`_pack`."""
    fields, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        fields.append(data[at + 4:at + 4 + size])
        at += 4 + size
    return fields


def _pack_head(status: int, headers: list[tuple[bytes, bytes]], body: bytes | None = None) -> bytes:
    fields = [str(status).encode(), *(part for header in headers for part in header)]
    return _pack([*fields, body] if body is not None else fields)


def _unpack_head(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``(status, headers, body)`` of :func:`_pack_head` (an empty body if it had none)."""
    fields = _unpack(data)
    body = fields.pop() if len(fields) % 2 == 0 else b""
    return int(fields[0]), list(zip(fields[1::2], fields[2::2], strict=True)), body


def _response_headers(response: HTTPResponse) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", response.content_type.encode("latin-1")),
               (b"content-length", str(len(response.body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    return headers


class ASGIFrames:
    """Framing for ASGI WebSocket connections: a one-byte kind (text, binary)
    and the payload. The sender task turns it into an ASGI message."""

    __slots__ = ()

    #: one message per send: never joined into a shared batch
    joinable = False

    def text(self, payload: bytes) -> bytes:
        return _TEXT_KIND + payload

    def binary(self, payload: bytes) -> bytes:
        return _BINARY_KIND + payload


class _Sender(asyncio.Transport):
    """The transport of an ASGI connection, as its :class:`Writer` sees it: a
    queue of messages that one task hands to ``send``, in order. The bytes
    it holds count in the writer's bound (:meth:`get_write_buffer_size`)."""

    __slots__ = ("_send", "_queue", "_size", "_wake", "_closing", "_task", "_on_lost")

    def __init__(self, send: Send, on_lost: Callable[[], None]) -> None:
        super().__init__()
        self._send = send
        self._queue: deque[bytes] = deque()
        self._size = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._on_lost = on_lost
        self._task = asyncio.get_running_loop().create_task(self._run())

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._queue.append(bytes(data) if type(data) is not bytes else data)
        self._size += len(data)
        self._wake.set()

    def writelines(self, items: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in items:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        return self._size

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then end (:meth:`_end`) and stop."""
        self._closing = True
        self._wake.set()

    def drop(self) -> None:
        """Free what is queued and not handed to ``send`` yet."""
        self._queue.clear()
        self._size = 0

    def abort(self) -> None:
        self.drop()
        self.close()

    @property
    def running(self) -> bool:
        """Whether the sender task still runs."""
        return not self._task.done()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    data = self._queue.popleft()
                    self._size -= len(data)
                    if await self._send_one(data):
                        return
                if self._closing:
                    await self._end()
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # the client is gone (the server raises on send)
            pass
        finally:
            self.drop()
            self._on_lost()

    async def _send_one(self, data: bytes) -> bool:
        """Hand one queued message to ``send``; True once nothing may follow it."""
        kind = data[0]
        if kind == _TEXT:
            await self._send({"type": "websocket.send", "text": data[1:].decode("utf-8")})
        elif kind == _BINARY:
            await self._send({"type": "websocket.send", "bytes": data[1:]})
        elif kind == _ACCEPT:
            subprotocol = data[1:].decode("utf-8")
            await self._send({"type": "websocket.accept", "subprotocol": subprotocol} if subprotocol
                             else {"type": "websocket.accept"})
        elif kind == _REFUSAL:
            status, headers, body = _unpack_head(data[1:])
            await self._send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await self._send({"type": "websocket.http.response.body", "body": body})
            return True
        else:  # _CLOSE: code (2 bytes) + reason
            code = int.from_bytes(data[1:3], "big")
            await self._send({"type": "websocket.close", "code": code, "reason": data[3:].decode("utf-8", "ignore")})
            return True
        return False

    async def _end(self) -> None:
        """After :meth:`close`, once the queue is empty (nothing for a WebSocket)."""

    async def stop(self) -> None:
        """Stop the task (what it was sending is dropped) and free the queue."""
        if not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.drop()


class _BodySender(_Sender):
    """The transport of an HTTP response under ASGI: the first item queued is
    the head (:func:`_pack_head`), sent as ``http.response.start``; every
    later one is an ``http.response.body`` message (``more_body``), in order;
    :meth:`close` sends the last one."""

    __slots__ = ("_head_sent",)

    def __init__(self, send: Send, on_lost: Callable[[], None]) -> None:
        super().__init__(send, on_lost)
        self._head_sent = False

    async def _send_one(self, data: bytes) -> bool:
        if not self._head_sent:
            self._head_sent = True
            status, headers, _ = _unpack_head(data)
            await self._send({"type": "http.response.start", "status": status, "headers": headers})
        else:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        return False

    async def _end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


class _ASGIWriter(Writer):
    """What both kinds of ASGI connection share: the :class:`Writer` over a
    sender task, and what a session and the node read of a connection."""

    #: how WebSocket pushes are framed under ASGI (shared by all; a stream's body has its own framing)
    frames = ASGIFrames()

    __slots__ = ("host", "config", "stats", "session", "ping_slot", "deadline", "ws", "_sender", "_gone",
                 "_closing")

    def __init__(self, server: Server, sender: Callable[[Callable[[], None]], _Sender]) -> None:
        assert server.flusher is not None, "the node is started"
        super().__init__(server.flusher, server.config.max_pending_output, server.stats)
        self.host = server
        self.config = server.config
        self.stats = server.stats
        self.session: Any = None
        self.ping_slot = 0
        self.deadline = 0.0
        self.ws = None  # no websockets protocol object: the ASGI server frames
        self._gone = asyncio.Event()  # the sender stopped (all sent, or the client is gone)
        self._closing = asyncio.Event()  # we ended the connection: stop reading, wait for the sender
        self._sender = sender(self._gone.set)
        self.transport = self._sender

    @property
    def idle(self) -> bool:
        return False

    @property
    def queued(self) -> int:
        """Bytes the sender task holds, not yet handed to the ASGI server's ``send``."""
        return self._sender.get_write_buffer_size()

    @property
    def sending(self) -> bool:
        """Whether the sender task runs (it stops once the connection is released)."""
        return self._sender.running

    def abort(self) -> None:
        self._sender.abort()

    async def release(self) -> None:
        """Release the connection (idempotent). Once we ended it, the sender may
        finish for at most ``close_timeout`` seconds (a client that does not
        read never lets it); then it is stopped and what it holds is freed."""
        try:
            if self._closing.is_set() and not self._gone.is_set() and not self.lost:
                try:
                    await asyncio.wait_for(self._gone.wait(), self.config.close_timeout)
                except TimeoutError:
                    pass
        finally:
            self.lost = True
            self.open = False
            await self._sender.stop()


class ASGIConnection(_ASGIWriter):
    """One WebSocket connection from an ASGI server. Implements
    :class:`~hubbub.outbox.Outbox` through the shared :class:`Writer`; its
    accept, refusal and close go through it too."""

    __slots__ = ("request", "_closed_sent")

    def __init__(self, server: Server, request: HTTPRequest, send: Send) -> None:
        super().__init__(server, lambda lost: _Sender(send, lost))
        self.request = request
        self._closed_sent = False

    def accept(self, subprotocol: str | None) -> None:
        """Queue the accept of the upgrade; output is accepted from now on."""
        self.write_control(bytes([_ACCEPT]) + (subprotocol or "").encode("utf-8"))
        self.open = True

    async def refuse(self, scope: Scope, status: int, text: str) -> None:
        """Refuse the upgrade with an HTTP status when the ASGI server supports it
        (``websocket.http.response``), else close before accept (which ASGI
        servers answer with 403), and release the connection."""
        self._closed_sent = True
        self._closing.set()
        if "websocket.http.response" in (scope.get("extensions") or {}):
            body = (text + "\n").encode()
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
            self.write_control(bytes([_REFUSAL]) + _pack_head(status, headers, body))
        else:
            self.write_control(bytes([_CLOSE]) + (1008).to_bytes(2, "big") + text.encode()[:MAX_CLOSE_REASON])
        self.finish()
        await self.release()

    def send_text(self, payload: bytes) -> None:
        self.write(self.frames.text(payload))

    def send_binary(self, payload: bytes) -> None:
        self.write(self.frames.binary(payload))

    def send_ping(self) -> None:
        """ASGI has no ping message: the ASGI server keeps the connection
        alive itself, so the ping counts as answered."""
        if self.session is not None:
            self.session.pong()

    def close(self, code: int, reason: str = "") -> None:
        if self._closed_sent or self.lost:
            return
        self.open = False
        self._closed_sent = True
        self._closing.set()
        self.stats.disconnects[code] += 1
        self.write_control(bytes([_CLOSE]) + code.to_bytes(2, "big") + reason.encode()[:MAX_CLOSE_REASON])
        self.finish()

    def _on_slow(self, pending: int) -> None:
        log.warning("slow ASGI client: %d bytes pending; closing with 3008", pending)
        self._sender.drop()  # what the sender holds goes with the Writer's queue
        if self.session is not None:
            self.session.disconnect(DisconnectCode.SLOW, "slow")
        else:
            self.close(DisconnectCode.SLOW, "slow")


class ASGIStream(_ASGIWriter):
    """The answer to one HTTP request under ASGI: a plain response
    (:meth:`respond`) or a stream held by a session (:mod:`hubbub.streams`),
    through the same bounded :class:`Writer` as every connection. The ASGI
    server frames the body itself, so streams here are not chunked by hubbub
    (``stream_chunked`` false)."""

    stream_chunked = False

    __slots__ = ("_registered",)

    def __init__(self, server: Server, send: Send) -> None:
        super().__init__(server, lambda lost: _BodySender(send, lost))
        self._registered = False

    def respond(self, response: HTTPResponse) -> None:
        """Queue a whole response (head and body) and end it."""
        self.write_control(_pack_head(response.status, _response_headers(response)))
        if response.body:
            self.write_control(response.body)
        self.finish()

    def begin_stream(self, session: Any, headers: list[tuple[str, str]]) -> None:
        """Answer 200 with ``headers``; the body is what ``session`` sends until it ends."""
        self.write_control(_pack_head(200, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]))
        self.session = session
        self.open = True
        self._registered = True
        self.host.connection_opened(self)
        self.host.stream_opened(self)

    def end_stream(self, tail: bytes = b"") -> None:
        if self.lost:
            return
        self.open = False
        self._closing.set()
        if tail:
            self.write_control(tail)
        self.finish()

    def close(self, code: int, reason: str = "") -> None:
        self.end_stream()

    def _on_slow(self, pending: int) -> None:
        log.warning("slow ASGI stream: %d bytes pending; closing with 3008", pending)
        self._sender.drop()  # what the sender holds goes with the Writer's queue
        if self.session is not None:
            self.session.disconnect(DisconnectCode.SLOW, "slow")
        else:
            self.end_stream()

    async def serve_until_done(self, receive: Receive) -> None:
        """Hold the request until the response is sent, or the client leaves,
        or (once we ended it) ``close_timeout`` passed; then release the
        session, the node's bookkeeping and what is still queued."""
        receiving = asyncio.ensure_future(receive())
        waits = (asyncio.ensure_future(self._gone.wait()), asyncio.ensure_future(self._closing.wait()))
        try:
            while True:
                finished, _ = await asyncio.wait((receiving, *waits), return_when=asyncio.FIRST_COMPLETED)
                if receiving not in finished:
                    break  # sent, or ended by us
                if receiving.result()["type"] == "http.disconnect":
                    break
                receiving = asyncio.ensure_future(receive())
        finally:
            receiving.cancel()
            for task in waits:
                task.cancel()
            session, self.session = self.session, None
            try:
                if session is not None:
                    session.on_closed()
                await self.release()
            finally:
                self.lost = True
                if self._registered:
                    self._registered = False
                    self.host.connection_closed(self)


def _request(scope: Scope, body: bytes = b"") -> HTTPRequest:
    """An :class:`HTTPRequest` for an ASGI scope; the path is relative to ``root_path``."""
    path = scope.get("path", "/")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    query = scope.get("query_string", b"").decode("latin-1")
    target = path + ("?" + query if query else "")
    client = scope.get("client")
    server = scope.get("server")
    return HTTPRequest.from_target(scope.get("method", "GET"), target, headers, body=body,
                                   client=tuple(client) if client else None,
                                   local=str(server[0]) if server else "")


class ASGIAdapter:
    """Serves ``server`` to an ASGI server or host application.

    Args:
        server: the node (its routes, hub and rules).
        startup: called once the node runs (the application's start hooks).
        shutdown: called before the node stops.
    """

    def __init__(self, server: Server, *, startup: Callable[[], Awaitable[None]] | None = None,
                 shutdown: Callable[[], Awaitable[None]] | None = None) -> None:
        self.server = server
        self._startup = startup
        self._shutdown = shutdown
        self._lock: asyncio.Lock | None = None
        self._started = False
        #: a connection arrived on a non-loopback address (see :meth:`check_exposure`)
        self.exposed = False

    def check_exposure(self, scope: Scope) -> None:
        """Say once in the log what the exposure rule of ``hubbub serve``
        (``Config.check_exposure``) means for the first connection made to a non-loopback
        address (``scope["server"]``; a Unix socket counts as non-loopback).

        ``hubbub serve`` knows its one address before it starts; an ASGI server may
        listen on several and tells only per connection. So the rule is applied per
        connection, by the address it was made to (:attr:`hubbub.http.HTTPRequest.local`):
        there, anonymous clients need ``allow_anonymous = true``
        (``ClientContext.at``, ``Config.anonymous_at``) and the dashboard needs
        ``admin_secret`` (``Config.admin_enabled_at``), whichever address was asked
        first; connections to a loopback address keep the loopback rules. Refusing to
        start is not the adapter's to do: the log says what to set.
        """
        if self.exposed:
            return
        address = scope.get("server")
        config = self.server.config
        if not address or not config.exposed_at(str(address[0])):
            return
        self.exposed = True
        host = str(address[0])
        if not config.anonymous_at(host) and config.anonymous:
            log.warning("served on %s, not a loopback address: anonymous clients are refused there; set a token "
                        "key (token_hmac_secret, ...) for clients, or allow_anonymous = true to accept "
                        "anonymous clients on purpose", host)
        if config.admin_enabled and not config.admin_enabled_at(host):
            log.warning("served on %s, not a loopback address: the admin dashboard is off there without "
                        "admin_secret", host)

    async def startup(self) -> None:
        """Start the node without a socket of its own (idempotent)."""
        if self._started:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._started:
                return
            await self.server.start(listen=False)
            if self._startup is not None:
                await self._startup()
            self._started = True

    async def shutdown(self) -> None:
        """Close every client with 3001 and stop the node."""
        if not self._started:
            return
        self._started = False
        if self._shutdown is not None:
            await self._shutdown()
        await self.server.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.startup()
        self.check_exposure(scope)
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("hubbub failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP ----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = ASGIStream(self.server, send)
        try:
            body = await self._read_body(receive)
            if body is None:
                return  # the client left
            if isinstance(body, HTTPResponse):
                stream.respond(body)
            else:
                await self._answer(_request(scope, body), stream, scope.get("root_path", ""))
            await stream.serve_until_done(receive)
        finally:
            await stream.release()

    async def _read_body(self, receive: Receive) -> bytes | HTTPResponse | None:
        """The request body; a 413 response past ``max_http_body``; ``None`` if the client left."""
        limit = self.server.config.max_http_body
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return HTTPResponse.json({"error": "request body too large"}, 413)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _answer(self, request: HTTPRequest, stream: ASGIStream, root_path: str = "") -> None:
        request.stream = stream
        try:  # a plain request on a WebSocket route: 426, naming paths under root_path
            response = await self.server.handle_http(request, root_path=root_path)
        except Exception:
            log.exception("error in HTTP handler for %s", request.path)
            response = HTTPResponse.json({"error": "internal server error"}, 500)
        if stream.session is None:  # not answered with a stream (hubbub.streams)
            stream.respond(response)

    # -- WebSocket ---------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        request = _request(scope)
        conn = ASGIConnection(server, request, send)
        try:
            found = server.websocket_session(conn, request)
            if isinstance(found, tuple):
                await conn.refuse(scope, *found)
                return
            session = found
            conn.session = session
            decision = await _decide(session, request)
            if decision is not None:
                session.on_closed()
                await conn.refuse(scope, *decision)
                return
            await self._serve_websocket(conn, session, receive)
        finally:
            await conn.release()

    async def _serve_websocket(self, conn: ASGIConnection, session: WebSocketSession, receive: Receive) -> None:
        server = self.server
        conn.accept(session.subprotocol)  # chosen by the session (hubbub.formats.negotiate)
        inline_pong = session.inline_pong
        server.connection_opened(conn)
        server.websocket_opened(conn)
        stats = server.stats
        max_size = server.config.max_message_size
        receiving = asyncio.ensure_future(receive())
        waits = (asyncio.ensure_future(conn._gone.wait()), asyncio.ensure_future(conn._closing.wait()))
        try:
            if not session.open_nowait():
                await session.open()
            while not session.closed:
                done, _ = await asyncio.wait((receiving, *waits), return_when=asyncio.FIRST_COMPLETED)
                if receiving not in done:
                    break  # closed by us, or the sender stopped (the client is gone)
                message = receiving.result()
                if message["type"] != "websocket.receive":
                    break  # websocket.disconnect
                receiving = asyncio.ensure_future(receive())
                text = message.get("text")
                payload = text.encode("utf-8") if text is not None else bytes(message.get("bytes") or b"")
                binary = text is None
                stats.messages_in += 1
                stats.bytes_in += len(payload)
                if len(payload) > max_size:
                    conn.close(DisconnectCode.MESSAGE_TOO_BIG, "message too big")
                    break
                session.pong()
                if inline_pong and payload == b"{}" and not binary:
                    continue
                await session.handle_message(payload, binary)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("error in WebSocket handler for %s", conn.request.path)
            conn.close(DisconnectCode.INTERNAL_ERROR)
        finally:
            receiving.cancel()
            for task in waits:
                task.cancel()
            try:
                session.on_closed()
            finally:
                server.connection_closed(conn)
                conn.session = None


async def _decide(session: WebSocketSession, request: HTTPRequest) -> tuple[int, str] | None:
    """The session's decision about an upgrade: ``None`` (accept) or ``(status, text)``."""
    try:
        decision: HandshakeDecision = session.handshake_nowait()
        if decision is PENDING:
            return await session.handshake()
        return decision
    except Exception:
        log.exception("error deciding the handshake for %s", request.path)
        return 500, "internal error"
