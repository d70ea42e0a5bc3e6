"""Streaming HTTP transports: SSE, HTTP streaming, and one-way clients.

Every endpoint here answers a request with a long response whose body is
written by the connection's one bounded :class:`~hubbub.writer.Writer`
(``Connection.begin_stream``): pushes, replies, pings and the last words all
pass the same output bound (3008 for a client that does not read) as on a
WebSocket. A *framing* says how one message becomes body bytes; it is the
:class:`~hubbub.outbox.FrameEncoder` of a stream, so the hub's wires
(:class:`~hubbub.codec.ProtocolWire`, :class:`~hubbub.eventstream.ChannelEventWire`)
encode each publication once per framing for every subscriber:

* :class:`SSEFrames`: one Server-Sent Event per message (``data:`` lines,
  then a blank line), inside one HTTP/1.1 chunk;
* :class:`LineFrames`: one message per line (JSON) or the codec's own
  varint-delimited messages (Protobuf), inside one chunk.

Chunks join into one write like WebSocket frames (``joinable``). HTTP/1.0
clients get the same bytes without chunk headers; the stream then ends by
closing the connection.

Endpoints (paths are settings; ``""`` turns one off):

* ``POST /connection/http_stream``: centrifuge-js ``http_stream``; the body
  holds the first commands; replies and pushes stream back newline-delimited
  (JSON) or varint-delimited (``Content-Type: application/octet-stream``,
  with the Protobuf codec);
* ``GET /connection/sse?cf_connect=...`` (or a POST body): centrifuge-js
  ``sse``; one SSE event per message;
* ``POST /emulation``: later commands of both, ``{"session", "node",
  "data"}``; 204, or 404 for an unknown session or node;
* ``/connection/uni_websocket``: one-way WebSocket, the first message is the
  connect object;
* ``GET /connection/uni_sse?cf_connect=...`` (none: ``{}``) or ``POST``:
  one-way SSE;
* ``POST /connection/uni_http_stream``: one-way, newline-delimited JSON;
* ``GET /sse/{channel}``: a channel as plain SSE (:mod:`hubbub.eventstream`).

Bad input is refused before anything streams, with a JSON ``{"error": ...}``:
400 (a malformed connect object or ``/emulation`` body, no ``cf_connect`` or
no body), 405 (wrong method), 406 (``Accept`` without ``text/event-stream``),
413 (a body or ``data`` over ``max_message_size``), 415 (a format this node
has no codec for), 401/403/404/429 (authentication, permissions and limits of
one-way clients and channel streams, as the relay's). The emulated
transports are the protocol's own: once the stream is open, a malformed
command is a ``disconnect`` push (3501), as a close code on a WebSocket.

Cross-node ``/emulation``: :meth:`Emulation.deliver_local` is the one
function that finds a session of this node by id and hands it the commands.
A request that names another node goes to :attr:`Emulation.forward`;
:meth:`Emulation.use_cluster` sets it from the control channel between nodes
(``server.cluster``, when the server has one): an ``emulation`` request to
the session's node, whose handler calls ``deliver_local``. So any node takes
any ``/emulation`` request, and no sticky sessions are needed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from . import codec as codecs
from .codec import JSON, Codec, ProtocolWire
from .codes import DisconnectCode
from .errors import BadRequest, Disconnect, ProtocolError
from .eventstream import ChannelStreamSession, ChannelWires, parse_event_id
from .http import STREAMED, HTTPRequest, HTTPResponse
from .outbox import FrameBatch
from .core import PENDING
from .relay import refusal
from .proto.client_pb2 import EmulationRequest
from .strictjson import loads
from .uni import UNI_JSON, EmulatedSession, UniSession, disconnect_push

log = logging.getLogger("hubbub.streams")

#: the control channel's request kind that carries ``/emulation`` to another node
EMULATION_KIND = "emulation"

# -- framings ----------------------------------------------------------------------------


def _chunk(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body)


def _data_lines(payload: bytes) -> bytes:
    if b"\n" not in payload and b"\r" not in payload:
        return b"data: " + payload + b"\n"
    return b"".join(b"data: " + line + b"\n" for line in payload.splitlines()) or b"data: \n"


class SSEFrames:
    """Server-Sent Events (WHATWG HTML, "Server-sent events"): each message
    is one event, a ``data:`` field per line and a blank line.

    Args:
        chunked: wrap each event in an HTTP/1.1 chunk.
    """

    __slots__ = ("chunked",)

    joinable = True

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked

    def raw(self, body: bytes) -> bytes:
        return _chunk(body) if self.chunked else body

    def event(self, data: bytes, *, id: bytes | None = None, event: bytes | None = None) -> bytes:
        """One event; ``id`` and ``event`` name its ``id:`` and ``event:`` fields."""
        head = b""
        if event is not None:
            head = b"event: " + event + b"\n"
        if id is not None:
            head += b"id: " + id + b"\n"
        return self.raw(head + _data_lines(data) + b"\n")

    def text(self, payload: bytes) -> bytes:
        return self.event(payload)

    def binary(self, payload: bytes) -> bytes:
        raise ValueError("SSE carries text only")

    def message(self, payload: bytes, event: bytes | None = None) -> bytes:
        return self.event(payload, event=event)

    #: a comment: keeps an idle stream open through proxies
    @property
    def keepalive(self) -> bytes:
        return self.raw(b":\n\n")


class LineFrames:
    """Newline-delimited text messages; binary messages as the codec made
    them (Protobuf: varint-length-delimited, as in its WebSocket frames).

    Args:
        chunked: wrap each message in an HTTP/1.1 chunk.
    """

    __slots__ = ("chunked",)

    joinable = True

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked

    def text(self, payload: bytes) -> bytes:
        body = payload + b"\n"
        return _chunk(body) if self.chunked else body

    def binary(self, payload: bytes) -> bytes:
        return _chunk(payload) if self.chunked else payload

    def message(self, payload: bytes, event: bytes | None = None) -> bytes:
        return self.text(payload)

    keepalive = b""


#: framings by ``chunked`` (shared by every stream, so wires are shared too)
SSE = {True: SSEFrames(True), False: SSEFrames(False)}
LINES = {True: LineFrames(True), False: LineFrames(False)}

# -- the outbox of a stream -----------------------------------------------------------------


class StreamTransport(Protocol):
    """What a stream needs from the connection that carries it (hubbub's
    ``Connection``): its bounded writer and the start and end of the response."""

    open: bool
    session: Any

    @property
    def stream_chunked(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def deliver(self, frame: bytes | FrameBatch) -> None: ...

    def begin_stream(self, session: Any, headers: list[tuple[str, str]]) -> None: ...

    def end_stream(self, tail: bytes = b"") -> None: ...


class StreamOut:
    """The :class:`~hubbub.outbox.Outbox` of a session on a stream: messages
    framed by ``frames`` into the connection's writer (bounded); ``close``
    sends the session's last words (its ``farewell(code, reason)``, as an
    ``event`` named ``farewell_event`` on SSE) and ends the response."""

    __slots__ = ("transport", "frames", "deliver", "farewell_event", "_closed")

    def __init__(self, transport: StreamTransport, frames: Any, *, farewell_event: bytes | None = None) -> None:
        self.transport = transport
        self.frames = frames
        #: the connection's own: the fan-out queues to it with no call in between
        self.deliver = transport.deliver
        self.farewell_event = farewell_event
        self._closed = False

    @property
    def open(self) -> bool:
        return self.transport.open and not self._closed

    def send_text(self, payload: bytes) -> None:
        if self.open:
            self.transport.write(self.frames.text(payload))

    def send_binary(self, payload: bytes) -> None:
        if self.open:
            self.transport.write(self.frames.binary(payload))

    def send_ping(self) -> None:
        if self.open and self.frames.keepalive:
            self.transport.write(self.frames.keepalive)

    def close(self, code: int, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        transport = self.transport
        session = transport.session
        tail = b""
        farewell = getattr(session, "farewell", None)
        if farewell is not None:
            tail = self.frames.message(farewell(code, reason), self.farewell_event)
        stats = getattr(transport, "stats", None)
        if stats is not None:
            stats.disconnects[code] += 1
        transport.end_stream(tail)


# -- sessions that end with a farewell ---------------------------------------------------------


class _StreamEmulatedSession(EmulatedSession):
    """An emulated session on a stream: its last words are a ``disconnect`` push;
    it leaves the emulation registry when it closes."""

    __slots__ = ("on_gone",)

    def farewell(self, code: int, reason: str) -> bytes:
        return disconnect_push(self.codec, code, reason)

    def on_closed(self) -> None:
        on_gone, self.on_gone = getattr(self, "on_gone", None), None
        if on_gone is not None:
            on_gone(self)
        super().on_closed()


class _StreamUniSession(UniSession):
    __slots__ = ()

    def farewell(self, code: int, reason: str) -> bytes:
        return disconnect_push(self.codec, code, reason)


# -- /emulation -----------------------------------------------------------------------------------


class Emulation:
    """The emulated sessions of this node, by session id, and the one way in
    for their later commands.

    Args:
        node: this node's id (connect replies carry it; requests name it).

    Attributes:
        forward: ``async (node, session, data) -> bool`` that delivers a
            request naming another node there (True: that node has the
            session). ``None`` (one node): such requests get 404. The other
            node's end calls :meth:`deliver_local`.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._sessions: dict[str, tuple[EmulatedSession, asyncio.Lock]] = {}
        self.forward: Callable[[str, str, bytes], Awaitable[bool]] | None = None

    def add(self, session: EmulatedSession) -> None:
        self._sessions[session.session] = (session, asyncio.Lock())

    def remove(self, session: EmulatedSession) -> None:
        found = self._sessions.get(session.session)
        if found is not None and found[0] is session:
            del self._sessions[session.session]

    def __len__(self) -> int:
        return len(self._sessions)

    def use_cluster(self, cluster: Any) -> None:
        """Route ``/emulation`` requests between nodes through ``cluster``, the
        control channel (``cluster.uid``, ``await cluster.send(node, kind,
        payload)``, ``cluster.register(kind, handler)``): this node's id
        becomes the cluster's uid; a request naming another node is sent there
        as an ``emulation`` request, whose handler calls :meth:`deliver_local`."""
        self.node = cluster.uid

        async def forward(node: str, session: str, data: bytes) -> bool:
            try:
                reply = await cluster.send(node, EMULATION_KIND, {"session": session,
                                                                  "data": base64.b64encode(data).decode()})
            except Exception as exc:  # the node is gone or unknown: as a session that is gone
                log.info("emulation request for node %s not delivered: %s", node, exc)
                return False
            return reply is True

        async def handle(payload: Any, sender: str) -> bool:
            if not isinstance(payload, dict) or not isinstance(payload.get("session"), str):
                return False
            try:
                data = base64.b64decode(str(payload.get("data", "")), validate=True)
            except ValueError:
                return False
            return await self.deliver_local(payload["session"], data)

        cluster.register(EMULATION_KIND, handle)
        self.forward = forward

    async def deliver_local(self, session_id: str, data: bytes) -> bool:
        """Hand ``data`` (the session codec's encoded commands) to session
        ``session_id`` of this node; returns once they are handled (their
        replies are queued on the session's stream). Commands of one session
        run one request at a time, in arrival order, as a WebSocket's messages.

        Returns False when this node has no such open session.
        """
        found = self._sessions.get(session_id)
        if found is None or found[0].closed:
            return False
        session, lock = found
        async with lock:
            if session.closed:
                return True
            try:
                await session.handle_message(data)
            except Exception:
                log.exception("error handling emulated commands")
                session.disconnect(DisconnectCode.SERVER_ERROR)
        return True


def _protobuf_emulation_request(body: bytes) -> tuple[str, str, bytes]:
    """A Protobuf ``EmulationRequest`` (``node = 1``, ``session = 2``, ``data =
    3``, as centrifugal/protocol ``client.proto``).

    Raises:
        BadRequest: a body that does not parse.
    """
    message = EmulationRequest()
    try:
        message.ParseFromString(body)
    except Exception:  # google.protobuf.message.DecodeError
        raise BadRequest("malformed Protobuf emulation request") from None
    return message.node, message.session, bytes(message.data)


def parse_emulation_request(request: HTTPRequest) -> tuple[str, str, bytes]:
    """``(node, session, data)`` of a ``POST /emulation`` body (JSON:
    ``{"session": str, "node": str, "data": str}``, where ``data`` holds the
    encoded commands).

    Raises:
        BadRequest: anything else.
    """
    if request.headers.get("content-type", "").startswith("application/octet-stream"):
        return _protobuf_emulation_request(request.body)
    try:
        body = loads(request.body or b"")
    except ValueError as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object {session, node, data}")
    session, node, data = body.get("session"), body.get("node", ""), body.get("data")
    if not isinstance(session, str) or not session:
        raise BadRequest("session (a string) is required")
    if not isinstance(node, str):
        raise BadRequest("node must be a string")
    if not isinstance(data, str):
        raise BadRequest("data (the encoded commands, a string) is required")
    return node, session, data.encode("utf-8")


# -- the endpoints ------------------------------------------------------------------------------


async def _guarded(session: Any, work: Awaitable[None]) -> None:
    """Run a stream's first work; a bug ends the stream (3004), not just the request."""
    try:
        await work
    except Exception:
        log.exception("error starting a stream")
        session.disconnect(DisconnectCode.SERVER_ERROR)


def _error(message: str, status: int) -> HTTPResponse:
    return HTTPResponse.json({"error": message}, status)


_STREAM_HEADERS = [
    ("cache-control", "private, no-cache, no-store, must-revalidate, max-age=0"),
    ("pragma", "no-cache"),
    ("x-accel-buffering", "no"),
]
_SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), *_STREAM_HEADERS]
#: the reconnection delay an EventSource of a channel stream uses (milliseconds)
SSE_RETRY_MS = 2000


class Streams:
    """The streaming endpoints of one node (see the module docstring).

    Args:
        server: the node (its ``config``, ``context``, ``api.node_id``; duck-typed).
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.config = server.config
        cluster = getattr(server, "cluster", None)  # the control channel between nodes, where there is one
        self.emulation = Emulation(getattr(server.api, "node_id", None) or str(uuid.uuid4()))
        if cluster is not None:
            self.emulation.use_cluster(cluster)
        self.channel_wires = ChannelWires()
        self._wires: dict[tuple[int, int], ProtocolWire] = {}

    def install(self) -> None:
        """Add the routes whose paths are set."""
        config, server = self.config, self.server
        routes: list[tuple[str, Any, str]] = [
            (config.http_stream_path, self.http_stream, "the http_stream transport"),
            (config.sse_path, self.sse, "the sse transport"),
            (config.emulation_path, self.emulate, "the emulation endpoint"),
            (config.uni_sse_path, self.uni_sse, "the uni_sse transport"),
            (config.uni_http_stream_path, self.uni_http_stream, "the uni_http_stream transport"),
            (config.channel_sse_path, self.channel_sse, "channel event streams"),
        ]
        for path, handler, name in routes:
            if path:
                server.add_http(path, handler, name)
        if config.uni_websocket_path:
            server.add_websocket(config.uni_websocket_path, self.uni_websocket, "the uni_websocket transport")

    # -- shared pieces ---------------------------------------------------------------------

    def wire(self, codec: Codec, frames: Any) -> ProtocolWire:
        """The protocol wire of ``codec`` and ``frames`` (one per pair, so a
        push is encoded once per pair)."""
        key = (id(codec), id(frames))
        wire = self._wires.get(key)
        if wire is None:
            wire = self._wires[key] = ProtocolWire(codec, frames)
        return wire

    @staticmethod
    def _codec(request: HTTPRequest) -> Codec | None:
        if request.headers.get("content-type", "").startswith("application/octet-stream"):
            return getattr(codecs, "FORMATS", {}).get("protobuf")  # the Protobuf codec, where present
        return JSON

    def _body_limit(self, data: bytes | str) -> HTTPResponse | None:
        limit = self.config.max_message_size
        if len(data) > limit:
            return _error(f"request too large: more than max_message_size ({limit} bytes)", 413)
        return None

    async def _start_emulated(self, request: HTTPRequest, codec: Codec, frames: Any, first: bytes,
                              transport: str, headers: list[tuple[str, str]]) -> HTTPResponse:
        stream: StreamTransport = request.stream
        out = StreamOut(stream, frames)
        server = self.server
        session = _StreamEmulatedSession(server.context, out, self.wire(codec, frames), headers=request.headers,
                                         node=self.emulation.node, transport=transport)
        session.on_gone = self.emulation.remove
        self.emulation.add(session)
        stream.begin_stream(session, headers)
        if session.closed or not stream.open:  # the head could not be sent: the client is gone
            session.closed = True
            session.on_closed()
            return STREAMED
        if isinstance(frames, SSEFrames):
            stream.write(frames.raw(b"\r\n"))
        await self.emulation.deliver_local(session.session, first)
        return STREAMED

    # -- bidirectional emulation -----------------------------------------------------------

    async def http_stream(self, request: HTTPRequest) -> HTTPResponse:
        """``POST /connection/http_stream`` (centrifuge-js ``http_stream``)."""
        if request.method != "POST":
            return _error("use POST with the connect command in the body", 405)
        if request.stream is None:
            return _error("streaming responses are not available on this server", 501)
        codec = self._codec(request)
        if codec is None:
            return _error("Protobuf is not available on this node", 415)
        if not request.body.strip():
            return _error("the body must hold the connect command", 400)
        too_large = self._body_limit(request.body)
        if too_large is not None:
            return too_large
        content_type = "application/octet-stream" if codec.binary else "application/json"
        frames = LINES[request.stream.stream_chunked]
        return await self._start_emulated(request, codec, frames, request.body, "http_stream",
                                          [("content-type", content_type), *_STREAM_HEADERS])

    async def sse(self, request: HTTPRequest) -> HTTPResponse:
        """``GET /connection/sse?cf_connect=...`` or ``POST`` (centrifuge-js ``sse``)."""
        if request.method == "GET":
            first = request.query.get("cf_connect")
            if not first:
                return _error("the cf_connect parameter (the connect command) is required", 400)
            data = first.encode("utf-8")
        elif request.method == "POST":
            data = request.body
            if not data.strip():
                return _error("the body must hold the connect command", 400)
        else:
            return _error("use GET with cf_connect, or POST", 405)
        if request.stream is None:
            return _error("streaming responses are not available on this server", 501)
        too_large = self._body_limit(data)
        if too_large is not None:
            return too_large
        frames = SSE[request.stream.stream_chunked]
        return await self._start_emulated(request, JSON, frames, data, "sse", _SSE_HEADERS)

    async def emulate(self, request: HTTPRequest) -> HTTPResponse:
        """``POST /emulation``: later commands of an emulated session."""
        if request.method != "POST":
            return _error("use POST with {session, node, data}", 405)
        try:
            node, session, data = parse_emulation_request(request)
        except BadRequest as exc:
            return _error(exc.message, 415 if "not supported" in exc.message else 400)
        too_large = self._body_limit(data)
        if too_large is not None:
            return too_large
        emulation = self.emulation
        if node and node != emulation.node:
            forward = emulation.forward
            if forward is None or not await forward(node, session, data):
                return _error(f"no session {session!r} on node {node!r} (unknown node)", 404)
            return HTTPResponse(204)
        if not await emulation.deliver_local(session, data):
            return _error(f"no session {session!r} on this node (closed, or never opened)", 404)
        return HTTPResponse(204)

    # -- unidirectional ------------------------------------------------------------------------

    async def _start_uni(self, request: HTTPRequest, raw: bytes | str, frames: Any, transport: str,
                         headers: list[tuple[str, str]]) -> HTTPResponse:
        if request.stream is None:
            return _error("streaming responses are not available on this server", 501)
        too_large = self._body_limit(raw)
        if too_large is not None:
            return too_large
        try:
            params = UniSession.parse_connect(raw)
        except BadRequest as exc:
            return _error(exc.message, 400)
        stream: StreamTransport = request.stream
        out = StreamOut(stream, frames)
        session = _StreamUniSession(self.server.context, out, self.wire(UNI_JSON, frames), headers=request.headers,
                                    transport=transport)
        try:
            await session.prepare(params)
        except (ProtocolError, Disconnect) as exc:
            session.closed = True
            session.on_closed()
            status, reason = (400, exc.message) if isinstance(exc, BadRequest) else refusal(exc)
            return _error(reason or "refused", status)
        except BaseException:  # a hook's bug (500), or the client left: nothing stays behind
            session.closed = True
            session.on_closed()
            raise
        stream.begin_stream(session, headers)
        if not stream.open:  # the head could not be sent: the client is gone
            session.closed = True
            session.on_closed()
            return STREAMED
        if isinstance(frames, SSEFrames):
            stream.write(frames.raw(b"\r\n"))
        await _guarded(session, session.start())
        return STREAMED

    async def uni_http_stream(self, request: HTTPRequest) -> HTTPResponse:
        """``POST /connection/uni_http_stream`` with the connect object as a JSON body."""
        if request.method != "POST":
            return _error("use POST with the connect object as a JSON body", 405)
        if request.stream is None:
            return _error("streaming responses are not available on this server", 501)
        frames = LINES[request.stream.stream_chunked]
        return await self._start_uni(request, request.body, frames, "uni_http_stream",
                                     [("content-type", "application/json"), *_STREAM_HEADERS])

    async def uni_sse(self, request: HTTPRequest) -> HTTPResponse:
        """``GET /connection/uni_sse?cf_connect=...`` (none: ``{}``), or ``POST`` with a JSON body."""
        if request.method == "GET":
            raw: bytes | str = request.query.get("cf_connect", "")
        elif request.method == "POST":
            raw = request.body
        else:
            return _error("use GET with cf_connect, or POST with the connect object", 405)
        if request.stream is None:
            return _error("streaming responses are not available on this server", 501)
        return await self._start_uni(request, raw, SSE[request.stream.stream_chunked], "uni_sse", _SSE_HEADERS)

    def uni_websocket(self, conn: Any, request: HTTPRequest) -> UniSession:
        """The session of a ``/connection/uni_websocket`` upgrade (the connect
        object is its first message)."""
        return UniSession(self.server.context, conn, self.wire(UNI_JSON, conn.frames), headers=request.headers,
                          transport="uni_websocket")

    # -- a channel as an event stream ---------------------------------------------------------------

    async def channel_sse(self, request: HTTPRequest) -> HTTPResponse:
        """``GET /sse/{channel}`` (:mod:`hubbub.eventstream`)."""
        if request.method != "GET":
            return _error("use GET (an event stream)", 405)
        accept = request.headers.get("accept", "")
        if accept and not any(kind in accept for kind in ("text/event-stream", "*/*", "text/*")):
            return _error("this endpoint answers text/event-stream only", 406)
        if request.stream is None:
            return _error("streaming responses are not available on this server", 501)
        since = None
        last = request.headers.get("last-event-id") or request.query.get("last_event_id")
        if last:
            try:
                since = parse_event_id(last)
            except BadRequest as exc:
                return _error(exc.message, 400)
        stream: StreamTransport = request.stream
        frames = SSE[stream.stream_chunked]
        channel = request.params["channel"]
        out = StreamOut(stream, frames, farewell_event=b"disconnect")
        session = ChannelStreamSession(self.server.context, out, self.channel_wires.get(channel, frames), channel,
                                       headers=request.headers, query=request.query, since=since)
        try:
            decision = session.handshake_nowait()
            if decision is PENDING:
                decision = await session.handshake()
        except BaseException:  # a hook's bug (500), or the client left: nothing stays behind
            session.closed = True
            session.on_closed()
            raise
        if decision is not None:
            session.closed = True
            session.on_closed()
            return _error(decision[1], decision[0])
        stream.begin_stream(session, _SSE_HEADERS)
        if not stream.open:  # the head could not be sent: the client is gone
            session.closed = True
            session.on_closed()
            return STREAMED
        stream.write(frames.raw(b"retry: %d\n\n" % SSE_RETRY_MS))
        await _guarded(session, session.open())
        return STREAMED
