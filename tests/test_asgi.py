"""hubbub under ASGI servers, and ASGI/WSGI applications inside hubbub, over real sockets.

* uvicorn (in-process, on a socket bound to 127.0.0.1:0) serving FastAPI and
  Starlette applications that mount a ``hubbub.App``: framework endpoints, the
  protocol (centrifuge-python), the relay, a FastAPI route that publishes,
  health, 404 refusals, the lazy start without lifespan, the bounded writer
  (3008 for a WebSocket or stream client that never reads, and the connection
  and what it queued released within ``close_timeout``; responses, refusals and
  accepts through it too; 1009 for an oversized message), and the exposure rule
  of docs/security.md on a non-loopback address, whichever address asks first;
* ``hubbub run`` hosting a FastAPI app and a Flask app (``App(http=...)``) on
  the same port as its WebSocket endpoints;
* route collisions between an app's endpoint and a built-in one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import textwrap
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

import hubbub
from hubbub.errors import ConfigError

from .conftest import TIMEOUT, ServeProcess, until

uvicorn = pytest.importorskip("uvicorn")
fastapi = pytest.importorskip("fastapi")


# -- helpers ---------------------------------------------------------------------------------


def listening_socket(*, sndbuf: int | None = None) -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a free port (accepted sockets inherit ``sndbuf``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any, *, sock: socket.socket | None = None,
                          more: tuple[socket.socket, ...] = ()) -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn in this event loop (on ``sock`` and the ``more``
    sockets); yields ``sock``'s port."""
    sock = sock or listening_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock, *more]))
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped it
                    raise AssertionError("uvicorn stopped before starting")
                await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, TIMEOUT)
        finally:
            sock.close()
            for extra in more:
                extra.close()


@contextlib.asynccontextmanager
async def app_serving(app: hubbub.App, *, under_uvicorn: bool) -> AsyncIterator[int]:
    """Serve ``app`` on hubbub's own server, or under uvicorn; yields the port."""
    if under_uvicorn:
        async with uvicorn_serving(app) as port:
            yield port
        return
    await app.start()
    try:
        yield app.server.port
    finally:
        await app.stop()


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def ahttp(method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return await asyncio.to_thread(http, method, url, body, headers)


def echo_app(**settings: Any) -> hubbub.App:
    app = hubbub.App(**settings)

    @app.websocket("/echo")
    async def echo(ws: hubbub.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    return app


class CentrifugeSubscriber:
    """centrifuge-python subscribed to one channel; publications land in ``received``."""

    def __init__(self, url: str, channel: str) -> None:
        from centrifuge import Client, PublicationContext, SubscriptionEventHandler

        received: asyncio.Queue[Any] = asyncio.Queue()
        self.received = received

        class Handler(SubscriptionEventHandler):
            async def on_publication(self, ctx: PublicationContext) -> None:
                received.put_nowait(ctx.pub.data)

        self.client = Client(url)
        self.sub = self.client.new_subscription(channel, Handler())

    async def __aenter__(self) -> CentrifugeSubscriber:
        await self.client.connect()
        await self.sub.subscribe()
        await asyncio.wait_for(self.client.ready(), TIMEOUT)
        await asyncio.wait_for(self.sub.ready(), TIMEOUT)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.disconnect()


# -- hubbub mounted in FastAPI under uvicorn ---------------------------------------------------


async def test_fastapi_mount_with_lifespan_serves_every_way_in() -> None:
    hub_app = echo_app()
    api = fastapi.FastAPI(lifespan=hub_app.lifespan)

    @api.post("/notify")
    async def notify() -> dict[str, Any]:
        await hub_app.hub.publish("news", {"headline": "from FastAPI"})
        return {"published": True}

    api.mount("/rt", hub_app)

    async with uvicorn_serving(api) as port:
        assert hub_app.server.started  # the lifespan started the hub before the first request
        base = f"ws://127.0.0.1:{port}/rt"

        # a framework endpoint
        async with websockets.connect(f"{base}/echo") as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello"
            await ws.send(b"\x00\x01")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x00\x01"

        # the protocol (centrifuge-python) and the relay on the same channel
        async with CentrifugeSubscriber(f"{base}/connection/websocket", "news") as centrifuge, \
                websockets.connect(f"{base}/ws/news") as relay:
            await until(lambda: hub_app.hub.channels().get("news", 0) >= 2, "both subscribers")
            status, body = await ahttp("POST", f"http://127.0.0.1:{port}/notify", b"")
            assert (status, json.loads(body)) == (200, {"published": True})
            assert await asyncio.wait_for(centrifuge.received.get(), TIMEOUT) == {"headline": "from FastAPI"}
            assert json.loads(await asyncio.wait_for(relay.recv(), TIMEOUT)) == {"headline": "from FastAPI"}

        # plain HTTP routes of hubbub under the mount
        status, body = await ahttp("GET", f"http://127.0.0.1:{port}/rt/health")
        assert status == 200 and json.loads(body)["status"] == "ok"

        # an upgrade where hubbub has no endpoint: a real 404 at the handshake
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"{base}/nowhere")
        assert refused.value.response.status_code == 404
        assert b"no WebSocket endpoint at /nowhere" in refused.value.response.body
    assert hub_app.server.closing  # the lifespan stopped it


async def test_starlette_mount_without_lifespan_starts_the_hub_at_the_first_request() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    hub_app = echo_app()
    started = asyncio.Event()

    @hub_app.on_startup
    async def on_start() -> None:
        started.set()

    host = Starlette(routes=[Mount("/rt", app=hub_app)])  # Mount does not forward lifespan events
    try:
        async with uvicorn_serving(host) as port:
            assert not hub_app.server.started
            async with websockets.connect(f"ws://127.0.0.1:{port}/rt/echo") as ws:
                assert hub_app.server.started and started.is_set()
                await ws.send("lazy")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "lazy"
            async with websockets.connect(f"ws://127.0.0.1:{port}/rt/ws/news") as relay:
                await until(lambda: hub_app.hub.channels().get("news", 0) >= 1, "the relay subscriber")
                await hub_app.hub.publish("news", "after a lazy start")
                assert json.loads(await asyncio.wait_for(relay.recv(), TIMEOUT)) == "after a lazy start"
            status, _ = await ahttp("GET", f"http://127.0.0.1:{port}/rt/health")
            assert status == 200
    finally:
        await hub_app.asgi.shutdown()  # nobody forwarded the lifespan: stop it ourselves


# -- route collisions ---------------------------------------------------------------------------


class Room:
    async def connect(self, ws: hubbub.WebSocket) -> None:
        await ws.send(f"room {ws.params['room']}")


def test_endpoint_on_the_relay_path_names_the_relay_and_its_setting() -> None:
    app = hubbub.App()
    with pytest.raises(ConfigError) as err:
        app.websocket("/ws/{room}")(Room)
    message = str(err.value)
    assert "the relay" in message and "relay_path" in message, message
    assert "/ws/{room}" in message


@pytest.mark.parametrize("server", ["hubbub", "uvicorn"])
async def test_moved_relay_and_the_endpoint_both_work(server: str) -> None:
    app = hubbub.App(port=0, relay_path="/relay/{channel:path}")
    app.websocket("/ws/{room}")(Room)
    async with contextlib.AsyncExitStack() as stack:
        if server == "hubbub":
            await app.start()
            stack.push_async_callback(app.stop)
            port = app.server.port
        else:
            port = await stack.enter_async_context(uvicorn_serving(app))
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/lobby") as ws:
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "room lobby"
        async with websockets.connect(f"ws://127.0.0.1:{port}/relay/news") as relay:
            await relay.send("through the moved relay")
            assert await asyncio.wait_for(relay.recv(), TIMEOUT) == "through the moved relay"


# -- the bounded writer under ASGI ------------------------------------------------------------


def raw_upgrade(port: int, path: str) -> socket.socket:
    """A client that completes the WebSocket handshake and then never reads.

    Its receive buffer is tiny, so what the server sends piles up on the server's side.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        chunk = sock.recv(1)  # byte by byte: nothing after the head is consumed
        if not chunk:
            break
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def flood_until_slow(hub_app: hubbub.App, channel: str) -> None:
    """Publish 1 KiB messages to ``channel`` until a connection is closed as slow
    (bounded: 16 MiB at most, far past every buffer on the way)."""
    payload = {"data": "x" * 1024}
    sent = 0
    async with asyncio.timeout(TIMEOUT):
        while hub_app.server.stats.slow < 1 and sent < 16 * 1024:
            await hub_app.hub.publish(channel, payload)
            sent += 1
            if sent % 16 == 0:
                await asyncio.sleep(0)  # let the connection's sender run
    await until(lambda: hub_app.server.stats.slow >= 1, "3008 for the slow client")


async def test_slow_asgi_client_is_closed_3008() -> None:
    hub_app = echo_app(max_pending_output=64 * 1024)
    # small kernel buffers on both sides, so the bound is reached after little data
    async with uvicorn_serving(hub_app, sock=listening_socket(sndbuf=8192)) as port:
        slow = await asyncio.to_thread(raw_upgrade, port, "/ws/firehose")
        try:
            await until(lambda: hub_app.hub.channels().get("firehose", 0) >= 1, "the slow subscriber")
            await flood_until_slow(hub_app, "firehose")
            assert hub_app.server.stats.disconnects[3008] >= 1
            # the others are not affected
            async with websockets.connect(f"ws://127.0.0.1:{port}/echo") as ws:
                await ws.send("still here")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "still here"
        finally:
            slow.close()


async def test_slow_asgi_client_is_dropped_within_close_timeout() -> None:
    """After 3008 the connection is released within ``close_timeout``, as on
    hubbub's own server (``Connection.close`` arms an abort timer), even though
    the client never reads the close frame."""
    close_timeout = 0.5
    hub_app = echo_app(max_pending_output=64 * 1024, close_timeout=close_timeout)
    async with uvicorn_serving(hub_app, sock=listening_socket(sndbuf=8192)) as port:
        slow = await asyncio.to_thread(raw_upgrade, port, "/ws/firehose")
        try:
            await until(lambda: hub_app.hub.channels().get("firehose", 0) >= 1, "the slow subscriber")
            await flood_until_slow(hub_app, "firehose")
            await until(lambda: not hub_app.server.websockets and "firehose" not in hub_app.hub.channels(),
                        "the slow connection to be released", timeout=close_timeout + 5)
        finally:
            slow.close()


def mute_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    """Send one HTTP request and never read the answer (a tiny receive buffer,
    so what the server sends piles up on the server's side)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"{head}\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


#: a mute stream subscriber of channel "firehose", by kind: the request it sends
MUTE_STREAMS = {
    "sse": ("GET /sse/firehose HTTP/1.1\r\nAccept: text/event-stream", b""),
    "http_stream": ("POST /connection/http_stream HTTP/1.1\r\nContent-Type: application/json",
                    b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"firehose"}}'),
}


@pytest.mark.parametrize("kind", sorted(MUTE_STREAMS))
async def test_mute_asgi_stream_subscriber_is_closed_3008_and_released(kind: str) -> None:
    """Issue 23, defect 6: a stream subscriber (SSE, http_stream) under uvicorn that
    never reads. Past ``max_pending_output`` it is closed with 3008 and, within
    ``close_timeout``, everything it held is freed: its queue (what the sender task
    had not handed to uvicorn yet), the sender task, its subscription, its place
    among the node's connections. The bound is above uvicorn's own write buffer,
    so uvicorn stops taking output and the queue is ours to free."""
    close_timeout = 0.5
    hub_app = echo_app(max_pending_output=256 * 1024, close_timeout=close_timeout)
    async with uvicorn_serving(hub_app, sock=listening_socket(sndbuf=8192)) as port:
        mute = await asyncio.to_thread(mute_request, port, *MUTE_STREAMS[kind])
        try:
            await until(lambda: hub_app.hub.channels().get("firehose", 0) >= 1, "the mute subscriber")
            (stream,) = hub_app.server.connections
            await flood_until_slow(hub_app, "firehose")
            assert hub_app.server.stats.disconnects[3008] >= 1
            await until(lambda: not hub_app.server.connections and "firehose" not in hub_app.hub.channels(),
                        "the mute stream to be released", timeout=close_timeout + 5)
            await until(lambda: stream.queued == 0 and not stream.sending,
                        "its queue freed and its sender stopped", timeout=close_timeout + 5)
            # publishing more holds nothing for it
            for _ in range(256):
                await hub_app.hub.publish("firehose", {"data": "x" * 1024})
            assert stream.queued == 0 and stream.pending == 0
        finally:
            mute.close()


@pytest.mark.parametrize("path", ["/echo", "/ws/news", "/connection/websocket"])
async def test_oversized_message_under_asgi_is_closed_1009(path: str) -> None:
    """Issue 23, defect 6: a WebSocket message over ``max_message_size`` gets close
    code 1009 under uvicorn too (hubbub's own server: websockets' ``max_size``),
    not a dropped connection (1006)."""
    hub_app = echo_app(max_message_size=1024)
    async with uvicorn_serving(hub_app) as port:
        async with websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as ws:
            await ws.send("x" * 2048)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009, closed.value


async def test_asgi_responses_refusals_and_accept_go_through_the_writer() -> None:
    """Issue 23, defect 6: under ASGI every byte to a client goes through the
    bounded ``Writer`` (hubbub.writer), which counts what it sends: plain HTTP
    responses, refused upgrades and the accept of an upgrade included."""
    hub_app = echo_app()
    stats = hub_app.server.stats
    async with uvicorn_serving(hub_app) as port:
        before = stats.bytes_out
        status, body = await ahttp("GET", f"http://127.0.0.1:{port}/health")
        assert status == 200
        assert stats.bytes_out >= before + len(body)

        before = stats.messages_out
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(f"ws://127.0.0.1:{port}/nowhere")
        assert stats.messages_out > before

        before = stats.messages_out
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo"):
            assert stats.messages_out > before  # the accept, before any message


# -- the exposure rule under ASGI ---------------------------------------------------------------


def public_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def anonymous_connect_accepted(url: str) -> bool:
    """Whether a protocol client without a token gets a successful ``connect`` reply."""
    try:
        ws = await websockets.connect(url, ping_interval=None)
    except websockets.InvalidStatus:
        return False
    async with ws:
        await ws.send(json.dumps({"id": 1, "connect": {}}))
        try:
            reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        except websockets.ConnectionClosed:
            return False
        return "connect" in reply


@pytest.mark.parametrize("allow_anonymous", [None, True])
async def test_asgi_on_a_public_address_keeps_the_exposure_rule(allow_anonymous: bool | None) -> None:
    """docs/security.md: with no token key and ``allow_anonymous`` not set, hubbub does not
    accept anonymous clients from the network (``hubbub serve``/``run`` refuse to start on a
    non-loopback address). Under an ASGI server on such an address the same must hold:
    anonymous clients refused, unless ``allow_anonymous=True`` says so on purpose."""
    address = public_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    settings = {} if allow_anonymous is None else {"allow_anonymous": allow_anonymous}
    hub_app = hubbub.App(**settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    async with uvicorn_serving(hub_app, sock=sock) as port:
        accepted = await anonymous_connect_accepted(f"ws://{address}:{port}/connection/websocket")
    assert accepted is bool(allow_anonymous)


async def relay_accepted(url: str) -> bool:
    """Whether an anonymous relay client is let in (its message comes back to it)."""
    try:
        ws = await websockets.connect(url, ping_interval=None)
    except websockets.InvalidStatus:
        return False
    async with ws:
        try:
            await ws.send("anyone there?")
            return await asyncio.wait_for(ws.recv(), TIMEOUT) == "anyone there?"
        except websockets.ConnectionClosed:
            return False


@pytest.mark.parametrize("first", ["loopback", "public"])
async def test_asgi_exposure_rule_holds_whoever_asks_first(first: str) -> None:
    """Issue 23, defect 5: one uvicorn serving the same App on 127.0.0.1 and on a
    public address. Whichever address is asked first (a health check on 127.0.0.1,
    say), the public address refuses anonymous protocol and relay clients and
    answers 404 at /admin/login (no admin_secret), as ``hubbub serve`` would."""
    address = public_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    hub_app = hubbub.App()
    public = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    public.bind((address, 0))
    public_port = public.getsockname()[1]
    async with uvicorn_serving(hub_app, more=(public,)) as port:
        local, exposed = f"127.0.0.1:{port}", f"{address}:{public_port}"
        if first == "loopback":
            status, _ = await ahttp("GET", f"http://{local}/health")  # the health check asks first
            assert status == 200
            assert await anonymous_connect_accepted(f"ws://{local}/connection/websocket")
            status, _ = await ahttp("GET", f"http://{local}/admin/login")
            assert status == 200  # on loopback the dashboard is on (a random secret is logged)
        assert not await anonymous_connect_accepted(f"ws://{exposed}/connection/websocket")
        assert not await relay_accepted(f"ws://{exposed}/ws/news")
        status, _ = await ahttp("GET", f"http://{exposed}/admin/login")
        assert status == 404
        status, _ = await ahttp("POST", f"http://{exposed}/admin/login", b"secret=guess",
                                {"content-type": "application/x-www-form-urlencoded"})
        assert status == 404
        # a second look after a loopback request changes nothing on the public address, and the
        # rule holds per connection: loopback clients keep the loopback rules after the public ones
        status, _ = await ahttp("GET", f"http://{local}/health")
        assert status == 200
        assert await anonymous_connect_accepted(f"ws://{local}/connection/websocket")
        assert await relay_accepted(f"ws://{local}/ws/news")
        status, _ = await ahttp("GET", f"http://{local}/admin/login")
        assert status == 200
        assert not await anonymous_connect_accepted(f"ws://{exposed}/connection/websocket")
        assert not await relay_accepted(f"ws://{exposed}/ws/news")
        status, _ = await ahttp("GET", f"http://{exposed}/admin/login")
        assert status == 404


# -- applications hosted inside hubbub (`hubbub run`) ---------------------------------------


FASTAPI_MODULE = '''
import contextlib

import fastapi
import hubbub

state = {"started": False}


@contextlib.asynccontextmanager
async def lifespan(api):
    state["started"] = True
    yield


api = fastapi.FastAPI(lifespan=lifespan)


@api.get("/hello/{name}")
async def hello(name: str):
    return {"hello": name, "lifespan_ran": state["started"]}


app = hubbub.App(http=api)


@app.websocket("/echo")
async def echo(ws):
    async for message in ws:
        await ws.send(f"echo: {message}")
'''

FLASK_MODULE = '''
import flask
import hubbub

web = flask.Flask(__name__)


@web.get("/hello/<name>")
def hello(name):
    return flask.jsonify(hello=name, via="flask")


@web.post("/shout")
def shout():
    return flask.request.get_data(as_text=True).upper()


app = hubbub.App(http=web)


@app.websocket("/echo")
async def echo(ws):
    async for message in ws:
        await ws.send(f"echo: {message}")
'''


def run_module(tmp_path: Path, serve_process: Any, name: str, source: str) -> ServeProcess:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    return serve_process(f"{name}:app", command="run", env=env)


async def check_echo(port: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/echo") as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "echo: hi"


async def test_hubbub_run_hosts_a_fastapi_app(tmp_path: Path, serve_process: Any) -> None:
    server = run_module(tmp_path, serve_process, "fastapi_hosted", FASTAPI_MODULE)
    status, body = await ahttp("GET", f"http://127.0.0.1:{server.port}/hello/ann")
    assert status == 200, body
    assert json.loads(body) == {"hello": "ann", "lifespan_ran": True}
    await check_echo(server.port)
    # hubbub's own routes answer alongside; unknown paths are FastAPI's 404
    status, body = await ahttp("GET", f"http://127.0.0.1:{server.port}/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = await ahttp("GET", f"http://127.0.0.1:{server.port}/nope")
    assert (status, json.loads(body)) == (404, {"detail": "Not Found"})
    assert server.stop() == 0, server.output()


async def test_hubbub_run_hosts_a_flask_app(tmp_path: Path, serve_process: Any) -> None:
    pytest.importorskip("flask")
    server = run_module(tmp_path, serve_process, "flask_hosted", FLASK_MODULE)
    status, body = await ahttp("GET", f"http://127.0.0.1:{server.port}/hello/bob")
    assert status == 200, body
    assert json.loads(body) == {"hello": "bob", "via": "flask"}
    status, body = await ahttp("POST", f"http://127.0.0.1:{server.port}/shout", b"quiet please")
    assert (status, body) == (200, b"QUIET PLEASE")
    await check_echo(server.port)
    assert server.stop() == 0, server.output()


def http_headers(url: str) -> tuple[int, dict[str, str], str]:
    """A plain GET: status, lower-cased headers, body text (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


@pytest.mark.parametrize("mount", ["", "/rt"])
async def test_a_plain_get_on_a_websocket_path_under_asgi_is_426(mount: str) -> None:
    """Under uvicorn (the app itself, or mounted in FastAPI at /rt) a plain GET on a WebSocket
    path answered 404 (issue 28): now 426 with ``Upgrade: websocket``, naming the event stream
    a plain HTTP client can read, under the mount."""
    hub_app = echo_app()
    served: Any = hub_app
    if mount:
        served = fastapi.FastAPI(lifespan=hub_app.lifespan)
        served.mount(mount, hub_app)
    async with uvicorn_serving(served) as port:
        base = f"http://127.0.0.1:{port}{mount}"
        status, headers, body = await asyncio.to_thread(http_headers, f"{base}/ws/news")
        assert status == 426, body
        assert headers["upgrade"] == "websocket"
        assert f"{mount}/ws/news is a WebSocket endpoint" in body and "channel news" in body
        assert f"GET {mount}/sse/news" in body
        for path in ("/connection/websocket", "/echo"):
            status, headers, body = await asyncio.to_thread(http_headers, f"{base}{path}")
            assert (status, headers["upgrade"]) == (426, "websocket"), body
            assert f"{mount}/sse/{{channel}}" in body
        status, _, _ = await asyncio.to_thread(http_headers, f"{base}/nowhere")
        assert status == 404
        # the WebSocket path itself still upgrades
        async with websockets.connect(f"ws://127.0.0.1:{port}{mount}/echo") as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
