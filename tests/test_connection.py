"""One TCP connection on hubbub's own server (hubbub.connection): what it reads and holds.

Raw sockets against a real server on 127.0.0.1. The server runs in the test's
event loop, so a client flood is sent from a non-blocking socket between loop
iterations: while the server reads, every iteration makes room for more; once
it stops reading, the kernel's buffers fill and the client's sends fail with
``BlockingIOError`` for as long as it stays paused (issue 23, defect 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

import hubbub
from hubbub import App, ConnectResult
from hubbub.connection import MAX_INBOX, WS_SLICE, Connection
from hubbub.http import HTTPRequest, HTTPResponse
from hubbub.loops import run_loop

from .conftest import TIMEOUT, until

#: what a flood tries to send
JUNK = 64 * 1024 * 1024
#: The most a connection may hold behind a pending request: the rest of the one
#: transport read that completed the request (asyncio reads 256 KiB at a time),
#: with room for the request itself.
HELD_LIMIT = 256 * 1024 + 16 * 1024
#: consecutive loop iterations without a byte accepted before a flood gives up: a
#: server that reads takes what is waiting at its socket in the next iteration
STALLED_ITERATIONS = 100


async def flood(sock: socket.socket, data: bytes, total: int = JUNK) -> int:
    """Send ``data`` over and over from non-blocking ``sock`` until ``total``
    bytes are sent or the server has taken nothing for
    :data:`STALLED_ITERATIONS` event-loop iterations; return the bytes sent."""
    sock.setblocking(False)
    view = memoryview(data)
    sent = offset = stalled = 0
    async with asyncio.timeout(3 * TIMEOUT):
        while sent < total and stalled < STALLED_ITERATIONS:
            progress = 0
            while sent < total:
                try:
                    n = sock.send(view[offset:offset + total - sent])
                except BlockingIOError:
                    break
                sent += n
                progress += n
                offset = (offset + n) % len(data)
            stalled = 0 if progress else stalled + 1
            await asyncio.sleep(0)  # one loop iteration: the server reads if it may
    return sent


async def flood_while_pending(app: Any, sock: socket.socket, what: str) -> tuple[Any, int, int]:
    """Flood ``sock`` while its request or handshake is pending and check that the server
    neither read nor held more than one read's rest; returns (connection, bytes_in before, sent)."""
    conn = connection_of(app, sock)
    read_before = app.server.stats.bytes_in
    sent = await flood(sock, b"x" * (1024 * 1024))
    held, read = conn.buffered, app.server.stats.bytes_in - read_before
    assert sent < JUNK, "the server took the whole flood"
    assert held <= HELD_LIMIT, f"{held} bytes held behind a pending {what}"
    assert read <= HELD_LIMIT, f"{read} bytes read behind a pending {what}"
    return conn, read_before, sent


def connection_of(app: App, sock: socket.socket) -> Connection:
    """The server's end of the client socket ``sock``."""
    here = sock.getsockname()
    found = [conn for conn in app.server.connections if conn.peer == here]
    assert len(found) == 1, found
    return found[0]


async def read_until(sock: socket.socket, marker: bytes, buffer: bytearray) -> bytes:
    """Read from ``sock`` into ``buffer`` until it holds ``marker``; return and
    remove everything up to and including it."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    async with asyncio.timeout(TIMEOUT):
        while marker not in buffer:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise AssertionError(f"closed before {marker!r}; got {bytes(buffer)!r}")
            buffer += chunk
    end = buffer.index(marker) + len(marker)
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


async def read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length: ``(status line, body)``."""
    head = await read_until(sock, b"\r\n\r\n", buffer)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        while len(buffer) < length:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "closed inside a body"
            buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return head.split(b"\r\n", 1)[0], body


class Gate:
    """What a pending handler or hook waits for: ``entered`` is set when it
    starts waiting, ``release`` lets it go on."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def wait(self) -> None:
        self.entered.set()
        await asyncio.wait_for(self.release.wait(), 4 * TIMEOUT)


@contextlib.asynccontextmanager
async def started(app: App) -> AsyncIterator[int]:
    await app.start()
    try:
        yield app.server.port
    finally:
        await app.stop()


def slow_http_app(gate: Gate) -> App:
    app = App(port=0)

    @app.route("/slow")
    async def slow(request: HTTPRequest) -> HTTPResponse:
        await gate.wait()
        return HTTPResponse.text("slow done")

    @app.route("/fast")
    async def fast(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse.text("fast " + request.query.get("n", ""))

    return app


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


async def test_input_behind_a_pending_request_is_not_read() -> None:
    """A request whose handler is pending, then 64 MiB of junk on the same
    connection: the server stops reading and holds at most one read's rest
    (before: it read and kept all of it, 1 GiB for 1 GiB sent)."""
    gate = Gate()
    app = slow_http_app(gate)
    async with started(app) as port:
        with connect(port) as sock:
            sock.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            await asyncio.wait_for(gate.entered.wait(), TIMEOUT)
            conn, _, _ = await flood_while_pending(app, sock, "request")
            assert not conn.reading
            # once answered, the request gets its response; the junk then is refused
            gate.release.set()
            buffer = bytearray()
            status, body = await read_response(sock, buffer)
            assert status == b"HTTP/1.1 200 OK" and body == b"slow done"
            status, _ = await read_response(sock, buffer)
            assert status.startswith(b"HTTP/1.1 4")  # 431: a "head" of x without an end


async def test_pipelined_requests_behind_a_pending_one_are_answered_in_order() -> None:
    gate = Gate()
    app = slow_http_app(gate)
    async with started(app) as port:
        with connect(port) as sock:
            sock.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                         b"GET /fast?n=1 HTTP/1.1\r\nHost: t\r\n\r\n"
                         b"GET /fast?n=2 HTTP/1.1\r\nHost: t\r\n\r\n")
            await asyncio.wait_for(gate.entered.wait(), TIMEOUT)
            conn = connection_of(app, sock)
            await until(lambda: conn.buffered > 0, "the pipelined requests held")
            assert not conn.reading
            gate.release.set()
            buffer = bytearray()
            got = [await read_response(sock, buffer) for _ in range(3)]
            assert got == [(b"HTTP/1.1 200 OK", b"slow done"), (b"HTTP/1.1 200 OK", b"fast 1"),
                           (b"HTTP/1.1 200 OK", b"fast 2")]
            # nothing pending any more: the connection reads its next request
            assert conn.reading and conn.buffered == 0
            sock.setblocking(True)
            sock.sendall(b"GET /fast?n=3 HTTP/1.1\r\nHost: t\r\n\r\n")
            assert await read_response(sock, buffer) == (b"HTTP/1.1 200 OK", b"fast 3")


UPGRADE = (b"GET /ws/news HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def test_input_behind_a_pending_handshake_is_not_read() -> None:
    """A relay upgrade whose ``on_connect`` hook is pending, then 64 MiB of
    junk: the server stops reading until the handshake is decided; then it
    answers 101 and fails the junk as a bad frame (1002)."""
    gate = Gate()
    app = App(port=0)

    @app.on_connect
    async def on_connect(request: hubbub.ConnectRequest) -> ConnectResult:
        await gate.wait()
        return ConnectResult(user="u1")

    async with started(app) as port:
        with connect(port) as sock:
            sock.sendall(UPGRADE)
            await asyncio.wait_for(gate.entered.wait(), TIMEOUT)
            conn, _, _ = await flood_while_pending(app, sock, "handshake")
            assert not conn.reading
            gate.release.set()
            buffer = bytearray()
            head = await read_until(sock, b"\r\n\r\n", buffer)
            assert head.startswith(b"HTTP/1.1 101")
            # the held junk is then read as frames: a protocol error (1002) closes the connection
            await until(lambda: conn.lost, "the connection closed")
            assert app.server.stats.disconnects[1002] == 1


async def test_a_busy_websocket_handler_stops_the_reading() -> None:
    """An endpoint that does not read its messages: its queue fills, then the
    connection's inbox, then the server stops reading; what it holds is
    bounded by the inbox and one read, not by what the client sends."""
    gate = Gate()
    app = App(port=0)

    @app.websocket("/sink")
    async def sink(ws: hubbub.WebSocket) -> None:
        await gate.wait()
        async for _ in ws:
            pass

    payload = b"m" * 1000
    frame = Frame(Opcode.BINARY, payload).serialize(mask=True)
    async with started(app) as port:
        with connect(port) as sock:
            sock.sendall(UPGRADE.replace(b"/ws/news", b"/sink"))
            buffer = bytearray()
            head = await read_until(sock, b"\r\n\r\n", buffer)
            assert head.startswith(b"HTTP/1.1 101")
            await asyncio.wait_for(gate.entered.wait(), TIMEOUT)
            conn = connection_of(app, sock)
            sent = await flood(sock, frame * (1024 * 1024 // len(frame)))
            assert sent < JUNK, "the server took the whole flood"
            assert not conn.reading
            # the inbox: MAX_INBOX messages when it paused, plus the rest of that read
            assert conn.buffered <= MAX_INBOX * len(payload) + 256 * 1024 + len(frame)
            gate.release.set()
            await until(lambda: conn.reading, "reading resumed once the handler reads")


async def test_a_full_inbox_holds_the_rest_of_a_read_unparsed() -> None:
    """A relay whose ``on_publish`` hook is pending while a read of small
    frames (256 KiB: 4,096 messages) arrives: the inbox takes the messages of
    one slice of it, and the rest waits unparsed until there is room."""
    connected, publishing = Gate(), Gate()
    app = App(port=0)

    @app.on_connect
    async def on_connect(request: hubbub.ConnectRequest) -> ConnectResult:
        await connected.wait()
        return ConnectResult(user="u1")

    published = 0

    @app.on_publish
    async def on_publish(client: hubbub.ClientSession, channel: str, data: Any) -> Any:
        nonlocal published
        await publishing.wait()
        published += 1
        return data

    frame = Frame(Opcode.TEXT, b"m" * 58).serialize(mask=True)  # 64 bytes
    async with started(app) as port:
        with connect(port) as sock:
            sock.sendall(UPGRADE)
            await asyncio.wait_for(connected.entered.wait(), TIMEOUT)
            conn = connection_of(app, sock)
            # the frames wait in the kernel while the handshake is pending: the first
            # read after it takes a full 256 KiB
            sent = await flood(sock, frame * (1024 * 1024 // len(frame)), total=320 * 1024)
            assert sent == 320 * 1024
            connected.release.set()
            await asyncio.wait_for(publishing.entered.wait(), TIMEOUT)
            await until(lambda: not conn.reading, "reading paused by the full inbox")
            # at most the messages of one slice past the bound, far fewer than one read holds
            assert conn.queued <= MAX_INBOX + WS_SLICE // len(frame) < 256 * 1024 // len(frame)
            publishing.release.set()
            # every message is handled: what was held is parsed, and reading resumed
            await until(lambda: published == sent // len(frame), "every message published")
            assert conn.reading


async def test_input_behind_a_pending_channel_sse_request_is_not_read() -> None:
    """``GET /sse/{channel}`` whose ``on_connect`` hook is pending (as with a
    JWKS-verified token), then 64 MiB of junk: not read while pending; once the
    stream begins, what the client sends is read and dropped, never kept."""
    gate = Gate()
    app = App(port=0)

    @app.on_connect
    async def on_connect(request: hubbub.ConnectRequest) -> ConnectResult:
        await gate.wait()
        return ConnectResult(user="u1")

    async with started(app) as port:
        with connect(port) as sock:
            sock.sendall(b"GET /sse/news HTTP/1.1\r\nHost: t\r\n\r\n")
            await asyncio.wait_for(gate.entered.wait(), TIMEOUT)
            conn, read_before, sent = await flood_while_pending(app, sock, "request")
            gate.release.set()
            head = await read_until(sock, b"\r\n\r\n", bytearray())
            assert head.startswith(b"HTTP/1.1 200")
            # the stream reads again (to notice the client leaving) and keeps nothing
            await until(lambda: app.server.stats.bytes_in - read_before >= sent, "the junk read and dropped")
            assert conn.reading and conn.buffered == 0


async def test_a_client_that_half_closes_behind_a_pending_request_gets_the_response() -> None:
    """``shutdown(SHUT_WR)`` after the request, as ``nc -N`` does: the end of
    input is read once the response is on its way, so the response arrives
    before the connection closes."""
    gate = Gate()
    app = slow_http_app(gate)
    async with started(app) as port:
        with connect(port) as sock:
            sock.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(gate.entered.wait(), TIMEOUT)
            gate.release.set()
            assert await read_response(sock, bytearray()) == (b"HTTP/1.1 200 OK", b"slow done")


ON_UVLOOP = [
    test_input_behind_a_pending_request_is_not_read,
    test_pipelined_requests_behind_a_pending_one_are_answered_in_order,
    test_input_behind_a_pending_handshake_is_not_read,
    test_a_busy_websocket_handler_stops_the_reading,
    test_a_full_inbox_holds_the_rest_of_a_read_unparsed,
    test_input_behind_a_pending_channel_sse_request_is_not_read,
    test_a_client_that_half_closes_behind_a_pending_request_gets_the_response,
]


@pytest.mark.parametrize("scenario", ON_UVLOOP, ids=[f.__name__.removeprefix("test_") for f in ON_UVLOOP])
def test_the_same_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    """uvloop orders reads and callbacks differently (a resumed read may come
    before the flush of a response queued just before it)."""
    pytest.importorskip("uvloop")
    run_loop(scenario(), "uvloop")


async def read_frame(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    """One unmasked server frame (7- or 16-bit length): ``(opcode, payload)``."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        while True:
            if len(buffer) >= 2:
                length, start = buffer[1] & 0x7F, 2
                if length == 126 and len(buffer) >= 4:
                    length, start = int.from_bytes(buffer[2:4], "big"), 4
                if length != 126 and len(buffer) >= start + length:
                    opcode, payload = buffer[0] & 0x0F, bytes(buffer[start:start + length])
                    del buffer[:start + length]
                    return opcode, payload
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise AssertionError(f"closed; got {bytes(buffer)!r}")
            buffer += chunk


async def test_whole_messages_on_a_quiet_connection_need_no_websockets_protocol(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole single-frame messages that start a read are taken without
    websockets' protocol object; from the first frame that is anything else (a
    ping, a partial frame, bad UTF-8, too large) websockets parses the rest,
    in order, with the close codes it always answered."""
    made = 0

    class Counted(hubbub.connection.ServerProtocol):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            nonlocal made
            made += 1
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(hubbub.connection, "ServerProtocol", Counted)
    app = App(port=0, max_message_size=1000)

    @app.websocket("/echo")
    async def echo(ws: hubbub.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    def text(payload: bytes) -> bytes:
        return Frame(Opcode.TEXT, payload).serialize(mask=True)

    async with started(app) as port:
        with connect(port) as sock:
            sock.sendall(UPGRADE.replace(b"/ws/news", b"/echo"))
            buffer = bytearray()
            assert (await read_until(sock, b"\r\n\r\n", buffer)).startswith(b"HTTP/1.1 101")
            # whole messages in one read: text, binary, empty, a 16-bit length
            long = "é".encode() * 150
            sock.sendall(text(b"one") + Frame(Opcode.BINARY, b"\x00\xff").serialize(mask=True) + text(b"")
                         + text(long))
            assert [await read_frame(sock, buffer) for _ in range(4)] == [
                (1, b"one"), (2, b"\x00\xff"), (1, b""), (1, long)]
            assert made == 0, "a protocol object made for whole messages"
            # a whole message, then a ping and half a frame: websockets takes over at the ping
            rest = text(b"three")
            sock.sendall(text(b"two") + Frame(Opcode.PING, b"p").serialize(mask=True) + rest[:4])
            # (the pong is websockets' answer at once; the echo comes from the handler's task)
            assert sorted([await read_frame(sock, buffer) for _ in range(2)]) == [(1, b"two"), (Opcode.PONG.value, b"p")]
            sock.sendall(rest[4:])
            assert await read_frame(sock, buffer) == (1, b"three")
            assert made == 1
            # once quiet again, whole messages skip it again
            sock.sendall(text(b"four"))
            assert await read_frame(sock, buffer) == (1, b"four")
            assert made == 1
        for bad, code in ((text(b"ok") + text(b"\xff\xfe"), 1007), (text(b"x" * 1001), 1009),
                          (bytes([0xC1]) + text(b"rsv")[1:], 1002), (Frame(Opcode.TEXT, b"u").serialize(mask=False), 1002)):
            with connect(port) as sock:
                sock.sendall(UPGRADE.replace(b"/ws/news", b"/echo"))
                buffer = bytearray()
                await read_until(sock, b"\r\n\r\n", buffer)
                sock.sendall(bad)
                frames = [await read_frame(sock, buffer)]
                if bad.startswith(text(b"ok")):
                    assert frames[0] == (1, b"ok")  # the whole message before the bad one is handled
                    frames = [await read_frame(sock, buffer)]
                assert frames[0][0] == Opcode.CLOSE.value and int.from_bytes(frames[0][1][:2], "big") == code, (bad, frames)
