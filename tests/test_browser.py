"""Real browsers (Debian's Chromium via Playwright) and centrifuge-js (npm) against hubbub.

Screenshots of the live page are written to docs/screenshots/ by these tests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import hubbub
from hubbub.http import HTTPRequest, HTTPResponse
from hubbub.server import Server

from .conftest import ROOT, TIMEOUT
from .jsdeps import CHROMIUM_ARGS, chromium, node_modules
from .redis_server import redis_server  # noqa: F401

SHOTS = ROOT / "docs" / "screenshots"
MS = int(TIMEOUT * 1000)


def chat_app() -> hubbub.App:
    """A hub with a recoverable, presence-enabled namespace and an rpc that kicks the caller."""
    app = hubbub.App(port=0, namespaces={
        "chat": {"history_size": 100, "history_ttl": 600, "force_recovery": True,
                 "presence": True, "join_leave": True},
    })

    @app.rpc("kick")
    async def kick(client: hubbub.ClientSession, data: Any) -> Any:
        client.disconnect(3011, "kicked by test")
        return {}

    return app


@pytest.fixture
async def app() -> AsyncIterator[hubbub.App]:
    application = chat_app()
    await application.start()
    yield application
    await application.stop()


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


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def open_page(browser: Any, url: str) -> Any:
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(MS)
    await page.goto(url)
    await page.wait_for_selector("#state.connected")
    return page


async def subscribe(page: Any, channel: str) -> None:
    await page.fill("#channel", channel)
    await page.click("#subscribe")
    await page.wait_for_selector(f"#log .note:has-text('subscribed to {channel}')")


# -- centrifuge-js under Node ---------------------------------------------------------------


async def test_centrifuge_js_under_node(app: hubbub.App) -> None:
    modules = node_modules()
    proc = await asyncio.create_subprocess_exec(
        "node", str(modules.parent / "interop.cjs"), f"ws://127.0.0.1:{app.server.port}/connection/websocket",
        "chat:node", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 3 * TIMEOUT)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert [p["data"]["n"] for p in result["got"]] == [1, 2, 3, 4]
    assert [p["offset"] for p in result["got"]] == [1, 2, 3, 4]
    assert result["subscribed"][1] == {"recovered": True, "wasRecovering": True}
    assert result["reconnectCode"] == 3011
    assert result["presenceClients"] == 1 and result["numClients"] == 1
    assert result["history"] == [{"n": 1}]


# -- the live page -----------------------------------------------------------------------------


async def test_page_receives_publications_made_with_hubbub_produce(app: hubbub.App, browser: Any) -> None:
    page = await open_page(browser, base(app.server) + "/")
    await subscribe(page, "chat:demo")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hubbub", "produce", f"ws://127.0.0.1:{app.server.port}", "chat:demo",
        '{"headline": "hello from the CLI"}', "plain text", cwd=ROOT, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err
    await page.wait_for_function("document.querySelectorAll('#log .pub').length >= 2")
    lines = await page.locator("#log .pub").all_inner_texts()
    assert lines[0].startswith("#1") and "hello from the CLI" in lines[0]
    assert lines[1].startswith("#2") and '"plain text"' in lines[1]
    # and the page publishes what the user types
    await page.fill("#message", '{"typed": true}')
    await page.click("#publish")
    await page.wait_for_function("document.querySelectorAll('#log .pub').length >= 3")
    assert '{"typed":true}' in (await page.locator("#log .pub").all_inner_texts())[2]
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "page.png"))


async def test_two_pages_see_each_others_messages_and_presence(app: hubbub.App, browser: Any) -> None:
    one = await open_page(browser, base(app.server) + "/")
    two = await open_page(browser, base(app.server) + "/")
    await subscribe(one, "chat:room")
    await subscribe(two, "chat:room")
    for page in (one, two):
        await page.wait_for_selector("#presence[data-count='2']")
    await one.fill("#message", "hello from one")
    await one.click("#publish")
    await two.fill("#message", "hello from two")
    await two.click("#publish")
    for page in (one, two):
        await page.wait_for_function("document.querySelectorAll('#log .pub').length >= 2")
        texts = " ".join(await page.locator("#log .pub").all_inner_texts())
        assert "hello from one" in texts and "hello from two" in texts
    await two.screenshot(path=str(SHOTS / "two-pages.png"))


async def test_page_on_a_foreign_origin_is_refused(app: hubbub.App, browser: Any) -> None:
    hub_port = app.server.port
    foreign = Server(hubbub.Config(port=0))

    async def evil(request: HTTPRequest) -> HTTPResponse:
        html = f"""<!doctype html><title>loading</title><script>
          const ws = new WebSocket("ws://127.0.0.1:{hub_port}/connection/websocket");
          ws.onopen = () => {{ document.title = "open"; }};
          ws.onclose = (e) => {{ document.title = "closed " + e.code; }};
        </script>"""
        return HTTPResponse(200, html.encode(), "text/html")

    foreign.add_http("/evil", evil)
    await foreign.start()
    try:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"http://127.0.0.1:{foreign.port}/evil")
        await page.wait_for_function("document.title.startsWith('closed') || document.title === 'open'",
                                     timeout=MS)
        assert await page.title() == "closed 1006"
        assert not app.server.websockets  # the hub never accepted it
    finally:
        await foreign.close()


async def test_page_can_be_turned_off(start_server) -> None:
    server = await start_server(page=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.read(100), TIMEOUT)
    writer.close()
    assert head.startswith(b"HTTP/1.1 404")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_page_reconnects_and_recovers_after_a_server_restart(browser: Any, redis_server, tmp_path: Path,  # noqa: F811
                                                                   serve_process) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[namespaces.chat]\nhistory_size = 100\nhistory_ttl = 600\nforce_recovery = true\n')
    port = _free_port()
    args = ("--broker", redis_server.url, "--config", str(config))
    first = serve_process(*args, "--port", str(port))
    other = serve_process(*args)
    page = await open_page(browser, f"http://127.0.0.1:{port}/")
    await subscribe(page, "chat:restart")
    produce = [sys.executable, "-m", "hubbub", "produce"]
    assert subprocess.run([*produce, other.url, "chat:restart", "before"], cwd=ROOT, timeout=TIMEOUT).returncode == 0
    await page.wait_for_function("document.querySelectorAll('#log .pub').length >= 1")
    assert first.stop() == 0  # SIGTERM: clients are told 3001 and reconnect
    await page.wait_for_selector("#state.disconnected, #state.connecting")
    for text in ("missed 1", "missed 2", "missed 3"):
        assert subprocess.run([*produce, other.url, "chat:restart", text], cwd=ROOT,
                              timeout=TIMEOUT).returncode == 0
    serve_process(*args, "--port", str(port))  # the same address again
    await page.wait_for_selector("#log .note:has-text('recovered missed publications')", timeout=3 * MS)
    await page.wait_for_function("document.querySelectorAll('#log .pub').length >= 4")
    texts = await page.locator("#log .pub").all_inner_texts()
    assert texts[:4] == ['#1"before"', '#2"missed 1"', '#3"missed 2"', '#4"missed 3"']
    await page.screenshot(path=str(SHOTS / "recovered.png"))


# -- centrifuge-js in the browser ------------------------------------------------------------------


BROWSER_INTEROP = """<!doctype html><title>running</title>
<script src="/test/centrifuge.js"></script>
<script>
(async () => {
  const url = `ws://${location.host}/connection/websocket`;
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  const until = async (f) => { for (let i = 0; i < 1000 && !f(); i++) await wait(10); if (!f()) throw new Error("timeout"); };
  const opts = {minReconnectDelay: 100, maxReconnectDelay: 300};
  const a = new Centrifuge(url, opts), b = new Centrifuge(url, opts);
  const got = [], subscribed = [];
  let kicked = false;
  a.on("connecting", (ctx) => { if (ctx.code === 3011) kicked = true; });
  const sub = a.newSubscription("chat:browser");
  sub.on("publication", (ctx) => got.push(ctx.data.n));
  sub.on("subscribed", (ctx) => subscribed.push(ctx.recovered));
  sub.subscribe(); a.connect(); b.connect();
  await sub.ready(5000); await b.ready(5000);
  await b.publish("chat:browser", {n: 1});
  await until(() => got.length === 1);
  const presence = await sub.presence();
  const history = await sub.history({limit: 10});
  a.rpc("kick", {}).catch(() => {});
  await until(() => kicked);
  for (const n of [2, 3]) await b.publish("chat:browser", {n});
  await until(() => got.length === 3 && subscribed.length === 2);
  window.result = {got, subscribed, presence: Object.keys(presence.clients).length,
                   history: history.publications.length};
  document.title = "done";
})().catch((e) => { window.result = {error: String(e)}; document.title = "done"; });
</script>"""


async def test_centrifuge_js_in_the_browser(app: hubbub.App, browser: Any) -> None:
    script = (node_modules() / "centrifuge" / "dist" / "centrifuge.js").read_bytes()

    async def centrifuge_js(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, script, "text/javascript")

    async def interop_page(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, BROWSER_INTEROP.encode(), "text/html")

    app.server.add_http("/test/centrifuge.js", centrifuge_js)
    app.server.add_http("/test/page", interop_page)
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(base(app.server) + "/test/page")
    await page.wait_for_function("document.title === 'done'", timeout=3 * MS)
    result = await page.evaluate("window.result")
    assert result == {"got": [1, 2, 3], "subscribed": [False, True], "presence": 1, "history": 1}, result
