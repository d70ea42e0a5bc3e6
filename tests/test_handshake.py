"""The first request of a connection: routed to websockets' handshake or to h11.

Raw sockets, so the tests control exactly how the bytes arrive.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any

from hubbub.config import NamespaceOptions
from hubbub.server import Server

from .conftest import TIMEOUT, proto_client

MASK = b"\x01\x02\x03\x04"


def upgrade_request(path: str, *, method: str = "GET", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def client_text_frame(text: str) -> bytes:
    """One masked, final text frame (payload under 126 bytes)."""
    payload = text.encode()
    assert len(payload) < 126
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + MASK + masked


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)


async def read_text_frame(reader: asyncio.StreamReader) -> str:
    """One unmasked server text frame (payload under 126 bytes)."""
    b0, n = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    assert b0 == 0x81 and n < 126, (b0, n)
    return (await asyncio.wait_for(reader.readexactly(n), TIMEOUT)).decode()


async def raw_relay(server: Server, channel: str, first: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A relay client on a raw socket; ``first`` goes in the same write as the request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request(f"/ws/{channel}") + first)
    assert (await read_head(reader)).startswith(b"HTTP/1.1 101")
    return reader, writer


async def subscribed(server: Server, channel: str, n: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        while server.hub.channels().get(channel, 0) < n:
            await asyncio.sleep(0.01)


async def test_frames_in_the_same_write_as_the_request_are_handled(server: Server) -> None:
    reader, writer = await raw_relay(server, "same-write", client_text_frame('"first"'))
    try:
        assert await read_text_frame(reader) == '"first"'  # echoed back by the relay
    finally:
        writer.close()


async def test_a_frame_split_right_after_the_request_is_not_lost(server: Server) -> None:
    frame = client_text_frame('"split"')
    reader, writer = await raw_relay(server, "split", frame[:2])  # the frame header came with the request
    try:
        await subscribed(server, "split", 1)
        writer.write(frame[2:])
        assert await read_text_frame(reader) == '"split"'
    finally:
        writer.close()


async def test_a_request_sent_one_byte_at_a_time_is_upgraded(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for i, byte in enumerate(upgrade_request("/ws/slow")):
            writer.write(bytes((byte,)))
            if i % 16 == 0:
                await writer.drain()
                await asyncio.sleep(0)
        assert (await read_head(reader)).startswith(b"HTTP/1.1 101")
        await subscribed(server, "slow", 1)
    finally:
        writer.close()


async def test_plain_http_that_mentions_websocket_is_served_by_h11(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Note: websocket\r\n\r\n")
        assert (await read_head(reader)).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_an_upgrade_websockets_cannot_take_gets_400_and_others_go_on(server: Server, clients: list) -> None:
    bystander = await proto_client(server)
    clients.append(bystander)
    for request, statuses in (
        # not a GET: websockets >= 17 answers 405 itself; older ones leave it to h11, which answers 400
        (upgrade_request("/ws/x", method="POST"), (b"HTTP/1.1 405", b"HTTP/1.1 400")),
        # no Sec-WebSocket-Key: websockets refuses it
        (upgrade_request("/ws/x").replace(b"Sec-WebSocket-Key", b"X-Key"), (b"HTTP/1.1 400",)),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request)
            assert (await read_head(reader)).startswith(statuses)
            assert await asyncio.wait_for(reader.read(), TIMEOUT) is not None  # then the server closes
        finally:
            writer.close()
    assert (await bystander.call("ping"))["ping"] == {}


async def test_relay_subscribers_of_a_live_channel_cost_no_task(server: Server) -> None:
    """docs/design.md, write-path rule 2: no task per connection. A connect storm into a channel
    the broker already has subscribes each client without waiting."""
    first = await raw_relay(server, "storm")
    await subscribed(server, "storm", 1)
    loop = asyncio.get_running_loop()
    hubbub_tasks: list[str] = []

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        # The listener's hand-off (connect_accepted_socket) replaces asyncio's own
        # accept task, one per accepted socket either way; sessions start none.
        if "hubbub" in coro.cr_code.co_filename and coro.__qualname__ != "Listener._handoff":
            hubbub_tasks.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(counting_factory)
    try:
        more = [await raw_relay(server, "storm") for _ in range(20)]
        await subscribed(server, "storm", 21)
    finally:
        loop.set_task_factory(None)
    try:
        assert hubbub_tasks == []
        first[1].write(client_text_frame('"to all"'))
        for reader, _ in more:
            assert await read_text_frame(reader) == '"to all"'
    finally:
        for _, writer in [first, *more]:
            writer.close()


async def test_websocket_connections_have_tcp_nodelay(server: Server) -> None:
    """Small pushes go out at once (asyncio's transports set TCP_NODELAY; hubbub relies on it)."""
    reader, writer = await raw_relay(server, "nodelay")
    try:
        await subscribed(server, "nodelay", 1)
        (conn,) = server.websockets
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        writer.close()


def client_close_frame(code: int = 1000) -> bytes:
    payload = code.to_bytes(2, "big")
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + MASK + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, n = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    assert n < 126
    return b0 & 0x0F, await asyncio.wait_for(reader.readexactly(n), TIMEOUT)


async def test_a_close_after_messages_is_answered_after_them(start_server) -> None:
    """Messages sent just before the client's close are handled first: a
    refusal's close code reaches the client instead of a plain 1000 echo."""
    server = await start_server(namespaces={"ro": NamespaceOptions(allow_publish_for_client=False)})
    reader, writer = await raw_relay(server, "ro:x")
    await subscribed(server, "ro:x", 1)
    writer.write(client_text_frame("nope") + client_close_frame(1000))
    opcode, payload = await read_frame(reader)
    assert opcode == 8 and int.from_bytes(payload[:2], "big") == 3507, (opcode, payload)
    writer.close()


async def test_replies_to_commands_before_a_close_are_sent(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request("/connection/websocket"))
    assert (await read_head(reader)).startswith(b"HTTP/1.1 101")
    writer.write(client_text_frame('{"id":1,"connect":{}}'))
    assert '"id":1' in (await read_frame(reader))[1].decode()
    writer.write(client_text_frame('{"id":2,"ping":{}}') + client_close_frame(1000))
    opcode, payload = await read_frame(reader)
    assert opcode == 1 and payload == b'{"id":2,"ping":{}}', (opcode, payload)
    opcode, payload = await read_frame(reader)
    assert opcode == 8 and int.from_bytes(payload[:2], "big") == 1000
    writer.close()


async def read_response_body(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await read_head(reader)
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    return head, await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


async def test_an_upgrade_on_a_later_keep_alive_request_is_accepted(server: Server) -> None:
    """A proxy reuses its pooled connections for upgrades (nginx with upstream ``keepalive``):
    after plain HTTP requests, an upgrade on the same connection is a WebSocket as if it came
    first, frames in the same write included (before: 400 "it must be the connection's first
    request")."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _ = await read_response_body(reader)
        assert head.startswith(b"HTTP/1.1 200")
        # a pipelined request, then the upgrade with a frame right behind it, in one write
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + upgrade_request("/ws/later")
                     + client_text_frame("hello"))
        head, _ = await read_response_body(reader)
        assert head.startswith(b"HTTP/1.1 200")
        assert (await read_head(reader)).startswith(b"HTTP/1.1 101")
        assert await read_text_frame(reader) == "hello"  # the relay echoes to its sender
    finally:
        writer.close()


async def test_a_later_request_that_is_no_valid_upgrade_is_refused(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_response_body(reader)
        writer.write(b"GET /ws/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 400"), head  # no Sec-WebSocket-Key: websockets refuses it
    finally:
        writer.close()


# -- the usual upgrade, answered without websockets' handshake machinery -------------------

USUAL = (b"GET /ws/fast?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://x\r\n\r\n")


def test_a_usual_upgrade_is_parsed_with_its_headers_less_the_upgrade_ones() -> None:
    from hubbub.connection import parse_upgrade

    assert parse_upgrade(USUAL, False) == (
        "/ws/fast?x=1", {"host": "127.0.0.1:8000", "origin": "http://x"}, "dGhlIHNhbXBsZSBub25jZQ==")
    firefox = USUAL.replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade")
    assert parse_upgrade(firefox, False) is not None


def test_an_unusual_upgrade_is_left_to_websockets() -> None:
    from hubbub.connection import parse_upgrade

    for change in (
        (b"Connection: Upgrade", b"Connection: Upgrade, HTTP2-Settings"),  # other forms: websockets parses them
        (b"Origin: http://x", b"Origin: http://x\r\nOrigin: http://y"),  # a repeated header
        (b"GET", b"POST"),
        (b"HTTP/1.1", b"HTTP/1.0"),
        (b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
        (b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZSBub25jZQ"),  # not 16 bytes
        (b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZSBub25jZ!="),  # not base64
        (b"Origin: http://x", b"Origin: http://\xc3\xa9"),  # not ASCII
        (b"Origin: http://x", b"Content-Length: 3"),  # a body
        (b"Origin: http://x", b"Sec-WebSocket-Protocol: a b"),  # malformed: websockets answers 400
        (b"Origin: http://x", b"Bad Header: x"),  # malformed head
        (b"Upgrade: websocket", b"Upgrade: websocket, h2c"),
    ):
        assert parse_upgrade(USUAL.replace(*change), False) is None, change
    offer = USUAL.replace(b"Origin: http://x", b"Sec-WebSocket-Extensions: permessage-deflate")
    assert parse_upgrade(offer, True) is None  # compression on: websockets negotiates
    assert parse_upgrade(offer, False) is not None  # off: websockets would ignore the offer too


def test_the_101_is_the_one_websockets_makes() -> None:
    from websockets.http11 import Request
    from websockets.server import ServerProtocol
    from websockets.streams import StreamReader

    from hubbub.connection import accept_response

    for subprotocol in (None, "centrifuge-protobuf"):
        reader = StreamReader()
        reader.feed_data(USUAL)
        parser = Request.parse(reader.read_line)
        try:
            next(parser)
        except StopIteration as done:
            request = done.value
        expected = ServerProtocol().accept(request)
        if subprotocol:
            expected.headers["Sec-WebSocket-Protocol"] = subprotocol
        ours = accept_response("dGhlIHNhbXBsZSBub25jZQ==", subprotocol)
        assert ours.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and ours.endswith(b"\r\n\r\n")
        lines = dict(line.split(": ", 1) for line in ours.decode().split("\r\n")[1:-2])
        theirs = dict(expected.headers.raw_items())
        assert lines.keys() == theirs.keys()
        assert {k: v for k, v in lines.items() if k != "Date"} == {k: v for k, v in theirs.items() if k != "Date"}


async def test_an_idle_connection_lets_go_of_the_frame_parser(server: Server) -> None:
    reader, writer = await raw_relay(server, "quiet")
    try:
        await subscribed(server, "quiet", 1)
        conn = next(c for c in server.websockets if c.session is not None)
        assert conn._ws is None  # none made at the handshake
        half = client_text_frame('"half"')
        writer.write(half[:4])  # a frame under way: the parser keeps its place
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            while conn._ws is None:
                await asyncio.sleep(0.01)
        writer.write(half[4:])
        assert await read_text_frame(reader) == '"half"'
        async with asyncio.timeout(TIMEOUT):
            while conn._ws is not None:  # quiet again: let go
                await asyncio.sleep(0.01)
        writer.write(client_text_frame('"again"'))  # a fresh parser reads the next frame
        assert await read_text_frame(reader) == '"again"'
    finally:
        writer.close()
