"""The protocol session (``hubbub.session``): what reaches JSON subscribers, whatever the
publisher's codec or way in."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from centrifuge.protocol import client_pb2 as sdk

from hubbub.server import Server

from .conftest import TIMEOUT, proto_client, ws_url
from .pbframes import frame, read_replies

#: JSON with raw line breaks between its tokens: valid JSON, and two lines for a line-framed subscriber
BROKEN = b'{"a":\n1,\r\n"b":[2,\n3]}'


async def protobuf_publish(server: Server, channel: str, data: bytes) -> None:
    async with websockets.connect(ws_url(server), subprotocols=["centrifuge-protobuf"]) as ws:  # type: ignore[list-item]
        connect = sdk.Command(id=1, connect=sdk.ConnectRequest())
        publish = sdk.Command(id=2, publish=sdk.PublishRequest(channel=channel, data=data))
        await ws.send(frame(connect, publish))
        got: list[Any] = []
        while len(got) < 2:
            got += read_replies(await asyncio.wait_for(ws.recv(), TIMEOUT), sdk.Reply)  # type: ignore[arg-type]
        assert [r.id for r in got] == [1, 2] and not got[1].HasField("error")


async def relay_publish(server: Server, channel: str, data: bytes) -> None:
    async with websockets.connect(ws_url(server, f"/ws/{channel}")) as ws:
        await ws.send(data.decode())
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == data.decode()  # relay clients get it as sent


@pytest.mark.parametrize("publisher", [protobuf_publish, relay_publish])
async def test_line_breaks_in_published_json_keep_json_subscribers_framed(server: Server, clients: list[Any],
                                                                          publisher: Any) -> None:
    sub = await proto_client(server)
    clients.append(sub)
    assert "subscribe" in await sub.call("subscribe", {"channel": "news"})
    await publisher(server, "news", BROKEN)
    # a second publication right behind it: a subscriber that lost its framing would not parse it
    assert "publish" in await sub.call("publish", {"channel": "news", "data": {"after": True}})
    first = await sub.next_push()
    second = await sub.next_push()
    assert first["pub"]["data"] == {"a": 1, "b": [2, 3]}
    assert second["pub"]["data"] == {"after": True}


async def test_line_breaks_in_published_json_keep_http_stream_lines(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"news"}}'
    writer.write(b"POST /connection/http_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines: list[dict[str, Any]] = []

        async def read_lines(n: int) -> None:
            buf = b""
            while len(lines) < n:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                buf += (await reader.readexactly(size + 2))[:-2]
                *whole, buf = buf.split(b"\n")
                lines.extend(json.loads(line) for line in whole if line)  # each line must parse

        await asyncio.wait_for(read_lines(2), TIMEOUT)
        await relay_publish(server, "news", BROKEN)
        await asyncio.wait_for(read_lines(3), TIMEOUT)
        assert lines[2]["push"]["pub"]["data"] == {"a": 1, "b": [2, 3]}
    finally:
        writer.close()
