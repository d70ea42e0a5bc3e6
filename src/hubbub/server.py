"""The server: one asyncio listener on one port for WebSocket and HTTP.

Its routes are the README's "What runs where", plus those added with
:meth:`Server.add_http` and :meth:`Server.add_websocket`.

See ``docs/design.md``, "The write path" (4: shared timers) and "Choke points"
(the sweep, the origin check).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote

from ._version import __version__
from .admin import Admin
from .api import ServerAPI
from .auth import TokenVerifier
from .brokers import create_broker
from .cluster import Cluster
from .codec import JSON, Codec, ProtocolWire
from .codes import DisconnectCode
from .config import Config
from .connection import Connection, WebSocketFrames
from .consumers import Consumer, configured
from .core import ClientContext, Refusal, SessionHooks
from .errors import BadRequest, ConfigError, RouteCollision
from .formats import negotiate
from .http import HTTPRequest, HTTPResponse
from .hub import Hub
from .listener import Listener
from .metrics import render
from .proxy import http_proxy
from .relay import RelaySession, RelayWire
from .routing import Router
from .session import ClientSession
from .sio.service import SocketIOService
from .streams import Streams
from .transport import ClientTransport, WebSocketSession, WebSocketTransport
from .wheel import Deadlines, Wheel
from .writer import Flusher

log = logging.getLogger("hubbub.server")

HTTPHandler = Callable[[HTTPRequest], Awaitable[HTTPResponse]]
#: Creates the session for an accepted WebSocket connection.
EndpointFactory = Callable[[WebSocketTransport, HTTPRequest], WebSocketSession | Refusal]

#: the setting that moves each built-in route
_BUILTIN_SETTING = {
    "the protocol endpoint": "protocol_path", "the relay": "relay_path", "health": "health_path",
    "the server API": "api_path", "metrics": "metrics_path", "the demo page": "page",
    "the admin dashboard": "admin",
    "the server API (newline-delimited commands)": "api_path",
    "the http_stream transport": "http_stream_path", "the sse transport": "sse_path",
    "the emulation endpoint": "emulation_path", "the uni_sse transport": "uni_sse_path",
    "the uni_http_stream transport": "uni_http_stream_path", "channel event streams": "channel_sse_path",
    "the uni_websocket transport": "uni_websocket_path", "Socket.IO": "socketio_path",
}


def _collision_message(exc: RouteCollision) -> str:
    message = str(exc)
    for route in (exc.other, exc.route):
        setting = _BUILTIN_SETTING.get(route.name)
        if setting in ("page", "admin"):
            message += f"; turn {route.name} off with {setting} = false"
        elif setting is not None:
            message += f"; move {route.name} with {setting} = \"/...\" or turn it off with {setting} = \"\""
    return message


def _static_file(name: str) -> bytes:
    """A file shipped in ``hubbub/static`` (raises ``FileNotFoundError``)."""
    from importlib.resources import files

    resource = files("hubbub").joinpath("static", name)
    if not resource.is_file():
        raise FileNotFoundError(name)
    return resource.read_bytes()


#: Garbage collector thresholds while serving (CPython's defaults: 700, 10, 10).
GC_THRESHOLDS = (2000, 10, 100)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running hub.

    Each connection keeps a few dozen long-lived objects. With CPython's
    default thresholds a full collection walks all of them every ~70,000 net
    allocations, which during a connect storm of 10,000 clients cost 30-40% of
    the handshake CPU (docs/benchmarks.md, workload 5). This freezes what
    startup allocated (``gc.freeze``: never scanned again) and makes full
    collections ten times rarer (:data:`GC_THRESHOLDS`). Cyclic garbage is
    still collected. Called by :meth:`Server.serve`; the process is the hub's.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: Longest gap between two ticks of the ping wheel, seconds: the connections are
#: pinged in ``ceil(ping_interval / PING_TICK)`` slots, one slot per tick (25 s: 250
#: slots of 100 ms, 40 pings per tick with 10,000 connections).
PING_TICK = 0.1

#: Seconds between housekeeping sweeps (handshake and connect deadlines).
SWEEP_INTERVAL = 1.0


class Server:
    """A hub node serving one port.

    Args:
        config: settings (validated here).
        hub: the hub; by default one with the broker named in ``config``.
        hooks: protocol session hooks (authentication, RPC, ...).

    Use ``await server.start()`` then ``await server.close()``, or
    ``await server.serve()`` to run until SIGINT/SIGTERM.
    """

    def __init__(self, config: Config | None = None, *, hub: Hub | None = None,
                 hooks: SessionHooks | None = None) -> None:
        self.config = (config or Config()).validate()
        self.hub = hub or Hub(self.config, create_broker(self.config.broker))
        self.frames = WebSocketFrames()
        self.protocol_wire = ProtocolWire(JSON, self.frames)
        self.relay_wire = RelayWire(self.frames)
        # wires of other framings (ASGI), made once each: a push is encoded once per wire
        self._wires: dict[type, tuple[ProtocolWire, RelayWire]] = {
            type(self.frames): (self.protocol_wire, self.relay_wire)}
        # protocol wires of the other codecs (Protobuf), per framing and codec
        self._codec_wires: dict[tuple[type, str], ProtocolWire] = {}
        self.verifier = TokenVerifier(self.config)
        #: what every client session of this node shares (hub, rules, hooks)
        self.context = ClientContext(self.hub, verifier=self.verifier, hooks=hooks or SessionHooks(),
                                     proxy=http_proxy(self.config, self.hub.stats))
        self.origins: list[Any] | None = None
        self.connections: set[ClientTransport] = set()
        self.websockets: set[ClientTransport] = set()
        self._pending: set[ClientTransport] = set()
        self._flusher: Flusher | None = None  # made by start()
        self.closing = False
        self.stats = self.hub.stats
        self.started_at = time.time()
        self.websocket_routes: Router[EndpointFactory] = Router()
        self.http_routes: Router[HTTPHandler] = Router()
        #: answers HTTP requests that no route takes (a hosted ASGI/WSGI app)
        self.fallback: HTTPHandler | None = None
        self._server: Listener | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        #: the WebSocket (and stream) connections in the slots of the ping timer (made by
        #: :meth:`start`; ``None`` before, and with ``ping_interval = 0``)
        self.ping_wheel: Wheel[ClientTransport] | None = None
        self._pong_checks: Deadlines[int] = Deadlines()  # slots pinged, due pong_timeout later
        self._ping_round = 0  # ticks of the ping wheel so far
        self._stopped: asyncio.Event | None = None
        config = self.config
        #: this node in the cluster of nodes sharing the broker (control channel, node info)
        self.cluster = Cluster(self.hub, started_at=self.started_at, interval=config.node_info_interval,
                               timeout=config.node_timeout, request_timeout=config.node_request_timeout)
        self.api = ServerAPI(self.hub, config, cluster=self.cluster)
        #: async consumers running server API commands from a queue (``postgresql_consumer_dsn``)
        self.consumers: list[Consumer] = configured(config, self.api)
        if config.protocol_path:
            self.websocket_routes.add(config.protocol_path, self._protocol_endpoint, "the protocol endpoint")
        if config.relay_path:
            self.websocket_routes.add(config.relay_path, self._relay_endpoint, "the relay")
        if config.health_path:
            self.http_routes.add(config.health_path, self._health, "health")
        if config.api_path:
            self.http_routes.add(config.api_path.rstrip("/") + "/{method}", self.api.handle, "the server API")
            self.http_routes.add(config.api_path.rstrip("/") or "/", self.api.handle_commands,
                                 "the server API (newline-delimited commands)")
        if config.metrics_path:
            self.http_routes.add(config.metrics_path, self._metrics, "metrics")
        self.http_routes.add("/static/{name}", self._static, "hubbub's static files")
        #: SSE, HTTP streaming, one-way transports and channel event streams (hubbub.streams)
        self.streams = Streams(self)
        self.streams.install()
        #: Socket.IO at ``socketio_path`` (``None`` when off; hubbub.socketio)
        self.socketio: SocketIOService | None = None
        if config.socketio_path:
            self.socketio = SocketIOService(self, self.cluster)
            self.http_routes.add(config.socketio_path, self.socketio.handle_http, "Socket.IO")
            self.websocket_routes.add(config.socketio_path, self.socketio.websocket, "Socket.IO")
        if config.page:
            self.http_routes.add("/", self._page, "the demo page")
        #: the operator's dashboard at /admin (``None`` with ``admin = false``; it
        #: answers 404 and does not sample while ``Config.admin_enabled`` is false)
        self.admin: Admin | None = None
        if config.admin:
            self.admin = Admin(self)
            self.admin.install(self.http_routes.add)

    @property
    def hooks(self) -> SessionHooks:
        """The application hooks every client session calls (settable)."""
        return self.context.hooks

    @hooks.setter
    def hooks(self, hooks: SessionHooks) -> None:
        self.context.hooks = hooks

    # -- routes -----------------------------------------------------------------

    def add_websocket(self, path: str, factory: EndpointFactory, name: str = "") -> None:
        """Serve WebSocket connections on ``path`` (``/rooms/{room}`` patterns).

        Raises:
            ValueError: a malformed pattern.
            ConfigError: ``path`` collides with another endpoint; the message
                names both and how to move a built-in one.
        """
        try:
            self.websocket_routes.add(path, factory, name or f"endpoint {path}")
        except RouteCollision as exc:
            raise ConfigError(_collision_message(exc)) from None

    def add_http(self, path: str, handler: HTTPHandler, name: str = "") -> None:
        """Serve plain HTTP requests on ``path`` with ``handler``
        (``async def handler(request: HTTPRequest) -> HTTPResponse``).

        Raises:
            ValueError: a malformed pattern.
            ConfigError: ``path`` collides with another route (named in the message).
        """
        try:
            self.http_routes.add(path, handler, name or f"route {path}")
        except RouteCollision as exc:
            raise ConfigError(_collision_message(exc)) from None

    def wires(self, conn: Any) -> tuple[ProtocolWire, RelayWire]:
        """The protocol and relay wires for ``conn``'s framing (its ``frames``: plain,
        compressing per window size (:mod:`hubbub.compression`), or ASGI), one pair per
        encoder type: a push is framed, and compressed, once per wire."""
        frames = conn.frames
        found = self._wires.get(type(frames))
        if found is None:
            found = self._wires[type(frames)] = (ProtocolWire(JSON, frames), RelayWire(frames))
        return found

    def codec_wire(self, conn: Any, codec: Codec) -> ProtocolWire:
        """The protocol wire of ``codec`` for ``conn``'s framing (its ``frames``),
        one per framing and codec: a push is encoded once per codec."""
        if codec is JSON:
            return self.wires(conn)[0]
        key = (type(conn.frames), codec.name)
        wire = self._codec_wires.get(key)
        if wire is None:
            wire = self._codec_wires[key] = ProtocolWire(codec, conn.frames)
        return wire

    def _protocol_endpoint(self, conn: WebSocketTransport, request: HTTPRequest) -> ClientSession | Refusal:
        try:
            codec, subprotocol = negotiate(request.query, request.headers)
        except BadRequest as exc:
            return 400, exc.message
        return ClientSession(self.context.at(request.local), conn, self.codec_wire(conn, codec),
                             headers=request.headers, subprotocol=subprotocol)

    def _relay_endpoint(self, conn: WebSocketTransport, request: HTTPRequest) -> RelaySession:
        echo = request.query.get("echo", "true").lower() not in ("false", "0", "no")
        return RelaySession(self.context.at(request.local), conn, self.wires(conn)[1], request.params["channel"],
                            echo=echo,
                            headers=request.headers, query=request.query)

    def websocket_session(self, conn: WebSocketTransport, request: HTTPRequest) -> WebSocketSession | Refusal:
        """The session for an upgrade on ``request.path``, or a refusal
        ``(status, text)``: 404 no endpoint, 403 origin not allowed, 503
        shutting down. The session then decides about the client itself
        (tokens, permissions) before ``101``."""
        if self.closing:
            return 503, "server is shutting down"
        found = self.websocket_routes.match(request.path)
        if found is None:
            endpoints = ", ".join(route.pattern for route in self.websocket_routes) or "none"
            return 404, f"no WebSocket endpoint at {request.path}; endpoints: {endpoints}"
        factory, request.params = found
        origin = request.headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, request.headers.get("host", "")):
            log.warning("refused WebSocket upgrade from origin %r", origin)
            return 403, "origin not allowed"
        return factory(conn, request)

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a browser's ``Origin`` may open a WebSocket.

        With ``allowed_origins`` set, only its entries (``*`` allows any):
        the ``Host`` header is the client's to choose, so a same-origin check
        would let any page in that names its own host. With the list empty,
        same-origin requests only (``Origin``'s host equals ``Host``).

        Browsers always send ``Origin`` on WebSocket upgrades; refusing foreign
        ones stops cross-site WebSocket hijacking. Clients that send no
        ``Origin`` (not browsers) are not affected.
        """
        allowed = self.config.allowed_origins
        if allowed:
            return "*" in allowed or origin in allowed
        _, _, origin_host = origin.partition("://")
        return bool(host) and origin_host.lower() == host.lower()

    async def handle_http(self, request: HTTPRequest, *, root_path: str = "") -> HTTPResponse:
        """Answer a plain HTTP request: hubbub's routes first; on a WebSocket
        endpoint's path, 426 Upgrade Required (:meth:`upgrade_required`); then
        the hosted application (:attr:`fallback`), else 404.

        ``root_path``: the prefix the node is mounted under (an ASGI scope's
        ``root_path``), for the paths named in a 426 answer."""
        found = self.http_routes.match(request.path)
        if found is None:
            upgrade = self.upgrade_required(request.path, root_path)
            if upgrade is not None:
                return upgrade
            if self.fallback is not None:
                return await self.fallback(request)
            return HTTPResponse.json({"error": "not found"}, 404)
        handler, request.params = found
        return await handler(request)

    def upgrade_required(self, path: str, root_path: str = "") -> HTTPResponse | None:
        """The answer to a plain HTTP request on a WebSocket endpoint's ``path``:
        426 Upgrade Required with ``Upgrade: websocket``, and a text body saying
        what the path expects and where a plain HTTP client reads a channel
        (``/sse/{channel}``; for the relay, that channel's). ``None`` when no
        WebSocket endpoint serves ``path``."""
        route = next((r for r in self.websocket_routes if r.regex.match(path)), None)
        if route is None:
            return None
        match = route.regex.match(path)
        channel = unquote(match.group("channel")) if match is not None and route.target == self._relay_endpoint \
            else ""
        what = route.name
        if route.target == self._protocol_endpoint:
            what = "the Centrifugo client protocol: centrifuge-js or another Centrifugo SDK"
        elif channel:
            what = f"the relay of channel {channel}: hubbub consume ws://HOST{root_path}{path}"
        lines = [f"{root_path}{path} is a WebSocket endpoint ({what}). It answers only a WebSocket upgrade "
                 "(GET with Upgrade: websocket and Connection: Upgrade), sent by a WebSocket client "
                 "(a browser's new WebSocket(url), websocat, hubbub consume)."]
        sse = self.config.channel_sse_path
        if sse:
            name = quote(channel, safe="/:") if channel else "{channel}"
            target = root_path + sse.replace("{channel:path}", name).replace("{channel}", name)
            subject = "this channel" if channel else "a channel"
            lines.append(f"A plain HTTP client can follow {subject} as server-sent events: GET {target} "
                         f"(curl -N http://HOST{target}).")
        else:
            lines.append("This server serves no channel event streams (channel_sse_path is off).")
        return HTTPResponse(426, ("\n".join(lines) + "\n").encode(), "text/plain; charset=utf-8",
                            [("upgrade", "websocket")])

    @property
    def slow_closed(self) -> int:
        """Connections closed with 3008 "slow" so far."""
        return self.stats.slow

    def session_kinds(self) -> dict[str, int]:
        """Open connections by kind: protocol, relay, endpoint (WebSocket connections), and
        socketio (Socket.IO sessions, on WebSocket or HTTP long-polling)."""
        kinds = {"protocol": 0, "relay": 0, "endpoint": 0}
        for conn in self.websockets:
            session = conn.session
            if session is not None and session.kind in kinds:
                kinds[session.kind] += 1
        kinds["socketio"] = len(self.socketio.sessions) if self.socketio is not None else 0
        return kinds

    def pending_output(self) -> int:
        """Bytes queued for clients, in user space and in the transports."""
        return sum(conn.pending for conn in self.connections)

    async def _metrics(self, request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, render(self), "text/plain; version=0.0.4; charset=utf-8")

    async def _page(self, request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, _static_file("index.html"), "text/html; charset=utf-8")

    async def _static(self, request: HTTPRequest) -> HTTPResponse:
        name = request.params["name"]
        types = {".js": "text/javascript; charset=utf-8", ".html": "text/html; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
        suffix = name[name.rfind("."):] if "." in name else ""
        if suffix not in types or name.startswith("."):
            return HTTPResponse.json({"error": "not found"}, 404)
        try:
            body = _static_file(name)
        except FileNotFoundError:
            return HTTPResponse.json({"error": "not found"}, 404)
        return HTTPResponse(200, body, types[suffix], [("cache-control", "no-cache")])

    async def _health(self, request: HTTPRequest) -> HTTPResponse:
        healthy = self.hub.broker.healthy
        return HTTPResponse.json(
            {
                "status": "ok" if healthy else "unavailable",
                "broker": {"name": self.hub.broker.name, "healthy": healthy},
                "version": __version__,
                "connections": len(self.websockets),
            },
            200 if healthy else 503,
        )

    # -- connection bookkeeping ----------------------------------------------------------

    def connection_opened(self, conn: ClientTransport) -> None:
        self.connections.add(conn)
        self._pending.add(conn)

    def stream_opened(self, conn: ClientTransport) -> None:
        """``conn`` answers with a stream (hubbub.streams): pinged and swept like a WebSocket
        (a protocol client on it has ``connect_timeout`` to connect, then 3502)."""
        self._pinged(conn)
        if conn.session is not None and conn.session.awaits_connect:  # swept as websocket_opened does
            conn.deadline = time.monotonic() + self.config.connect_timeout
            self._pending.add(conn)
        else:
            self._pending.discard(conn)

    def websocket_opened(self, conn: ClientTransport) -> None:
        self._pinged(conn)
        if conn.session is None or not conn.session.awaits_connect:
            self._pending.discard(conn)
        else:
            conn.deadline = time.monotonic() + self.config.connect_timeout

    def _pinged(self, conn: ClientTransport) -> None:
        """``conn`` joins :attr:`websockets` and a slot of the ping wheel (once)."""
        if conn not in self.websockets:
            self.websockets.add(conn)
            if self.ping_wheel is not None:
                conn.ping_slot = self.ping_wheel.add(conn)

    def connection_closed(self, conn: ClientTransport) -> None:
        if self._server is not None:
            self._server.resume()  # a descriptor is free: accept again if the limit had paused it
        self.connections.discard(conn)
        if conn in self.websockets:
            self.websockets.discard(conn)
            if self.ping_wheel is not None:
                self.ping_wheel.discard(conn, conn.ping_slot)
        self._pending.discard(conn)
        if self._stopped is not None and not self.connections:
            self._stopped.set()

    # -- shared timers -------------------------------------------------------------------

    def _every(self, name: str, interval: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` every ``interval`` seconds from one shared timer."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            try:
                callback()
            except Exception:
                log.exception("error in periodic task %s", name)
            if not self.closing:
                self._timers[name] = loop.call_later(interval, tick)

        self._timers[name] = loop.call_later(interval, tick)

    def _ping_tick(self, now: float | None = None) -> None:
        """One tick of the ping wheel: ping the connections of the next slot (each
        connection once per ``ping_interval``), and check the pongs of the ticks
        ``pong_timeout`` ago (at the first tick after: up to :data:`PING_TICK` later).
        A tick touches only its slot: a few dozen connections, not a round of
        thousands at once (and their pongs coming back at once).

        Args:
            now: the loop's time (``loop.time()``; given by tests).
        """
        wheel = self.ping_wheel
        if wheel is None:
            return
        if now is None:
            now = asyncio.get_running_loop().time()
        self._ping_round += 1
        for slot in self._pong_checks.pop_due(now):  # the slot's members now: the closed have left
            for conn in wheel.items(slot):
                session = conn.session
                if session is not None and not session.closed:
                    session.check_pong()
        slot = wheel.turn()
        pinged = False
        for conn in wheel.items(slot):
            target = conn.session
            if conn.open and target is not None:
                target.ping()
                pinged = True
        if pinged:
            self._pong_checks.add(now + self.config.pong_timeout, slot)

    def _sweep(self) -> None:
        wall = self.context.wall()
        for conn in self.websockets:
            session = conn.session
            if session is not None and session.expires:
                session.check_expiry(wall)
        now = time.monotonic()
        for conn in list(self._pending):
            session = conn.session
            if session is not None and session.awaits_connect:
                if session.connected or session.closed:
                    self._pending.discard(conn)
                elif now >= conn.deadline:
                    self._pending.discard(conn)
                    session.disconnect(DisconnectCode.STALE, "connect timeout")
            elif conn.idle and now >= conn.deadline:
                self._pending.discard(conn)
                conn.abort()

    # -- life cycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``)."""
        assert self._server is not None, "server not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        """Whether the node runs (hub, timers), listening or not."""
        return self._flusher is not None

    @property
    def flusher(self) -> Flusher:
        """The node's shared :class:`~hubbub.writer.Flusher` (made by :meth:`start`).

        Raises:
            RuntimeError: the node is not started.
        """
        if self._flusher is None:
            raise RuntimeError("the hubbub node is not started: await Server.start() (or App.start()) first")
        return self._flusher

    async def start(self, *, sock: socket.socket | None = None, reuse_port: bool = False,
                    listen: bool = True) -> None:
        """Start the hub and, with ``listen`` (the default), listen on the
        configured host and port (or ``sock``).

        ``listen=False`` starts the node without a socket of its own, for
        another server's connections (the ASGI adapter, :mod:`hubbub.asgi`).

        Raises:
            OSError: the port is taken.
            ConfigError: the settings refuse to serve (``check_exposure``).
        """
        loop = asyncio.get_running_loop()
        self.context.refresh()  # the settings may have changed since (App.serve(host=...))
        if listen:
            self.config.check_exposure()
        if self._flusher is None:
            self._flusher = Flusher(loop)
            await self.hub.start()
            await self.cluster.start()
            for consumer in self.consumers:
                await consumer.start()
            if self.config.ping_interval > 0:
                self.ping_wheel = Wheel(self.config.ping_interval, PING_TICK)
                for conn in self.websockets:
                    conn.ping_slot = self.ping_wheel.add(conn)
                self._every("ping", self.ping_wheel.tick, self._ping_tick)
            self._every("sweep", SWEEP_INTERVAL, self._sweep)
            if self.admin is not None:
                self.admin.start()
        if not listen:
            return
        if sock is not None:
            self._server = await Listener.start(loop, lambda: Connection(self), sock=sock, backlog=4096)
        else:
            self._server = await Listener.start(
                loop, lambda: Connection(self), host=self.config.host, port=self.config.port,
                backlog=4096, reuse_port=reuse_port,
            )

    async def close(self, *, code: int = DisconnectCode.SHUTDOWN, reason: str = "shutdown") -> None:
        """Stop accepting, close every client with ``code`` (3001 "shutdown"),
        wait up to ``close_timeout`` for them, then stop the hub."""
        if self.closing:
            return
        self.closing = True
        for consumer in self.consumers:  # no new commands; the rows at hand are finished
            await consumer.close()
        for timer in self._timers.values():
            timer.cancel()
        self._pong_checks.clear()
        if self._server is not None:
            self._server.close()
        self._stopped = asyncio.Event()
        if self.socketio is not None:
            self.socketio.close(code, reason)
        for conn in list(self.connections):
            if conn.session is not None:
                conn.session.disconnect(code, reason)
            elif conn.idle:
                conn.abort()
            else:
                conn.close(code, reason)
        if self.connections:
            try:
                await asyncio.wait_for(self._stopped.wait(), self.config.close_timeout + 1)
            except TimeoutError:
                for conn in list(self.connections):
                    conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
        if self.admin is not None:
            await self.admin.close()
        await self.cluster.close()
        if self.context.proxy is not None:
            await self.context.proxy.close()
        await self.hub.close()

    async def serve(self, *, ready: Callable[[Server], None] | None = None, reuse_port: bool = False) -> None:
        """Serve until SIGINT or SIGTERM, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start(reuse_port=reuse_port)
        tune_gc()
        try:
            if ready is not None:
                ready(self)
            await stop.wait()
            log.info("shutting down: closing %d connections with 3001", len(self.websockets))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.close()
