"""``hubbub.App``: declare WebSocket endpoints with decorators and hook into the hub.

::

    import hubbub

    app = hubbub.App()

    @app.websocket("/chat/{room}")
    class Chat:
        async def connect(self, ws):
            await ws.subscribe(f"chat.{ws.params['room']}")

        async def handle_message(self, ws, message):
            await ws.publish(f"chat.{ws.params['room']}", {"text": message})

        async def disconnect(self, ws):
            ...

    @app.rpc("time")
    async def time_rpc(client, data):
        return {"now": time.time()}

Serve it with ``hubbub run module:app`` or ``app.serve()``. The built-in
endpoints (``/connection/websocket``, ``/ws/{channel}``, ``/api/...``,
``/health``) are served alongside the app's own.

Hub hooks, each ``async``:

* ``@app.on_connect``: ``fn(request: ConnectRequest) -> ConnectResult | str | None``,
  for every client (``request.transport`` is ``"endpoint"`` for the app's own
  endpoints). Return the user (a ``ConnectResult``, or just the user id),
  ``None`` to keep what the token said, or raise ``Disconnect``/``ProtocolError``
  to reject (a handshake then gets HTTP 401, 403, ...). With this hook,
  connects without a token reach it even when anonymous clients are not allowed.
* ``@app.on_subscribe``: ``fn(client, channel, data) -> chan_info | None``; raise
  ``ProtocolError(103)`` to refuse.
* ``@app.on_publish``: ``fn(client, channel, data) -> data`` (possibly changed);
  raise to refuse.
* ``@app.rpc("method")``: ``fn(client, data) -> result``; unknown methods get 104.
* ``@app.on_message``: ``fn(client, data)`` for the ``send`` command.

``client`` is the connection's :class:`~hubbub.core.ClientCore`, whatever its
way in (``client.user``, ``client.client_id``, ``client.headers``,
``client.transport``). ``ProtocolError`` becomes an error reply with its code,
``Disconnect`` closes the connection, any other exception is logged and
answered with error 100. Which hooks run for which client: ``docs/design.md``,
"Choke points: one rule, one place".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from .asgi import ASGIAdapter
from .codes import ErrorCode
from .config import Config
from .core import ClientCore, ConnectRequest, ConnectResult, SessionHooks
from .endpoint import Connections, Registry, WebSocket
from .errors import ConfigError, ProtocolError
from .hosting import HostedApp
from .http import HTTPRequest
from .hub import Hub
from .loops import run_loop
from .server import Server, tune_gc

log = logging.getLogger("hubbub.app")

F = TypeVar("F", bound=Callable[..., Any])


class AppHooks(SessionHooks):
    """Session hooks that call the functions registered on an :class:`App`."""

    def __init__(self) -> None:
        self.connect: Callable[[ConnectRequest], Awaitable[Any]] | None = None
        self.subscribe: Callable[..., Awaitable[Any]] | None = None
        self.publish: Callable[..., Awaitable[Any]] | None = None
        self.message: Callable[..., Awaitable[Any]] | None = None
        self.rpcs: dict[str, Callable[..., Awaitable[Any]]] = {}

    @property
    def handles_auth(self) -> bool:  # type: ignore[override]  # SessionHooks declares a plain class attribute
        return self.connect is not None

    @property
    def active(self) -> bool:
        return self.connect is not None or self.subscribe is not None or self.publish is not None

    async def on_connect(self, request: ConnectRequest) -> ConnectResult:
        if self.connect is None:
            return request.result
        result = await self.connect(request)
        if result is None:
            return request.result
        if isinstance(result, str):
            return ConnectResult(user=result)
        if not isinstance(result, ConnectResult):
            raise TypeError("on_connect must return a ConnectResult, a user id or None")
        return result

    async def on_subscribe(self, session: ClientCore, channel: str, params: dict[str, Any]) -> Any:
        if self.subscribe is None:
            return None
        return await self.subscribe(session, channel, params.get("data"))

    async def on_publish(self, session: ClientCore, channel: str, data: Any) -> Any:
        if self.publish is None:
            return data
        return await self.publish(session, channel, data)

    async def on_rpc(self, session: ClientCore, method: str, data: Any) -> Any:
        fn = self.rpcs.get(method)
        if fn is None:
            raise ProtocolError(ErrorCode.METHOD_NOT_FOUND)
        return await fn(session, data)

    async def on_message(self, session: ClientCore, data: Any) -> None:
        if self.message is not None:
            await self.message(session, data)


def _require_async(fn: Callable[..., Any], what: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{what} must be an async function, got {fn!r}")


class App:
    """An application: endpoints, hub hooks, and the hub.

    An ``App`` is also an ASGI application (:meth:`__call__`): mount it in
    FastAPI or Starlette (``fastapi_app.mount("/rt", app)``), route to it
    from Django's ASGI application, or run it under uvicorn, hypercorn or
    granian. Every endpoint works there as on hubbub's own server.

    Args:
        config: a :class:`~hubbub.config.Config`, a dict of settings, or the
            path of a TOML file (the same settings as ``hubbub serve``).
        http: an ASGI or WSGI application (FastAPI, Starlette, Flask,
            Django) that answers every HTTP request no hubbub route takes, on
            hubbub's own server (``hubbub run``); its lifespan runs with the app.
        **settings: settings that override ``config``'s.

    Raises:
        ConfigError: invalid settings.
        TypeError: ``http`` is not an application.
    """

    def __init__(self, config: Config | dict[str, Any] | str | Path | None = None, *, http: Any = None,
                 **settings: Any) -> None:
        if isinstance(config, Config):
            base = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
            base.update(settings)
            self.config = Config(**base).validate()
        elif isinstance(config, (str, Path)):
            self.config = Config.load(config, env={}, **settings)  # the file and settings only: no HUBBUB_*
        else:
            self.config = Config.from_dict({**(config or {}), **settings}, source="App settings")
        self.hooks = AppHooks()
        #: path -> endpoint, in registration order (inspect it freely)
        self.websockets: dict[str, Any] = {}
        self._startup: list[Callable[[], Awaitable[Any]]] = []
        self._shutdown: list[Callable[[], Awaitable[Any]]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.server = Server(self.config, hooks=self.hooks)
        #: open connections of each framework endpoint (see :meth:`connections`)
        self.registry = Registry()
        self._hosted: HostedApp | None = None
        if http is not None:
            self._hosted = HostedApp(http)
            self.server.fallback = self._hosted
        self._asgi: ASGIAdapter | None = None

    @property
    def hub(self) -> Hub:
        """The hub: ``await app.hub.publish(channel, data)`` works anywhere in the app."""
        return self.server.hub

    # -- endpoints ---------------------------------------------------------------------

    def add_websocket(self, path: str, endpoint: Any, *, anonymous: bool | None = None) -> None:
        """Serve ``endpoint`` (a class or an ``async def handler(ws)``) at ``path``.

        Its clients are authenticated at the handshake like every other
        client (connection token, ``on_connect``, connections per user: see
        :mod:`hubbub.endpoint`). ``anonymous`` decides whether clients without
        a connection token are accepted: ``None`` (the default) as the hub
        does (``allow_anonymous``; when unset, only on a loopback address with
        no token key), ``True`` even when the hub requires tokens (a public
        lobby next to private endpoints), ``False`` never. An endpoint class
        may say the same with a class attribute ``anonymous``; the argument
        wins over it.

        Raises:
            TypeError: ``endpoint`` is neither; ``anonymous`` (or the class
                attribute) is not a bool or ``None``.
            ValueError: ``path`` is malformed.
            ConfigError: ``path`` collides with another endpoint or a built-in
                one (the message names both, and the setting that moves it).
        """
        if not inspect.isclass(endpoint) and not inspect.iscoroutinefunction(endpoint):
            raise TypeError("an endpoint is a class or an async def handler(ws)")
        if inspect.isclass(endpoint):
            if not any(hasattr(endpoint, name) for name in ("connect", "handle_message", "disconnect", "produce")):
                raise TypeError(f"{endpoint.__name__} has none of connect, handle_message, disconnect, produce")
            if anonymous is None:
                anonymous = getattr(endpoint, "anonymous", None)  # the application's class, documented above
        if anonymous is not None and not isinstance(anonymous, bool):
            raise TypeError(f"anonymous must be True, False or None, not {anonymous!r}")
        name = getattr(endpoint, "__qualname__", repr(endpoint))
        self.server.add_websocket(path, self._session_factory(endpoint, path, anonymous), f"endpoint {name}")
        self.websockets[path] = endpoint

    def _session_factory(self, endpoint: Any, path: str, anonymous: bool | None) -> Callable[..., WebSocket]:
        server, registry = self.server, self.registry

        def create(conn: Any, request: HTTPRequest) -> WebSocket:
            return WebSocket(server.context.at(request.local), conn, server.wires(conn)[1], request, endpoint,
                             registry=registry, route=path, anonymous=anonymous)

        return create

    def connections(self, path: str) -> Connections:
        """The open connections of the endpoint at ``path`` (its pattern, as
        registered): a read-only live set, for ``hubbub.broadcast(app.connections("/chat"), "hi")``."""
        return self.registry.connections(path)

    def websocket(self, path: str, *, anonymous: bool | None = None) -> Callable[[F], F]:
        """Decorator form of :meth:`add_websocket`:
        ``@app.websocket("/lobby", anonymous=True)``."""

        def register(endpoint: F) -> F:
            self.add_websocket(path, endpoint, anonymous=anonymous)
            return endpoint

        return register

    def route(self, path: str) -> Callable[[F], F]:
        """Serve plain HTTP requests on ``path`` with an
        ``async def handler(request: HTTPRequest) -> HTTPResponse`` (from
        :mod:`hubbub.http`), on hubbub's own server and under ASGI alike.

        Raises:
            TypeError: the handler is not an async function.
            ConfigError: ``path`` collides with another route.
        """

        def register(handler: F) -> F:
            _require_async(handler, f"route {path}")
            self.server.add_http(path, handler, f"route {path} ({getattr(handler, '__qualname__', '?')})")
            return handler

        return register

    # -- hub hooks ---------------------------------------------------------------------------

    def on_connect(self, fn: F) -> F:
        """Authenticate clients: protocol, relay and endpoint clients alike (see the module docstring)."""
        _require_async(fn, "on_connect")
        self.hooks.connect = fn
        return fn

    def on_subscribe(self, fn: F) -> F:
        """Authorize subscriptions, or attach channel info."""
        _require_async(fn, "on_subscribe")
        self.hooks.subscribe = fn
        return fn

    def on_publish(self, fn: F) -> F:
        """Validate or transform client publications."""
        _require_async(fn, "on_publish")
        self.hooks.publish = fn
        return fn

    def on_message(self, fn: F) -> F:
        """Receive the protocol's ``send`` command."""
        _require_async(fn, "on_message")
        self.hooks.message = fn
        return fn

    def rpc(self, method: str) -> Callable[[F], F]:
        """Answer the protocol's ``rpc`` command for ``method``."""

        def register(fn: F) -> F:
            _require_async(fn, f"rpc {method!r}")
            if method in self.hooks.rpcs:
                raise ValueError(f"rpc {method!r} is registered already")
            self.hooks.rpcs[method] = fn
            return fn

        return register

    # -- life cycle ---------------------------------------------------------------------------

    def on_startup(self, fn: F) -> F:
        """Run ``fn()`` after the hub starts (e.g. to start a background publisher)."""
        _require_async(fn, "on_startup")
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn: F) -> F:
        """Run ``fn()`` before the hub stops."""
        _require_async(fn, "on_shutdown")
        self._shutdown.append(fn)
        return fn

    def background(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task owned by the app: cancelled when the app stops."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def start(self) -> None:
        """Start serving (returns once listening); see :meth:`stop`.

        Raises:
            OSError: the port is taken.
            RuntimeError: the hosted application failed to start.
        """
        await self.server.start()
        await self._started()

    async def _started(self) -> None:
        if self._hosted is not None:
            await self._hosted.startup()
        for fn in self._startup:
            await fn()

    async def _stopping(self) -> None:
        for fn in self._shutdown:
            try:
                await fn()
            except Exception:
                log.exception("error in shutdown hook")
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._hosted is not None:
            await self._hosted.shutdown()

    async def stop(self) -> None:
        """Stop background tasks, close clients with 3001, stop the hub."""
        await self._stopping()
        await self.server.close()

    # -- ASGI ---------------------------------------------------------------------------

    @property
    def asgi(self) -> ASGIAdapter:
        """The ASGI adapter of this app (``await app(scope, receive, send)`` uses it)."""
        if self._asgi is None:
            self._asgi = ASGIAdapter(self.server, startup=self._started, shutdown=self._stopping)
        return self._asgi

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI 3 application: HTTP, WebSocket and lifespan scopes.

        The hub starts with the lifespan, or at the first request when the
        host does not forward lifespan events (Starlette's ``Mount``); with
        FastAPI, ``FastAPI(lifespan=app.lifespan)`` ties both together.
        """
        await self.asgi(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, host_app: Any = None) -> AsyncIterator[None]:
        """Start the hub for the life of a host application:
        ``FastAPI(lifespan=hubbub_app.lifespan)``, so route handlers can
        ``await hubbub_app.hub.publish(...)`` from the first request on."""
        await self.asgi.startup()
        try:
            yield
        finally:
            await self.asgi.shutdown()

    async def serve_async(self) -> None:
        """Serve until SIGINT/SIGTERM."""
        import signal

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        tune_gc()  # as Server.serve: the process is the app's (without it, 10,000 connects ran 4 full collections of 43-131 ms)
        log.info("hubbub app listening on %s (broker: %s)", self.server.url, self.hub.broker.name)
        log.info("security: %s", self.config.security_mode)
        log.info("endpoints: %s", ", ".join(r.pattern for r in self.server.websocket_routes))
        try:
            await stop.wait()
        finally:
            await self.stop()

    def serve(self, *, host: str | None = None, port: int | None = None) -> None:
        """Serve until SIGINT/SIGTERM (blocking), like ``hubbub run``.

        Raises:
            ConfigError: the settings refuse to serve (see ``check_exposure``).
        """
        if host is not None:
            self.config.host = host
        if port is not None:
            self.config.port = port
        self.config.validate()
        self.config.check_exposure()
        if not logging.getLogger().handlers:  # log as `hubbub serve` does, unless the program set up logging
            from .logs import setup

            setup("info", "text")
        run_loop(self.serve_async(), self.config.event_loop)


def load_app(target: str) -> App:
    """Import ``module:attribute`` and return the :class:`App` it names.

    Raises:
        ConfigError: the module or attribute is missing, or not an App.
    """
    import importlib
    import sys

    module_name, _, attr = target.partition(":")
    attr = attr or "app"
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigError(f"{target!r} is not a hubbub.App (found {type(app).__name__})")
    return app
