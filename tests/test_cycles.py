"""A closed connection is freed by reference counting, without the cycle collector.

The server runs with rare full collections (``tune_gc``), so every reference
cycle a connection leaves behind stays in memory until one: RSS grew with
every connect/close under churn (outside security test, finding 13). Each
test disables the collector, serves one connection of a kind, and checks that
the server-side objects of that connection are gone once it is closed.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import socket
import struct
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from websockets.server import ServerProtocol

from hubbub.connection import Connection
from hubbub.core import ClientCore
from hubbub.server import Server

from .conftest import TIMEOUT


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payloads under 126 bytes)."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    return head[0] & 0x0F, await reader.readexactly(size)


async def _reply(reader: asyncio.StreamReader, cid: int) -> None:
    while True:
        _, data = await _read_frame(reader)
        if data != b"{}":  # a server ping
            assert b'"id":%d' % cid in data, data
            return


async def _upgrade(server: Server, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _protocol_client(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await _upgrade(server, "/connection/websocket")
    writer.write(_frame(1, b'{"id":1,"connect":{}}'))
    await _reply(reader, 1)
    writer.write(_frame(1, b'{"id":2,"subscribe":{"channel":"news"}}'))
    await _reply(reader, 2)
    return reader, writer


async def _close_cleanly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(_frame(8, struct.pack("!H", 1000)))
    while (await _read_frame(reader))[0] != 8:
        pass
    assert await reader.read() == b""  # the server closes the TCP connection
    writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def protocol_clean(server: Server) -> None:
    await _close_cleanly(*await _protocol_client(server))


async def protocol_reset(server: Server) -> None:
    _, writer = await _protocol_client(server)
    _reset(writer)


async def protocol_eof(server: Server) -> None:
    """TCP closed without a close frame: websockets fails the connection (EOFError)."""
    _, writer = await _protocol_client(server)
    writer.close()


async def relay_clean(server: Server) -> None:
    reader, writer = await _upgrade(server, "/ws/news")
    writer.write(_frame(1, b'{"hello":1}'))
    assert (await _read_frame(reader))[1] == b'{"hello":1}'
    await _close_cleanly(reader, writer)


async def http_keep_alive(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    writer.close()


async def _stream(server: Server, request: bytes, first: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    while first not in await reader.readuntil(b"\r\n"):
        pass
    return reader, writer


async def channel_sse_closed_by_client(server: Server) -> None:
    _, writer = await _stream(server, b"GET /sse/news HTTP/1.1\r\nHost: x\r\n\r\n", b"retry")
    writer.close()


async def http_stream_closed_by_client(server: Server) -> None:
    body = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"news"}}'
    _, writer = await _stream(server, b"POST /connection/http_stream HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
                              b'"id":2')
    writer.close()


async def uni_http_stream_ended_by_server(server: Server) -> None:
    body = b'{"subs": {"news": {}}}'
    reader, writer = await _stream(server, b"POST /connection/uni_http_stream HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body), b"connect")
    for sessions in list(server.hub.sessions.values()):
        for session in list(sessions.values()):
            session.disconnect(3503, "force disconnect")
    assert b'"disconnect"' in await reader.read()  # the last words, then the end
    writer.close()


KINDS: dict[str, Callable[[Server], Awaitable[None]]] = {
    "channel-sse-closed-by-client": channel_sse_closed_by_client,
    "http-stream-closed-by-client": http_stream_closed_by_client,
    "uni-http-stream-ended-by-server": uni_http_stream_ended_by_server,
    "protocol-clean": protocol_clean,
    "protocol-reset": protocol_reset,
    "protocol-eof": protocol_eof,
    "relay-clean": relay_clean,
    "http-keep-alive": http_keep_alive,
}


#: what one connection is made of on the server (a Connection has no __weakref__ slot)
PER_CONNECTION = (Connection, ClientCore, ServerProtocol)


def per_connection_objects() -> list[Any]:
    """Every live object of the :data:`PER_CONNECTION` kinds, found by the collector's list."""
    return [o for o in gc.get_objects() if issubclass(type(o), PER_CONNECTION)]


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("kind", list(KINDS))
async def test_closed_connection_is_freed_without_the_collector(server: Server, kind: str, no_gc: None) -> None:
    # What one connection owns that could be part of a cycle. The Connection has no
    # __weakref__ slot (memory per connection), but it holds its transport: a
    # Connection kept alive keeps the transport alive too.
    parts: list[weakref.ref[Any]] = []
    opened, upgraded = server.connection_opened, server.websocket_opened

    def on_opened(conn: Any) -> None:
        opened(conn)
        parts.append(weakref.ref(conn.transport))

    def on_upgraded(conn: Any) -> None:
        upgraded(conn)
        parts.extend((weakref.ref(conn.ws), weakref.ref(conn.session)))

    streamed = server.stream_opened

    def on_streamed(conn: Any) -> None:
        streamed(conn)
        parts.append(weakref.ref(conn.session))

    server.connection_opened = on_opened  # type: ignore[method-assign]
    server.websocket_opened = on_upgraded  # type: ignore[method-assign]
    server.stream_opened = on_streamed  # type: ignore[method-assign]
    before = per_connection_objects()  # kept alive, so their ids are not reused
    known = {id(o) for o in before}
    await asyncio.wait_for(KINDS[kind](server), TIMEOUT)
    async with asyncio.timeout(TIMEOUT):
        while server.connections:
            await asyncio.sleep(0.01)
    for _ in range(5):  # let the loop drop its handles (connection_lost, the close timer)
        await asyncio.sleep(0)
    assert parts
    alive = [type(ref()).__name__ for ref in parts if ref() is not None]
    alive += [type(o).__name__ for o in per_connection_objects() if id(o) not in known]
    del before
    assert not alive, f"kept alive by reference cycles after close: {alive}"
