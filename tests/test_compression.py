"""permessage-deflate (RFC 7692, ``websocket_compression``) on every WebSocket way in:
negotiation, encode-once, the minimum size, inbound bounds, uvicorn and Chromium.

Real ``websockets`` clients (their default ``compression="deflate"`` offers it), raw sockets
where the bits on the wire matter.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import zlib
from typing import Any

import pytest
import websockets

import hubbub
from hubbub.compression import deflate_frames
from hubbub.server import Server

from .conftest import TIMEOUT, proto_client, until, ws_url

AGREED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
#: about 2 KB of JSON, well over the default minimum size (128 bytes)
BIG = json.dumps({"rows": [{"id": i, "name": f"player {i}", "score": i * 7} for i in range(50)]})


def extensions(ws: Any) -> str | None:
    value: str | None = ws.response.headers.get("Sec-WebSocket-Extensions")
    return value


async def _subscribed(server: Server, channel: str, n: int) -> None:
    await until(lambda: server.hub.channels().get(channel, 0) >= n, f"{n} subscribers in {channel}")


# -- negotiation, on each way in -------------------------------------------------------------------


@pytest.mark.parametrize("on", [True, False])
async def test_relay_negotiates_only_when_on_and_data_is_intact(start_server, clients: list, on: bool) -> None:
    server = await start_server(websocket_compression=on)
    a = await websockets.connect(ws_url(server, "/ws/room"), ping_interval=None)
    b = await websockets.connect(ws_url(server, "/ws/room"), ping_interval=None)
    clients += [a, b]
    assert extensions(a) == (AGREED if on else None)
    await _subscribed(server, "room", 2)
    await a.send(BIG)
    assert await asyncio.wait_for(b.recv(), TIMEOUT) == BIG
    await a.send(b"\x00" * 500)
    assert await asyncio.wait_for(b.recv(), TIMEOUT) == b"\x00" * 500
    assert await asyncio.wait_for(a.recv(), TIMEOUT) == BIG  # the sender's own, too


@pytest.mark.parametrize("on", [True, False])
async def test_protocol_json_negotiates_and_pushes_are_intact(start_server, clients: list, on: bool) -> None:
    server = await start_server(websocket_compression=on)
    c = await proto_client(server)
    clients.append(c.ws)
    assert extensions(c.ws) == (AGREED if on else None)
    await c.call("subscribe", {"channel": "news"})
    relay = await websockets.connect(ws_url(server, "/ws/news"), ping_interval=None, compression=None)
    clients.append(relay)
    await relay.send(BIG)
    assert (await c.next_push())["pub"]["data"] == json.loads(BIG)


async def test_protocol_protobuf_negotiates_and_pushes_are_intact(start_server) -> None:
    from .test_protobuf import RawClient

    server = await start_server(websocket_compression=True)
    p = await RawClient.open(server)
    try:
        assert extensions(p.ws) == AGREED
        await p.call("connect")
        await p.call("subscribe", channel="news")
        async with websockets.connect(ws_url(server, "/ws/news"), compression=None) as relay:
            await relay.send(BIG.encode())
            assert (await p.push()).pub.data == BIG.encode()
    finally:
        await p.close()


async def test_uni_websocket_negotiates(start_server) -> None:
    server = await start_server(websocket_compression=True)
    async with websockets.connect(ws_url(server, "/connection/uni_websocket"), ping_interval=None) as ws:
        assert extensions(ws) == AGREED
        await ws.send(json.dumps({"subs": {"news": {}}}))
        assert "connect" in json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        await _subscribed(server, "news", 1)
        async with websockets.connect(ws_url(server, "/ws/news"), compression=None) as relay:
            await relay.send(BIG)
            while True:
                push = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                if "pub" in push:
                    break
        assert push["pub"]["data"] == json.loads(BIG)


async def test_framework_endpoint_negotiates_and_replies_are_intact() -> None:
    app = hubbub.App(port=0, websocket_compression=True)

    @app.websocket("/echo", anonymous=True)
    async def echo(ws: hubbub.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    await app.start()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{app.server.port}/echo") as ws:
            assert extensions(ws) == AGREED
            for message in (BIG, "small", BIG.encode()):
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == message
    finally:
        await app.stop()


async def test_uvicorn_serves_a_compressing_client() -> None:
    """Under ASGI the ASGI server frames and compresses: hubbub hands it whole messages."""
    from .test_asgi import uvicorn_serving

    app = hubbub.App(port=0, websocket_compression=True)

    @app.websocket("/echo", anonymous=True)
    async def echo(ws: hubbub.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    async with uvicorn_serving(app) as port:
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo") as ws:
            assert "permessage-deflate" in (extensions(ws) or "")  # uvicorn's own negotiation
            for message in (BIG, "small"):
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == message


# -- encode once -------------------------------------------------------------------------------------


async def test_one_compression_per_publication_per_codec_and_framing(start_server, clients: list) -> None:
    """3 compressing and 2 plain JSON clients, 2 compressing and 1 plain relay clients and 2
    compressing Protobuf clients on one channel: a publication is compressed 3 times (JSON,
    relay, Protobuf), and every client gets it right."""
    from .test_protobuf import RawClient

    server = await start_server(websocket_compression=True)
    frames = deflate_frames(server.config.websocket_compression_level, server.config.websocket_compression_min_size)
    json_deflate = [await proto_client(server) for _ in range(3)]
    json_plain = [await proto_client(server, compression=None) for _ in range(2)]
    clients.extend(c.ws for c in json_deflate + json_plain)
    for c in json_deflate + json_plain:
        await c.call("subscribe", {"channel": "once"})
    relays = [await websockets.connect(ws_url(server, "/ws/once"), ping_interval=None, compression=compression)
              for compression in ("deflate", "deflate", None)]
    clients.extend(relays)
    pbs = [await RawClient.open(server) for _ in range(2)]
    try:
        for p in pbs:
            await p.call("connect")
            await p.call("subscribe", channel="once")
        await _subscribed(server, "once", 10)
        assert [extensions(r) for r in relays] == [AGREED, AGREED, None]
        publisher = await websockets.connect(ws_url(server, "/ws/elsewhere"), compression=None)
        clients.append(publisher)
        before = frames.compressions
        for n in range(3):
            data = BIG.replace("player", f"p{n}")
            await server.hub.publish("once", json.loads(data))
            for c in json_deflate + json_plain:
                assert (await c.next_push())["pub"]["data"] == json.loads(data)
            for r in relays:
                assert json.loads(await asyncio.wait_for(r.recv(), TIMEOUT)) == json.loads(data)
            for p in pbs:
                assert json.loads((await p.push()).pub.data) == json.loads(data)
            assert frames.compressions - before == 3 * (n + 1)
    finally:
        for p in pbs:
            await p.close()


# -- the wire: RSV1, minimum size, inbound bounds -----------------------------------------------------


def _raw_handshake(port: int, path: str, offer: str = "permessage-deflate") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  f"Sec-WebSocket-Extensions: {offer}\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, head + b"\r\n\r\n" + rest


def _masked(first: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    length = bytes((0x80 | size,)) if size < 126 else bytes((0x80 | 126,)) + size.to_bytes(2, "big")
    return bytes((first,)) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _read_frame(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    """(first byte, payload) of the next server frame."""
    def need(n: int) -> None:
        while len(buffer) < n:
            chunk = sock.recv(65536)
            assert chunk, "closed"
            buffer.extend(chunk)
    need(2)
    size, start = buffer[1] & 0x7F, 2
    if size == 126:
        need(4)
        size, start = int.from_bytes(buffer[2:4], "big"), 4
    elif size == 127:
        need(10)
        size, start = int.from_bytes(buffer[2:10], "big"), 10
    need(start + size)
    first, payload = buffer[0], bytes(buffer[start:start + size])
    del buffer[:start + size]
    return first, payload


def _inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


async def test_small_messages_go_uncompressed_and_large_ones_with_rsv1(start_server) -> None:
    server = await start_server(websocket_compression=True, websocket_compression_min_size=100)
    sock, head = await asyncio.to_thread(_raw_handshake, server.port, "/ws/raw")
    try:
        assert b" 101 " in head.split(b"\r\n")[0] and AGREED.encode() in head
        rest = bytearray(head.partition(b"\r\n\r\n")[2])
        await until(lambda: server.hub.channels().get("raw", 0) >= 1, "subscribed")
        small, large = b"x" * 99, b"y" * 100
        sock.sendall(_masked(0x81, small) + _masked(0x81, large))
        first, payload = await asyncio.to_thread(_read_frame, sock, rest)
        assert (first, payload) == (0x81, small)  # FIN, text, RSV1 clear
        first, payload = await asyncio.to_thread(_read_frame, sock, rest)
        assert first == 0xC1 and len(payload) < 100 and _inflate(payload) == large  # FIN, RSV1, text
        # a compressed message from the client (RSV1) is inflated by websockets' extension
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        body = deflate.compress(BIG.encode()) + deflate.flush(zlib.Z_SYNC_FLUSH)
        sock.sendall(_masked(0xC1, body[:-4]))
        first, payload = await asyncio.to_thread(_read_frame, sock, rest)
        assert first == 0xC1 and _inflate(payload) == BIG.encode()
    finally:
        sock.close()


async def test_an_offer_of_a_smaller_window_gets_an_encoder_of_that_window(start_server) -> None:
    """A client's ``server_max_window_bits`` is honoured: its connection shares an encoder
    of that window (a type of its own, so no wire mixes it with 32 KiB-window bytes)."""
    server = await start_server(websocket_compression=True)
    config = server.config
    full = deflate_frames(config.websocket_compression_level, config.websocket_compression_min_size)
    small = deflate_frames(config.websocket_compression_level, config.websocket_compression_min_size, 10)
    assert type(small) is not type(full) and small.window_bits == 10
    sock, head = await asyncio.to_thread(_raw_handshake, server.port, "/ws/narrow",
                                         "permessage-deflate; server_max_window_bits=10")
    try:
        assert b" 101 " in head.split(b"\r\n")[0] and b"server_max_window_bits=10" in head
        rest = bytearray(head.partition(b"\r\n\r\n")[2])
        await until(lambda: server.hub.channels().get("narrow", 0) >= 1, "subscribed")
        before_full, before_small = full.compressions, small.compressions
        payload = os.urandom(600).hex().encode() * 3  # repeats 1,200 bytes apart: beyond a 1 KiB window
        sock.sendall(_masked(0x81, payload))
        first, data = await asyncio.to_thread(_read_frame, sock, rest)
        assert first == 0xC1
        assert zlib.decompressobj(-10).decompress(data + b"\x00\x00\xff\xff") == payload
        # the repeats were not found (a 32 KiB window finds them: about 700 bytes instead)
        assert len(data) > len(payload) / 2
        assert (full.compressions, small.compressions) == (before_full, before_small + 1)
    finally:
        sock.close()


async def test_a_compression_bomb_is_closed_1009_and_the_server_stays_fine(start_server, clients: list) -> None:
    server = await start_server(websocket_compression=True, max_message_size=4096)
    bomber = await websockets.connect(ws_url(server, "/ws/bomb"), ping_interval=None, max_size=None)
    assert extensions(bomber) == AGREED
    await bomber.send("\x00" * 10_000_000)  # about 10 KB on the wire, 10 MB inflated
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(bomber.recv(), TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert server.stats.disconnects[1009] >= 1
    # a fragmented bomb too: the bound is on the whole message, across its fragments
    bomber = await websockets.connect(ws_url(server, "/ws/bomb"), ping_interval=None)
    await bomber.send(["\x00" * 3000, "\x00" * 3000])
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(bomber.recv(), TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    ok = await websockets.connect(ws_url(server, "/ws/bomb"), ping_interval=None)
    clients.append(ok)
    await _subscribed(server, "bomb", 1)
    await ok.send("x" * 4000)
    assert await asyncio.wait_for(ok.recv(), TIMEOUT) == "x" * 4000


def test_level_and_min_size_are_validated() -> None:
    with pytest.raises(hubbub.ConfigError, match="websocket_compression_level"):
        hubbub.Config(websocket_compression_level=0).validate()
    with pytest.raises(hubbub.ConfigError, match="websocket_compression_min_size"):
        hubbub.Config(websocket_compression_min_size=-1).validate()


# -- Chromium's own WebSocket ------------------------------------------------------------------------


@pytest.mark.slow
async def test_chromium_negotiates_compression_and_receives_intact_data(start_server) -> None:
    from hubbub.http import HTTPRequest, HTTPResponse

    from .jsdeps import CHROMIUM_ARGS, chromium

    server = await start_server(websocket_compression=True)

    async def page(request: HTTPRequest) -> HTTPResponse:
        html = """<!doctype html><title>loading</title><script>
          window.got = [];
          const ws = new WebSocket("ws://" + location.host + "/ws/chromium");
          ws.onopen = () => { document.title = "open " + ws.extensions; };
          ws.onmessage = (e) => { window.got.push(e.data); };
        </script>"""
        return HTTPResponse(200, html.encode(), "text/html")

    server.add_http("/compressed", page)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            tab = await browser.new_page()
            await tab.goto(f"http://127.0.0.1:{server.port}/compressed")
            await tab.wait_for_function("document.title.startsWith('open')", timeout=int(TIMEOUT * 1000))
            assert "permessage-deflate" in await tab.title()
            await _subscribed(server, "chromium", 1)
            async with websockets.connect(ws_url(server, "/ws/chromium"), compression=None) as relay:
                await relay.send(BIG)
                await relay.send("small")
            await tab.wait_for_function("window.got.length >= 2", timeout=int(TIMEOUT * 1000))
            assert await tab.evaluate("window.got") == [BIG, "small"]
        finally:
            await browser.close()


# -- centrifuge-js with compression negotiated -------------------------------------------------------


def _feed_app(states: list[Any], **options: Any) -> hubbub.App:
    """An App with compression on, a delta namespace ``doc`` and an rpc "publish" {from, to}
    that publishes ``states[from:to]`` to ``doc:feed``."""
    app = hubbub.App(port=0, websocket_compression=True, namespaces={
        "doc": {"history_size": 10, "history_ttl": 600, "allowed_delta_types": ["fossil"], "delta_publish": True}},
        **options)

    @app.rpc("publish")
    async def publish(client: hubbub.ClientSession, data: Any) -> Any:
        for n in range(data["from"], data["to"]):
            await app.server.hub.publish("doc:feed", states[n])
        return {}

    return app


def _states(count: int) -> list[Any]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import feed

    return [json.loads(s) for s in feed.order_book_feed(seed=2, updates=count)]


@pytest.mark.slow  # starts node
@pytest.mark.parametrize(("codec", "delta"), [("json", "none"), ("protobuf", "none"), ("json", "fossil"),
                                              ("protobuf", "fossil")])
async def test_centrifuge_js_under_node_negotiates_deflate_and_gets_intact_data(codec: str, delta: str) -> None:
    """centrifuge-js over Node's `ws` (which offers permessage-deflate) agrees on it with hubbub,
    and the documents it hands the application are the published ones (2 KB order books:
    compressed frames), with and without Fossil deltas."""
    import subprocess

    from .jsdeps import node_modules

    modules = node_modules()
    states = _states(20)
    app = _feed_app(states)
    await app.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            "node", str(modules.parent / "deflate.cjs"), f"ws://127.0.0.1:{app.server.port}/connection/websocket",
            "doc:feed", codec, delta, str(len(states)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 4 * TIMEOUT)
    finally:
        await app.stop()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["extensions"] == ["permessage-deflate"]  # ws names the extensions it agreed to
    assert result["got"] == states
    if delta == "fossil":
        assert result["stats"]["numDeltaPayloads"] == len(states) - 1


@pytest.mark.slow
async def test_centrifuge_js_in_chromium_negotiates_deflate_and_applies_deltas() -> None:
    """centrifuge-js in Chromium, over the browser's own WebSocket (which always offers
    permessage-deflate): compression agreed, and the documents equal the published ones,
    with ``delta: "fossil"`` and without."""
    from playwright.async_api import async_playwright

    from hubbub.http import HTTPRequest, HTTPResponse

    from .jsdeps import CHROMIUM_ARGS, chromium, node_modules

    script = (node_modules() / "centrifuge" / "dist" / "centrifuge.js").read_bytes()
    states = _states(20)
    app = _feed_app(states)
    page_html = """<!doctype html><title>loading</title><script src="/test/centrifuge.js"></script><script>
      window.result = {extensions: [], plain: [], delta: []};
      class RecordingWebSocket extends WebSocket {
        constructor(url, protocols) {
          super(url, protocols);
          this.addEventListener("open", () => window.result.extensions.push(this.extensions));
        }
      }
      (async () => {
        const url = "ws://" + location.host + "/connection/websocket";
        const one = new Centrifuge(url, {websocket: RecordingWebSocket});
        const two = new Centrifuge(url, {websocket: RecordingWebSocket});
        const plain = one.newSubscription("doc:feed");
        const delta = two.newSubscription("doc:feed", {delta: "fossil"});
        plain.on("publication", (ctx) => window.result.plain.push(ctx.data));
        delta.on("publication", (ctx) => window.result.delta.push(ctx.data));
        one.connect();
        two.connect();
        plain.subscribe();
        delta.subscribe();
        await plain.ready(5000);
        await delta.ready(5000);
        await one.rpc("publish", {from: 0, to: COUNT});
        while (window.result.delta.length < COUNT || window.result.plain.length < COUNT) {
          await new Promise((r) => setTimeout(r, 10));
        }
        window.result.stats = delta.deltaStats();
        document.title = "done";
      })().catch((e) => { document.title = "failed " + e; });
    </script>""".replace("COUNT", str(len(states)))

    async def centrifuge_js(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, script, "text/javascript")

    async def page(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, page_html.encode(), "text/html")

    await app.start()
    try:
        app.server.add_http("/test/centrifuge.js", centrifuge_js)
        app.server.add_http("/test/page", page)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
            try:
                tab = await browser.new_page()
                await tab.goto(f"http://127.0.0.1:{app.server.port}/test/page")
                await tab.wait_for_function("document.title !== 'loading'", timeout=int(4 * TIMEOUT * 1000))
                assert await tab.title() == "done"
                result = await tab.evaluate("window.result")
            finally:
                await browser.close()
    finally:
        await app.stop()
    assert result["extensions"] == [AGREED, AGREED]
    assert result["plain"] == states and result["delta"] == states
    assert result["stats"]["numDeltaPayloads"] == len(states) - 1
