"""socket.io-client (npm) under Node against hubbub.socketio: the three transports, events, acks
both ways, binary attachments, rooms, namespaces, refusals, JWT auth, connection state recovery
after a forced reconnect, and two nodes on Redis with the client's polls alternating between them
(tests/js/socketio_driver.mjs)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

import hubbub.socketio as socketio

from .conftest import TIMEOUT, until
from .jsdeps import node_modules
from .redis_server import RedisServer, redis_server  # noqa: F401
from .test_socketio import SECRET, make_server

OPTS = {"websocket": {"transports": ["websocket"]}, "polling": {"transports": ["polling"]},
        "upgrade": {"transports": ["polling", "websocket"]}}


class Driver:
    """tests/js/socketio_driver.mjs: send commands, wait for the events they cause."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []
        self._reader = asyncio.ensure_future(self._read())
        self._ids = itertools.count()

    @classmethod
    async def start(cls) -> Driver:
        modules = node_modules()
        proc = await asyncio.create_subprocess_exec(
            "node", str(modules.parent / "socketio_driver.mjs"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        driver = cls(proc)
        await driver.expect(ev="ready")
        return driver

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            event = json.loads(line)
            self.events.append(event)
            self.seen.append(event)

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")

    async def expect(self, **match: Any) -> dict[str, Any]:
        """The first unconsumed event with these keys and values (consumed)."""
        found: list[dict[str, Any]] = []

        def look() -> bool:
            for event in self.events:
                if all(event.get(k) == v for k, v in match.items()):
                    self.events.remove(event)
                    found.append(event)
                    return True
            return False

        try:
            await until(look, f"{match} (seen: {self.seen[-8:]})", timeout=2 * TIMEOUT)
        except AssertionError:
            raise AssertionError(f"no {match}; seen: {self.seen}") from None
        return found[0]

    async def call(self, name: str, event: str, *args: Any) -> list[Any]:
        """Emit with an acknowledgement; its arguments."""
        ack = next(self._ids)
        self.send(op="emit", name=name, event=event, args=list(args), id=ack)
        reply = await self.expect(ev="ack", id=ack)
        assert reply["error"] is None, reply
        return list(reply["args"])

    async def close(self) -> None:
        self.send(op="exit")
        try:
            await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        except TimeoutError:
            self.proc.kill()
        self._reader.cancel()


@pytest.fixture
async def driver() -> AsyncIterator[Driver]:
    started = await Driver.start()
    yield started
    await started.close()


@pytest.fixture
async def sio_app() -> AsyncIterator[Callable[..., Any]]:
    apps: list[socketio.ASGIApp] = []

    async def start(sio: socketio.AsyncServer | None = None, **settings: Any) -> socketio.ASGIApp:
        settings.setdefault("port", 0)
        app = socketio.ASGIApp(sio or make_server(), config=settings)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop()


def b64(data: bytes) -> dict[str, str]:
    return {"$bin": base64.b64encode(data).decode()}


@pytest.mark.parametrize("transport", list(OPTS))
async def test_socket_io_client_flows(sio_app: Any, driver: Driver, transport: str) -> None:
    app = await sio_app()
    url = app.server.url
    driver.send(op="connect", name="a", url=url, opts={**OPTS[transport], "auth": {"name": "ann"}})
    connected = await driver.expect(ev="connect", name="a")
    if transport == "upgrade":
        await driver.expect(ev="upgrade", name="a")
        driver.send(op="transport", name="a")
        assert (await driver.expect(ev="transport", name="a"))["transport"] == "websocket"
    else:
        assert connected["transport"] == transport
    assert await driver.call("a", "echo", {"a": [1, "é"]}) == [{"a": [1, "é"]}]
    assert await driver.call("a", "echo", 1, "two", None) == [1, "two", None]
    blob = bytes(range(256)) * 64
    assert await driver.call("a", "echo", {"file": b64(blob), "more": [b64(b"x")]}) == [
        {"file": b64(blob), "more": [b64(b"x")]}]
    assert await driver.call("a", "ask_me", "life") == ["answer to life"]
    # rooms
    driver.send(op="connect", name="b", url=url, opts=OPTS[transport])
    b = await driver.expect(ev="connect", name="b")
    assert await driver.call("a", "join", "lobby") == [sorted(["lobby", connected["id"]])]
    await driver.call("b", "join", "lobby")
    driver.send(op="emit", name="a", event="shout", args=["lobby", "hi"])
    heard = await driver.expect(ev="event", name="b", event="heard")
    assert heard["args"] == [{"text": "hi", "from": connected["id"]}]
    # namespaces: /chat beside /, on the same Manager (one Engine.IO connection)
    driver.send(op="connect", name="c", url=url + "/chat", opts=OPTS[transport])
    await driver.expect(ev="connect", name="c")
    assert await driver.call("c", "say", "hello") == ["ok"]
    assert (await driver.expect(ev="event", name="c", event="said"))["args"] == ["hello"]
    # refusals
    driver.send(op="connect", name="d", url=url, opts={**OPTS[transport], "auth": {"refuse": True}})
    refused = await driver.expect(ev="connect_error", name="d")
    assert (refused["message"], refused["data"]) == ("go away", {"why": "asked"})
    driver.send(op="connect", name="e", url=url + "/nope", opts=OPTS[transport])
    assert (await driver.expect(ev="connect_error", name="e"))["message"] == "Invalid namespace"
    assert not [e for e in driver.seen if e["ev"] == "event" and e["name"] == "a" and e["event"] == "heard"]
    assert b["id"] != connected["id"]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socket_io_client_jwt(sio_app: Any, driver: Driver, transport: str) -> None:
    app = await sio_app(allow_anonymous=False, token_hmac_secret=SECRET)
    token = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    driver.send(op="connect", name="a", url=app.server.url, opts={**OPTS[transport], "auth": {"token": token}})
    await driver.expect(ev="connect", name="a")
    assert app.server.hub.user_connections("bob") == 1
    driver.send(op="connect", name="b", url=app.server.url, opts=OPTS[transport])
    refused = await driver.expect(ev="connect_error", name="b")
    assert refused["data"] == {"code": 3500}


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_connection_state_recovery_after_a_forced_reconnect(sio_app: Any, driver: Driver,
                                                                  transport: str) -> None:
    sio = socketio.AsyncServer()

    @sio.event
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        await sio.enter_room(sid, "news")

    app = await sio_app(sio, namespaces={"socketio": {"history_size": 100, "history_ttl": 600}})
    driver.send(op="connect", name="a", url=app.server.url, opts=OPTS[transport])
    first = await driver.expect(ev="connect", name="a")
    assert first["recovered"] is False
    await sio.emit("tick", 1, room="news")
    tick = await driver.expect(ev="event", name="a", event="tick")
    assert tick["args"][0] == 1 and isinstance(tick["args"][1], str)  # the offset, last
    driver.send(op="engineClose", name="a")
    await driver.expect(ev="disconnect", name="a")
    await until(lambda: not app.server.socketio.sessions or all(
        not s.namespaces for s in app.server.socketio.sessions.values()), "the server to see it go")
    await sio.emit("tick", 2, room="news")
    await sio.emit("tick", 3, room="news")
    again = await driver.expect(ev="connect", name="a")
    assert again["recovered"] is True and again["id"] == first["id"]
    assert [(await driver.expect(ev="event", name="a", event="tick"))["args"][0] for _ in range(2)] == [2, 3]
    await sio.emit("tick", 4, room="news")
    assert (await driver.expect(ev="event", name="a", event="tick"))["args"][0] == 4
    assert sorted(sio.rooms(first["id"])) == sorted(["news", first["id"]])  # the same rooms, recovered


class RoundRobin:
    """An HTTP proxy that sends each request to the next of several nodes (no sticky sessions)."""

    def __init__(self, targets: list[str]) -> None:
        self.targets = targets
        self.counts = [0] * len(targets)
        self._next = itertools.cycle(range(len(targets)))
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=4 * TIMEOUT))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # aiohttp's own site
        self.url = f"http://127.0.0.1:{port}"

    async def handle(self, request: web.Request) -> web.Response:
        index = next(self._next)
        self.counts[index] += 1
        async with self.session.request(request.method, self.targets[index] + request.path_qs,
                                        data=await request.read(),
                                        headers={"content-type": request.headers.get("content-type", "text/plain")}
                                        ) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                headers={"content-type": resp.headers.get("content-type", "text/plain")})

    async def close(self) -> None:
        await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()


async def test_two_nodes_on_redis_with_polls_alternating(sio_app: Any, driver: Driver,
                                                         redis_server: RedisServer) -> None:  # noqa: F811
    a = await sio_app(broker=redis_server.url)
    b = await sio_app(broker=redis_server.url)
    await until(lambda: a.server.cluster.peers() and b.server.cluster.peers(), "the nodes to know each other")
    proxy = RoundRobin([a.server.url, b.server.url])
    await proxy.start()
    try:
        driver.send(op="connect", name="x", url=proxy.url, opts=OPTS["polling"])
        x = await driver.expect(ev="connect", name="x")
        driver.send(op="connect", name="y", url=b.server.url, opts=OPTS["websocket"])
        await driver.expect(ev="connect", name="y")
        for n in range(6):
            assert await driver.call("x", "echo", n) == [n]
        assert await driver.call("x", "ask_me", "q") == ["answer to q"]
        # a room across nodes: y (on b) hears x (on whichever node holds it)
        await driver.call("x", "join", "lobby")
        await driver.call("y", "join", "lobby")
        driver.send(op="emit", name="x", event="shout", args=["lobby", "across"])
        heard = await driver.expect(ev="event", name="y", event="heard")
        assert heard["args"] == [{"text": "across", "from": x["id"]}]
        driver.send(op="emit", name="y", event="shout", args=["lobby", "back"])
        assert (await driver.expect(ev="event", name="x", event="heard"))["args"][0]["text"] == "back"
        assert min(proxy.counts) >= 5, proxy.counts  # both nodes served this client's requests
        owners = [len(app.server.socketio.sessions) for app in (a, b)]
        assert sorted(owners) == [1, 2] or owners == [1, 1] or sum(owners) == 2
    finally:
        await proxy.close()
