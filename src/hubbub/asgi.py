"""hubbub under an ASGI server, and ASGI or WSGI applications inside hubbub.

**hubbub as an ASGI application.** :class:`ASGIAdapter` serves a
:class:`~hubbub.server.Server`'s endpoints (framework endpoints, the
protocol, the relay, the server API, health, metrics) to any ASGI 3 server
(uvicorn, hypercorn, granian) or host application (FastAPI and Starlette
``mount``, Django's ASGI router). ``hubbub.App`` is one. The node starts with
the ASGI lifespan, or at the first request when the host does not pass
lifespan events to mounted applications (Starlette's ``Mount`` does not).

Every rule is the same as on hubbub's own server: sessions are the same
client-core objects (:mod:`hubbub.core`), and every byte goes through the
same bounded :class:`~hubbub.writer.Writer` (3008 for a client that does not
read). What differs is the last step: an ASGI server takes one message per
``send`` call, so each connection has one sender task that hands its queue to
``send`` in order, and pushes are not joined into shared batches
(:attr:`ASGIFrames.joinable` is false). Measured cost against hubbub's own
server: ``docs/benchmarks.md`` (ASGI rows).

Refusals before ``accept`` use the ``websocket.http.response`` extension when
the server offers it (the real status, 401/403/404), else a close before
accept, which ASGI servers answer with HTTP 403.

**Applications inside hubbub.** :class:`HostedApp` runs an ASGI application,
or a WSGI one through ``a2wsgi``, for every HTTP request that no hubbub route
takes (``hubbub.App(http=fastapi_app)``), with its lifespan run at start and
stop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .codes import DisconnectCode
from .config import is_loopback
from .connection import WebSocketSession
from .core import PENDING
from .http import HTTPRequest, HTTPResponse
from .server import Server
from .writer import Writer

log = logging.getLogger("hubbub.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TEXT = 1
_BINARY = 2
_CLOSE = 8


class ASGIFrames:
    """Framing for ASGI connections: a one-byte kind (text, binary, close)
    and the payload. The sender task turns it into an ASGI message."""

    __slots__ = ()

    #: one message per send: never joined into a shared batch
    joinable = False

    def text(self, payload: bytes) -> bytes:
        return b"\x01" + payload

    def binary(self, payload: bytes) -> bytes:
        return b"\x02" + payload


class _Sender:
    """The transport of an ASGI connection: a queue of framed messages that
    one task hands to ``send``, in order. Implements what :class:`Writer`
    uses of an asyncio transport."""

    __slots__ = ("_send", "_queue", "_size", "_wake", "_closing", "_task", "_on_lost")

    def __init__(self, send: Send, on_lost: Callable[[], None]) -> None:
        self._send = send
        self._queue: deque[bytes] = deque()
        self._size = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._on_lost = on_lost
        self._task = asyncio.get_running_loop().create_task(self._run())

    def write(self, data: bytes) -> None:
        self._queue.append(data)
        self._size += len(data)
        self._wake.set()

    def writelines(self, items: list[bytes]) -> None:
        for data in items:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        return self._size

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self._queue.clear()
        self._size = 0
        self.close()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._begin()
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
            self._queue.clear()
            self._size = 0
        finally:
            self._on_lost()

    async def _begin(self) -> None:
        """Before the first queued message (nothing for a WebSocket)."""

    async def _send_one(self, data: bytes) -> bool:
        """Hand one framed message to ``send``; True after the close frame."""
        kind = data[0]
        if kind == _TEXT:
            await self._send({"type": "websocket.send", "text": data[1:].decode("utf-8")})
        elif kind == _BINARY:
            await self._send({"type": "websocket.send", "bytes": bytes(data[1:])})
        else:  # _CLOSE: code (2 bytes) + reason
            code = int.from_bytes(data[1:3], "big")
            await self._send({"type": "websocket.close", "code": code,
                              "reason": data[3:].decode("utf-8", "ignore")})
            return True
        return False

    async def _end(self) -> None:
        """After :meth:`close` once the queue is empty (nothing for a WebSocket)."""

    async def stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class ASGIConnection(Writer):
    """One WebSocket connection from an ASGI server. Implements
    :class:`~hubbub.outbox.Outbox` through the shared :class:`Writer`."""

    #: how pushes are framed for ASGI connections (shared by all)
    frames = ASGIFrames()

    __slots__ = ("host", "config", "stats", "session", "request", "ping_slot", "deadline", "ws", "_closed_sent",
                 "_gone", "_closing")

    def __init__(self, server: Server, request: HTTPRequest) -> None:
        assert server.flusher is not None
        super().__init__(server.flusher, server.config.max_pending_output, server.stats)
        self.host = server
        self.config = server.config
        self.stats = server.stats
        self.session: WebSocketSession | None = None
        self.request = request
        self.ping_slot = 0
        self.deadline = 0.0
        self.ws = None  # no websockets protocol object: the ASGI server frames
        self._closed_sent = False
        self._gone = asyncio.Event()  # the sender stopped (close sent, or the client is gone)
        self._closing = asyncio.Event()  # we closed: stop reading, wait for the sender

    @property
    def idle(self) -> bool:
        return False

    def attach(self, send: Send) -> None:
        """Start the sender task; output is accepted from now on."""
        self.transport = _Sender(send, self._gone.set)  # type: ignore[assignment]
        self.open = True

    def send_text(self, payload: bytes) -> None:
        self.write(b"\x01" + payload)

    def send_binary(self, payload: bytes) -> None:
        self.write(b"\x02" + payload)

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
        self.write_control(b"\x08" + code.to_bytes(2, "big") + reason.encode()[:123])
        self.finish()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def _on_slow(self, pending: int) -> None:
        log.warning("slow ASGI client: %d bytes pending; closing with 3008", pending)
        if self.session is not None:
            self.session.disconnect(DisconnectCode.SLOW, "slow")
        else:
            self.close(DisconnectCode.SLOW, "slow")


class _BodySender(_Sender):
    """The transport of a streaming HTTP response under ASGI: the head, then
    one ``http.response.body`` message (``more_body``) per write, in order, from
    one task; :meth:`close` sends the last one."""

    __slots__ = ("_start",)

    def __init__(self, send: Send, start: Message, on_lost: Callable[[], None]) -> None:
        self._start: Message | None = start
        super().__init__(send, on_lost)
        self._wake.set()  # the head goes out at once

    def writelines(self, items: list[bytes]) -> None:
        self.write(b"".join(items))  # an HTTP body may be joined freely

    async def _begin(self) -> None:
        if self._start is not None:
            start, self._start = self._start, None
            await self._send(start)

    async def _send_one(self, data: bytes) -> bool:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        return False

    async def _end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


class ASGIStream(Writer):
    """A streaming HTTP response under ASGI (:mod:`hubbub.streams`): the same
    bounded :class:`Writer` as every connection, its body handed to the ASGI
    server's ``send`` by one task. The ASGI server frames the body itself, so
    streams here are not chunked by hubbub (``stream_chunked`` false)."""

    stream_chunked = False

    __slots__ = ("host", "config", "stats", "session", "ping_slot", "deadline", "ws", "_send", "_done")

    def __init__(self, server: Server, send: Send) -> None:
        assert server.flusher is not None
        super().__init__(server.flusher, server.config.max_pending_output, server.stats)
        self.host = server
        self.config = server.config
        self.stats = server.stats
        self.session: Any = None
        self.ping_slot = 0
        self.deadline = 0.0
        self.ws = None
        self._send = send
        self._done = asyncio.Event()  # the body is finished (or the client is gone)

    @property
    def idle(self) -> bool:
        return False

    def begin_stream(self, session: Any, headers: list[tuple[str, str]]) -> None:
        start = {"type": "http.response.start", "status": 200,
                 "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]}
        self.session = session
        self.transport = _BodySender(self._send, start, self._done.set)  # type: ignore[assignment]
        self.open = True
        self.host.connection_opened(self)  # type: ignore[arg-type]
        self.host.stream_opened(self)  # type: ignore[arg-type]

    def end_stream(self, tail: bytes = b"") -> None:
        if self.lost or self.transport is None:
            return
        self.open = False
        if tail:
            self.write_control(tail)
        self.finish()

    def close(self, code: int, reason: str = "") -> None:
        self.end_stream()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def _on_slow(self, pending: int) -> None:
        log.warning("slow ASGI stream: %d bytes pending; closing with 3008", pending)
        if self.session is not None:
            self.session.disconnect(DisconnectCode.SLOW, "slow")
        else:
            self.end_stream()

    async def serve_until_done(self, receive: Receive) -> None:
        """Hold the request until the body is finished or the client leaves,
        then release the session and the node's bookkeeping."""
        receiving = asyncio.ensure_future(receive())
        done = asyncio.ensure_future(self._done.wait())
        try:
            while True:
                finished, _ = await asyncio.wait((receiving, done), return_when=asyncio.FIRST_COMPLETED)
                if done in finished:
                    break
                if receiving.result()["type"] == "http.disconnect":
                    break
                receiving = asyncio.ensure_future(receive())
        finally:
            receiving.cancel()
            done.cancel()
            self.lost = True
            self.open = False
            session, self.session = self.session, None
            try:
                if session is not None:
                    session.on_closed()
            finally:
                self.host.connection_closed(self)  # type: ignore[arg-type]
                sender = self.transport
                if sender is not None:
                    await sender.stop()  # type: ignore[attr-defined]


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
    return HTTPRequest.from_target(scope.get("method", "GET"), target, headers, body=body,
                                   client=tuple(client) if client else None)


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
        self._exposure_checked = False

    def _check_exposure(self, scope: Scope) -> None:
        """The rule of ``hubbub serve`` (``Config.check_exposure``), for the
        address the ASGI server listens on: with no token key and
        ``allow_anonymous`` not set, anonymous clients are accepted only on a
        loopback address. On any other, they are refused from now on (and
        the log says what to set), since refusing to start is not ours to do."""
        server = scope.get("server")
        if not server:
            return
        self._exposure_checked = True
        config = self.server.config
        if config.allow_anonymous is None and not is_loopback(str(server[0])):
            config.allow_anonymous = False
            self.server.context.refresh()
            log.warning("served on %s, not a loopback address: anonymous clients are refused; set a token "
                        "key (token_hmac_secret, ...) for clients, or allow_anonymous = true to accept "
                        "anonymous clients on purpose", server[0])

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
        if not self._exposure_checked:
            self._check_exposure(scope)
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
        limit = self.server.config.max_http_body
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_response(send, HTTPResponse.json({"error": "request body too large"}, 413))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        request = _request(scope, b"".join(chunks))
        stream = request.stream = ASGIStream(self.server, send)
        try:
            response = await self.server.handle_http(request)
        except Exception:
            log.exception("error in HTTP handler for %s", request.path)
            response = HTTPResponse.json({"error": "internal server error"}, 500)
        if stream.session is not None:  # the handler answered with a stream (hubbub.streams)
            await stream.serve_until_done(receive)
            return
        await _send_response(send, response)

    # -- WebSocket ---------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        request = _request(scope)
        conn = ASGIConnection(server, request)
        found = server.websocket_session(conn, request)  # type: ignore[arg-type]
        if isinstance(found, tuple):
            await _refuse(scope, send, *found)
            return
        session = found
        conn.session = session
        try:
            decision = session.handshake_nowait()
            if decision is PENDING:
                decision = await session.handshake()
        except Exception:
            log.exception("error deciding the handshake for %s", request.path)
            decision = (500, "internal error")
        if decision is not None:
            session.closed = True
            session.on_closed()
            await _refuse(scope, send, *decision)
            return
        subprotocol = getattr(session, "subprotocol", None)  # chosen by the session (hubbub.codec.negotiate)
        await send({"type": "websocket.accept", "subprotocol": subprotocol} if subprotocol
                   else {"type": "websocket.accept"})
        conn.attach(send)
        server.connection_opened(conn)  # type: ignore[arg-type]
        server.websocket_opened(conn)  # type: ignore[arg-type]
        stats = server.stats
        max_size = server.config.max_message_size
        inline_pong = getattr(session, "inline_pong", False)
        receiving = asyncio.ensure_future(receive())
        gone = asyncio.ensure_future(conn._gone.wait())
        closing = asyncio.ensure_future(conn._closing.wait())
        try:
            if not session.open_nowait():
                await session.open()
            while not session.closed:
                done, _ = await asyncio.wait((receiving, gone, closing), return_when=asyncio.FIRST_COMPLETED)
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
            if session.closed and not conn.lost:
                await asyncio.wait_for(asyncio.shield(gone), server.config.close_timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("error in WebSocket handler for %s", request.path)
            conn.close(DisconnectCode.INTERNAL_ERROR)
        finally:
            for task in (receiving, gone, closing):
                task.cancel()
            conn.lost = True
            conn.open = False
            try:
                session.on_closed()
            finally:
                server.connection_closed(conn)  # type: ignore[arg-type]
                conn.session = None
                sender = conn.transport
                if sender is not None:
                    await sender.stop()  # type: ignore[attr-defined]


async def _send_response(send: Send, response: HTTPResponse) -> None:
    headers = [(b"content-type", response.content_type.encode("latin-1")),
               (b"content-length", str(len(response.body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _refuse(scope: Scope, send: Send, status: int, text: str) -> None:
    """Refuse an upgrade with an HTTP status when the server supports it, else
    close before accept (ASGI servers answer that with 403)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = (text + "\n").encode()
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": text[:123]})


class HostedApp:
    """An ASGI or WSGI application that answers the HTTP requests no hubbub
    route takes (``hubbub.App(http=...)``).

    A WSGI application (``app(environ, start_response)``: Flask, Django's
    WSGI handler) is wrapped with ``a2wsgi.WSGIMiddleware``. The ASGI
    application's lifespan runs in :meth:`startup` and :meth:`shutdown` when
    it supports one.

    Args:
        app: the ASGI 3 or WSGI application.

    Raises:
        TypeError: ``app`` is not callable.
    """

    def __init__(self, app: Any) -> None:
        if not callable(app):
            raise TypeError(f"http= takes an ASGI or WSGI application, not {type(app).__name__}")
        self.wsgi = not _is_asgi(app)
        if self.wsgi:
            from a2wsgi import WSGIMiddleware

            app = WSGIMiddleware(app)
        self.app: ASGIApp = app
        self._lifespan: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[Message] | None = None
        self._answers: asyncio.Queue[Message] | None = None

    async def startup(self) -> None:
        """Run the application's lifespan startup (if it has a lifespan).

        Raises:
            RuntimeError: the application reported ``lifespan.startup.failed``.
        """
        if self.wsgi:
            return
        self._events, self._answers = asyncio.Queue(), asyncio.Queue()
        events, answers = self._events, self._answers

        async def run() -> None:
            try:
                await self.app({"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}},
                               events.get, answers.put)
            except Exception as exc:  # an app without lifespan support raises on the scope
                await answers.put({"type": "lifespan.unsupported", "message": str(exc)})

        self._lifespan = asyncio.get_running_loop().create_task(run())
        await events.put({"type": "lifespan.startup"})
        answer = await answers.get()
        if answer["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the hosted application failed to start: {answer.get('message', '')}")
        if answer["type"] == "lifespan.unsupported":
            self._lifespan = None

    async def shutdown(self) -> None:
        """Run the application's lifespan shutdown."""
        task, self._lifespan = self._lifespan, None
        if task is None or self._events is None or self._answers is None:
            return
        await self._events.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._answers.get(), 10)
        except asyncio.TimeoutError:
            log.warning("the hosted application did not finish its shutdown in 10 s")
        task.cancel()

    async def __call__(self, request: HTTPRequest) -> HTTPResponse:
        """Run one request through the application and collect its response."""
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": request.method, "scheme": "http", "path": request.path,
            "raw_path": request.path.encode(), "root_path": "",
            "query_string": request.raw_query.encode("latin-1"),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()],
            "client": request.client, "server": None,
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await asyncio.Event().wait()  # nothing more: wait until the app is done
            return {"type": "http.disconnect"}

        status = 500
        headers: list[tuple[str, str]] = []
        body: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                body.append(bytes(message.get("body", b"")))

        await self.app(scope, receive, send)
        content_type = "application/octet-stream"
        extra: list[tuple[str, str]] = []
        for name, value in headers:
            lower = name.lower()
            if lower == "content-type":
                content_type = value
            elif lower not in ("content-length", "transfer-encoding", "connection"):
                extra.append((name, value))
        return HTTPResponse(status, b"".join(body), content_type, extra)


def _is_asgi(app: Any) -> bool:
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, "__call__", None)
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(app):
        return True
    try:
        params = [p for p in inspect.signature(call).parameters.values()  # type: ignore[arg-type]
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return True
    return len(params) == 3
