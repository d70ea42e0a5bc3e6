"""A client that stops reading is closed with 3008; the others keep receiving."""

from __future__ import annotations

import asyncio
import socket

from hubbub.server import Server

from .conftest import TIMEOUT, proto_client


async def _raw_subscriber(port: int, channel: str) -> socket.socket:
    """A raw TCP client that subscribes over the protocol and then never reads.

    Its receive buffer is made small so the server's output backs up quickly.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(
        sock,
        b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )

    def frame(text: bytes) -> bytes:
        mask = b"\x00\x00\x00\x00"
        return bytes([0x81, 0x80 | len(text)]) + mask + text

    await loop.sock_sendall(sock, frame(b'{"id":1,"connect":{}}') + frame(
        b'{"id":2,"subscribe":{"channel":"%s"}}' % channel.encode()))
    # read the handshake and both replies, then stop reading for good
    data = b""
    async with asyncio.timeout(TIMEOUT):
        while data.count(b'"id":') < 2:
            data += await loop.sock_recv(sock, 65536)
    return sock


async def test_slow_reader_is_closed_3008_and_others_keep_receiving(start_server, clients: list) -> None:
    limit = 64 * 1024
    server: Server = await start_server(max_pending_output=limit, close_timeout=1.0)
    slow = await _raw_subscriber(server.port, "firehose")
    fast = await proto_client(server)
    producer = await proto_client(server)
    clients += [fast, producer]
    await fast.call("subscribe", {"channel": "firehose"})

    slow_conn = next(c for c in server.connections
                     if c.session is not None and getattr(c.session, "client_id", None) not in
                     (fast.client_id, producer.client_id))
    payload = "z" * 4000
    peak = 0
    received = 0
    sent = 0
    after_close = 0
    # Publish until the slow client is closed (the kernel's socket buffers take a few
    # MB first), then 100 more: the fast client must get every one, in order.
    while after_close < 100:
        assert sent < 5000, "the slow client was never closed"
        await producer.call("publish", {"channel": "firehose", "data": {"i": sent, "p": payload}})
        sent += 1
        if server.slow_closed:
            after_close += 1
        transport = slow_conn.transport
        if transport is not None and not slow_conn.lost:
            peak = max(peak, slow_conn._out_size + transport.get_write_buffer_size())
        while fast.pushes or received <= sent - 50:  # the fast client keeps up as we go
            push = await fast.next_push()
            assert push["pub"]["data"]["i"] == received
            received += 1
    while received < sent:
        assert (await fast.next_push())["pub"]["data"]["i"] == received
        received += 1

    assert server.slow_closed == 1
    # the server never held more than the limit (plus one frame) for the slow client
    assert 0 < peak <= limit + 4100, peak
    # the slow client, once it reads, finds the 3008 close frame after the data it was sent
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(TIMEOUT):
        while True:
            chunk = await loop.sock_recv(slow, 1 << 20)
            if not chunk:
                break
            data += chunk
    slow.close()
    close_at = data.rfind(b"\x88")
    assert close_at >= 0 and int.from_bytes(data[close_at + 2 : close_at + 4], "big") == 3008
    assert data[close_at + 4 :].decode() == "slow"
