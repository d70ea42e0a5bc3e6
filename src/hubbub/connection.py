"""One TCP connection: HTTP (h11) or WebSocket (websockets' sans-I/O core).

The connection is an :class:`asyncio.Protocol`: a WebSocket upgrade goes whole
to :class:`websockets.server.ServerProtocol`, plain HTTP to h11. It knows its
server only through the :class:`Host` interface.

See ``docs/design.md``, "The write path" (3: the input bound, :data:`MAX_INBOX`,
:data:`WS_SLICE`, :attr:`Connection.buffered`) and "Choke points" (the transport
contract).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import collections
import email.utils
import hashlib
import http
import logging
import sys
import time
import uuid
from collections.abc import Generator
from typing import Any, cast

import h11
import httptools
from websockets.exceptions import InvalidHandshake, PayloadTooBig
from websockets.exceptions import ProtocolError as WebSocketsProtocolError
from websockets.frames import Close, Frame, Opcode
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.protocol import Protocol as Protocol_
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from .codes import DisconnectCode
from .compression import extension_factories, negotiated_frames
from .config import Config
from .core import PENDING
from .http import HTTPRequest, HTTPResponse
from .outbox import FrameEncoder
from .stats import Stats
from .transport import Host, WebSocketSession
from .writer import Writer

log = logging.getLogger("hubbub.connection")

#: websockets logs every open and close at INFO; hubbub logs what matters itself.
_WS_LOGGER = logging.getLogger("hubbub.websockets")
_WS_LOGGER.setLevel(logging.WARNING)

#: Messages waiting to be handled before reading from the socket pauses.
MAX_INBOX = 64
#: Most input handed to websockets' parser at once (bytes): a read of tiny frames
#: adds at most this many bytes' worth of messages to a full inbox
WS_SLICE = 16 * 1024
#: Why reading is paused (bits of ``Connection._paused``): the inbox is full ...
_PAUSED_INBOX = 1
#: ... or a request's handler or a handshake's decision is awaited
_PAUSED_PENDING = 2
#: Longest close reason, in bytes (a close frame payload is at most 125 bytes).
MAX_CLOSE_REASON = 123


class WebSocketFrames:
    """Encodes unmasked server frames with ``websockets``' frame serializer.

    One instance is shared by every connection that did not negotiate
    permessage-deflate, so a push is framed once for all of them (those that
    did share a :class:`~hubbub.compression.DeflateFrames`).
    """

    __slots__ = ()

    #: frames of one connection may be written back to back (FrameBatch)
    joinable = True

    def text(self, payload: bytes) -> bytes:
        return Frame(Opcode.TEXT, payload).serialize(mask=False)

    def binary(self, payload: bytes) -> bytes:
        return Frame(Opcode.BINARY, payload).serialize(mask=False)


#: Request headers of a WebSocket upgrade that only serve the upgrade itself (RFC 6455 4.1):
#: websockets checks them; sessions and hooks do not see them.
_UPGRADE_HEADERS = frozenset(("upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
                              "sec-websocket-extensions"))
#: one UUID for every ``ServerProtocol.id`` (websockets draws a fresh one per connection for its
#: own log lines, which hubbub keeps at WARNING): 100 bytes per idle connection less
_SHARED_WS_ID = uuid.UUID(int=0)
_SERVER_PARSE_CODE = ServerProtocol.parse.__code__
_PARSE_CODE = Protocol_.parse.__code__
_AT_EOF_CODE = StreamReader.at_eof.__code__


class _Incomplete(Exception):
    """A frame that is not all in the data at hand (``Connection._plain_messages``)."""


class _Partial:
    """A fragmented message under way (RFC 6455 5.4): its kind, its fragments so far,
    and for text the incremental UTF-8 check."""

    __slots__ = ("binary", "parts", "utf8")

    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self.parts: list[bytes] = []
        self.utf8: codecs.IncrementalDecoder | None = None


def _valid_utf8(partial: _Partial | None, data: bytes | bytearray | memoryview, fin: bool) -> bool:
    """Whether text is valid UTF-8 so far: a whole message at once; the first fragment
    of a message is checked where its :class:`_Partial` is made; a later one by the
    message's incremental decoder."""
    try:
        if partial is None:
            if fin:
                codecs.utf_8_decode(data, "strict", True)
            else:
                codecs.getincrementaldecoder("utf-8")().decode(data, False)
            return True
        assert partial.utf8 is not None
        partial.utf8.decode(data, fin)
        return True
    except UnicodeDecodeError:
        return False


def _at_frame_boundary(ws: ServerProtocol) -> bool:
    """Whether websockets' parser waits for the next frame with nothing buffered."""
    parser = ws.parser  # ServerProtocol.parse -> Protocol.parse -> StreamReader.at_eof
    frames = getattr(parser, "gi_yieldfrom", None)
    waiting = getattr(frames, "gi_yieldfrom", None)
    return (getattr(parser, "gi_code", None) is _SERVER_PARSE_CODE and getattr(frames, "gi_code", None) is _PARSE_CODE
            and getattr(waiting, "gi_code", None) is _AT_EOF_CODE and not ws.reader.buffer)


def _quiet(ws: ServerProtocol) -> bool:
    """Whether a fresh ``ServerProtocol`` in the OPEN state (no extensions) would be
    the same as ``ws``: open, no close frame either way, no fragmented message under
    way, nothing buffered or waiting to be sent, the parser between frames."""
    return (ws.state is State.OPEN and ws.close_rcvd is None and ws.close_sent is None and ws.current_size is None
            and not ws.writes and not ws.extensions and not ws.eof_sent and ws.parser_exc is None
            and not ws.expect_continuation_frame and _at_frame_boundary(ws))


def _release_last_frame(ws: ServerProtocol) -> None:
    """Let go of the last frame websockets parsed: its parser keeps it (payload
    included) in a local variable until the next frame arrives, a few hundred
    bytes per idle connection. At a frame boundary (the parser waits in
    ``at_eof`` with nothing buffered; the state of a fragmented message lives on
    the protocol object, not in the parser) a fresh parser is the same parser;
    anywhere else, nothing is changed."""
    if ws.state is State.OPEN and _at_frame_boundary(ws):
        ws.parser = ws.parse()
        next(ws.parser)


class Connection(Writer, asyncio.Protocol):
    """One accepted TCP connection. Implements :class:`~hubbub.outbox.Outbox`
    (its queue is the :class:`~hubbub.writer.Writer` it extends)."""

    # slots: an idle connection's memory is mostly this object (see docs/benchmarks.md)
    __slots__ = (
        "host", "peer", "http", "_head", "_scanned", "_http_request", "_http_body",
        "_http_body_size", "_http_task", "session", "request", "_inbox", "_worker", "_paused", "_partial",
        "_close_timer", "_close_counted", "deadline", "ping_slot", "_held",
        "chunked", "frames", "_ws", "_upgraded",
    )

    def __init__(self, host: Host) -> None:
        config = host.config
        super().__init__(host.flusher, config.max_pending_output, host.stats)
        self.host = host
        self.peer: tuple[str, int] | None = None
        # h11 only for plain HTTP: made when a request is not a WebSocket upgrade (_h11)
        self.http: h11.Connection | None = None
        self._head: bytearray | None = bytearray()  # raw bytes of the first request, until routed
        self._scanned = 0  # how much of _head was searched for the end of the head
        self._http_request: h11.Request | None = None
        self._http_body: list[bytes] | None = None  # created per request: a WebSocket never needs one
        self._http_body_size = 0
        self._http_task: asyncio.Task[None] | None = None
        #: websockets' protocol: made on first use once the 101 is sent (see :attr:`ws`); an
        #: idle connection lets go of it between messages (:meth:`_release_idle_protocol`)
        self._ws: ServerProtocol | None = None
        self._upgraded = False  # a WebSocket from the upgrade request on (handshake under way or done)
        self.session: WebSocketSession | None = None
        self.request: HTTPRequest | None = None
        # created on first use: an idle connection keeps neither (memory per connection)
        self._inbox: collections.deque[tuple[bytes, bool] | None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._paused = 0  # why reading is paused: _PAUSED_INBOX | _PAUSED_PENDING bits
        self._partial: _Partial | None = None  # only while a fragmented message arrives
        self._close_timer: asyncio.TimerHandle | None = None
        self._close_counted = False
        self.deadline = time.monotonic() + config.handshake_timeout
        self.ping_slot = 0  # which slot of the server's ping wheel pings this connection
        #: the answer to a client's close, held while its earlier messages are handled
        self._held: list[bytes] | None = None
        #: a streaming response is under way (None: not streaming); its body is chunked
        self.chunked: bool | None = None
        #: how messages are framed for this connection: one encoder shared by every connection
        #: of its kind (compressing once set at the handshake, when permessage-deflate is agreed)
        self.frames: FrameEncoder = PLAIN_FRAMES

    @property
    def ws(self) -> ServerProtocol | None:
        """websockets' protocol object (frame parser, closing handshake) once the
        connection is a WebSocket, else ``None``. After the ``101`` it is made on
        first use, and let go of while the connection is quiet (memory per idle
        connection): a fresh one in the OPEN state is the same parser then."""
        ws = self._ws
        if ws is None and self._upgraded:
            ws = self._ws = self._new_protocol(State.OPEN)
        return ws

    @property
    def config(self) -> Config:
        """The server's settings."""
        return self.host.config

    @property
    def stats(self) -> Stats:
        """The server's counters (the :class:`~hubbub.writer.Writer`'s)."""
        return self._stats

    def _protocol(self) -> ServerProtocol:
        """:attr:`ws` of a WebSocket connection (never ``None``)."""
        ws = self.ws
        assert ws is not None
        return ws

    def _new_protocol(self, state: State) -> ServerProtocol:
        ws = ServerProtocol(state=state, max_size=self.config.max_message_size, logger=_WS_LOGGER)
        ws.id = _SHARED_WS_ID
        return ws

    def _drop_protocol(self) -> None:
        """Let go of websockets' protocol object: its parser generator's suspended frame
        holds the protocol (a cycle); closing it frees both by reference counting."""
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.parser.close()

    def _new_http(self) -> h11.Connection:
        """h11's connection, made for the first request that is not a WebSocket upgrade."""
        if self.http is None:
            self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_handshake_size)
        return self.http

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's transport
        self.peer = transport.get_extra_info("peername")
        # TCP_NODELAY: asyncio's socket transports set it themselves.
        # hubbub bounds output itself (max_pending_output); never ask to pause.
        self.transport.set_write_buffer_limits(high=2**31 - 1)  # uvloop takes a C int
        self.host.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        self._stats.bytes_in += len(data)
        if self.chunked is not None:
            return  # a streaming response is under way: nothing more is read (and nothing kept)
        if self._upgraded:
            if self._head is not None:  # the handshake is being decided, or the inbox is full: hold
                self._head += data
                return
            self._feed_ws(data)
            return
        if self._head is not None:
            self._head += data
            self._first_request()
            return
        try:
            self.http.receive_data(data)  # type: ignore[union-attr]  # None only once streaming (returned above)
        except h11.RemoteProtocolError:
            pass  # raised again by next_event
        self._process_http_events()

    def _first_request(self) -> None:
        """Route the connection's first request once its head is complete.

        A head that names ``websocket`` goes to websockets' handshake
        (:meth:`_start_websocket`), so an upgrade is parsed once, by the library
        that answers it. Anything else, and anything websockets cannot parse as
        a handshake, goes to h11.
        """
        head = self._head
        assert head is not None
        limit = self.config.max_request_line
        if len(head) > limit and b"\r\n" not in head[:limit]:
            self._head = None
            self._new_http()
            self._http_error(414, "request line too long")
            return
        end = head.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0 and len(head) <= self.config.max_handshake_size:
            self._scanned = len(head)
            return  # wait for the rest of the head
        if end < 0 or end + 4 > self.config.max_handshake_size:
            self._head = None
            self._new_http()
            self._http_error(431, "request header fields too large")
            return
        raw = bytes(head)
        if b"websocket" in raw[:end].lower() and self._start_websocket(raw[:end + 4], raw[end + 4:]):
            return
        self._head = None
        try:
            self._new_http().receive_data(raw)
        except h11.RemoteProtocolError:
            pass  # raised again by next_event
        self._process_http_events()

    def eof_received(self) -> bool | None:
        if self._upgraded and self._head is None:
            self._protocol().receive_eof()
            self._process_ws_events()
        elif self._upgraded and self._http_task is not None:
            return True  # the handshake is being decided: it is answered, then the connection closes
        elif self.http is not None or (self._head is not None and not self._upgraded):
            try:
                self._new_http().receive_data(b"")
            except h11.RemoteProtocolError:
                pass
            if self._http_task is None:
                self._close_after_flush()
            # the client is done sending, not reading: the transport stays open until what
            # is queued for it (a response not yet handed to the transport) is written
            return True
        else:
            self.abort()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.open = False
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        for task in (self._worker, self._http_task):
            if task is not None:
                task.cancel()
        # A cancelled task keeps its CancelledError, whose traceback holds the
        # handler's frame and so this connection (_drain clears _worker itself).
        self._http_task = None
        session = self.session
        if session is not None:
            try:
                session.on_closed()
            except Exception:
                log.exception("error while closing a session")
        self._out = None
        self.host.connection_closed(self)
        # Drop what refers back to this connection, so it is freed by reference
        # counting alone, without waiting for the cyclic garbage collector
        # (tune_gc makes full collections rare): the session holds this
        # connection as its outbox.
        self.session = None
        ws = self._ws
        if ws is not None:
            # websockets' protocol keeps its parser generator, whose suspended
            # frame holds the protocol (parser -> frame -> self), and the error
            # that failed the connection (EOF without a close frame, 1002, 1007,
            # 1009), whose traceback holds that frame too: end both.
            ws.parser.close()
            ws.parser_exc = None
        _release_transport(self.transport)
        self._inbox = None

    # -- plain HTTP -------------------------------------------------------------

    def _process_http_events(self) -> None:
        while not self._upgraded and not self.lost and self.http is not None:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as exc:
                self._http_error(exc.error_status_hint, str(exc))
                return
            if event is h11.PAUSED and self._http_request is not None and _is_upgrade(self._http_request):
                self._upgrade_later_request(self._http_request)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > self.config.max_handshake_size:
                    self._http_error(431, "request header fields too large")
                    return
                self._http_request = event
                self._http_body, self._http_body_size = [], 0
            elif isinstance(event, h11.Data):
                self._http_body_size += len(event.data)
                if self._http_body_size > self.config.max_http_body:
                    self._http_error(413, "request body too large")
                    return
                self._http_body.append(event.data)  # type: ignore[union-attr]  # set by the Request event
            elif isinstance(event, h11.EndOfMessage):
                req = self._http_request
                assert req is not None
                if _is_upgrade(req):
                    continue  # h11 pauses next: the upgrade is websockets' (_upgrade_later_request)
                self._http_task = asyncio.get_running_loop().create_task(
                    self._serve_http(req, b"".join(self._http_body or ()))
                )
                self._pause(_PAUSED_PENDING)  # the next request is read after the response
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._close_after_flush()  # after the response just queued, if any
                return

    def _upgrade_later_request(self, req: h11.Request) -> None:
        """A WebSocket upgrade on a later request of a keep-alive connection (a proxy such
        as nginx with upstream ``keepalive`` reuses its pooled connections for upgrades):
        the head h11 parsed goes to websockets' handshake, as a first request's does, with
        the bytes h11 holds after it (frames)."""
        assert self.http is not None
        rest, _ = self.http.trailing_data
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (
            req.method, req.target, b"".join(b"%s: %s\r\n" % (name, value) for name, value in req.headers.raw_items()))
        self._http_request = None
        if not self._start_websocket(head, bytes(rest)):
            self._http_error(400, "invalid WebSocket handshake")

    async def _serve_http(self, req: h11.Request, body: bytes) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        request = HTTPRequest.from_target(
            req.method.decode(), req.target.decode("latin-1"), headers, body=body, client=self.peer, stream=self
        )
        try:
            response = await self.host.handle_http(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error in HTTP handler for %s", request.path)
            response = HTTPResponse.json({"error": "internal server error"}, 500)
        self._http_task = None
        if self.lost or self.http is None:
            return
        self._send_http(response)
        if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE and not self.host.closing:
            self.http.start_next_cycle()
            self.deadline = time.monotonic() + self.config.handshake_timeout
            self._process_http_events()  # pipelined requests held meanwhile, in order
            if self._http_task is None and not self._eof_pending:
                self._resume(_PAUSED_PENDING)  # nothing pending, not closing: read the next request
        else:
            self._close_after_flush()

    def _send_http(self, response: HTTPResponse, *, close: bool = False) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
        if close or self.host.closing:
            headers.append(("connection", "close"))
        assert self.http is not None
        try:
            reason = _REASONS.get(response.status, "").encode()
            data = self.http.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
            data += self.http.send(h11.Data(data=response.body)) if response.body else b""
            data += self.http.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.abort()
            return
        self.write_control(data)

    # -- streaming responses (hubbub.streams) ----------------------------------------

    def begin_stream(self, session: WebSocketSession, headers: list[tuple[str, str]]) -> None:
        """Answer the request being served with a streaming response: ``200``
        with ``headers``, then a body that is whatever the writer queues from
        now on (bounded, like WebSocket output). The body is chunked
        (:attr:`chunked` true) for HTTP/1.1 clients, ended by closing the
        connection for HTTP/1.0. ``session`` holds the stream: it is pinged,
        told when the connection is lost, closed at shutdown and when slow."""
        http = self.http
        assert http is not None and self.chunked is None
        chunked = http.their_http_version != b"1.0"
        # the connection closes when the stream ends: say so, or a client could pick
        # it from its pool for its next request while the close is on its way
        headers = [*headers, ("connection", "close")]
        if chunked:
            headers.append(("transfer-encoding", "chunked"))
        try:
            head = http.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
        except h11.LocalProtocolError:
            self.abort()
            return
        self.write_control(head)
        self.chunked = chunked
        self.http = None  # HTTP is over for this connection: nothing more is read
        self._http_request = None
        self.session = session
        self.open = True
        self.host.stream_opened(self)
        # read again, only to notice the client leaving (what it sends is dropped)
        self._resume(_PAUSED_PENDING)

    @property
    def stream_chunked(self) -> bool:
        """Whether a stream begun now would be chunked (the client speaks HTTP/1.1)."""
        return self.http is not None and self.http.their_http_version != b"1.0"

    def end_stream(self, tail: bytes = b"") -> None:
        """End the streaming response with ``tail`` (the session's last words,
        unbounded like a close frame) and close the connection once written."""
        if self.chunked is None or self.lost:
            return
        self.open = False
        self.write_control(tail + b"0\r\n\r\n" if self.chunked else tail)
        self._close_after_flush()

    def _http_error(self, status: int, message: str) -> None:
        if self.http is not None and self.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._send_http(HTTPResponse.json({"error": message}, status), close=True)
        self._close_after_flush()

    def _close_after_flush(self) -> None:
        self.finish()
        self._arm_close_timer()

    # -- WebSocket handshake ------------------------------------------------------

    def _start_websocket(self, head: bytes, rest: bytes) -> bool:
        """Do the opening handshake of the first request: ``head`` (its
        complete head) and ``rest`` (bytes after it: frames), with websockets'
        ``ServerProtocol``.

        Only the head is parsed now; frames are fed once the handshake is
        answered, so the protocol is OPEN when it reads them and a bad frame
        gets its close code (1009, 1002, ...) as after any handshake.

        Returns False, having changed nothing, when websockets does not parse
        ``head`` as a WebSocket upgrade (h11 answers it as plain HTTP then).

        A well-formed upgrade of the usual shape (:func:`parse_upgrade`) is
        checked and answered here without websockets' handshake machinery: the
        same checks and the same ``101``, at a fifth of the CPU; websockets'
        frame parser is made once frames arrive (:attr:`ws`). Anything else
        goes to websockets' handshake, which answers it as before.
        """
        config = self.config
        upgrade = parse_upgrade(head, config.websocket_compression) if self.host.origins is None else None
        if upgrade is not None:
            self._start_upgraded(*upgrade, rest)
            return True
        ws = ServerProtocol(
            origins=self.host.origins,
            # permessage-deflate: websockets negotiates it and inflates incoming messages
            # (within max_size: a compression bomb gets 1009); hubbub deflates its own frames
            extensions=extension_factories() if config.websocket_compression else None,
            max_size=config.max_message_size,
            logger=_WS_LOGGER,
        )
        ws.id = _SHARED_WS_ID  # websockets' per-connection UUID is only for its logs; ours are quiet
        ws.receive_data(head)
        events = ws.events_received()
        if not events or not isinstance(events[0], Request):
            return False
        req: Request = events[0]
        if not any("websocket" in value.lower() for value in req.headers.get_all("Upgrade")):
            return False
        # names interned: every connection of a kind sends the same ones; the upgrade's own
        # mechanics (key, version, ...) mean nothing once it is done (memory per connection)
        headers = {}
        for name, value in req.headers.raw_items():
            name = sys.intern(name.lower())
            if name not in _UPGRADE_HEADERS:
                headers[name] = value
        request = HTTPRequest.from_target("GET", req.path, headers, client=self.peer)
        self.request = request
        self._ws = ws
        self._upgraded = True
        self._head = bytearray(rest)  # held until the handshake is decided
        if config.websocket_compression and "Sec-WebSocket-Extensions" in req.headers:
            self.frames = self._negotiated_frames(ws, req)  # before the session picks its wire
        found = self.host.websocket_session(self, request)
        if isinstance(found, tuple):
            self._answer_handshake(None, found)
            return True
        response = ws.accept(req)
        if response.status_code != 101:
            ws.send_response(response)
            self._pull_ws_writes(control=True)
            self._close_after_flush()
            return True
        subprotocol = found.subprotocol
        if subprotocol:  # chosen by the session (hubbub.formats.negotiate)
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
        self.session = found
        try:
            decision = found.handshake_nowait()
        except Exception:
            log.exception("error deciding the handshake for %s", request.path)
            decision = (500, "internal error")
        if decision is PENDING:
            self._http_task = asyncio.get_running_loop().create_task(self._decide_handshake(response))
            self._pause(_PAUSED_PENDING)  # frames are read once the handshake is decided
            return True
        self._answer_handshake(response, decision)
        return True

    def _start_upgraded(self, target: str, headers: dict[str, str], key: str, rest: bytes) -> None:
        """:meth:`_start_websocket` for an upgrade that :func:`parse_upgrade` checked."""
        request = HTTPRequest.from_target("GET", target, headers, client=self.peer)
        self.request = request
        self._upgraded = True
        self._head = bytearray(rest)  # held until the handshake is decided
        found = self.host.websocket_session(self, request)
        if isinstance(found, tuple):
            self._answer_handshake(None, found)
            return
        response = accept_response(key, found.subprotocol)
        self.session = found
        try:
            decision = found.handshake_nowait()
        except Exception:
            log.exception("error deciding the handshake for %s", request.path)
            decision = (500, "internal error")
        if decision is PENDING:
            # closing before the answer behaves as on websockets' path: nothing is sent
            self._ws = self._new_protocol(State.CONNECTING)
            self._http_task = asyncio.get_running_loop().create_task(self._decide_handshake(response))
            self._pause(_PAUSED_PENDING)  # frames are read once the handshake is decided
            return
        self._answer_handshake(response, decision)

    def _negotiated_frames(self, ws: ServerProtocol, req: Request) -> FrameEncoder:
        """The framing that ``ws.accept(req)`` will agree on: the shared compressing
        encoder (of the window the client asked for) when the client's offer of
        permessage-deflate is accepted (websockets' own negotiation, the same that
        answers the handshake), else the plain one."""
        try:
            _, extensions = ws.process_extensions(req.headers)
        except InvalidHandshake:
            return PLAIN_FRAMES  # a malformed offer: accept() answers it with 400
        config = self.config
        frames = negotiated_frames(extensions, config.websocket_compression_level,
                                   config.websocket_compression_min_size)
        return PLAIN_FRAMES if frames is None else frames

    async def _decide_handshake(self, response: Response | bytes) -> None:
        session = self.session
        assert session is not None
        try:
            decision = await session.handshake()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error deciding the handshake for %s", self.request.path if self.request else "?")
            decision = (500, "internal error")
        self._http_task = None
        if not self.lost:
            self._answer_handshake(response, decision)

    def _answer_handshake(self, response: Response | bytes | None, refusal: tuple[int, str] | None) -> None:
        """Send ``response`` (the 101 that websockets made, or the bytes of
        :func:`accept_response`) or, with a ``refusal``, an HTTP error instead."""
        ws = self._ws
        if ws is None and refusal is not None:
            ws = self._ws = self._new_protocol(State.CONNECTING)  # websockets writes the refusal
        if refusal is not None:
            assert ws is not None
            if self.session is not None:
                self.session.closed = True
                self.session.on_closed()
                self.session = None
            status, text = refusal
            ws.send_response(ws.reject(status, text + "\n"))
            self._pull_ws_writes(control=True)
            self._head = None
            self._close_after_flush()
            return
        assert response is not None
        if isinstance(response, bytes):
            self.write_control(response)
            self._drop_protocol()  # made in the OPEN state when frames arrive (ws)
        else:
            assert ws is not None
            ws.send_response(response)
            self._pull_ws_writes(control=True)
            # A fresh parser in the OPEN state starts with frame parsing
            # (ServerProtocol.parse skips the request when not CONNECTING); the old
            # one would keep the request alive in its frame for the connection's life.
            ws.parser = ws.parse()
            next(ws.parser)
        self.open = True
        self.http = None  # HTTP is over for this connection
        self._http_request = None
        self.request = None  # the session has what it needs (memory per connection)
        self.host.websocket_opened(self)
        session = self.session
        assert session is not None
        if not session.open_nowait():  # most sessions open without waiting: no task
            self._inbox = collections.deque([None])  # "open" comes first
            self._start_worker()
        rest, self._head = self._head, None
        if rest:
            self._feed_ws(bytes(rest))
        elif self._ws is not None:
            self._process_ws_events()
        self._resume(_PAUSED_PENDING)

    # -- WebSocket messages ---------------------------------------------------------

    def _feed_ws(self, data: bytes) -> None:
        """Parse ``data`` :data:`WS_SLICE` bytes at a time; once the inbox is
        full, hold the rest raw (in ``_head``) until :meth:`_inbox_has_room`."""
        if len(data) <= WS_SLICE:
            if self._ws is None:  # quiet: whole messages need no websockets' protocol object
                data = self._plain_messages(data)
                if not data:
                    return
            self._protocol().receive_data(data)
            self._process_ws_events()
            return
        start = 0
        while start < len(data):
            inbox = self._inbox
            if inbox is not None and len(inbox) >= MAX_INBOX:
                self._head = bytearray(data[start:])
                self._pause(_PAUSED_INBOX)
                return
            self._protocol().receive_data(data[start:start + WS_SLICE])
            self._process_ws_events()
            if self.lost:
                return
            start += WS_SLICE

    def _plain_messages(self, data: bytes) -> bytes:
        """Take the whole messages that start ``data`` on a quiet connection
        (no websockets' protocol object: open, between frames, nothing under
        way) and return the rest, which websockets' protocol parses as before.

        Each frame is parsed by websockets' own frame parser
        (:meth:`websockets.frames.Frame.parse`: opcode, masking, length,
        ``max_message_size``, RSV bits and control-frame rules), without the
        protocol object around it (``ServerProtocol``: its ``uuid4``, reader
        and parser generators, 15 µs against 4 µs for one frame). Taken:
        single-frame text or binary messages, text valid UTF-8, each complete
        in ``data``: what every client sends most of the time. The first frame
        that is anything else (a control frame, a fragment, a partial frame, a
        compressed frame, an error to answer with 1002, 1007 or 1009) and
        everything after it go to the protocol object, which starts at that
        frame boundary as it would have after the frames before.
        """
        pos, end = 0, len(data)

        def read_exact(n: int) -> Generator[None, None, bytes]:
            nonlocal pos
            if end - pos < n:
                raise _Incomplete
            pos += n
            return data[pos - n:pos]
            yield  # a generator, as Frame.parse reads with ``yield from``; never suspends

        limit = self.config.max_message_size
        taken = 0
        while taken < end:
            try:
                next(Frame.parse(read_exact, mask=True, max_size=limit))
                break  # pragma: no cover - read_exact never suspends
            except StopIteration as parsed:
                frame: Frame = parsed.value
            except (_Incomplete, WebSocketsProtocolError, PayloadTooBig):
                break
            if not frame.fin or (frame.opcode is not Opcode.TEXT and frame.opcode is not Opcode.BINARY):
                break
            text = frame.opcode is Opcode.TEXT
            payload = cast(bytes, frame.data)  # unmasked by websockets' apply_mask: bytes
            if text:
                try:
                    codecs.utf_8_decode(payload, "strict", True)
                except UnicodeDecodeError:
                    break  # the protocol object takes it from here: 1007
            taken = pos
            self._receive(payload, not text)
        return data[taken:] if taken else data

    def _inbox_has_room(self) -> None:
        """Parse what was held raw while the inbox was full; read again unless it filled again."""
        held, self._head = self._head, None
        if held and self._upgraded:
            self._feed_ws(bytes(held))
        inbox = self._inbox
        if self._head is None and (inbox is None or len(inbox) < MAX_INBOX):
            self._resume(_PAUSED_INBOX)

    def _process_ws_events(self) -> None:
        ws = self._protocol()
        events = ws.events_received()
        self._handle_frames(events)
        if events:
            _release_last_frame(ws)
        if ws.close_rcvd is not None and self._inbox and self._held is None and self.open:
            # The client closed after messages that still wait in the inbox: handle
            # them first (their replies, or a refusal's close code, must reach the
            # client), and answer the close after them (RFC 6455 7.1.2 allows it).
            self._held = ws.data_to_send()
            return
        if self._held is not None:
            return
        self._pull_ws_writes(control=True)
        if ws.close_sent is not None and ws.close_rcvd is None and not self._close_counted:
            self._close_counted = True  # the protocol layer failed the connection (1002, 1007, 1009)
            self._stats.disconnects[ws.close_sent.code] += 1
        if ws.state is State.CLOSED or ws.close_expected():
            self.open = False
            self._arm_close_timer()
        elif events and self._ws is ws and _quiet(ws):
            self._drop_protocol()  # a fresh one is the same parser (ws): memory per idle connection

    def _handle_frames(self, events: list[Any]) -> None:
        for frame in events:
            if not isinstance(frame, Frame):
                continue
            op = frame.opcode
            partial = self._partial
            if op is Opcode.TEXT or op is Opcode.BINARY:
                binary = op is Opcode.BINARY
                partial = self._partial = None
            elif op is Opcode.CONT and partial is not None:
                binary = partial.binary
            else:
                if op is Opcode.PONG and self.session is not None:
                    self.session.pong()
                continue
            data = frame.data
            if not binary and not _valid_utf8(partial, data, frame.fin):
                self._protocol().fail(1007, "invalid UTF-8")
                return
            if not frame.fin:
                if partial is None:
                    partial = self._partial = _Partial(binary)
                    if not binary:  # check text as it arrives, failing inside the fragment that breaks it
                        partial.utf8 = codecs.getincrementaldecoder("utf-8")()
                        partial.utf8.decode(data, False)
                partial.parts.append(bytes(data))
                continue
            if partial is not None:
                partial.parts.append(bytes(data))
                payload = b"".join(partial.parts)
                self._partial = None
            else:
                payload = bytes(data)
            self._receive(payload, binary)

    def _receive(self, payload: bytes, binary: bool) -> None:
        session = self.session
        if session is None or session.closed:
            return
        self._stats.messages_in += 1
        if payload == b"{}" and not binary and session.inline_pong:
            session.pong()  # a protocol pong: no task, no queueing
            return
        if self._inbox is None:
            self._inbox = collections.deque()
        self._inbox.append((payload, binary))
        if len(self._inbox) >= MAX_INBOX:
            self._pause(_PAUSED_INBOX)
        self._start_worker()

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Handle queued messages in order. Runs only while there is work."""
        session = self.session
        inbox = self._inbox
        assert session is not None and inbox is not None
        try:
            while inbox:
                item = inbox.popleft()
                if self._paused & _PAUSED_INBOX and len(inbox) < MAX_INBOX // 2:
                    self._inbox_has_room()
                if item is None:
                    await session.open()
                else:
                    await session.handle_message(item[0], item[1])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error in WebSocket handler (%s)", type(self.session).__name__)
            self.close(DisconnectCode.INTERNAL_ERROR)
        finally:
            self._worker = None
            if not inbox and self._inbox is inbox:
                self._inbox = None
            if self._held is not None and not inbox:
                self._release_close()

    def _release_close(self, replacement: bytes | None = None) -> None:
        """Send the held answer to the client's close (or ``replacement``, our
        own close frame) now that the messages before it are handled."""
        held, self._held = self._held or [], None
        self.open = False
        for chunk in held:
            if not chunk:
                self.finish()
            elif replacement is not None and chunk[0] & 0x0F == Opcode.CLOSE.value:
                self.write_control(replacement)
                replacement = None
            else:
                self.write_control(chunk)
        if self._upgraded:
            self._process_ws_events()
        self._arm_close_timer()

    # -- Outbox ---------------------------------------------------------------------

    def send_text(self, payload: bytes) -> None:
        """Queue one text message (a reply, an endpoint's message): bounded.
        Framed (and compressed, with permessage-deflate) here by :attr:`frames`,
        not by websockets, so it also works while a client's close waits for
        the messages before it."""
        if self.open and self._upgraded:
            self.write(self.frames.text(payload))

    def send_binary(self, payload: bytes) -> None:
        """Queue one binary message: bounded."""
        if self.open and self._upgraded:
            self.write(self.frames.binary(payload))

    def send_ping(self) -> None:
        """Queue a WebSocket ping (one pre-encoded frame for every connection): bounded."""
        if self.open and self._upgraded:
            self.write(_PING_FRAME)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; drop the TCP connection after ``close_timeout``."""
        if not self._upgraded or self.lost:
            return
        if self._held is not None:  # the client closed; answer with our code instead
            self._close_counted = True
            self._stats.disconnects[code] += 1
            data = reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
            self._release_close(Frame(Opcode.CLOSE, Close(code, data).serialize()).serialize(mask=False))
            return
        self.open = False
        if self._protocol().state is State.OPEN:
            self._close_counted = True
            self._stats.disconnects[code] += 1
            data = reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
            self._protocol().send_close(code, data)
            self._pull_ws_writes(control=True)
        self._arm_close_timer()

    # -- output internals -------------------------------------------------------------

    def _on_slow(self, pending: int) -> None:
        log.warning("slow client %s: %d bytes pending; closing with 3008", self.peer, pending)
        session = self.session
        if session is not None:
            session.disconnect(DisconnectCode.SLOW, "slow")  # output is closed: only the close frame goes
        else:
            self.close(DisconnectCode.SLOW, "slow")

    def _pull_ws_writes(self, *, control: bool = False) -> None:
        """Move what websockets' protocol wrote into the queue (bounded unless
        ``control``: handshake, close frames, protocol-level answers)."""
        ws = self.ws
        assert ws is not None
        for chunk in ws.data_to_send():
            if not chunk:
                self.finish()
            elif control or not self.open:
                self.write_control(chunk)
            else:
                self.write(chunk)

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self.lost:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self.config.close_timeout, self.abort)

    # -- reading ----------------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        """Stop reading from the socket for ``reason`` (a ``_PAUSED_*`` bit)."""
        if not self._paused and self.transport is not None and not self.lost:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        """Read again once no other reason to pause is left."""
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and self.transport is not None and not self.lost:
                self.transport.resume_reading()

    @property
    def reading(self) -> bool:
        """Whether the connection reads from its socket (False: paused while
        a request or handshake is pending, or while the inbox is full)."""
        return not self._paused and not self.lost

    @property
    def queued(self) -> int:
        """Messages received and waiting in the inbox for the session (at most
        :data:`MAX_INBOX` plus the messages of one :data:`WS_SLICE`)."""
        return sum(1 for item in self._inbox if item is not None) if self._inbox else 0

    @property
    def buffered(self) -> int:
        """Bytes received from the client and held, not yet handled: an
        incomplete first request head, frames behind a pending handshake or a
        full inbox, h11's buffer (pipelined requests behind a pending one),
        websockets' partial frame and the payloads in the inbox. Bounded:
        reading pauses while anything is pending, so this is at most one
        request head or message and the rest of one transport read (plus
        :data:`MAX_INBOX` messages)."""
        size = len(self._head) if self._head is not None else 0
        if self.http is not None:
            size += len(self.http.trailing_data[0])
        if self._ws is not None:
            size += len(self._ws.reader.buffer)
        if self._inbox:
            size += sum(len(item[0]) for item in self._inbox if item is not None)
        return size

    @property
    def idle(self) -> bool:
        """Whether the connection is plain HTTP with no request being served."""
        return not self._upgraded and self._http_task is None and self.chunked is None

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self.transport is not None and not self.lost:
            self.transport.abort()


def _release_transport(transport: asyncio.BaseTransport | None) -> None:
    """Break the reference cycle of a closed asyncio socket transport.

    CPython's selector transport keeps bound methods of itself
    (``_read_ready_cb``; ``_write_ready`` from 3.12) and drops them only in
    ``close()`` from 3.12 on, never on ``abort()`` or a reset by the peer
    (CPython gh-100348, gh-106503). Called from ``connection_lost``: the
    transport has left the event loop and never reads or writes again.
    uvloop's transports have no ``__dict__`` and no such cycle.
    """
    state = getattr(transport, "__dict__", None)
    if state is not None:
        for name in ("_read_ready_cb", "_write_ready"):
            if name in state:
                state[name] = None


_PING_FRAME = Frame(Opcode.PING, b"").serialize(mask=False)

#: the framing of every connection without compression
PLAIN_FRAMES = WebSocketFrames()

_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


def _is_upgrade(req: h11.Request) -> bool:
    for name, value in req.headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


# -- the upgrade without websockets' handshake machinery ------------------------------------

#: RFC 6455 1.3: appended to the key before hashing
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: websockets' own limits on a request head (``websockets.http11``): a longer one goes there
_MAX_FAST_HEAD = 8192
_MAX_FAST_HEADERS = 128
#: ``Connection`` values answered on the fast path (RFC 7230 tokens, as browsers and SDKs send them)
_CONNECTION_UPGRADE = frozenset(("upgrade", "keep-alive, upgrade", "upgrade, keep-alive"))


class _UpgradeHead:
    """httptools callbacks: the target and the headers of one request head."""

    __slots__ = ("url", "headers", "repeated", "count", "done")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.repeated = False
        self.count = 0
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = sys.intern(name.decode("ascii").lower())
        if key in self.headers:
            self.repeated = True
        self.headers[key] = value.decode("ascii")
        self.count += 1

    def on_headers_complete(self) -> None:
        self.done = True


def parse_upgrade(head: bytes, compression: bool) -> tuple[str, dict[str, str], str] | None:
    """Parse and check a WebSocket upgrade request head (RFC 6455 4.2.1) with
    httptools (llhttp): ``(target, headers, key)`` when it is a well-formed
    upgrade of the usual shape, the headers (lower-case names) without those
    that serve only the upgrade; ``None`` for anything else (repeated headers,
    other ``Connection`` forms, non-ASCII bytes, a body, an extension offer
    while compression is on, a malformed head), which websockets' handshake
    then answers, as it always did. Accepting here means websockets'
    ``ServerProtocol.accept`` would accept it too (without origins or
    subprotocols configured, as hubbub uses it).
    """
    if len(head) > _MAX_FAST_HEAD or not head.isascii():
        return None
    found = _UpgradeHead()
    parser = httptools.HttpRequestParser(found)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except (httptools.HttpParserError, UnicodeDecodeError):
        return None
    if not found.done or found.repeated or found.count > _MAX_FAST_HEADERS or parser.get_method() != b"GET" \
            or parser.get_http_version() != "1.1":
        return None
    headers = found.headers
    key = headers.get("sec-websocket-key", "")
    if (headers.get("upgrade", "").lower() != "websocket"
            or headers.get("connection", "").lower() not in _CONNECTION_UPGRADE
            or headers.get("sec-websocket-version") != "13" or len(key) != 24
            or "transfer-encoding" in headers or "content-length" in headers
            or (compression and "sec-websocket-extensions" in headers)):
        return None
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
        if "sec-websocket-protocol" in headers:
            parse_subprotocol(headers["sec-websocket-protocol"])  # websockets' check: a malformed one is a 400
    except (binascii.Error, InvalidHandshake):
        return None
    # a dict of its own size (the parser's grew with the upgrade's headers), values interned:
    # every client of a deployment sends the same Host and Origin (memory per connection)
    kept = {name: sys.intern(value) for name, value in headers.items() if name not in _UPGRADE_HEADERS}
    return found.url.decode("ascii"), kept, key


_date: list[Any] = [0, b""]


def accept_response(key: str, subprotocol: str | None) -> bytes:
    """The ``101 Switching Protocols`` answer to a checked upgrade with ``key``
    (RFC 6455 4.2.2), the headers websockets' ``ServerProtocol.accept`` sends."""
    accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest())
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, email.utils.formatdate(now, usegmt=True).encode()
    extra = b"Sec-WebSocket-Protocol: %s\r\n" % subprotocol.encode() if subprotocol else b""
    return (b"HTTP/1.1 101 Switching Protocols\r\nDate: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\n%s\r\n" % (_date[1], accept, extra))
