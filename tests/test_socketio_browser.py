"""socket.io-client in Chromium (the npm package's browser bundle) against hubbub.socketio: long-polling
upgraded to a WebSocket, events with acknowledgements both ways, binary (ArrayBuffer) attachments, a room
shared with a python-socketio client, and connection state recovery after a forced reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import socketio as pysio  # python-socketio's client

import hubbub.socketio as socketio

from .conftest import TIMEOUT
from .jsdeps import CHROMIUM_ARGS, chromium, node_modules
from .test_socketio import make_server

MS = int(TIMEOUT * 1000)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>socket.io in Chromium</title>
<script src="/socket.io.min.js"></script></head>
<body><p id="state">loading</p>
<script>
window.log = [];
const socket = io({ reconnectionDelay: 100, reconnectionDelayMax: 200 });
socket.on("connect", () => {
  window.log.push(["connect", socket.id, socket.recovered, socket.io.engine.transport.name]);
  document.getElementById("state").className = "connected";
});
socket.io.on("open", () => socket.io.engine.on("upgrade", (t) => window.log.push(["upgrade", t.name])));
socket.on("disconnect", (reason) => window.log.push(["disconnect", reason]));
socket.on("question", (q, ack) => ack("browser says " + q));
socket.onAny((event, ...args) => window.log.push(["event", event, args.map((a) =>
  a instanceof ArrayBuffer ? Array.from(new Uint8Array(a)) : a)]));
window.socket = socket;
</script></body></html>
"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def test_socket_io_client_in_chromium(browser: Any, tmp_path: Path) -> None:
    bundle = node_modules() / "socket.io-client" / "dist" / "socket.io.min.js"
    (tmp_path / "index.html").write_text(PAGE)
    sio = make_server()

    @sio.event
    async def tick(sid: str) -> None:
        await sio.emit("tock", 1, room="news")

    app = socketio.ASGIApp(sio, static_files={"/": str(tmp_path / "index.html"), "/socket.io.min.js": str(bundle)},
                           config={"port": 0, "namespaces": {"socketio": {"history_size": 100, "history_ttl": 600}}})
    await app.start()
    other = pysio.AsyncClient(reconnection=False)
    try:
        page = await (await browser.new_context()).new_page()
        page.set_default_timeout(MS)
        await page.goto(app.server.url + "/")
        await page.wait_for_selector("#state.connected")
        await page.wait_for_function("window.log.some((e) => e[0] === 'upgrade')")
        assert await page.evaluate("socket.io.engine.transport.name") == "websocket"

        async def call(event: str, *args: Any) -> Any:
            script = "([event, args]) => socket.timeout(5000).emitWithAck(event, ...args)"
            return await page.evaluate(script, [event, list(args)])

        assert await call("echo", {"a": [1, "é"]}) == {"a": [1, "é"]}
        assert await page.evaluate(
            "socket.timeout(5000).emitWithAck('echo', new Uint8Array([0, 1, 254, 255]).buffer)"
            ".then((b) => Array.from(new Uint8Array(b)))") == [0, 1, 254, 255]
        assert await call("ask_me", "hi") == "browser says hi"
        # a room shared with a python-socketio client
        assert "lobby" in await call("join", "lobby")
        heard: asyncio.Queue[Any] = asyncio.Queue()
        other.on("heard", lambda *args: heard.put_nowait(args[0]))  # with history, the offset follows
        await other.connect(app.server.url, transports=["polling"], wait_timeout=TIMEOUT)
        await other.call("join", "lobby", timeout=TIMEOUT)
        await page.evaluate("socket.emit('shout', 'lobby', 'from chromium')")
        assert (await asyncio.wait_for(heard.get(), TIMEOUT))["text"] == "from chromium"
        await other.emit("shout", ("lobby", "from python"))
        await page.wait_for_function(
            "window.log.some((e) => e[0] === 'event' && e[1] === 'heard' && e[2][0].text === 'from python')")
        # connection state recovery after a forced reconnect
        await call("join", "news")
        first = await page.evaluate("socket.id")
        await page.evaluate("socket.io.engine.close()")
        await page.wait_for_function("window.log.some((e) => e[0] === 'disconnect')")
        await sio.emit("tock", 2, room="news")
        await page.wait_for_function("window.log.filter((e) => e[0] === 'connect').length === 2")
        connects = [e for e in await page.evaluate("window.log") if e[0] == "connect"]
        assert connects[1][1:3] == [first, True]
        await page.wait_for_function(
            "window.log.some((e) => e[0] === 'event' && e[1] === 'tock' && e[2][0] === 2)")
    finally:
        await other.disconnect()
        await app.stop()
