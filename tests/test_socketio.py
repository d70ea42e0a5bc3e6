"""Socket.IO on hubbub with python-socketio's own client (``socketio.AsyncClient``): the three
transports, events and acknowledgements both ways, binary attachments, rooms, namespaces,
authentication through the client core, the server API publishing to a room, and bad input
(a defined answer; the server goes on)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
import socketio as pysio  # python-socketio: the client side
import websockets

import hubbub.socketio as socketio

from .conftest import TIMEOUT, until
from .redis_server import RedisServer, redis_server  # noqa: F401

SECRET = "socketio-test-secret-of-at-least-32-bytes!"

TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"], "upgrade": ["polling", "websocket"]}


def make_server() -> socketio.AsyncServer:
    sio = socketio.AsyncServer(async_mode="asgi")

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        if isinstance(auth, dict) and auth.get("refuse"):
            raise socketio.ConnectionRefusedError("go away", {"why": "asked"})
        await sio.save_session(sid, {"auth": auth, "path": environ["PATH_INFO"]})

    @sio.event
    async def echo(sid: str, *args: Any) -> Any:
        return args if len(args) != 1 else args[0]

    @sio.event
    async def join(sid: str, room: str) -> list[str]:
        await sio.enter_room(sid, room)
        return sorted(sio.rooms(sid))

    @sio.event
    async def leave(sid: str, room: str) -> None:
        await sio.leave_room(sid, room)

    @sio.event
    async def shout(sid: str, room: str, text: str) -> None:
        await sio.emit("heard", {"text": text, "from": sid}, to=room, skip_sid=sid)

    @sio.event
    async def ask_me(sid: str, question: str) -> Any:
        return await sio.call("question", question, to=sid, timeout=TIMEOUT)

    @sio.event
    async def whoami(sid: str) -> Any:
        async with sio.session(sid) as session:
            session["asked"] = session.get("asked", 0) + 1
            return {"auth": session["auth"], "asked": session["asked"], "transport": sio.transport(sid)}

    @sio.on("*")
    async def other(event: str, sid: str, *args: Any) -> Any:
        return ["unhandled", event]

    class Chat(socketio.AsyncNamespace):
        async def on_connect(self, sid: str, environ: dict[str, Any]) -> None:
            await self.enter_room(sid, "everyone")

        async def on_say(self, sid: str, text: str) -> str:
            await self.emit("said", text, room="everyone")
            return "ok"

    sio.register_namespace(Chat("/chat"))
    return sio


@pytest.fixture
async def sio_app() -> AsyncIterator[Callable[..., Awaitable[socketio.ASGIApp]]]:
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


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Awaitable[pysio.AsyncClient]]]:
    made: list[pysio.AsyncClient] = []

    async def connect(url: str, transport: str = "websocket", **kw: Any) -> pysio.AsyncClient:
        client = pysio.AsyncClient(reconnection=False)
        made.append(client)
        await client.connect(url, transports=TRANSPORTS[transport], wait_timeout=TIMEOUT, **kw)
        return client

    yield connect
    for client in made:
        if client.connected:
            await client.disconnect()


class Reply:
    def __init__(self, status: int, text: str) -> None:
        self.status_code = status
        self.text = text

    def json(self) -> Any:
        return json.loads(self.text)


class Http:
    """A few HTTP requests with aiohttp (python-socketio's AsyncClient needs it anyway)."""

    async def __aenter__(self) -> Http:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.session.close()

    async def request(self, method: str, url: str, *, params: dict[str, str] | None = None,
                      content: bytes | None = None, json_body: Any = None, headers: dict[str, str] | None = None,
                      timeout: float = TIMEOUT) -> Reply:
        async with self.session.request(method, url, params=params, data=content, json=json_body,
                                        headers=headers) as resp:
            return Reply(resp.status, await resp.text())

    async def get(self, url: str, **kw: Any) -> Reply:
        return await self.request("GET", url, **kw)

    async def post(self, url: str, **kw: Any) -> Reply:
        return await self.request("POST", url, **kw)


def collector(client: pysio.AsyncClient, event: str, namespace: str = "/") -> list[Any]:
    got: list[Any] = []

    async def handler(*args: Any) -> None:
        got.append(args if len(args) != 1 else args[0])

    client.on(event, handler, namespace=namespace)
    return got


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_events_acks_binary_and_session(sio_app: Any, clients: Any, transport: str) -> None:
    app = await sio_app()
    client = await clients(app.server.url, transport, auth={"name": "ann"})
    if transport == "upgrade":
        await until(lambda: client.transport() == "websocket", "the upgrade to websocket")
    assert client.transport() == TRANSPORTS[transport][-1]
    assert await client.call("echo", {"a": [1, "é"]}, timeout=TIMEOUT) == {"a": [1, "é"]}
    assert await client.call("echo", (1, 2, 3), timeout=TIMEOUT) == (1, 2, 3)
    # binary attachments both ways, nested
    blob = bytes(range(256)) * 40
    assert await client.call("echo", {"file": blob, "parts": [b"x", b""]}, timeout=TIMEOUT) == {
        "file": blob, "parts": [b"x", b""]}
    # the server asks, the client acknowledges
    client.on("question", lambda q: f"answer to {q}")
    assert await client.call("ask_me", "life", timeout=TIMEOUT) == "answer to life"
    # the application's session dict, kept between events
    first = await client.call("whoami", timeout=TIMEOUT)
    second = await client.call("whoami", timeout=TIMEOUT)
    assert first["auth"] == {"name": "ann"} and (first["asked"], second["asked"]) == (1, 2)
    assert second["transport"] == ("polling" if transport == "polling" else "websocket")
    # the catch-all handler
    assert await client.call("nobody-handles-this", timeout=TIMEOUT) == ["unhandled", "nobody-handles-this"]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_rooms_span_clients_and_the_server_api(sio_app: Any, clients: Any, transport: str) -> None:
    app = await sio_app(api_path="/api", api_key="k")
    a, b, c = [await clients(app.server.url, transport) for _ in range(3)]
    heard = {name: collector(client, "heard") for name, client in (("a", a), ("b", b), ("c", c))}
    assert await a.call("join", "lobby", timeout=TIMEOUT) == sorted(["lobby", a.get_sid()])
    await b.call("join", "lobby", timeout=TIMEOUT)
    await a.emit("shout", ("lobby", "hi"))
    await until(lambda: heard["b"], "b to hear a")
    assert heard["b"] == [{"text": "hi", "from": a.get_sid()}]
    assert heard["a"] == [] and heard["c"] == []  # skip_sid, and c is not in the room
    # the server API publishes to the room's channel: {"event", "args"}
    async with Http() as http:
        reply = await http.post(f"{app.server.url}/api/publish", headers={"Authorization": "apikey k"},
                                json_body={"channel": "socketio:/:lobby", "data": {"event": "heard", "args": [{"api": 1}]}})
    assert reply.status_code == 200, reply.text
    await until(lambda: len(heard["a"]) == 1 and len(heard["b"]) == 2, "the API's event in the room")
    assert heard["a"] == [{"api": 1}] and heard["c"] == []
    # leave, then close the room for everyone
    await b.emit("leave", "lobby")
    await until(lambda: "socketio:/:lobby" not in next(iter(
        s for s in app.server.socketio.sessions.values() if b.get_sid() in {n.sid for n in s.namespaces.values()}
    )).channels, "b to leave")
    await app.socketio_server.emit("heard", "to the room", room="lobby")
    await until(lambda: len(heard["a"]) == 2, "a to hear the server")
    await app.socketio_server.close_room("lobby")
    await until(lambda: app.server.hub.subscribers("socketio:/:lobby") == [], "the room to close")
    assert len(heard["b"]) == 2


async def test_namespaces_on_one_connection(sio_app: Any, clients: Any) -> None:
    app = await sio_app()
    client = pysio.AsyncClient(reconnection=False)
    said = collector(client, "said", "/chat")
    await client.connect(app.server.url, namespaces=["/", "/chat"], transports=["websocket"], wait_timeout=TIMEOUT)
    try:
        assert client.get_sid("/") != client.get_sid("/chat")
        assert await client.call("say", "hello", namespace="/chat", timeout=TIMEOUT) == "ok"
        await until(lambda: said == ["hello"], "the namespace's room event")
        assert await client.call("echo", 5, timeout=TIMEOUT) == 5
        assert len(app.server.socketio.sessions) == 1  # one Engine.IO connection for both
    finally:
        await client.disconnect()


async def test_unknown_namespace_and_refused_connect(sio_app: Any) -> None:
    app = await sio_app()
    client = pysio.AsyncClient(reconnection=False)
    with pytest.raises(pysio.exceptions.ConnectionError, match="Invalid namespace|One or more namespaces"):
        await client.connect(app.server.url, namespaces=["/nope"], transports=["websocket"], wait_timeout=TIMEOUT)
    await client.disconnect()
    client = pysio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", lambda data: errors.append(data))
    with pytest.raises(pysio.exceptions.ConnectionError):
        await client.connect(app.server.url, auth={"refuse": True}, transports=["polling"], wait_timeout=TIMEOUT)
    await client.disconnect()
    assert errors == [{"message": "go away", "data": {"why": "asked"}}]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_jwt_in_auth_authenticates_through_the_client_core(sio_app: Any, clients: Any,
                                                                       transport: str) -> None:
    app = await sio_app(allow_anonymous=False, token_hmac_secret=SECRET)
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    client = await clients(app.server.url, transport, auth={"token": token})
    assert await client.call("echo", 1, timeout=TIMEOUT) == 1
    session = next(iter(app.server.socketio.sessions.values()))
    assert session.user == "alice" and app.server.hub.user_connections("alice") == 1
    for auth in ({}, {"token": "not-a-jwt"}):
        refused = pysio.AsyncClient(reconnection=False)
        errors: list[Any] = []
        refused.on("connect_error", errors.append)
        with pytest.raises(pysio.exceptions.ConnectionError):
            await refused.connect(app.server.url, auth=auth, transports=TRANSPORTS[transport], wait_timeout=TIMEOUT)
        await refused.disconnect()
        assert errors and errors[0]["data"] == {"code": 3500}


# -- bad input: a defined answer, and the server goes on -------------------------------------------


async def test_bad_engine_requests_get_engine_errors(sio_app: Any) -> None:
    app = await sio_app(max_message_size=1000)
    url = f"{app.server.url}/socket.io/"
    async with Http() as http:
        bad = [
            (await http.get(url, params={"EIO": "3", "transport": "polling"}), 400, 5),
            (await http.get(url, params={"EIO": "4", "transport": "carrier-pigeon"}), 400, 0),
            (await http.get(url, params={"EIO": "4", "transport": "polling", "sid": "nope"}), 400, 1),
            (await http.post(url, params={"EIO": "4", "transport": "polling"}, content=b"40"), 400, 2),
        ]
        for reply, status, code in bad:
            assert (reply.status_code, reply.json()["code"]) == (status, code), reply.text
        opened = await http.get(url, params={"EIO": "4", "transport": "polling"})
        assert opened.text[0] == "0"
        handshake = json.loads(opened.text[1:])
        assert handshake["upgrades"] == ["websocket"] and handshake["maxPayload"] == 1000
        assert handshake["pingInterval"] == 25000
        sid = handshake["sid"]
        params = {"EIO": "4", "transport": "polling", "sid": sid}
        # an oversized payload: 413, and the session is closed
        reply = await http.post(url, params=params, content=b"4" + b"x" * 2000)
        assert reply.status_code == 413
        assert app.server.socketio.sessions == {}
        # a malformed payload: 400 and the session is closed
        sid = json.loads((await http.get(url, params={"EIO": "4", "transport": "polling"})).text[1:])["sid"]
        params["sid"] = sid
        reply = await http.post(url, params=params, content=b"9garbage")
        assert reply.status_code == 400
        assert (await http.get(url, params=params)).text.endswith("1")  # the close packet
        # a malformed Socket.IO packet inside a good payload closes it too
        sid = json.loads((await http.get(url, params={"EIO": "4", "transport": "polling"})).text[1:])["sid"]
        params["sid"] = sid
        assert (await http.post(url, params=params, content=b"42[not json")).status_code == 200
        assert (await http.get(url, params=params)).text.endswith("1")
        assert app.server.socketio.sessions == {}


async def test_malformed_websocket_packets_close_the_connection(sio_app: Any, clients: Any) -> None:
    app = await sio_app()
    ws_url = f"ws://127.0.0.1:{app.server.port}/socket.io/?EIO=4&transport=websocket"
    for bad in ("42[", "4{}", '43["x"]', "9", "47-[]", "42[\"connect\"]", "40/x:y,"):
        async with websockets.connect(ws_url) as ws:
            assert (await ws.recv()).startswith("0{")
            await ws.send("40")
            assert (await ws.recv()).startswith("40{")
            await ws.send(bad)
            try:
                while True:
                    message = await asyncio.wait_for(ws.recv(), TIMEOUT)
                    assert message != "" and bad != "40/x:y," or message.startswith("44/x:y,")
                    if bad == "40/x:y,":
                        break
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 3501, bad
    client = await clients(app.server.url)  # the server goes on
    assert await client.call("echo", "still here", timeout=TIMEOUT) == "still here"


async def close_code(ws: Any) -> tuple[int | None, list[str]]:
    """The close code of ``ws`` and the messages before it."""
    messages = []
    try:
        while True:
            messages.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
    except websockets.ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd is not None else None), messages


async def test_attachments_that_never_arrive_close_the_connection(sio_app: Any, clients: Any) -> None:
    app = await sio_app(socketio_attachment_timeout=0.2, socketio_max_attachments=2)
    ws_url = f"ws://127.0.0.1:{app.server.port}/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(ws_url) as ws:
        await ws.recv()
        await ws.send("40")
        await ws.recv()
        await ws.send('451-["echo",{"_placeholder":true,"num":0}]')
        assert await close_code(ws) == (3501, ["41"])  # DISCONNECT: the client does not reconnect
    async with websockets.connect(ws_url) as ws:  # more attachments than allowed
        await ws.recv()
        await ws.send("40")
        await ws.recv()
        await ws.send('453-["echo",1]')
        assert await close_code(ws) == (3501, ["41"])
    client = await clients(app.server.url)
    assert await client.call("echo", b"\x00bin", timeout=TIMEOUT) == b"\x00bin"


async def test_a_client_that_never_connects_a_namespace_is_closed(sio_app: Any) -> None:
    app = await sio_app(connect_timeout=0.3)
    async with Http() as http:
        url = f"{app.server.url}/socket.io/"
        sid = json.loads((await http.get(url, params={"EIO": "4", "transport": "polling"})).text[1:])["sid"]
        reply = await http.get(url, params={"EIO": "4", "transport": "polling", "sid": sid}, timeout=TIMEOUT)
        assert reply.text.endswith("1")
    assert app.server.socketio.sessions == {}


async def test_polling_sessions_are_pinged_and_dropped_without_pong(sio_app: Any) -> None:
    app = await sio_app(ping_interval=0.5, pong_timeout=0.3)
    async with Http() as http:
        url = f"{app.server.url}/socket.io/"
        opened = json.loads((await http.get(url, params={"EIO": "4", "transport": "polling"})).text[1:])
        assert (opened["pingInterval"], opened["pingTimeout"]) == (500, 300)
        params = {"EIO": "4", "transport": "polling", "sid": opened["sid"]}
        await http.post(url, params=params, content=b"40")
        assert (await http.get(url, params=params, timeout=TIMEOUT)).text.startswith("40{")
        assert (await http.get(url, params=params, timeout=TIMEOUT)).text == "2"  # ping
        await http.post(url, params=params, content=b"3")
        assert (await http.get(url, params=params, timeout=TIMEOUT)).text == "2"  # the next one
        # no pong this time: closed
        await until(lambda: app.server.socketio.sessions == {}, "the session without pong to end")


async def test_output_waiting_for_a_poll_is_bounded(sio_app: Any) -> None:
    sio = make_server()
    app = await sio_app(sio, max_pending_output=4096)
    async with Http() as http:
        url = f"{app.server.url}/socket.io/"
        sid = json.loads((await http.get(url, params={"EIO": "4", "transport": "polling"})).text[1:])["sid"]
        params = {"EIO": "4", "transport": "polling", "sid": sid}
        await http.post(url, params=params, content=b"40")
        connected = (await http.get(url, params=params)).text
        assert connected.startswith("40{")
        client_sid = json.loads(connected[2:])["sid"]
        for n in range(100):  # the client does not poll meanwhile: 100 x ~120 bytes > 4 KiB
            await sio.emit("flood", {"n": n, "blob": "x" * 100}, to=client_sid)
        await until(lambda: app.server.socketio.sessions == {}, "the session over the bound to end")  # 3008
        assert (app.hub.stats.slow, app.hub.stats.disconnects[3008]) == (1, 1)  # counted as a slow WebSocket is
        reply = await http.get(url, params=params)  # what waited is dropped: the close packet alone
        assert (reply.status_code, reply.text) == (200, "1")
        reply = await http.get(url, params=params)
        assert (reply.status_code, reply.json()["code"]) == (400, 1)


async def test_websocket_sessions_are_pinged_and_closed_without_pong(sio_app: Any, clients: Any) -> None:
    app = await sio_app(ping_interval=0.4, pong_timeout=0.2)
    answering = await clients(app.server.url)  # python-socketio answers every ping
    ws_url = f"ws://127.0.0.1:{app.server.port}/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(ws_url) as ws:
        opened = json.loads((await ws.recv())[1:])
        assert (opened["pingInterval"], opened["pingTimeout"], opened["upgrades"]) == (400, 200, [])
        await ws.send("40")
        assert (await ws.recv()).startswith("40{")
        code, messages = await close_code(ws)  # it never answers "2"
    assert (code, messages) == (3012, ["2"])
    assert await answering.call("echo", "alive", timeout=TIMEOUT) == "alive"  # pinged too, and still here


@pytest.mark.slow  # two nodes on a real Redis
async def test_an_upgrade_that_reaches_another_node_is_refused_and_polling_goes_on(
        sio_app: Any, redis_server: RedisServer) -> None:  # noqa: F811
    """No sticky sessions: node ``b`` does not hold node ``a``'s session, so its WebSocket upgrade
    is refused (400: Engine.IO clients then stay on long-polling), while polls on either node still
    reach the session (forwarded to ``a``)."""
    a = await sio_app(broker=redis_server.url)
    b = await sio_app(broker=redis_server.url)
    await until(lambda: a.server.cluster.peers() and b.server.cluster.peers(), "the nodes to know each other")
    async with Http() as http:
        opened = (await http.get(f"{a.server.url}/socket.io/", params={"EIO": "4", "transport": "polling"})).text
        sid = json.loads(opened[1:])["sid"]
        params = {"EIO": "4", "transport": "polling", "sid": sid}
        assert (await http.post(f"{b.server.url}/socket.io/", params=params, content=b"40")).text == "ok"
        assert (await http.get(f"{b.server.url}/socket.io/", params=params)).text.startswith("40{")
        upgrade = f"ws://127.0.0.1:{b.server.port}/socket.io/?EIO=4&transport=websocket&sid={sid}"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(upgrade, open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 400
        session = a.server.socketio.sessions[sid]
        assert session.polling and not session.closed  # the refused upgrade left it as it was
        for node in (b, a):  # polling goes on, through either node
            await http.post(f"{node.server.url}/socket.io/", params=params, content=b'421["echo","on"]')
            assert (await http.get(f"{node.server.url}/socket.io/", params=params)).text == '431["on"]'
