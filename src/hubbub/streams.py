"""The streaming HTTP endpoints: emulated and one-way protocol clients, channel event streams.

The endpoints and their paths (settings; ``""`` turns one off): ``README.md``,
"What runs where".

See ``docs/design.md``, "Streaming transports".
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .codec import JSON, Codec, ProtocolWire
from .codes import DisconnectCode
from .config import Config
from .core import PENDING, ClientContext, ClientCore
from .emulation import Emulation, EmulationCluster, parse_emulation_request
from .errors import BadRequest, Disconnect, ProtocolError
from .eventstream import ChannelStreamSession, ChannelWires, farewell, parse_event_id
from .formats import BINARY_CONTENT_TYPE, for_body
from .framing import LINES, SSE, SSEFrames, StreamFraming, StreamOut, StreamTransport
from .http import STREAMED, HTTPRequest, HTTPResponse
from .outbox import FrameEncoder, Outbox
from .relay import refusal
from .uni import UNI_JSON, EmulatedSession, UniSession, disconnect_push

__all__ = ["SSE_RETRY_MS", "Streams", "StreamsHost"]

log = logging.getLogger("hubbub.streams")

#: the reconnection delay an EventSource of a channel stream uses (milliseconds)
SSE_RETRY_MS = 2000


class StreamsHost(Protocol):
    """What the streaming endpoints need from their node (:class:`hubbub.server.Server`)."""

    config: Config
    context: ClientContext

    @property
    def cluster(self) -> EmulationCluster:
        """The control channel between nodes."""
        ...

    def add_http(self, path: str, handler: Callable[[HTTPRequest], Awaitable[HTTPResponse]],
                 name: str = "") -> None: ...

    def add_websocket(self, path: str, factory: Any, name: str = "") -> None: ...


class UniSocket(Outbox, Protocol):
    """The WebSocket connection of a ``uni_websocket`` client: an outbox and its frame encoder."""

    @property
    def frames(self) -> FrameEncoder: ...


async def _guarded(session: ClientCore, work: Awaitable[None]) -> None:
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
_NOT_STREAMING = "streaming responses are not available on this server"
_TOO_SLOW = "the connect was not decided within connect_timeout"


class Streams:
    """The streaming endpoints of one node (see the module docstring).

    Args:
        server: the node; ``/emulation`` requests reach the sessions of other
            nodes through its cluster's control channel.
    """

    def __init__(self, server: StreamsHost) -> None:
        self.server = server
        self.config = server.config
        self.emulation = Emulation()
        self.emulation.use_cluster(server.cluster)
        self.channel_wires = ChannelWires()
        self._wires: dict[tuple[int, int], ProtocolWire] = {}

    def install(self) -> None:
        """Add the routes whose paths are set."""
        config, server = self.config, self.server
        routes: list[tuple[str, Callable[[HTTPRequest], Awaitable[HTTPResponse]], str]] = [
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

    def wire(self, codec: Codec, frames: FrameEncoder) -> ProtocolWire:
        """The protocol wire of ``codec`` and ``frames`` (one per pair, so a
        push is encoded once per pair)."""
        key = (id(codec), id(frames))
        wire = self._wires.get(key)
        if wire is None:
            wire = self._wires[key] = ProtocolWire(codec, frames)
        return wire

    @staticmethod
    def _codec(request: HTTPRequest) -> Codec:
        return for_body(request.headers)

    def _body_limit(self, data: bytes | str) -> HTTPResponse | None:
        limit = self.config.max_message_size
        if len(data) > limit:
            return _error(f"request too large: more than max_message_size ({limit} bytes)", 413)
        return None

    @staticmethod
    def _begin(stream: StreamTransport, session: ClientCore, frames: StreamFraming,
               headers: list[tuple[str, str]], first: bytes = b"") -> bool:
        """Send the head (and ``first``, SSE's opening bytes); False, with the
        session abandoned, when the client is already gone."""
        stream.begin_stream(session, headers)
        if session.closed or not stream.open:  # the head could not be sent: the client is gone
            session.abandon()
            return False
        if first:
            stream.write(first)
        return True

    async def _start_emulated(self, request: HTTPRequest, codec: Codec, frames: StreamFraming, first: bytes,
                              transport: str, headers: list[tuple[str, str]]) -> HTTPResponse:
        stream: StreamTransport = request.stream
        out = StreamOut(stream, frames, functools.partial(disconnect_push, codec))
        session = EmulatedSession(self.server.context.at(request.local), out, self.wire(codec, frames),
                                  headers=request.headers, node=self.emulation.node, transport=transport)
        self.emulation.add(session)
        # from here the node's sweep gives the session connect_timeout to connect (3502)
        opening = frames.raw(b"\r\n") if isinstance(frames, SSEFrames) else b""
        if self._begin(stream, session, frames, headers, opening):
            await self.emulation.deliver_local(session.session, first)
        return STREAMED

    # -- bidirectional emulation -----------------------------------------------------------

    async def http_stream(self, request: HTTPRequest) -> HTTPResponse:
        """``POST /connection/http_stream`` (centrifuge-js ``http_stream``)."""
        if request.method != "POST":
            return _error("use POST with the connect command in the body", 405)
        if request.stream is None:
            return _error(_NOT_STREAMING, 501)
        if not request.body.strip():
            return _error("the body must hold the connect command", 400)
        too_large = self._body_limit(request.body)
        if too_large is not None:
            return too_large
        codec = self._codec(request)
        content_type = BINARY_CONTENT_TYPE if codec.binary else "application/json"
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
            return _error(_NOT_STREAMING, 501)
        too_large = self._body_limit(data)
        if too_large is not None:
            return too_large
        frames = SSE[request.stream.stream_chunked]
        return await self._start_emulated(request, JSON, frames, data, "sse", _SSE_HEADERS)

    async def emulate(self, request: HTTPRequest) -> HTTPResponse:
        """``POST /emulation``: later commands of an emulated session. A
        malformed body or id is 400 and a node this cluster does not know 404,
        both before any work."""
        if request.method != "POST":
            return _error("use POST with {session, node, data}", 405)
        try:
            node, session, data = parse_emulation_request(request)
        except BadRequest as exc:
            return _error(exc.message, 400)
        too_large = self._body_limit(data)
        if too_large is not None:
            return too_large
        emulation = self.emulation
        if node and node != emulation.node:
            # ids are well-formed here: safe to echo
            forward = emulation.forward
            if forward is None or not emulation.may_exist(node) or not await forward(node, session, data):
                return _error(f"no session {session} on node {node} (unknown node, or the session is gone)", 404)
            return HTTPResponse(204)
        if not await emulation.deliver_local(session, data):
            return _error(f"no session {session} on this node (closed, or never opened)", 404)
        return HTTPResponse(204)

    # -- unidirectional ------------------------------------------------------------------------

    async def _start_uni(self, request: HTTPRequest, raw: bytes | str, frames: StreamFraming, transport: str,
                         headers: list[tuple[str, str]]) -> HTTPResponse:
        if request.stream is None:
            return _error(_NOT_STREAMING, 501)
        too_large = self._body_limit(raw)
        if too_large is not None:
            return too_large
        try:
            params = UniSession.parse_connect(raw)
        except BadRequest as exc:
            return _error(exc.message, 400)
        stream: StreamTransport = request.stream
        out = StreamOut(stream, frames, functools.partial(disconnect_push, UNI_JSON))
        session = UniSession(self.server.context.at(request.local), out, self.wire(UNI_JSON, frames),
                             headers=request.headers, transport=transport)
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await session.prepare(params)
        except (ProtocolError, Disconnect) as exc:
            session.abandon()
            status, reason = (400, exc.message) if isinstance(exc, BadRequest) else refusal(exc)
            return _error(reason or "refused", status)
        except TimeoutError:
            session.abandon()
            return _error(_TOO_SLOW, 503)
        except BaseException:  # a hook's bug (500), or the client left: nothing stays behind
            session.abandon()
            raise
        opening = frames.raw(b"\r\n") if isinstance(frames, SSEFrames) else b""
        if self._begin(stream, session, frames, headers, opening):
            await _guarded(session, session.start())
        return STREAMED

    async def uni_http_stream(self, request: HTTPRequest) -> HTTPResponse:
        """``POST /connection/uni_http_stream`` with the connect object as a JSON body."""
        if request.method != "POST":
            return _error("use POST with the connect object as a JSON body", 405)
        if request.stream is None:
            return _error(_NOT_STREAMING, 501)
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
            return _error(_NOT_STREAMING, 501)
        return await self._start_uni(request, raw, SSE[request.stream.stream_chunked], "uni_sse", _SSE_HEADERS)

    def uni_websocket(self, conn: UniSocket, request: HTTPRequest) -> UniSession:
        """The session of a ``/connection/uni_websocket`` upgrade (the connect
        object is its first message, within ``connect_timeout``: else 3502)."""
        return UniSession(self.server.context.at(request.local), conn, self.wire(UNI_JSON, conn.frames),
                          headers=request.headers, transport="uni_websocket")

    # -- a channel as an event stream ---------------------------------------------------------------

    async def channel_sse(self, request: HTTPRequest) -> HTTPResponse:
        """``GET /sse/{channel}`` (:mod:`hubbub.eventstream`)."""
        if request.method != "GET":
            return _error("use GET (an event stream)", 405)
        accept = request.headers.get("accept", "")
        if accept and not any(kind in accept for kind in ("text/event-stream", "*/*", "text/*")):
            return _error("this endpoint answers text/event-stream only", 406)
        if request.stream is None:
            return _error(_NOT_STREAMING, 501)
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
        out = StreamOut(stream, frames, farewell, farewell_event=b"disconnect")
        session = ChannelStreamSession(self.server.context.at(request.local), out,
                                       self.channel_wires.get(channel, frames), channel,
                                       headers=request.headers, query=request.query, since=since)
        try:
            decision = session.handshake_nowait()
            if decision is PENDING:
                async with asyncio.timeout(self.config.connect_timeout):
                    decision = await session.handshake()
        except TimeoutError:
            session.abandon()
            return _error(_TOO_SLOW, 503)
        except BaseException:  # a hook's bug (500), or the client left: nothing stays behind
            session.abandon()
            raise
        if decision is not None:
            session.abandon()
            return _error(decision[1], decision[0])
        if self._begin(stream, session, frames, _SSE_HEADERS, frames.raw(b"retry: %d\n\n" % SSE_RETRY_MS)):
            await _guarded(session, session.open())
        return STREAMED
