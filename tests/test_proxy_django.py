"""Proxy hooks against a real backend in another process: the Django project of
tests/django_backend/ under uvicorn, authenticating hubbub's clients by Django's own session
cookie, allowing or refusing subscriptions per channel, and answering an RPC.

Clients: centrifuge-python, the relay (websockets with a Cookie header), and centrifuge-js in
Chromium (the cookie the browser got at login travels with the WebSocket upgrade).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest
import websockets

from hubbub.config import Config
from hubbub.http import HTTPRequest, HTTPResponse
from hubbub.server import Server

from .conftest import ROOT, TIMEOUT


@pytest.fixture(scope="module")
def django_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Django backend serving on 127.0.0.1 (port 0, its socket handed to uvicorn); its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    env = {**os.environ, "BACKEND_DB": str(tmp_path_factory.mktemp("django") / "db.sqlite3"),
           "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen([sys.executable, "-m", "django_backend.serve", str(sock.fileno())], cwd=ROOT / "tests",
                            env=env, pass_fds=(sock.fileno(),))
    sock.close()
    base = f"http://127.0.0.1:{port}"
    try:
        # ready once it answers (the socket listens from the start: the request waits for uvicorn)
        status, _ = post(base + "/login", {"username": "nobody", "password": "x"}, timeout=60)
        assert status == 401
        yield base
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


def post(url: str, form: dict[str, str], timeout: float = TIMEOUT) -> tuple[int, str]:
    """POST a form; (status, the session cookie it set as ``name=value``, or "")."""
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            cookie = response.headers.get("Set-Cookie", "")
            return response.status, cookie.split(";")[0]
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def login(backend: str, user: str) -> str:
    """Log in to Django as ``user``; the ``sessionid=...`` cookie."""
    status, cookie = await asyncio.to_thread(post, backend + "/login", {"username": user, "password": f"{user}-pw"})
    assert status == 200 and cookie.startswith("sessionid="), (status, cookie)
    return cookie


def hub_settings(backend: str) -> Config:
    """The settings of docs/howto/proxy.md's hubbub.toml, as written, pointed at the backend's port."""
    page = (ROOT / "docs" / "howto" / "proxy.md").read_text()
    [toml] = re.findall(r"^```toml\n# hubbub.toml\n(.*?)^```", page, re.S | re.M)
    raw = tomllib.loads(toml.replace("http://127.0.0.1:8001", backend))
    return Config.from_dict({**raw, "port": 0, "ping_interval": 0})


@pytest.fixture
async def hub(django_backend: str) -> AsyncIterator[Server]:
    server = Server(hub_settings(django_backend))
    await server.start()
    yield server
    await server.close()


def ws_url(server: Server, path: str = "/connection/websocket") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def test_centrifuge_python_authenticated_by_the_session_cookie(hub: Server, django_backend: str) -> None:
    from centrifuge import (
        Client,
        ClientEventHandler,
        DisconnectedContext,
        SubscriptionEventHandler,
        UnsubscribedContext,
    )

    cookie = await login(django_backend, "ann")
    client = Client(ws_url(hub), headers={"Cookie": cookie})
    await client.connect()
    await asyncio.wait_for(client.ready(), TIMEOUT)
    try:
        result = await client.rpc("whoami", {})
        assert result.data["name"] == "ann"
        user = result.data["user"]
        assert hub.hub.user_connections(user) == 1
        news = client.new_subscription("news")
        await news.subscribe()
        await asyncio.wait_for(news.ready(), TIMEOUT)

        errors: asyncio.Queue[int] = asyncio.Queue()

        class Refused(SubscriptionEventHandler):
            async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:  # a permanent error ends it
                errors.put_nowait(ctx.code)

        staff = client.new_subscription("staff:board", Refused())
        await staff.subscribe()
        assert await asyncio.wait_for(errors.get(), TIMEOUT) == 103
    finally:
        await client.disconnect()

    closed: asyncio.Queue[int] = asyncio.Queue()

    class Events(ClientEventHandler):
        async def on_disconnected(self, ctx: DisconnectedContext) -> None:
            closed.put_nowait(ctx.code)

    stranger = Client(ws_url(hub), Events())  # no cookie: the backend answers 4501
    await stranger.connect()
    try:
        assert await asyncio.wait_for(closed.get(), TIMEOUT) == 4501
    finally:
        await stranger.disconnect()


async def test_relay_with_a_cookie(hub: Server, django_backend: str) -> None:
    ann, boss = await login(django_backend, "ann"), await login(django_backend, "boss")
    async with websockets.connect(ws_url(hub, "/ws/news"), additional_headers={"Cookie": ann}) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_url(hub, "/ws/staff:board"), additional_headers={"Cookie": ann})
    assert refused.value.response.status_code == 403
    async with websockets.connect(ws_url(hub, "/ws/staff:board"), additional_headers={"Cookie": boss}) as ws:
        await ws.send("for staff")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "for staff"
    with pytest.raises(websockets.InvalidStatus) as anonymous:
        await websockets.connect(ws_url(hub, "/ws/news"))
    assert 400 <= anonymous.value.response.status_code < 500


BROWSER_PAGE = """<!doctype html><title>running</title>
<script src="/test/centrifuge.js"></script>
<script>
(async () => {
  const centrifuge = new Centrifuge(`ws://${location.host}/connection/websocket`);
  centrifuge.connect();
  await centrifuge.ready(5000);
  const me = await centrifuge.rpc("whoami", {});
  const news = centrifuge.newSubscription("news");
  news.subscribe();
  await news.ready(5000);
  const staff = centrifuge.newSubscription("staff:board");
  // a permanent subscribe error ends the subscription: "unsubscribed" with the error's code
  const refused = new Promise((resolve) => staff.on("unsubscribed", (ctx) => resolve(ctx.code)));
  staff.subscribe();
  window.result = {name: me.data.name, staff: await refused};
  document.title = "done";
})().catch((e) => { window.result = {error: String(e)}; document.title = "done"; });
</script>"""


async def test_centrifuge_js_in_chromium_with_the_session_cookie(hub: Server, django_backend: str) -> None:
    from playwright.async_api import async_playwright

    from .jsdeps import CHROMIUM_ARGS, chromium, node_modules

    executable = chromium()
    script = (node_modules() / "centrifuge" / "dist" / "centrifuge.js").read_bytes()

    async def centrifuge_js(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, script, "text/javascript")

    async def page_html(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, BROWSER_PAGE.encode(), "text/html")

    hub.add_http("/test/centrifuge.js", centrifuge_js)
    hub.add_http("/test/page", page_html)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context()
            # log in to Django in the browser's cookie jar: the session cookie is for 127.0.0.1,
            # which the page (served by hubbub on another port of the same host) connects to
            response = await context.request.post(django_backend + "/login",
                                                  form={"username": "ann", "password": "ann-pw"})
            assert response.status == 200
            page = await context.new_page()
            await page.goto(f"http://127.0.0.1:{hub.port}/test/page")
            await page.wait_for_function("document.title === 'done'", timeout=TIMEOUT * 1000)
            assert await page.evaluate("window.result") == {"name": "ann", "staff": 103}
        finally:
            await browser.close()
