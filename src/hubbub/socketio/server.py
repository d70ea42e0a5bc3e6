"""A python-socketio-compatible server API on hubbub: ``import hubbub.socketio as socketio``.

The common surface of python-socketio 5 (``socketio.AsyncServer``, ``socketio.AsyncNamespace``,
``socketio.ASGIApp``, ``socketio.exceptions``), written for hubbub: rooms are hub channels, so an
emit to a room reaches its members on every node through the broker. What differs from
python-socketio: docs/howto/socketio.md.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import logging
import mimetypes
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ..app import App
from ..brokers.base import Publication
from ..errors import ConnectionRefusedError, ConnectRefused
from ..http import HTTPRequest, HTTPResponse
from ..sio.session import SocketIOSession, publication_data, room_channel
from ..strictjson import dumps
from . import exceptions

__all__ = ["ASGIApp", "AsyncNamespace", "AsyncServer", "ConnectionRefusedError", "exceptions"]

log = logging.getLogger("hubbub.socketio")

F = TypeVar("F", bound=Callable[..., Any])

#: What a handler returns when there is none (no acknowledgement is sent).
_NOT_HANDLED = object()

#: The room every connection of a namespace is in: an emit without ``to`` goes there.
ALL = ""


class _Reasons:
    """python-socketio's ``AsyncServer.reason`` values."""

    CLIENT_DISCONNECT = "client disconnect"
    SERVER_DISCONNECT = "server disconnect"
    PING_TIMEOUT = "ping timeout"
    TRANSPORT_CLOSE = "transport close"
    TRANSPORT_ERROR = "transport error"


def _args(data: Any) -> list[Any]:
    """An emit's ``data`` as event arguments: a tuple is several, ``None`` none."""
    if data is None:
        return []
    if isinstance(data, tuple):
        return list(data)
    return [data]


async def _call(handler: Callable[..., Any], *args: Any) -> Any:
    result = handler(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class AsyncServer:
    """A Socket.IO server (python-socketio's ``socketio.AsyncServer``).

    Args:
        namespaces: the namespaces clients may connect to besides those with handlers (a
            list, or ``"*"`` for any); by default ``["/"]``.
        cors_allowed_origins: origins allowed for browsers: ``None`` same origin, ``"*"`` any,
            a string or list of them (hubbub's ``allowed_origins``).
        ping_interval, ping_timeout: seconds (hubbub's ``ping_interval`` and ``pong_timeout``).
        max_http_buffer_size: the largest message or polling payload, bytes (``max_message_size``).
        **kwargs: python-socketio's other options (``async_mode``, ``logger``, ``engineio_logger``,
            ``client_manager``, ``json``, ``async_handlers``, ...) are accepted and ignored: hubbub
            always runs handlers as tasks and shares rooms through its broker.
    """

    reason = _Reasons

    def __init__(self, client_manager: Any = None, logger: Any = False, json: Any = None,
                 async_handlers: bool = True, namespaces: list[str] | str | None = None, **kwargs: Any) -> None:
        self.handlers: dict[str, dict[str, Callable[..., Any]]] = {}
        self.namespace_handlers: dict[str, AsyncNamespace] = {}
        self.namespaces: list[str] | str = namespaces if namespaces is not None else ["/"]
        self.options = kwargs
        #: (namespace, sid) -> the session on this node
        self._sids: dict[tuple[str, str], SocketIOSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._app: App | None = None
        #: calls waiting for a client's acknowledgement
        self._calls: set[asyncio.Future[Any]] = set()

    # -- registration ---------------------------------------------------------------------

    def on(self, event: str, handler: Callable[..., Any] | None = None, namespace: str | None = None) -> Any:
        """Register ``handler`` for ``event`` (a decorator without ``handler``). ``"*"`` catches
        every event without a handler of its own (called with the event name first)."""
        namespace = namespace or "/"

        def register(fn: F) -> F:
            self.handlers.setdefault(namespace, {})[event] = fn
            return fn

        if handler is None:
            return register
        register(handler)
        return None

    def event(self, *args: Any, **kwargs: Any) -> Any:
        """``@sio.event``: the function's name is the event; ``@sio.event(namespace=...)`` too."""
        if len(args) == 1 and not kwargs and callable(args[0]):
            return self.on(args[0].__name__)(args[0])

        def register(fn: F) -> F:
            self.on(fn.__name__, **kwargs)(fn)
            return fn

        return register

    def register_namespace(self, namespace_handler: AsyncNamespace) -> None:
        """Serve a class-based namespace (:class:`AsyncNamespace`).

        Raises:
            ValueError: not an :class:`AsyncNamespace`.
        """
        if not isinstance(namespace_handler, AsyncNamespace):
            raise ValueError("not a namespace instance")
        namespace_handler._set_server(self)
        self.namespace_handlers[namespace_handler.namespace] = namespace_handler

    def instrument(self, *args: Any, **kwargs: Any) -> None:
        """python-socketio's Admin UI instrumentation: not supported, a warning (hubbub's own
        dashboard is ``/admin``)."""
        log.warning("sio.instrument(): the Socket.IO Admin UI is not supported on hubbub; see /admin")

    # -- the node ---------------------------------------------------------------------------

    def attach(self, app: App, socketio_path: str = "socket.io") -> None:
        """Serve this server's handlers on ``app``, a :class:`hubbub.App` (its ``socketio_path``).

        Raises:
            TypeError: ``app`` is not a hubbub App (python-socketio's aiohttp, Sanic and Tornado
                integrations are not supported: use :class:`ASGIApp`).
        """
        if not isinstance(app, App):
            raise TypeError("AsyncServer.attach() takes a hubbub.App; for other frameworks use ASGIApp")
        service = app.server.socketio
        if service is None:
            raise ValueError("this app serves no Socket.IO (socketio_path is off)")
        self._app = app
        service.handlers = _Handlers(self)

    @property
    def app(self) -> App:
        if self._app is None:
            raise RuntimeError("this AsyncServer serves nothing yet: wrap it in socketio.ASGIApp(sio)")
        return self._app

    # -- emitting ---------------------------------------------------------------------------

    async def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None, skip_sid: Any = None,
                   namespace: str | None = None, callback: Callable[..., Any] | None = None,
                   ignore_queue: bool = False) -> None:
        """Emit ``event`` with ``data`` (a tuple: several arguments) to ``to`` (or ``room``): a
        sid, a room, a list of them, or everyone in ``namespace`` when ``None``; ``skip_sid``: a
        sid or a list left out. ``callback(*args)`` gets the acknowledgement of a single local sid.

        Raises:
            hubbub.errors.BadRequest: data that is not JSON (bytes allowed), a room name that is
                not a valid channel name.
        """
        namespace = namespace or "/"
        target = to if to is not None else room
        args = _args(data)
        rooms = target if isinstance(target, (list, tuple, set)) else [target]
        skip = [skip_sid] if isinstance(skip_sid, str) else list(skip_sid or [])
        for one in rooms:
            name = ALL if one is None else str(one)
            session = self._sids.get((namespace, name))
            if session is not None and name not in skip:
                # a sid of this node: directly (an acknowledgement comes back here)
                session.emit(namespace, event, args, self._ack_callback(callback) if callback else None)
                continue
            value = publication_data(event, args)
            if skip:
                value["skip"] = skip
            await self.app.hub.publish(room_channel(namespace, name), Publication(dumps(value)), source="app")

    def _ack_callback(self, callback: Callable[..., Any]) -> Callable[[list[Any]], None]:
        def acked(args: list[Any]) -> None:
            result = callback(*args)
            if inspect.isawaitable(result):
                self.start_background_task(lambda: result)
        return acked

    async def send(self, data: Any, to: Any = None, room: Any = None, skip_sid: Any = None,
                   namespace: str | None = None, callback: Callable[..., Any] | None = None,
                   ignore_queue: bool = False) -> None:
        """Emit a ``message`` event (see :meth:`emit`)."""
        await self.emit("message", data, to=to, room=room, skip_sid=skip_sid, namespace=namespace,
                        callback=callback)

    async def call(self, event: str, data: Any = None, to: str | None = None, sid: str | None = None,
                   namespace: str | None = None, timeout: float = 60, ignore_queue: bool = False) -> Any:
        """Emit to one client of this node and wait for its acknowledgement: its one argument,
        several as a tuple, none as ``None``.

        Raises:
            hubbub.socketio.exceptions.TimeoutError: no answer within ``timeout`` seconds.
            hubbub.socketio.exceptions.DisconnectedError: ``sid`` is not connected to this node.
        """
        namespace = namespace or "/"
        target = to or sid
        session = self._sids.get((namespace, str(target)))
        if session is None:
            raise exceptions.DisconnectedError()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def acked(args: list[Any]) -> None:
            if not future.done():
                future.set_result(args)

        session.emit(namespace, event, _args(data), acked)
        self._calls.add(future)
        try:
            args = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise exceptions.TimeoutError() from None
        finally:
            self._calls.discard(future)
        return tuple(args) if len(args) > 1 else args[0] if args else None

    # -- rooms and sessions ---------------------------------------------------------------------

    def _session(self, sid: str, namespace: str | None) -> SocketIOSession:
        session = self._sids.get((namespace or "/", sid))
        if session is None:
            raise KeyError("Session not found")
        return session

    async def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        """Put ``sid`` (a client of this node) in ``room``.

        Raises:
            hubbub.errors.BadRequest: a room name that is not a valid channel name.
            hubbub.errors.ProtocolError, hubbub.errors.Disconnect: over ``client_channel_limit``.
        """
        session = self._sids.get((namespace or "/", sid))
        if session is None:
            return
        conn = session.namespaces.get(namespace or "/")
        if conn is not None:
            await session.enter_room(conn, room)

    async def leave_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        """Take ``sid`` (a client of this node) out of ``room``."""
        session = self._sids.get((namespace or "/", sid))
        conn = session.namespaces.get(namespace or "/") if session is not None else None
        if session is not None and conn is not None:
            session.leave_room(conn, room)

    async def close_room(self, room: str, namespace: str | None = None) -> None:
        """Take every client, on every node, out of ``room``."""
        await self.app.hub.publish(room_channel(namespace or "/", room), Publication(dumps({"close_room": True})),
                                   source="app")

    def rooms(self, sid: str, namespace: str | None = None) -> list[str]:
        """The rooms of ``sid`` (a client of this node), its own included."""
        session = self._sids.get((namespace or "/", sid))
        conn = session.namespaces.get(namespace or "/") if session is not None else None
        return [room for room in conn.rooms if room != ALL] if conn is not None else []

    async def get_session(self, sid: str, namespace: str | None = None) -> dict[str, Any]:
        """The application's session dict of ``sid``.

        Raises:
            KeyError: ``sid`` is not connected to this node.
        """
        conn = self._session(sid, namespace).namespaces.get(namespace or "/")
        if conn is None:
            raise KeyError("Session not found")
        return conn.data

    async def save_session(self, sid: str, session: dict[str, Any], namespace: str | None = None) -> None:
        """Replace the application's session dict of ``sid`` (``KeyError`` as :meth:`get_session`)."""
        conn = self._session(sid, namespace).namespaces.get(namespace or "/")
        if conn is None:
            raise KeyError("Session not found")
        conn.data = session

    @contextlib.asynccontextmanager
    async def session(self, sid: str, namespace: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """``async with sio.session(sid) as session:`` the session dict, saved at the end."""
        data = await self.get_session(sid, namespace)
        yield data
        await self.save_session(sid, data, namespace)

    def get_environ(self, sid: str, namespace: str | None = None) -> dict[str, Any]:
        """The WSGI-style environ of ``sid``'s connection request."""
        return _environ(self._session(sid, namespace))

    def transport(self, sid: str, namespace: str | None = None) -> str:
        """``"websocket"`` or ``"polling"``."""
        return "polling" if self._session(sid, namespace).polling else "websocket"

    async def disconnect(self, sid: str, namespace: str | None = None, ignore_queue: bool = False) -> None:
        """End ``sid``'s namespace connection (the client gets ``DISCONNECT``)."""
        session = self._sids.get((namespace or "/", sid))
        if session is not None:
            session.disconnect_namespace(namespace or "/")

    async def shutdown(self) -> None:
        """Stop the node (every client is closed)."""
        if self._app is not None:
            await self._app.stop()

    # -- tasks ---------------------------------------------------------------------------

    def start_background_task(self, target: Callable[..., Awaitable[Any]], *args: Any,
                              **kwargs: Any) -> asyncio.Task[Any]:
        """Run ``target(*args, **kwargs)`` as a task owned by the server (cancelled at shutdown
        when served by an App)."""
        coro = target(*args, **kwargs)
        if self._app is not None:
            return self._app.background(coro)
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def sleep(self, seconds: float = 0) -> None:
        await asyncio.sleep(seconds)

    # -- dispatch (called by _Handlers) -------------------------------------------------------

    def _accepts(self, namespace: str) -> bool:
        return (self.namespaces == "*" or namespace in self.namespaces or namespace in self.handlers
                or namespace in self.namespace_handlers)

    async def _trigger(self, event: str, namespace: str, *args: Any) -> Any:
        handlers = self.handlers.get(namespace, {})
        handler = handlers.get(event)
        if handler is None and event not in ("connect", "disconnect") and "*" in handlers:
            handler, args = handlers["*"], (event, *args)
        if handler is None:
            star = self.handlers.get("*", {})
            handler = star.get(event)
            if handler is not None:
                args = (namespace, *args)
        if handler is not None:
            try:
                return await _call(handler, *args)
            except TypeError:
                if event == "disconnect":  # the legacy one-argument disconnect(sid)
                    return await _call(handler, *args[:-1])
                raise
        ns_handler = self.namespace_handlers.get(namespace)
        if ns_handler is not None:
            return await ns_handler.trigger_event(event, *args)
        return _NOT_HANDLED


class _Handlers:
    """The :class:`~hubbub.sio.session.SocketIOHandlers` of an :class:`AsyncServer`."""

    def __init__(self, server: AsyncServer) -> None:
        self.server = server

    def has_namespace(self, namespace: str) -> bool:
        return self.server._accepts(namespace)

    async def connect(self, session: SocketIOSession, namespace: str, sid: str, auth: Any) -> None:
        server = self.server
        conn = session.namespaces[namespace]
        await session.enter_room(conn, ALL)
        server._sids[(namespace, sid)] = session
        environ = _environ(session)
        try:
            if auth:
                success = await server._trigger("connect", namespace, sid, environ, auth)
            else:
                try:
                    success = await server._trigger("connect", namespace, sid, environ)
                except TypeError:
                    success = await server._trigger("connect", namespace, sid, environ, None)
        except ConnectionRefusedError as exc:
            server._sids.pop((namespace, sid), None)
            raise ConnectRefused(exc.error_args["message"], exc.error_args.get("data")) from None
        except builtins.ConnectionRefusedError:  # the built-in one, as python-socketio takes it too
            server._sids.pop((namespace, sid), None)
            raise ConnectRefused("Connection refused by server") from None
        if success is False:
            server._sids.pop((namespace, sid), None)
            raise ConnectRefused()

    async def event(self, session: SocketIOSession, namespace: str, sid: str, event: str,
                    args: list[Any]) -> list[Any] | None:
        reply = await self.server._trigger(event, namespace, sid, *args)
        if reply is _NOT_HANDLED:
            return None
        return [] if reply is None else list(reply) if isinstance(reply, tuple) else [reply]

    async def disconnect(self, session: SocketIOSession, namespace: str, sid: str, reason: str) -> None:
        server = self.server
        try:
            await server._trigger("disconnect", namespace, sid, reason)
        finally:
            if server._sids.get((namespace, sid)) is session:
                del server._sids[(namespace, sid)]


def _environ(session: SocketIOSession) -> dict[str, Any]:
    """A WSGI-style environ of the connection's first request (python-socketio passes one)."""
    request = session.request
    client = request.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.get("method", "GET"), "PATH_INFO": request.get("path", ""),
        "QUERY_STRING": request.get("query", ""), "REMOTE_ADDR": client[0], "REMOTE_PORT": str(client[1]),
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
    }
    for name, value in (request.get("headers") or {}).items():
        key = name.upper().replace("-", "_")
        environ["CONTENT_TYPE" if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
    return environ


class AsyncNamespace:
    """A class-based namespace (python-socketio's ``socketio.AsyncNamespace``): methods named
    ``on_<event>`` handle events; its ``emit``, ``send``, ``call``, room and session methods
    default to its namespace."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace or "/"
        self.server: AsyncServer | None = None

    def _set_server(self, server: AsyncServer) -> None:
        self.server = server

    @property
    def _server(self) -> AsyncServer:
        if self.server is None:
            raise RuntimeError("register the namespace with sio.register_namespace() first")
        return self.server

    def is_asyncio_based(self) -> bool:
        return True

    async def trigger_event(self, event: str, *args: Any) -> Any:
        handler = getattr(self, "on_" + event, None)  # the documented python-socketio dispatch
        if handler is None:
            return _NOT_HANDLED
        try:
            return await _call(handler, *args)
        except TypeError:
            if event == "disconnect":
                return await _call(handler, *args[:-1])
            raise

    async def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None, skip_sid: Any = None,
                   namespace: str | None = None, callback: Callable[..., Any] | None = None,
                   ignore_queue: bool = False) -> None:
        await self._server.emit(event, data, to=to, room=room, skip_sid=skip_sid,
                                namespace=namespace or self.namespace, callback=callback)

    async def send(self, data: Any, to: Any = None, room: Any = None, skip_sid: Any = None,
                   namespace: str | None = None, callback: Callable[..., Any] | None = None,
                   ignore_queue: bool = False) -> None:
        await self._server.send(data, to=to, room=room, skip_sid=skip_sid, namespace=namespace or self.namespace,
                                callback=callback)

    async def call(self, event: str, data: Any = None, to: str | None = None, sid: str | None = None,
                   namespace: str | None = None, timeout: float = 60, ignore_queue: bool = False) -> Any:
        return await self._server.call(event, data, to=to, sid=sid, namespace=namespace or self.namespace,
                                       timeout=timeout)

    async def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        await self._server.enter_room(sid, room, namespace=namespace or self.namespace)

    async def leave_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        await self._server.leave_room(sid, room, namespace=namespace or self.namespace)

    async def close_room(self, room: str, namespace: str | None = None) -> None:
        await self._server.close_room(room, namespace=namespace or self.namespace)

    def rooms(self, sid: str, namespace: str | None = None) -> list[str]:
        return self._server.rooms(sid, namespace=namespace or self.namespace)

    async def get_session(self, sid: str, namespace: str | None = None) -> dict[str, Any]:
        return await self._server.get_session(sid, namespace=namespace or self.namespace)

    async def save_session(self, sid: str, session: dict[str, Any], namespace: str | None = None) -> None:
        await self._server.save_session(sid, session, namespace=namespace or self.namespace)

    def session(self, sid: str, namespace: str | None = None) -> Any:
        return self._server.session(sid, namespace=namespace or self.namespace)

    async def disconnect(self, sid: str, namespace: str | None = None) -> None:
        await self._server.disconnect(sid, namespace=namespace or self.namespace)


# -- ASGI ------------------------------------------------------------------------------------

#: hubbub's own routes an ASGIApp leaves off, so that the application's paths stay its own.
_QUIET = {"page": False, "admin": False, "api_path": "", "metrics_path": "", "health_path": "",
          "relay_path": "", "protocol_path": "", "http_stream_path": "", "sse_path": "", "emulation_path": "",
          "uni_websocket_path": "", "uni_sse_path": "", "uni_http_stream_path": "", "channel_sse_path": ""}


class ASGIApp(App):
    """python-socketio's ``socketio.ASGIApp``: the Socket.IO server at ``/{socketio_path}/``, the
    ``static_files``, then ``other_asgi_app`` for every other request. It is a :class:`hubbub.App`:
    serve it with uvicorn (or any ASGI server), or ``hubbub run module:app``.

    Args:
        socketio_server: the :class:`AsyncServer`.
        other_asgi_app: an ASGI (or WSGI) application for the other requests.
        static_files: python-socketio's mapping of URL paths to files and directories
            (``{"/": "index.html", "/static": "static"}``; values may be
            ``{"filename": ..., "content_type": ...}``).
        socketio_path: the endpoint's path, without slashes.
        on_startup, on_shutdown: ``async def`` (or plain) callables run with the app.
        config: hubbub settings (a dict, a :class:`~hubbub.Config` or a TOML path), a hubbub
            extension. Only Socket.IO is served unless they turn other routes on; anonymous
            clients are allowed unless they say otherwise (the ``connect`` handler decides, as
            in python-socketio).
    """

    def __init__(self, socketio_server: AsyncServer, other_asgi_app: Any = None, static_files: Any = None,
                 socketio_path: str = "socket.io", on_startup: Callable[[], Any] | None = None,
                 on_shutdown: Callable[[], Any] | None = None, config: Any = None) -> None:
        settings: dict[str, Any] = dict(_QUIET)
        settings["socketio_path"] = "/" + socketio_path.strip("/") + "/"
        settings["allow_anonymous"] = True
        options = socketio_server.options
        origins = options.get("cors_allowed_origins")
        if origins is not None:
            settings["allowed_origins"] = [origins] if isinstance(origins, str) else list(origins)
        if options.get("ping_interval") is not None:
            settings["ping_interval"] = float(options["ping_interval"])
        if options.get("ping_timeout") is not None:
            settings["pong_timeout"] = float(options["ping_timeout"])
        if options.get("max_http_buffer_size") is not None:
            settings["max_message_size"] = int(options["max_http_buffer_size"])
        if isinstance(config, dict):
            settings.update(config)
            config = None
        super().__init__(config, http=other_asgi_app, **settings)
        socketio_server.attach(self)
        self.socketio_server = socketio_server
        if not self.config.page and not self.config.admin:
            # hubbub's own /static/ serves its demo page and dashboard, both off here: the
            # application's static files and routes keep /static/
            self.server.http_routes.remove("/static/{name}")
        self._static = dict(static_files or {})
        self._fallback_after_static = self.server.fallback
        if self._static:
            self.server.fallback = self._serve_static
        if on_startup is not None:
            self.on_startup(_as_async(on_startup))
        if on_shutdown is not None:
            self.on_shutdown(_as_async(on_shutdown))

    async def _serve_static(self, request: HTTPRequest) -> HTTPResponse:
        found = static_file(request.path, self._static) if request.method in ("GET", "HEAD") else None
        if found is not None:
            filename, content_type = found
            try:
                body = await asyncio.to_thread(Path(filename).read_bytes)
            except OSError:
                body = None
            if body is not None:
                return HTTPResponse(200, body, content_type)
        if self._fallback_after_static is not None:
            return await self._fallback_after_static(request)
        return HTTPResponse.json({"error": "not found"}, 404)


def _as_async(fn: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return await _call(fn)
    return run


def static_file(path: str, static_files: dict[str, Any]) -> tuple[str, str] | None:
    """The file and content type that python-socketio's ``static_files`` give ``path``
    (the longest mapped prefix; a directory serves ``index.html`` or the ``""`` entry), or ``None``.
    A path with a ``..`` segment matches nothing."""
    if ".." in path.split("/"):
        return None
    rest = ""
    entry = static_files.get(path)
    probe = path
    while entry is None and probe:
        probe, _, last = probe.rpartition("/")
        rest = "/" + last + rest
        entry = static_files.get(probe, static_files.get(probe + "/"))
    if entry is None:
        return None
    spec = {"filename": entry} if isinstance(entry, str) else dict(entry)
    filename = str(spec["filename"])
    if filename.endswith("/") and rest.startswith("/"):
        rest = rest[1:]
    filename += rest
    if filename.endswith("/") or (rest == "" and os.path.isdir(filename)):
        index = static_files.get("", "index.html")
        index_spec = {"filename": index} if isinstance(index, str) else dict(index)
        filename = filename.rstrip("/") + "/" + str(index_spec["filename"])
        spec.setdefault("content_type", index_spec.get("content_type"))
    content_type = spec.get("content_type") or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    return filename, content_type
