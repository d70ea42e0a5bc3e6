"""The plain relay at /ws/{channel}, with plain `websockets` clients."""

from __future__ import annotations

import asyncio

import websockets

from hubbub.server import Server

from .conftest import TIMEOUT, proto_client, ws_url


async def _relay(server: Server, channel: str, query: str = ""):
    return await websockets.connect(ws_url(server, f"/ws/{channel}{query}"), ping_interval=None)


async def _subscribed(server: Server, channel: str, n: int) -> None:
    """Wait until the hub has ``n`` subscribers in ``channel``."""
    async with asyncio.timeout(TIMEOUT):
        while server.hub.channels().get(channel, 0) < n:
            await asyncio.sleep(0.01)


async def test_relay_client_receives_what_another_sent(server: Server, clients: list) -> None:
    a, b = await _relay(server, "room"), await _relay(server, "room")
    clients += [a, b]
    await _subscribed(server, "room", 2)
    await a.send("hello")
    assert await asyncio.wait_for(b.recv(), TIMEOUT) == "hello"
    assert await asyncio.wait_for(a.recv(), TIMEOUT) == "hello"  # the sender too


async def test_text_stays_text_and_binary_stays_binary(server: Server, clients: list) -> None:
    a, b = await _relay(server, "kinds"), await _relay(server, "kinds")
    clients += [a, b]
    await _subscribed(server, "kinds", 2)
    await a.send(b"\x00\x01\xff")
    await a.send('{"json": true}')
    assert await asyncio.wait_for(b.recv(), TIMEOUT) == b"\x00\x01\xff"
    assert await asyncio.wait_for(b.recv(), TIMEOUT) == '{"json": true}'


async def test_relay_and_protocol_share_channels(server: Server, clients: list) -> None:
    relay = await _relay(server, "news")
    proto = await proto_client(server)
    clients += [relay, proto]
    await proto.call("subscribe", {"channel": "news"})
    await _subscribed(server, "news", 2)
    # protocol publication -> relay client gets its JSON text
    await proto.call("publish", {"channel": "news", "data": {"headline": "hi"}})
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == '{"headline":"hi"}'
    assert (await proto.next_push())["pub"]["data"] == {"headline": "hi"}
    # relay message -> protocol subscriber: JSON stays JSON, other text becomes a string
    await relay.send('{"from": "relay"}')
    assert (await proto.next_push())["pub"]["data"] == {"from": "relay"}
    await relay.send("plain words")
    assert (await proto.next_push())["pub"]["data"] == "plain words"


async def test_channel_names_are_percent_decoded(server: Server, clients: list) -> None:
    relay = await _relay(server, "lobby%2Froom%201")
    clients.append(relay)
    await _subscribed(server, "lobby/room 1", 1)


async def test_unknown_path_gets_404(server: Server) -> None:
    try:
        await websockets.connect(ws_url(server, "/nope"))
    except websockets.InvalidStatus as exc:
        assert exc.response.status_code == 404
    else:
        raise AssertionError("expected 404")


async def test_invalid_utf8_closes_1007(server: Server, clients: list) -> None:
    bystander = await _relay(server, "utf")
    clients.append(bystander)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"GET /ws/utf HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    payload = b"\xff\xfe"
    mask = b"\x01\x02\x03\x04"
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    head = await asyncio.wait_for(reader.readexactly(4), TIMEOUT)
    assert head[0] == 0x88 and int.from_bytes(head[2:4], "big") == 1007
    writer.close()
    await bystander.send("still here")
    assert await asyncio.wait_for(bystander.recv(), TIMEOUT) == "still here"
