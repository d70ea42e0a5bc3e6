"""The framework: endpoints, hooks, path parameters, isolation, task ownership."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

import hubbub
from hubbub import App, ConnectResult, Disconnect, ProtocolError
from hubbub.errors import ConfigError

from .conftest import TIMEOUT, proto_client


@pytest.fixture
async def running() -> AsyncIterator[list[App]]:
    apps: list[App] = []
    yield apps
    for app in apps:
        await app.stop()


async def start(app: App, running: list[App]) -> str:
    await app.start()
    running.append(app)
    return f"ws://127.0.0.1:{app.server.port}"


def new_app(**settings: Any) -> App:
    return App(port=0, **settings)


async def test_class_endpoint_hooks_run_in_order(running: list[App]) -> None:
    app = new_app()
    events: list[str] = []
    disconnected = asyncio.Event()

    @app.websocket("/chat")
    class Chat:
        async def connect(self, ws: hubbub.WebSocket) -> None:
            events.append("connect")

        async def handle_message(self, ws: hubbub.WebSocket, message: str | bytes) -> None:
            events.append(f"message:{message!r}")
            await ws.send(f"got {message}")

        async def disconnect(self, ws: hubbub.WebSocket) -> None:
            events.append("disconnect")
            disconnected.set()

    assert app.websockets == {"/chat": Chat}  # the registry is inspectable
    url = await start(app, running)
    async with websockets.connect(f"{url}/chat") as ws:
        for i in range(5):
            await ws.send(str(i))
        await ws.send(b"\x01")
        replies = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(6)]
    assert replies == [f"got {i}" for i in range(5)] + ["got b'\\x01'"]
    await asyncio.wait_for(disconnected.wait(), TIMEOUT)
    assert events == ["connect"] + [f"message:{str(i)!r}" for i in range(5)] + ["message:b'\\x01'", "disconnect"]


async def test_function_endpoint_with_path_params_and_request(running: list[App]) -> None:
    app = new_app()

    @app.websocket("/rooms/{room}/users/{user}")
    async def handler(ws: hubbub.WebSocket) -> None:
        await ws.send(json.dumps({"params": ws.params, "query": ws.request.query,
                                  "agent": ws.request.headers.get("x-agent")}))
        async for message in ws:
            await ws.send(message.upper())

    url = await start(app, running)
    async with websockets.connect(f"{url}/rooms/lobby%201/users/ann?x=1",
                                  additional_headers={"X-Agent": "tester"}) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert first == {"params": {"room": "lobby 1", "user": "ann"}, "query": {"x": "1"}, "agent": "tester"}
        await ws.send("shout")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "SHOUT"


async def test_endpoint_subscribe_publish_and_hub_publish(running: list[App]) -> None:
    app = new_app()

    @app.websocket("/feed/{name}")
    class Feed:
        async def connect(self, ws: hubbub.WebSocket) -> None:
            await ws.subscribe(f"feed.{ws.params['name']}")

        async def handle_message(self, ws: hubbub.WebSocket, message: str | bytes) -> None:
            await ws.publish(f"feed.{ws.params['name']}", {"echo": message})

    url = await start(app, running)
    async with websockets.connect(f"{url}/feed/a") as a, websockets.connect(f"{url}/feed/a") as b:
        async with asyncio.timeout(TIMEOUT):
            while app.hub.channels().get("feed.a", 0) < 2:
                await asyncio.sleep(0.01)
        await app.hub.publish("feed.a", {"from": "hub"})
        assert json.loads(await asyncio.wait_for(a.recv(), TIMEOUT)) == {"from": "hub"}
        assert json.loads(await asyncio.wait_for(b.recv(), TIMEOUT)) == {"from": "hub"}
        await a.send("hi")
        assert json.loads(await asyncio.wait_for(b.recv(), TIMEOUT)) == {"echo": "hi"}
        # and protocol clients share the channel space
        proto = await proto_client(app.server)
        await proto.call("publish", {"channel": "feed.a", "data": "from protocol"})
        assert json.loads(await asyncio.wait_for(b.recv(), TIMEOUT)) == "from protocol"
        await proto.ws.close()


async def test_connect_may_reject_with_a_code(running: list[App]) -> None:
    app = new_app()

    @app.websocket("/guarded")
    class Guarded:
        async def connect(self, ws: hubbub.WebSocket) -> None:
            if ws.request.query.get("key") != "open-sesame":
                raise Disconnect(4001, "bad key")

        async def handle_message(self, ws: hubbub.WebSocket, message: str | bytes) -> None:
            await ws.send("welcome")

    url = await start(app, running)
    async with websockets.connect(f"{url}/guarded") as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert (ws.close_code, ws.close_reason) == (4001, "bad key")
    async with websockets.connect(f"{url}/guarded?key=open-sesame") as ws:
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "welcome"


async def test_handler_exception_closes_1011_and_is_isolated(running: list[App], caplog) -> None:
    app = new_app()

    @app.websocket("/fragile")
    class Fragile:
        async def handle_message(self, ws: hubbub.WebSocket, message: str | bytes) -> None:
            if message == "boom":
                raise RuntimeError("handler bug")
            await ws.send(f"ok {message}")

    url = await start(app, running)
    caplog.set_level(logging.ERROR, logger="hubbub.endpoint")
    async with websockets.connect(f"{url}/fragile") as good, websockets.connect(f"{url}/fragile") as bad:
        await bad.send("boom")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(bad.recv(), TIMEOUT)
        assert bad.close_code == 1011
        await good.send("still")
        assert await asyncio.wait_for(good.recv(), TIMEOUT) == "ok still"
    assert any("handler bug" in (r.exc_text or "") or (r.exc_info and "handler bug" in str(r.exc_info[1]))
               for r in caplog.records)


async def test_producer_and_consumer_cancel_each_other(running: list[App]) -> None:
    app = new_app()
    produced_cancelled = asyncio.Event()

    @app.websocket("/both")
    class Both:
        async def handle_message(self, ws: hubbub.WebSocket, message: str | bytes) -> None:
            await ws.send(f"echo {message}")

        async def produce(self, ws: hubbub.WebSocket) -> None:
            try:
                n = 0
                while True:
                    await ws.send(f"tick {n}")
                    n += 1
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                produced_cancelled.set()
                raise

    url = await start(app, running)
    async with websockets.connect(f"{url}/both") as ws:
        assert (await asyncio.wait_for(ws.recv(), TIMEOUT)).startswith("tick")
    await asyncio.wait_for(produced_cancelled.wait(), TIMEOUT)


@pytest.mark.slow
async def test_no_task_outlives_its_connection(running: list[App]) -> None:
    app = new_app()

    @app.websocket("/cycle")
    class Cycle:
        async def connect(self, ws: hubbub.WebSocket) -> None:
            await ws.subscribe("cycle")

        async def handle_message(self, ws: hubbub.WebSocket, message: str | bytes) -> None:
            await ws.send(message)

        async def produce(self, ws: hubbub.WebSocket) -> None:
            await asyncio.Event().wait()  # forever, until cancelled

    url = await start(app, running)

    async def settle() -> int:
        gc.collect()
        async with asyncio.timeout(TIMEOUT):
            while app.server.connections:
                await asyncio.sleep(0.01)
            for _ in range(3):
                await asyncio.sleep(0)
        return len(asyncio.all_tasks())

    before = await settle()
    for _ in range(1000):
        async with websockets.connect(f"{url}/cycle", ping_interval=None) as ws:
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "x"
    after = await settle()
    assert after == before, (before, after)
    assert app.hub.channels() == {}


# -- hub hooks -------------------------------------------------------------------------------


async def test_hub_hooks(running: list[App]) -> None:
    app = new_app(namespaces={"room": {"presence": True}})
    seen: asyncio.Queue[Any] = asyncio.Queue()

    @app.on_connect
    async def authenticate(request: hubbub.ConnectRequest) -> ConnectResult:
        if (request.data or {}).get("password") != "pw":
            raise Disconnect(4003, "wrong password")
        return ConnectResult(user=request.data["user"], info={"role": "tester"}, data={"motd": "hi"})

    @app.on_subscribe
    async def authorize(client: hubbub.ClientSession, channel: str, data: Any) -> Any:
        if channel == "room:secret":
            raise ProtocolError(103)
        return {"joined_as": client.user}

    @app.on_publish
    async def stamp(client: hubbub.ClientSession, channel: str, data: Any) -> Any:
        if data == "forbidden":
            raise ProtocolError(4000, "no forbidden words")
        return {"by": client.user, "data": data}

    @app.rpc("add")
    async def add(client: hubbub.ClientSession, data: Any) -> Any:
        return {"sum": data["a"] + data["b"]}

    @app.rpc("crash")
    async def crash(client: hubbub.ClientSession, data: Any) -> Any:
        raise RuntimeError("rpc bug")

    @app.on_message
    async def on_message(client: hubbub.ClientSession, data: Any) -> None:
        seen.put_nowait((client.user, data))

    await start(app, running)
    c = await proto_client(app.server, connect=False)
    reply = await c.call("connect", {"data": {"user": "ann", "password": "pw"}})
    assert reply["connect"]["data"] == {"motd": "hi"}
    assert (await c.call("subscribe", {"channel": "room:secret"}))["error"]["code"] == 103
    await c.call("subscribe", {"channel": "room:1"})
    presence = (await c.call("presence", {"channel": "room:1"}))["presence"]["presence"]
    (entry,) = presence.values()
    assert entry["chan_info"] == {"joined_as": "ann"} and entry["conn_info"] == {"role": "tester"}
    await c.call("publish", {"channel": "room:1", "data": "hello"})
    assert (await c.next_push())["pub"]["data"] == {"by": "ann", "data": "hello"}
    assert (await c.call("publish", {"channel": "room:1", "data": "forbidden"}))["error"] == {
        "code": 4000, "message": "no forbidden words"}
    assert (await c.call("rpc", {"method": "add", "data": {"a": 2, "b": 3}}))["rpc"] == {"data": {"sum": 5}}
    assert (await c.call("rpc", {"method": "nope"}))["error"]["code"] == 104
    assert (await c.call("rpc", {"method": "crash"}))["error"]["code"] == 100
    await c.send({"send": {"data": {"note": 1}}})
    assert await asyncio.wait_for(seen.get(), TIMEOUT) == ("ann", {"note": 1})
    await c.ws.close()
    bad = await proto_client(app.server, connect=False)
    await bad.send({"id": 1, "connect": {"data": {"user": "eve", "password": "guess"}}})
    assert (await bad.closed()) == (4003, "wrong password")


async def test_rpc_with_centrifuge_python(running: list[App]) -> None:
    from centrifuge import Client

    app = new_app()

    @app.rpc("echo")
    async def echo(client: hubbub.ClientSession, data: Any) -> Any:
        return data

    url = await start(app, running)
    client = Client(f"{url}/connection/websocket")
    await client.connect()
    try:
        result = await asyncio.wait_for(client.rpc("echo", {"x": [1, 2]}), TIMEOUT)
        assert result.data == {"x": [1, 2]}
    finally:
        await client.disconnect()


def test_registry_rejects_bad_endpoints() -> None:
    app = new_app()
    with pytest.raises(TypeError):
        app.add_websocket("/x", object())
    with pytest.raises(TypeError):
        app.add_websocket("/y", type("Empty", (), {}))

    def sync_handler(ws: Any) -> None: ...

    with pytest.raises(TypeError):
        app.add_websocket("/z", sync_handler)
    with pytest.raises(ValueError):
        app.add_websocket("no-slash", type("E", (), {"connect": None}))
    app.add_websocket("/ok", type("E", (), {"connect": None}))
    with pytest.raises(ConfigError, match="collides"):
        app.add_websocket("/ok", type("E", (), {"connect": None}))


async def test_publishing_from_an_app_that_is_not_running_raises_not_started(running: list[App]) -> None:
    """``App().hub.publish(...)`` on an app never started returned ``StreamPosition(offset=0, epoch='')``
    and the Django how-to's view answered ``{"published": "lost"}`` (issue 28): now it says what to start."""
    from hubbub.errors import NotStarted

    app = new_app()
    with pytest.raises(NotStarted) as raised:
        await app.hub.publish("news", {"headline": "lost"})
    message = str(raised.value)
    assert "not running" in message and "hubbub run MODULE:APP" in message and "lifespan" in message
    url = await start(app, running)
    async with websockets.connect(f"{url}/ws/news") as relay:
        await until_subscribed(app, "news")
        await app.hub.publish("news", {"headline": "kept"})
        assert await asyncio.wait_for(relay.recv(), TIMEOUT) == '{"headline":"kept"}'
    await app.stop()
    running.remove(app)
    with pytest.raises(NotStarted, match="stopped"):
        await app.hub.publish("news", 1)


async def until_subscribed(app: App, channel: str) -> None:
    from .conftest import until

    await until(lambda: app.hub.channels().get(channel, 0) > 0, f"a subscriber of {channel}")
