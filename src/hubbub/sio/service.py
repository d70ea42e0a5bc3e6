"""Socket.IO at ``socketio_path`` (``/socket.io/``): Engine.IO's HTTP long-polling and WebSocket
transports, the upgrade between them, and the node's Socket.IO sessions.

- ``GET ?EIO=4&transport=polling`` opens a session (the open packet, ``upgrades: ["websocket"]``);
  ``GET ...&sid=S`` waits for packets (several, separated by ``\\x1e``), ``POST ...&sid=S`` sends
  some (answer ``ok``).
- ``?EIO=4&transport=websocket`` opens a session on a WebSocket; with ``&sid=S`` it probes
  (``2probe``/``3probe``) then upgrades (``5``) session ``S`` of this node.
- A session id names its node (``{node}.{random}``): a poll that reaches another node is forwarded
  to the node that holds the session over the cluster's control channel, as ``/emulation`` is, so
  no sticky sessions are needed. A WebSocket upgrade of another node's session is refused (400) and
  the client stays on long-polling.
- One timer per node (not one per connection) pings the sessions on long-polling, ends those that
  do not answer, those whose connection token expired (3005; the server's sweep checks those on a
  WebSocket), those that never connect a namespace (``connect_timeout``) and those whose binary
  packet waits too long for its attachments (``socketio_attachment_timeout``).

Errors are Engine.IO's (``{"code", "message"}``, HTTP 400; 413 for a body over ``maxPayload``),
never a traceback. See docs/design.md, "Socket.IO".
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from typing import Any, Protocol

from ..codes import DisconnectCode
from ..config import NamespaceOptions
from ..core import ClientContext, HandshakeDecision, Refusal
from ..http import HTTPRequest, HTTPResponse
from ..transport import WebSocketSession, WebSocketTransport
from . import engineio
from .engineio import EngineError, decode_payload, encode_payload, error_body
from .session import (
    CHANNEL_PREFIX,
    HubHandlers,
    PollingOut,
    SocketIOHandlers,
    SocketIOSession,
    SocketIOWire,
    _Recoverable,
)

__all__ = ["SOCKETIO_KIND", "SocketIOService"]

log = logging.getLogger("hubbub.socketio")

#: the control channel's request kind that carries a poll to the node holding its session
SOCKETIO_KIND = "socketio"
#: packets one long-polling POST may carry
MAX_PACKETS_PER_POST = 256
#: seconds between the service's sweeps
TICK = 1.0


class SocketIOHost(Protocol):
    """What the service needs of the server (:class:`hubbub.server.Server`)."""

    context: ClientContext
    closing: bool

    def origin_allowed(self, origin: str, host: str) -> bool: ...


class SocketIOCluster(Protocol):
    """The control channel between nodes (:class:`hubbub.cluster.Cluster`)."""

    uid: str

    def peers(self) -> list[str]: ...

    async def send(self, node: str, kind: str, payload: Any = None, *, timeout: float | None = None) -> Any: ...

    def register(self, kind: str, handler: Any, *, ordered: bool = False) -> None: ...


def _error(code: int, status: int = 400) -> HTTPResponse:
    return HTTPResponse.json(error_body(code), status)


class SocketIOService:
    """This node's Socket.IO sessions and their transports (see the module docstring).

    Args:
        host: the server.
        cluster: the control channel, for polls that reach the wrong node (``None``: one node).

    Attributes:
        handlers: the application's :class:`~hubbub.sio.session.SocketIOHandlers`
            (:class:`hubbub.socketio.AsyncServer` sets itself); by default namespace ``/``
            only, events acknowledged with nothing.
    """

    def __init__(self, host: SocketIOHost, cluster: SocketIOCluster | None = None) -> None:
        self.host = host
        self.context = host.context
        self.config = host.context.config
        self.cluster = cluster
        self.node = cluster.uid if cluster is not None else str(uuid.uuid4())
        self.handlers: SocketIOHandlers = HubHandlers()
        self.wire = SocketIOWire()
        self.sessions: dict[str, SocketIOSession] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: closed polling sessions whose last packets wait for a poll: sid -> (session, until)
        self._closing: dict[str, tuple[SocketIOSession, float]] = {}
        self.recovery: dict[str, _Recoverable] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._ping_at: dict[str, float] = {}
        if cluster is not None:
            cluster.register(SOCKETIO_KIND, self._remote)
        # rooms are channels of the ``socketio`` namespace; unless configured, other clients
        # may not subscribe, publish or read them (a sid's room is that client's own)
        self.config.namespaces.setdefault(CHANNEL_PREFIX, NamespaceOptions(
            allow_publish_for_client=False, allow_subscribe_for_client=False, allow_history_for_client=False,
            allow_presence_for_client=False))

    # -- sessions -------------------------------------------------------------------------

    def _new_session(self, out: Any, request: HTTPRequest, *, polling: bool) -> SocketIOSession:
        sid = f"{self.node}.{uuid.uuid4().hex}"
        context = self.context.at(request.local)
        info = {"method": request.method, "path": request.path, "query": request.raw_query,
                "headers": request.headers, "client": request.client}
        session = SocketIOSession(context, out, self.wire, self.handlers, sid=sid, recovery=self.recovery,
                                  headers=request.headers, request=info, polling=polling)
        session.on_gone = self._gone
        self.sessions[sid] = session
        self._ping_at[sid] = time.monotonic() + self._ping_interval()
        self._arm()
        return session

    def _gone(self, session: SocketIOSession) -> None:
        sid = session.sid
        if self.sessions.get(sid) is session:
            del self.sessions[sid]
            self._locks.pop(sid, None)
            self._ping_at.pop(sid, None)
            out = session.out
            if session.polling and isinstance(out, PollingOut) and out.packets:
                self._closing[sid] = (session, time.monotonic() + self._ping_interval())

    def _find(self, sid: str) -> SocketIOSession | None:
        session = self.sessions.get(sid)
        if session is None:
            found = self._closing.get(sid)
            session = found[0] if found is not None else None
        return session

    def _ping_interval(self) -> float:
        return self.config.ping_interval or 25.0

    # -- the shared timer ---------------------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is None and not self.host.closing:
            tick = min(TICK, self._ping_interval() / 5, self.config.pong_timeout / 2)
            self._timer = asyncio.get_running_loop().call_later(tick, self._tick)

    def _tick(self) -> None:
        self._timer = None
        try:
            self._sweep(time.monotonic())
        except Exception:
            log.exception("error in the socket.io sweep")
        if self.sessions or self._closing:
            self._arm()

    def _sweep(self, now: float) -> None:
        config = self.config
        interval = self._ping_interval()
        wall = self.context.wall()
        for sid, session in list(self.sessions.items()):
            if session.closed:
                continue
            if session.polling and session.expires:  # on a WebSocket, the server's sweep checks
                session.check_expiry(wall)
                if session.closed:
                    continue
            if not session.connected and now >= session.deadline:
                session.disconnect(DisconnectCode.STALE, "connect timeout")
                continue
            if session.attachments_overdue(now, config.socketio_attachment_timeout):
                session.disconnect(DisconnectCode.BAD_REQUEST, "binary attachments never arrived")
                continue
            if not session.polling:
                continue
            due = self._ping_at.get(sid, 0.0)
            if session.pong_expected and now >= due - interval + config.pong_timeout:
                session.check_pong()
            elif now >= due:
                self._ping_at[sid] = now + interval
                session.ping()
        for sid, (_, until) in list(self._closing.items()):
            if now >= until:
                del self._closing[sid]

    def close(self, code: int, reason: str) -> None:
        """End every session (server shutdown)."""
        for session in list(self.sessions.values()):
            session.disconnect(code, reason)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- HTTP long-polling ------------------------------------------------------------------

    def _cors(self, request: HTTPRequest) -> list[tuple[str, str]] | None:
        """CORS headers for a request with ``Origin`` (``None``: origin refused)."""
        origin = request.headers.get("origin")
        if origin is None:
            return []
        if not self.host.origin_allowed(origin, request.headers.get("host", "")):
            return None
        return [("access-control-allow-origin", origin), ("access-control-allow-credentials", "true"),
                ("vary", "Origin")]

    async def handle_http(self, request: HTTPRequest) -> HTTPResponse:
        """An Engine.IO HTTP request (see the module docstring)."""
        cors = self._cors(request)
        if cors is None:
            return HTTPResponse.json({"code": engineio.BAD_REQUEST, "message": "Not an accepted origin"}, 400)
        response = await self._answer(request)
        response.headers.extend(cors)
        return response

    async def _answer(self, request: HTTPRequest) -> HTTPResponse:
        query = request.query
        if request.method == "OPTIONS":
            return HTTPResponse(204, b"", headers=[("access-control-allow-methods", "GET, POST, OPTIONS"),
                                                   ("access-control-allow-headers", "content-type")])
        if query.get("EIO") != "4":
            return _error(engineio.UNSUPPORTED_PROTOCOL_VERSION)
        transport = query.get("transport")
        if transport != "polling":
            return _error(engineio.BAD_REQUEST if transport == "websocket" else engineio.UNKNOWN_TRANSPORT)
        sid = query.get("sid")
        if not sid:
            if request.method != "GET":
                return _error(engineio.BAD_HANDSHAKE_METHOD)
            if self.host.closing:
                return HTTPResponse.json(error_body(engineio.FORBIDDEN, "server is shutting down"), 503)
            made: list[SocketIOSession] = []
            out = PollingOut(self.config.max_pending_output, lambda: self._slow(made[0]), self.context.hub.stats)
            session = self._new_session(out, request, polling=True)
            made.append(session)
            return self._packets([(session.open_packet(["websocket"]), False)])
        if request.method not in ("GET", "POST"):
            return _error(engineio.BAD_HANDSHAKE_METHOD)
        if len(request.body) > self.config.max_message_size:
            found = self._find(sid)
            if found is not None:
                found.disconnect(DisconnectCode.MESSAGE_TOO_BIG, "payload too large")
            return HTTPResponse.json(error_body(engineio.BAD_REQUEST, "payload too large"), 413)
        found = self._find(sid)
        if found is None:
            node, _, _ = sid.partition(".")
            if node != self.node and self.cluster is not None and node in self.cluster.peers():
                return await self._forward(node, sid, request.method, request.body)
            return _error(engineio.UNKNOWN_SID)
        session = found
        if request.method == "GET":
            return self._packets(await self._poll(session, self._ping_interval() + self.config.pong_timeout))
        return self._post_answer(await self._post(session, request.body))

    def _packets(self, packets: list[engineio.Packet]) -> HTTPResponse:
        return HTTPResponse(200, encode_payload(packets), "text/plain; charset=UTF-8")

    @staticmethod
    def _post_answer(status: int) -> HTTPResponse:
        if status == 200:
            return HTTPResponse(200, b"ok", "text/html")
        return _error(engineio.BAD_REQUEST if status == 400 else engineio.UNKNOWN_SID, status)

    def _slow(self, session: SocketIOSession) -> None:
        log.warning("socket.io client %s: over max_pending_output between polls; closing with 3008", session.sid)
        session.disconnect(DisconnectCode.SLOW, "slow")

    async def _poll(self, session: SocketIOSession, wait: float) -> list[engineio.Packet]:
        """Wait up to ``wait`` seconds for packets of ``session``; a noop if none (or if it moved
        to a WebSocket). A second poll while one waits closes the session (Engine.IO's overlap)."""
        out = session.out
        if not isinstance(out, PollingOut):
            return [(engineio.NOOP, False)]
        if out.waiter is not None:
            session.disconnect(DisconnectCode.BAD_REQUEST, "overlapping polls")
            return [(engineio.CLOSE, False)]
        session.last_seen = time.monotonic()
        if not out.packets and not out.closing:
            waiter = out.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(waiter, wait)
            except TimeoutError:
                pass
            finally:
                out.waiter = None
        packets = out.take()
        if out.closing:
            self._closing.pop(session.sid, None)
        return packets or [(engineio.NOOP, False)]

    async def _post(self, session: SocketIOSession, body: bytes) -> int:
        """Hand a POST's packets to ``session``, one request at a time; an HTTP status."""
        if session.closed:
            return 400
        try:
            packets = decode_payload(body, MAX_PACKETS_PER_POST)
        except EngineError as exc:
            log.info("socket.io client %s sent a malformed payload: %s", session.sid, exc)
            session.disconnect(DisconnectCode.BAD_REQUEST, "malformed payload")
            return 400
        lock = self._locks.get(session.sid)
        if lock is None:
            lock = self._locks[session.sid] = asyncio.Lock()
        async with lock:
            for payload, binary in packets:
                await session.handle_engine(payload, binary)
        return 200

    # -- between nodes ----------------------------------------------------------------------

    async def _forward(self, node: str, sid: str, method: str, body: bytes) -> HTTPResponse:
        assert self.cluster is not None
        wait = max(0.5, self.config.node_request_timeout - 0.5)
        try:
            reply = await self.cluster.send(node, SOCKETIO_KIND, {
                "sid": sid, "method": method, "body": base64.b64encode(body).decode(), "wait": wait})
        except Exception as exc:  # the node is gone: as a session that is gone
            log.info("socket.io poll for node %r not delivered: %s", node, exc)
            return _error(engineio.UNKNOWN_SID)
        if not isinstance(reply, dict) or not isinstance(reply.get("status"), int):
            return _error(engineio.UNKNOWN_SID)
        if reply["status"] != 200:
            return _error(engineio.BAD_REQUEST if reply["status"] == 400 else engineio.UNKNOWN_SID, reply["status"])
        if method == "POST":
            return HTTPResponse(200, b"ok", "text/html")
        try:
            data = base64.b64decode(str(reply.get("body", "")), validate=True)
        except ValueError:
            return _error(engineio.BAD_REQUEST)
        return HTTPResponse(200, data, "text/plain; charset=UTF-8")

    async def _remote(self, payload: Any, sender: str) -> dict[str, Any]:
        """A poll forwarded by another node (see :meth:`_forward`)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("sid"), str):
            return {"status": 400}
        session = self._find(payload["sid"])
        if session is None:
            return {"status": 404}
        try:
            body = base64.b64decode(str(payload.get("body", "")), validate=True)
        except ValueError:
            return {"status": 400}
        if payload.get("method") == "POST":
            return {"status": await self._post(session, body)}
        wait = payload.get("wait")
        wait = min(float(wait), 30.0) if isinstance(wait, (int, float)) and wait > 0 else 1.0
        packets = await self._poll(session, wait)
        return {"status": 200, "body": base64.b64encode(encode_payload(packets)).decode()}

    # -- WebSocket ------------------------------------------------------------------------------

    def websocket(self, conn: WebSocketTransport, request: HTTPRequest) -> WebSocketSession | Refusal:
        """The session of a WebSocket on ``socketio_path``: a new one, or the upgrade of a
        long-polling session of this node (``&sid=``)."""
        query = request.query
        if query.get("EIO") != "4":
            return 400, "unsupported Engine.IO protocol version"
        if query.get("transport") != "websocket":
            return 400, "transport unknown"
        sid = query.get("sid")
        if not sid:
            session = self._new_session(conn, request, polling=False)
            session.frames = conn.frames
            return session
        polling = self.sessions.get(sid)
        if polling is None or polling.closed or not polling.polling:
            return 400, "Session ID unknown"
        return UpgradeProbe(polling, conn)


class UpgradeProbe:
    """The WebSocket that upgrades a long-polling session: it answers ``2probe`` with ``3probe``
    (and ends the pending poll with a noop), then on ``5`` moves the session onto itself and hands
    it every later message. Until then, the session's pings, deadlines and end stay the polling
    ones; a probe that closes leaves the session on long-polling."""

    awaits_connect = False
    subprotocol: str | None = None
    inline_pong = False
    kind = "socketio"

    def __init__(self, session: SocketIOSession, conn: WebSocketTransport) -> None:
        self.session = session
        self.conn = conn
        self.upgraded = False
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed or (self.upgraded and self.session.closed)

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value

    @property
    def connected(self) -> bool:
        return self.session.connected

    @connected.setter
    def connected(self, value: bool) -> None:
        self.session.connected = value

    @property
    def expires(self) -> bool:
        return self.upgraded and self.session.expires

    def check_expiry(self, now: float) -> None:
        if self.upgraded:
            self.session.check_expiry(now)

    def handshake_nowait(self) -> HandshakeDecision:
        return None if not self.session.closed else (400, "Session ID unknown")

    async def handshake(self) -> Refusal | None:
        return self.handshake_nowait()  # type: ignore[return-value]  # never PENDING

    def open_nowait(self) -> bool:
        return True

    async def open(self) -> None:
        return None

    async def handle_message(self, payload: bytes, binary: bool) -> None:
        session = self.session
        if self.upgraded:
            await session.handle_engine(payload, binary)
            return
        if binary:
            self.conn.close(DisconnectCode.BAD_REQUEST, "binary message before the upgrade")
            return
        if payload == engineio.PING + engineio.PROBE:
            self.conn.send_text(engineio.PONG + engineio.PROBE)
            out = session.out
            if isinstance(out, PollingOut):
                out.send_text(engineio.NOOP)  # ends the pending poll: the client pauses polling
        elif payload == engineio.UPGRADE:
            if session.closed or not session.polling:
                self.conn.close(DisconnectCode.BAD_REQUEST, "session gone")
                return
            self.upgraded = True
            out = session.out
            session.out = self.conn
            session.frames = self.conn.frames
            session.polling = False
            session.websocket = True
            if isinstance(out, PollingOut):
                packets = out.take()
                out.open = False
                out.packets.append((engineio.NOOP, False))
                out.wake()
                for data, is_binary in packets:
                    if is_binary:
                        self.conn.send_binary(data)
                    elif data != engineio.NOOP:
                        self.conn.send_text(data)
        else:
            self.conn.close(DisconnectCode.BAD_REQUEST, "unexpected message before the upgrade")

    def ping(self) -> None:
        if self.upgraded:
            self.session.ping()

    def pong(self) -> None:
        if self.upgraded:
            self.session.pong()

    def check_pong(self) -> None:
        if self.upgraded:
            self.session.check_pong()

    def disconnect(self, code: int, reason: str | None = None) -> None:
        if self.upgraded:
            self.session.disconnect(code, reason)
        else:
            self._closed = True
            self.conn.close(code, reason or "")

    def abandon(self) -> None:
        self.on_closed()

    def on_closed(self) -> None:
        self._closed = True
        if self.upgraded:
            self.session.on_closed()
