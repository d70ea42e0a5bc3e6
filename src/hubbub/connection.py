"""One TCP connection: HTTP (h11) or WebSocket (websockets' sans-I/O core).

The connection is an :class:`asyncio.Protocol`. It holds the first request
until its head is complete. A WebSocket upgrade goes whole to
:class:`websockets.server.ServerProtocol`, which parses and answers the
handshake and then does framing, close handling and size limits; plain HTTP
goes to h11. Decoded
messages go to a session (protocol, relay or framework endpoint) through a
bounded inbox; output comes back through the :class:`~hubbub.outbox.Outbox`
methods.

Write path (DESIGN.md):

* ``deliver`` / ``send_text`` only append to a list and mark the connection
  dirty; the server's :class:`Flusher` writes every dirty connection's list
  with **one** ``transport.writelines`` call per event-loop iteration.
* Pending output (this list plus the transport's buffer) is bounded by
  ``max_pending_output``; past it the queue is dropped and the connection
  closed with 3008 "slow". The close frame goes behind what the kernel and
  the transport already hold, and the TCP connection is dropped after
  ``close_timeout`` if the client does not read it.
* Reading is paused while the inbox holds ``MAX_INBOX`` messages, so a
  client that sends faster than it is served is slowed down, not buffered.
"""

from __future__ import annotations

import asyncio
import codecs
import http
import collections
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import h11
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from .codes import DisconnectCode
from .http import HTTPRequest, HTTPResponse
from .outbox import FrameBatch

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("hubbub.connection")

#: websockets logs every open and close at INFO; hubbub logs what matters itself.
_WS_LOGGER = logging.getLogger("hubbub.websockets")
_WS_LOGGER.setLevel(logging.WARNING)

#: Messages waiting to be handled before reading from the socket pauses.
MAX_INBOX = 64
#: Longest close reason, in bytes (a close frame payload is at most 125 bytes).
MAX_CLOSE_REASON = 123


class FrameEncoder:
    """Encodes unmasked server frames with ``websockets``' frame serializer.

    One instance is shared by every connection without per-connection
    compression, so a push is framed once for all of them.
    """

    __slots__ = ()

    def text(self, payload: bytes) -> bytes:
        return Frame(Opcode.TEXT, payload).serialize(mask=False)

    def binary(self, payload: bytes) -> bytes:
        return Frame(Opcode.BINARY, payload).serialize(mask=False)


class WebSocketSession(Protocol):
    """What a connection needs from the session behind a WebSocket endpoint."""

    closed: bool

    async def open(self) -> None: ...

    def open_nowait(self) -> bool:
        """Open at once if nothing must be awaited; False: ``open`` must run."""
        ...

    async def handle_message(self, payload: bytes, binary: bool) -> None: ...

    def ping(self) -> None: ...

    def check_pong(self) -> None: ...

    def on_closed(self) -> None: ...


class Flusher:
    """Writes every dirty connection's output once per event-loop iteration."""

    __slots__ = ("_loop", "_dirty", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Connection] = []
        self._scheduled = False

    def add(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for conn in dirty:
            conn.flush()


class Connection(asyncio.Protocol):
    """One accepted TCP connection. Implements :class:`~hubbub.outbox.Outbox`."""

    # slots: an idle connection's memory is mostly this object (see docs/benchmarks.md)
    __slots__ = (
        "server", "config", "stats", "transport", "peer", "http", "_head", "_http_request", "_http_body",
        "_http_body_size", "_http_task", "ws", "session", "request", "open", "_out", "_out_size", "_buffered",
        "_dirty", "_eof_pending", "_inbox", "_worker", "_paused", "_fragments", "_fragments_binary", "_utf8",
        "_close_timer", "_close_counted", "deadline", "lost", "ping_slot", "_batched", "_scanned",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        self.stats = server.stats
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_handshake_size)
        self._head: bytearray | None = bytearray()  # raw bytes of the first request, until routed
        self._scanned = 0  # how much of _head was searched for the end of the head
        self._http_request: h11.Request | None = None
        self._http_body: list[bytes] = []
        self._http_body_size = 0
        self._http_task: asyncio.Task[None] | None = None
        self.ws: ServerProtocol | None = None
        self.session: WebSocketSession | None = None
        self.request: HTTPRequest | None = None
        #: Outbox: whether output is still accepted.
        self.open = False
        self._out: list[bytes] = []
        self._out_size = 0
        self._buffered = 0  # transport buffer size at the last flush
        self._dirty = False
        self._eof_pending = False
        # created on first use: an idle connection keeps neither (memory per connection)
        self._inbox: collections.deque[tuple[bytes, bool] | None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._paused = False
        self._fragments: list[bytes] = []
        self._fragments_binary = False
        self._utf8: codecs.IncrementalDecoder | None = None  # only for fragmented text
        self._close_timer: asyncio.TimerHandle | None = None
        self._close_counted = False
        self.deadline = time.monotonic() + self.config.handshake_timeout
        self.lost = False
        self.ping_slot = 0  # which slice of the shared ping timer pings this connection
        self._batched = False  # _out holds a FrameBatch

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        # TCP_NODELAY: asyncio's socket transports set it themselves.
        # hubbub bounds output itself (max_pending_output); never ask to pause.
        transport.set_write_buffer_limits(high=2**31 - 1)  # uvloop takes a C int
        self.server.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        self.stats.bytes_in += len(data)
        if self.ws is not None:
            self.ws.receive_data(data)
            self._process_ws_events()
            return
        if self._head is not None:
            self._head += data
            self._first_request()
            return
        try:
            self.http.receive_data(data)
        except h11.RemoteProtocolError:
            pass  # raised again by next_event
        self._process_http_events()

    def _first_request(self) -> None:
        """Route the connection's first request once its head is complete.

        A head that names ``websocket`` goes whole to websockets' handshake
        (:meth:`_start_websocket`), so an upgrade is parsed once, by the library
        that answers it. Anything else, and anything websockets cannot parse as
        a handshake, goes to h11.
        """
        head = self._head
        assert head is not None
        limit = self.config.max_request_line
        if len(head) > limit and b"\r\n" not in head[:limit]:
            self._head = None
            self._http_error(414, "request line too long")
            return
        end = head.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0 and len(head) <= self.config.max_handshake_size:
            self._scanned = len(head)
            return  # wait for the rest of the head
        if end < 0 or end + 4 > self.config.max_handshake_size:
            self._head = None
            self._http_error(431, "request header fields too large")
            return
        raw = bytes(head)
        if b"websocket" in raw[:end].lower() and self._start_websocket(raw, frames=len(raw) > end + 4):
            return
        self._head = None
        try:
            self.http.receive_data(raw)
        except h11.RemoteProtocolError:
            pass  # raised again by next_event
        self._process_http_events()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
            self._process_ws_events()
        else:
            try:
                self.http.receive_data(b"")
            except h11.RemoteProtocolError:
                pass
            if self._http_task is None:
                self._abort()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.open = False
        if self._close_timer is not None:
            self._close_timer.cancel()
        for task in (self._worker, self._http_task):
            if task is not None:
                task.cancel()
        if self.session is not None:
            try:
                self.session.on_closed()
            except Exception:
                log.exception("error while closing a session")
        self._out.clear()
        self.server.connection_closed(self)

    # -- plain HTTP -------------------------------------------------------------

    def _process_http_events(self) -> None:
        while self.ws is None and not self.lost:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as exc:
                self._http_error(exc.error_status_hint, str(exc))
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
                if _is_upgrade(event):
                    # websockets took every valid handshake that came first
                    self._http_error(400, "invalid WebSocket handshake (it must be the connection's first request)")
                    return
            elif isinstance(event, h11.Data):
                self._http_body_size += len(event.data)
                if self._http_body_size > self.config.max_http_body:
                    self._http_error(413, "request body too large")
                    return
                self._http_body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                req = self._http_request
                assert req is not None
                self._http_task = asyncio.get_running_loop().create_task(
                    self._serve_http(req, b"".join(self._http_body))
                )
                return  # the next request is read after the response
            elif isinstance(event, h11.ConnectionClosed):
                self._abort()
                return

    async def _serve_http(self, req: h11.Request, body: bytes) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        request = HTTPRequest.from_target(
            req.method.decode(), req.target.decode("latin-1"), headers, body=body, client=self.peer
        )
        try:
            response = await self.server.handle_http(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error in HTTP handler for %s", request.path)
            response = HTTPResponse.json({"error": "internal server error"}, 500)
        self._http_task = None
        if self.lost:
            return
        self._send_http(response)
        if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE and not self.server.closing:
            self.http.start_next_cycle()
            self.deadline = time.monotonic() + self.config.handshake_timeout
            self._process_http_events()
        else:
            self._close_after_flush()

    def _send_http(self, response: HTTPResponse, *, close: bool = False) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
        if close or self.server.closing:
            headers.append(("connection", "close"))
        try:
            reason = _REASONS.get(response.status, "").encode()
            data = self.http.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
            data += self.http.send(h11.Data(data=response.body)) if response.body else b""
            data += self.http.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self._abort()
            return
        self._queue(data)

    def _http_error(self, status: int, message: str) -> None:
        if self.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._send_http(HTTPResponse.json({"error": message}, status), close=True)
        self._close_after_flush()

    def _close_after_flush(self) -> None:
        self._eof_pending = True
        self._mark_dirty()
        self._arm_close_timer()

    # -- WebSocket handshake ------------------------------------------------------

    def _start_websocket(self, raw: bytes, *, frames: bool) -> bool:
        """Do the opening handshake of the first request ``raw`` (its complete
        head, plus any bytes after it: ``frames``) with websockets' ``ServerProtocol``.

        Returns False, having changed nothing, when websockets does not parse
        ``raw`` as a WebSocket upgrade (h11 answers it as plain HTTP then).
        """
        ws = ServerProtocol(
            origins=self.server.origins,
            max_size=self.config.max_message_size,
            logger=_WS_LOGGER,
        )
        ws.receive_data(raw)
        events = ws.events_received()
        if not events or not isinstance(events[0], Request):
            return False
        req: Request = events[0]
        if not any("websocket" in value.lower() for value in req.headers.get_all("Upgrade")):
            return False
        self._head = None
        headers = {name.lower(): value for name, value in req.headers.raw_items()}
        request = HTTPRequest.from_target("GET", req.path, headers, client=self.peer)
        self.request = request
        endpoint = self.server.match_websocket(request)
        if endpoint is None:
            response = ws.reject(404, "no WebSocket endpoint at this path\n")
        else:
            response = ws.accept(req)
            if response.status_code == 101:
                refusal = self.server.check_websocket(request, self)
                if refusal is not None:
                    status, text = refusal
                    response = ws.reject(status, text + "\n")
        ws.send_response(response)
        self.ws = ws
        self._pull_ws_writes()
        if response.status_code != 101:
            self._close_after_flush()
            return True
        if not frames:
            # The handshake is done and the request was handed to us as an event,
            # but the protocol's parser generator would keep it alive in its frame
            # for the life of the connection. A fresh parser in the OPEN state starts
            # with frame parsing (ServerProtocol.parse skips the request when not
            # CONNECTING). Only when no frame bytes came with the request: the old
            # parser may be inside a frame then.
            ws.parser = ws.parse()
            next(ws.parser)
        try:
            self.session = endpoint(self, request)  # type: ignore[misc]
        except Exception:
            log.exception("error creating the session for %s", request.path)
            self.open = True
            self.close(DisconnectCode.INTERNAL_ERROR)
            return True
        self.open = True
        self.http = None  # type: ignore[assignment]  # HTTP is over for this connection
        self._http_request = None
        self.server.websocket_opened(self)
        if not self.session.open_nowait():  # most sessions open without waiting: no task
            self._inbox = collections.deque([None])  # "open" comes first
            self._start_worker()
        if len(events) > 1:  # frames that came with the handshake
            self._handle_frames(events[1:])
        self._process_ws_events()
        return True

    # -- WebSocket messages ---------------------------------------------------------

    def _process_ws_events(self) -> None:
        ws = self.ws
        assert ws is not None
        self._handle_frames(ws.events_received())
        self._pull_ws_writes()
        if ws.close_sent is not None and ws.close_rcvd is None and not self._close_counted:
            self._close_counted = True  # the protocol layer failed the connection (1002, 1007, 1009)
            self.stats.disconnects[ws.close_sent.code] += 1
        if ws.state is State.CLOSED or ws.close_expected():
            self.open = False
            self._arm_close_timer()

    def _handle_frames(self, events: list[Any]) -> None:
        for frame in events:
            if not isinstance(frame, Frame):
                continue
            op = frame.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:
                self._fragments_binary = op is Opcode.BINARY
                self._fragments = []
            elif op is not Opcode.CONT:
                if op is Opcode.PONG and self.session is not None:
                    self._pong()
                continue
            data = frame.data
            if not self._fragments_binary and not self._valid_utf8(data, op is Opcode.TEXT, frame.fin):
                self.ws.fail(1007, "invalid UTF-8")  # type: ignore[union-attr]
                return
            if not frame.fin:
                self._fragments.append(bytes(data))
                continue
            if self._fragments:
                self._fragments.append(bytes(data))
                payload = b"".join(self._fragments)
                self._fragments = []
            else:
                payload = bytes(data)
            self._pong()
            self._receive(payload, self._fragments_binary)

    def _valid_utf8(self, data: bytes, first: bool, fin: bool) -> bool:
        """Check text as it arrives: a whole message at once, a fragmented one
        incrementally (failing fast, inside the fragment that breaks it)."""
        try:
            if first and fin:
                codecs.utf_8_decode(data, "strict", True)
                return True
            if first or self._utf8 is None:
                self._utf8 = codecs.getincrementaldecoder("utf-8")()
            self._utf8.decode(data, fin)
            if fin:
                self._utf8 = None
            return True
        except UnicodeDecodeError:
            return False

    def _pong(self) -> None:
        session = self.session
        if session is not None and hasattr(session, "pong_expected"):
            session.pong_expected = False  # type: ignore[attr-defined]

    def _receive(self, payload: bytes, binary: bool) -> None:
        if self.session is None or self.session.closed:
            return
        self.stats.messages_in += 1
        if payload == b"{}" and not binary and getattr(self.session, "inline_pong", False):
            return  # a protocol pong: _pong() has noted it; no task, no queueing
        if self._inbox is None:
            self._inbox = collections.deque()
        self._inbox.append((payload, binary))
        if len(self._inbox) >= MAX_INBOX and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._start_worker()

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Handle queued messages in order. Runs only while there is work."""
        session = self.session
        assert session is not None and self._inbox is not None
        inbox = self._inbox
        try:
            while inbox:
                item = inbox.popleft()
                if self._paused and len(inbox) < MAX_INBOX // 2 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                if item is None:
                    await session.open()
                else:
                    await session.handle_message(item[0], item[1])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error in WebSocket handler for %s", self.request.path if self.request else "?")
            self.close(DisconnectCode.INTERNAL_ERROR)
        finally:
            self._worker = None
            if not inbox:
                self._inbox = None

    # -- Outbox ---------------------------------------------------------------------

    def deliver(self, frame: bytes | FrameBatch) -> None:
        """Queue pre-encoded frame bytes or a shared :class:`FrameBatch` (hot
        path: no await, no syscall). A batch may still grow until it is written;
        :meth:`flush` checks the limit again with its final size."""
        if not self.open:
            return
        self._out.append(frame)
        self._out_size += len(frame)
        if type(frame) is not bytes:
            self._batched = True
        if self._out_size + self._buffered > self.config.max_pending_output:
            self._check_slow()
        elif not self._dirty:
            self._dirty = True
            self.server.flusher.add(self)

    def send_text(self, payload: bytes) -> None:
        if self.open and self.ws is not None:
            self.ws.send_text(payload)
            self._pull_ws_writes()

    def send_binary(self, payload: bytes) -> None:
        if self.open and self.ws is not None:
            self.ws.send_binary(payload)
            self._pull_ws_writes()

    def send_ping(self) -> None:
        """Queue a WebSocket ping (one pre-encoded frame for every connection)."""
        if self.open and self.ws is not None:
            self._queue(_PING_FRAME)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; drop the TCP connection after ``close_timeout``."""
        if self.ws is None or self.lost:
            return
        self.open = False
        if self.ws.state is State.OPEN:
            self._close_counted = True
            self.stats.disconnects[code] += 1
            data = reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
            self.ws.send_close(code, data)
            self._pull_ws_writes()
        self._arm_close_timer()

    # -- output internals -------------------------------------------------------------

    def _check_slow(self) -> None:
        transport = self.transport
        self._buffered = transport.get_write_buffer_size() if transport is not None else 0
        if self._out_size + self._buffered <= self.config.max_pending_output:
            if not self._dirty:
                self._dirty = True
                self.server.flusher.add(self)
            return
        log.warning("slow client %s: %d bytes pending; closing with 3008", self.peer,
                    self._out_size + self._buffered)
        self.stats.slow += 1
        self._out.clear()
        self._out_size = 0
        if self.session is not None:
            self.session.closed = True
        self.close(DisconnectCode.SLOW, "slow")

    def _pull_ws_writes(self) -> None:
        assert self.ws is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self._queue(chunk)
            else:
                self._eof_pending = True
                self._mark_dirty()

    def _queue(self, data: bytes) -> None:
        """Queue protocol bytes (handshake, replies, control frames), unbounded
        by the slow check: they are small and follow the client's own requests."""
        self._out.append(data)
        self._out_size += len(data)
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        if not self._dirty and not self.lost:
            self._dirty = True
            self.server.flusher.add(self)

    def flush(self) -> None:
        """Write everything queued in one transport call (called by :class:`Flusher`)."""
        self._dirty = False
        transport = self.transport
        if self.lost or transport is None:
            return
        out = self._out
        if out:
            size = self._out_size
            if self._batched:  # join shared batches (once for all) and take their final size
                self._batched = False
                size = 0
                for i, item in enumerate(out):
                    if type(item) is not bytes:
                        out[i] = item = item.join()  # type: ignore[union-attr]
                    size += len(item)
                if size + self._buffered > self.config.max_pending_output:
                    self._out_size = size
                    self._check_slow()
                    if not self.open:
                        return
            stats = self.stats
            stats.messages_out += len(out)
            stats.bytes_out += size
            self._out = []
            self._out_size = 0
            if len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)
            self._buffered = transport.get_write_buffer_size()
        if self._eof_pending:
            transport.close()  # after the buffer is written

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self.lost:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self.config.close_timeout, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()


_PING_FRAME = Frame(Opcode.PING, b"").serialize(mask=False)

_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


def _is_upgrade(req: h11.Request) -> bool:
    for name, value in req.headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False
