"""What an idle protocol connection keeps (workload 4 of the benchmarks): the parser's
last frame is let go at a frame boundary, and never in the middle of a frame;
the session keeps the handshake's headers without the upgrade's own."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import struct

from websockets.frames import Frame

from hubbub.core import ConnectRequest, ConnectResult, SessionHooks
from hubbub.server import Server

from .conftest import TIMEOUT


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (payloads under 126 bytes)."""
    mask = os.urandom(4)
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    while True:
        head = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
        size = head[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
        data = await reader.readexactly(size)
        if data != b"{}":
            return data


async def _replies(reader: asyncio.StreamReader, count: int) -> list[dict]:
    out: list[dict] = []
    while len(out) < count:
        out += [json.loads(line) for line in (await _read_message(reader)).split(b"\n")]
    return out


async def _upgrade(server: Server, extra: str = "") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _frames_held() -> list[Frame]:
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is Frame]


async def test_fragmented_and_byte_by_byte_messages_survive_the_parser_swap(server: Server):
    reader, writer = await _upgrade(server)
    # connect + subscribe as one message in three fragments, every byte its own write
    message = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"room"}}'
    parts = [message[:10], message[10:40], message[40:]]
    frames = _frame(0x1, parts[0], fin=False) + _frame(0x0, parts[1], fin=False) + _frame(0x0, parts[2])
    for i in range(len(frames)):
        writer.write(frames[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0)
    assert [r["id"] for r in await _replies(reader, 2)] == [1, 2]
    # a publish whose header arrives alone, then its payload
    publish = _frame(0x1, b'{"id":3,"publish":{"channel":"room","data":{"n":1}}}')
    writer.write(publish[:2])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(publish[2:])
    got = await _replies(reader, 2)
    assert {"id": 3, "publish": {}} in got
    assert any(r.get("push", {}).get("pub", {}).get("data") == {"n": 1} for r in got)
    # idle now: no frame of this connection stays in the parser
    assert not [f for f in _frames_held() if b'"publish"' in f.data]
    writer.close()


async def test_idle_connection_keeps_no_parsed_frame(server: Server):
    reader, writer = await _upgrade(server)
    writer.write(_frame(0x1, b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"idle-room"}}'))
    await _replies(reader, 2)
    assert not [f for f in _frames_held() if b"idle-room" in f.data]
    writer.close()


async def test_hooks_see_the_request_headers_but_not_the_upgrades_own(start_server):
    seen: list[dict[str, str]] = []

    class Hooks(SessionHooks):
        async def on_connect(self, request: ConnectRequest) -> ConnectResult:
            seen.append(dict(request.headers))
            return ConnectResult(user="u")

    server = await start_server()
    server.hooks = Hooks()
    reader, writer = await _upgrade(server, "X-Agent: bench\r\nOrigin: http://127.0.0.1\r\n")
    writer.write(_frame(0x1, b'{"id":1,"connect":{}}'))
    assert (await _replies(reader, 1))[0]["connect"]["client"]
    headers = seen[0]
    assert headers["x-agent"] == "bench"
    assert headers["host"] == "127.0.0.1"
    assert headers["origin"] == "http://127.0.0.1"
    for name in ("upgrade", "connection", "sec-websocket-key", "sec-websocket-version"):
        assert name not in headers
    writer.close()


async def test_endpoint_queue_is_bounded_in_bytes_not_in_messages():
    """Many small messages wait for a busy handler (more than the old bound of 64, so
    one pass of the loop handles them all); big ones are held to MAX_QUEUED_BYTES."""
    import websockets

    from hubbub import App
    from hubbub.endpoint import MAX_QUEUED_BYTES

    gate = asyncio.Event()
    got: list[str] = []
    sessions: list = []

    app = App(host="127.0.0.1", port=0)

    @app.websocket("/slow")
    class Slow:
        async def connect(self, ws):
            sessions.append(ws)

        async def handle_message(self, ws, message):
            await gate.wait()
            got.append(message)
            if len(got) == 500 + 40:
                await ws.send("done")

    await app.start()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{app.server.port}/slow", max_size=None) as ws:
            for i in range(500):
                await ws.send(f"small {i}")
            ws_session = None
            for _ in range(200):
                if sessions and sessions[0]._messages is not None and sessions[0]._messages.qsize() >= 499:
                    ws_session = sessions[0]
                    break
                await asyncio.sleep(0.01)
            assert ws_session is not None, "the small messages did not all queue"
            big = "x" * (16 * 1024)
            for i in range(40):
                await ws.send(f"{i:02d}{big}")
            await asyncio.sleep(0.2)
            assert ws_session._queued <= MAX_QUEUED_BYTES + len(big) + 2
            gate.set()
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "done"
        assert got[:500] == [f"small {i}" for i in range(500)]
        assert [m[:2] for m in got[500:]] == [f"{i:02d}" for i in range(40)]
    finally:
        await app.stop()
