"""The Protobuf protocol on /connection/websocket, over real sockets.

Independent clients: centrifuge-python with ``use_protobuf=True`` (here),
centrifuge-js in Protobuf mode under Node (``tests/js/interop.cjs protobuf``),
and raw Protobuf frames built with the SDK's own generated schema
(``centrifuge.protocol.client_pb2``, not hubbub's), sent with ``websockets``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import websockets

import hubbub
from hubbub.server import Server

from . import pbframes
from .conftest import TIMEOUT, proto_client, ws_url
from .jsdeps import node_modules
from .pbframes import frame
from .redis_server import RedisServer, redis_server  # noqa: F401

SECRET = "protobuf-test-secret-" + "s" * 48
API_KEY = "protobuf-api-key"


def token(user: str, ttl: float = 3600, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl), **claims}, SECRET, algorithm="HS256")


def chat_app(**settings: Any) -> hubbub.App:
    """Recoverable, presence-enabled namespace ``chat``; rpcs ``echo`` and ``kick``."""
    app = hubbub.App(port=0, api_key=API_KEY, token_hmac_secret=SECRET, allow_anonymous=True, namespaces={
        "chat": {"history_size": 100, "history_ttl": 600, "force_recovery": True,
                 "presence": True, "join_leave": True},
        "private": {"require_subscription_token": True},
    }, client_expired_sub_close_delay=0, **settings)

    @app.rpc("echo")
    async def echo(client: Any, data: Any) -> Any:
        return {"echo": data} if not isinstance(data, bytes) else data[::-1]

    @app.rpc("kick")
    async def kick(client: Any, data: Any) -> Any:
        client.disconnect(3011, "kicked by test")
        return {}

    return app


@pytest.fixture
async def app() -> AsyncIterator[hubbub.App]:
    application = chat_app()
    await application.start()
    yield application
    await application.stop()


def api(server: Server, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/{method}", data=json.dumps(body).encode(),
                                 method="POST", headers={"X-API-Key": API_KEY})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def api_call(server: Server, method: str, body: dict[str, Any]) -> Any:
    status, answer = await asyncio.to_thread(api, server, method, body)
    assert status == 200, answer
    return answer


# -- raw frames with the SDK's schema -------------------------------------------------------------


def _pb() -> Any:
    from centrifuge.protocol import client_pb2

    return client_pb2


def replies(payload: bytes) -> list[Any]:
    return pbframes.read_replies(payload, _pb().Reply)


class RawClient:
    """A Protobuf client of raw frames: commands in, replies out."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: list[Any] = []
        self.pushes: list[Any] = []  # met while waiting for a reply

    @classmethod
    async def open(cls, server: Server, query: str = "", subprotocols: list[str] | None = None) -> RawClient:
        if subprotocols is None:
            subprotocols = ["centrifuge-protobuf"]
        ws = await websockets.connect(ws_url(server) + query, subprotocols=subprotocols or None)
        return cls(ws)

    async def send(self, *commands: Any) -> None:
        await self.ws.send(frame(*commands))

    async def recv(self) -> Any:
        while not self.pending:
            payload = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            assert isinstance(payload, bytes), "Protobuf replies travel in binary frames"
            self.pending.extend(replies(payload))
        return self.pending.pop(0)

    async def call(self, _method: str, **fields: Any) -> Any:
        pb = _pb()
        self.next_id += 1
        command = pb.Command(id=self.next_id)
        getattr(command, _method).SetInParent()
        for key, value in fields.items():
            setattr(getattr(command, _method), key, value)
        await self.send(command)
        while True:
            reply = await self.recv()
            if reply.id == self.next_id:
                return reply
            if reply.HasField("push"):
                self.pushes.append(reply.push)

    async def push(self, kind: str = "pub") -> Any:
        """The next push of ``kind`` (others are skipped)."""
        while self.pushes:
            push = self.pushes.pop(0)
            if push.HasField(kind):
                return push
        while True:
            reply = await self.recv()
            if reply.id == 0 and reply.HasField("push") and reply.push.HasField(kind):
                return reply.push

    async def closed(self) -> tuple[int, str]:
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason

    async def close(self) -> None:
        await self.ws.close()


async def test_subprotocol_is_answered_and_commands_are_batched(app: hubbub.App) -> None:
    pb = _pb()
    c = await RawClient.open(app.server)
    try:
        assert c.ws.response.headers["Sec-WebSocket-Protocol"] == "centrifuge-protobuf"
        connect = pb.Command(id=1)
        connect.connect.SetInParent()
        sub = pb.Command(id=2)
        sub.subscribe.channel = "chat:batch"
        ping = pb.Command(id=3)
        ping.ping.SetInParent()
        await c.ws.send(frame(connect, sub, ping))
        payload = await asyncio.wait_for(c.ws.recv(), TIMEOUT)
        got = replies(payload)  # several replies in one binary frame
        assert [r.id for r in got] == [1, 2, 3]
        assert got[0].connect.client and got[0].connect.pong and got[0].connect.ping == 25
        assert got[1].subscribe.recoverable and got[1].subscribe.epoch
        assert got[2].HasField("ping")
    finally:
        await c.close()


@pytest.mark.parametrize("query", ["?format=protobuf", "?cf_protocol=protobuf"])
async def test_query_parameter_selects_protobuf(app: hubbub.App, query: str) -> None:
    c = await RawClient.open(app.server, query, subprotocols=[])
    try:
        assert c.ws.response.headers.get("Sec-WebSocket-Protocol") is None
        reply = await c.call("connect")
        assert reply.connect.client
    finally:
        await c.close()


async def test_centrifuge_json_subprotocol_speaks_json(app: hubbub.App) -> None:
    async with websockets.connect(ws_url(app.server), subprotocols=["centrifuge-json"]) as ws:
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "centrifuge-json"
        await ws.send('{"id":1,"connect":{}}')
        assert "connect" in json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


@pytest.mark.parametrize("query,subprotocols,text", [
    ("", ["mqtt"], "unsupported WebSocket subprotocol mqtt"),
    ("?format=xml", None, "unknown format='xml'"),
    ("?cf_protocol=msgpack", None, "unknown cf_protocol='msgpack'"),
    ("?format=json", ["centrifuge-protobuf"], "contradicts"),
], ids=["subprotocol", "format", "cf_protocol", "conflict"])
async def test_unknown_subprotocol_or_format_is_refused_with_400(app: hubbub.App, query: str,
                                                                 subprotocols: list[str] | None, text: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as exc:
        await websockets.connect(ws_url(app.server) + query, subprotocols=subprotocols)
    response = exc.value.response
    assert response.status_code == 400
    assert text in response.body.decode()


@pytest.mark.parametrize("payload,reason", [
    (b"\x05\x08\x01", "truncated command"),
    (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "malformed length prefix"),
    (b"\x80", "truncated length prefix"),
    (b"\x03\xff\xff\xff", "malformed Protobuf command"),
], ids=["truncated", "long-varint", "cut-varint", "garbage"])
async def test_bad_frames_close_with_3501(app: hubbub.App, payload: bytes, reason: str) -> None:
    c = await RawClient.open(app.server)
    await c.call("connect")
    await c.ws.send(payload)
    assert await c.closed() == (3501, reason)


async def test_errors_are_error_replies(app: hubbub.App) -> None:
    c = await RawClient.open(app.server)
    try:
        await c.call("connect")
        reply = await c.call("subscribe", channel="nope:x")
        assert reply.error.code == 102 and reply.error.message
        reply = await c.call("rpc", method="missing")
        assert reply.error.code == 104
        reply = await c.call("publish", channel="chat:e")  # no data
        assert reply.error.code == 107
        reply = await c.call("sub_refresh", channel="chat:e", token="x")
        assert reply.error.code == 103  # not subscribed
    finally:
        await c.close()


async def test_send_unsubscribe_refresh_and_connect_data() -> None:
    """The commands the other tests do not reach: send (to the on_message hook),
    unsubscribe, refresh, and connect data both ways."""
    app = chat_app()
    messages: asyncio.Queue = asyncio.Queue()
    seen: list[Any] = []

    @app.on_message
    async def on_message(client: Any, data: Any) -> None:
        messages.put_nowait(data)

    @app.on_connect
    async def on_connect(request: Any) -> Any:
        seen.append(request.data)
        return hubbub.ConnectResult(user=request.result.user, data={"hello": request.data},
                                    expire_at=request.result.expire_at)

    await app.start()
    c = await RawClient.open(app.server)
    try:
        reply = await c.call("connect", token=token("dan", ttl=60), data=b'{"v": 2}')
        assert seen == [{"v": 2}]  # the hook gets the JSON value
        assert json.loads(reply.connect.data) == {"hello": {"v": 2}}
        assert reply.connect.expires and 50 <= reply.connect.ttl <= 60
        command = _pb().Command()
        command.send.data = b'"fire and forget"'
        await c.send(command)  # no id, no reply
        assert await asyncio.wait_for(messages.get(), TIMEOUT) == "fire and forget"
        command = _pb().Command()
        command.send.data = b"\x01\x02"
        await c.send(command)
        assert await asyncio.wait_for(messages.get(), TIMEOUT) == b"\x01\x02"  # not JSON: bytes
        assert not (await c.call("subscribe", channel="chat:u")).HasField("error")
        assert (await c.call("unsubscribe", channel="chat:u")).HasField("unsubscribe")
        assert "chat:u" not in next(iter(app.hub.user_sessions("dan"))).channels
        refreshed = await c.call("refresh", token=token("dan", ttl=3600))
        assert refreshed.refresh.expires and refreshed.refresh.ttl > 3000 and refreshed.refresh.client
    finally:
        await c.close()
        await app.stop()


async def test_command_before_connect_is_3501(app: hubbub.App) -> None:
    c = await RawClient.open(app.server)
    await c.send(_ping_command())
    assert (await c.closed())[0] == 3501


def _ping_command() -> Any:
    command = _pb().Command(id=1)
    command.ping.SetInParent()
    return command


async def test_server_ping_is_an_empty_reply_and_empty_command_is_a_pong(start_server) -> None:
    server = await start_server(ping_interval=0.5, pong_timeout=0.3)
    c = await RawClient.open(server)
    try:
        assert (await c.call("connect")).connect.ping == 1
        ping = await c.recv()  # the server's ping: an empty Reply
        assert ping.ByteSize() == 0
        await c.ws.send(b"\x00")  # an empty Command: the pong
        ping = await c.recv()  # still connected: pinged again, not closed with 3012
        assert ping.ByteSize() == 0
    finally:
        await c.close()


# -- JSON and Protobuf on one channel ------------------------------------------------------------------


async def json_pub(client: Any) -> dict[str, Any]:
    """The next publication a JSON client receives (joins and leaves skipped)."""
    while True:
        push = await client.next_push()
        if "pub" in push:
            return push["pub"]


async def test_json_and_protobuf_publications_reach_each_other(app: hubbub.App, clients: list) -> None:
    server = app.server
    j = await proto_client(server)
    clients.append(j)
    p = await RawClient.open(server)
    try:
        await p.call("connect")
        await p.call("subscribe", channel="chat:mix")
        await j.call("subscribe", {"channel": "chat:mix"})
        # JSON -> Protobuf: the publication's JSON bytes, as they are
        await j.call("publish", {"channel": "chat:mix", "data": {"n": 1, "s": "é"}})
        push = await p.push()
        assert push.channel == "chat:mix" and push.pub.offset == 1
        assert push.pub.data == '{"n":1,"s":"é"}'.encode()
        assert push.pub.info.client == j.client_id
        assert (await json_pub(j))["data"] == {"n": 1, "s": "é"}
        # Protobuf JSON bytes -> JSON: an embedded value; the bytes stay as sent
        reply = await p.call("publish", channel="chat:mix", data=b'{"m": [1, 2]}')
        assert not reply.HasField("error")
        assert (await json_pub(j))["data"] == {"m": [1, 2]}
        assert (await p.push()).pub.data == b'{"m": [1, 2]}'
        # Protobuf binary -> JSON: a base64 string; Protobuf subscribers get the bytes
        binary = bytes(range(256))
        await p.call("publish", channel="chat:mix", data=binary)
        assert (await json_pub(j))["data"] == base64.b64encode(binary).decode()
        assert (await p.push()).pub.data == binary
        # history keeps each form for each format
        history = await p.call("history", channel="chat:mix", limit=-1)
        assert [pub.data for pub in history.history.publications] == [
            '{"n":1,"s":"é"}'.encode(), b'{"m": [1, 2]}', binary]
        jhistory = await j.call("history", {"channel": "chat:mix", "limit": -1})
        assert [pub["data"] for pub in jhistory["history"]["publications"]] == [
            {"n": 1, "s": "é"}, {"m": [1, 2]}, base64.b64encode(binary).decode()]
        # the server API's b64data reaches Protobuf clients as bytes
        await api_call(server, "publish", {"channel": "chat:mix", "b64data": base64.b64encode(b"\x00\x01").decode()})
        assert (await p.push()).pub.data == b"\x00\x01"
        assert (await json_pub(j))["data"] == "AAE="
    finally:
        await p.close()


async def test_relay_and_protobuf_share_a_channel(app: hubbub.App) -> None:
    server = app.server
    p = await RawClient.open(server)
    try:
        await p.call("connect")
        await p.call("subscribe", channel="chat:relay")
        async with websockets.connect(ws_url(server, "/ws/chat:relay")) as relay:
            await relay.send("plain text")
            assert (await p.push()).pub.data == b"plain text"
            await relay.send(b"\x01\x02")
            assert (await p.push()).pub.data == b"\x01\x02"
            await p.call("publish", channel="chat:relay", data=b"\xfe\xff")
            got = [await asyncio.wait_for(relay.recv(), TIMEOUT) for _ in range(3)]
            assert got == ["plain text", b"\x01\x02", b"\xfe\xff"]
    finally:
        await p.close()


async def test_one_encoding_per_codec_for_many_subscribers(app: hubbub.App, clients: list) -> None:
    server = app.server
    raws = [await RawClient.open(server) for _ in range(3)]
    jsons = [await proto_client(server) for _ in range(3)]
    clients.extend(jsons)
    try:
        for c in raws:
            await c.call("connect")
            await c.call("subscribe", channel="chat:once")
        for c in jsons:
            await c.call("subscribe", {"channel": "chat:once"})
        wires = {w for w, _ in server.hub._channels["chat:once"].by_wire.items()}
        assert len(wires) == 2  # one JSON wire, one Protobuf wire for six subscribers
        from hubbub.protobuf_codec import ProtobufCodec

        calls = 0
        original = ProtobufCodec.encode_publication

        def counting(self: Any, channel: str, pub: Any) -> bytes:
            nonlocal calls
            calls += 1
            return original(self, channel, pub)

        ProtobufCodec.encode_publication = counting  # type: ignore[method-assign]
        try:
            await api_call(server, "publish", {"channel": "chat:once", "data": {"x": 1}})
            for c in raws:
                assert (await c.push()).pub.data == b'{"x":1}'
        finally:
            ProtobufCodec.encode_publication = original  # type: ignore[method-assign]
        assert calls == 1
    finally:
        for c in raws:
            await c.close()


# -- centrifuge-python with use_protobuf=True -------------------------------------------------------


async def test_centrifuge_python_protobuf_full_cycle(app: hubbub.App) -> None:
    from centrifuge import (
        Client,
        ClientEventHandler,
        ConnectedContext,
        PublicationContext,
        SubscribedContext,
        SubscriptionEventHandler,
    )

    server = app.server
    pubs: asyncio.Queue = asyncio.Queue()
    subscribed: asyncio.Queue = asyncio.Queue()
    connected: asyncio.Queue = asyncio.Queue()
    tokens = 0

    class Events(ClientEventHandler):
        async def on_connected(self, ctx: ConnectedContext) -> None:
            connected.put_nowait(ctx)

    class SubEvents(SubscriptionEventHandler):
        async def on_publication(self, ctx: PublicationContext) -> None:
            pubs.put_nowait(ctx.pub)

        async def on_subscribed(self, ctx: SubscribedContext) -> None:
            subscribed.put_nowait(ctx)

    async def get_token() -> str:
        nonlocal tokens
        tokens += 1
        return token("alice", ttl=2 if tokens == 1 else 3600)

    client = Client(ws_url(server), events=Events(), get_token=get_token, use_protobuf=True,
                    min_reconnect_delay=0.05, max_reconnect_delay=0.2)
    sub = client.new_subscription("chat:py", SubEvents())
    json_client = await proto_client(server)
    try:
        await client.connect()
        await sub.subscribe()
        await asyncio.wait_for(client.ready(), TIMEOUT)
        first = await asyncio.wait_for(subscribed.get(), TIMEOUT)
        assert first.recoverable and not first.was_recovering
        # publish from the client (bytes), from the API and from a JSON client
        await sub.publish(b'{"from":"python"}')
        await api_call(server, "publish", {"channel": "chat:py", "data": {"from": "api"}})
        await json_client.call("publish", {"channel": "chat:py", "data": {"from": "json"}})
        got = [await asyncio.wait_for(pubs.get(), TIMEOUT) for _ in range(3)]
        assert [json.loads(p.data) for p in got] == [{"from": "python"}, {"from": "api"}, {"from": "json"}]
        assert [p.offset for p in got] == [1, 2, 3]
        assert got[0].info.user == "alice"
        # history, presence, presence stats
        history = await sub.history(limit=10)
        assert [json.loads(p.data) for p in history.publications] == [{"from": "python"}, {"from": "api"},
                                                                      {"from": "json"}]
        presence = await sub.presence()
        assert [info.user for info in presence.clients.values()] == ["alice"]
        stats = await sub.presence_stats()
        assert (stats.num_clients, stats.num_users) == (1, 1)
        # rpc: JSON data in, JSON data out; binary in, binary out
        assert json.loads((await client.rpc("echo", b'{"a":1}')).data) == {"echo": {"a": 1}}
        assert (await client.rpc("echo", b"\x00\xff")).data == b"\xff\x00"
        # the first token expires after 2 s: the SDK refreshes it (the refresh command)
        # and the connection outlives the first token's expiry
        async with asyncio.timeout(TIMEOUT):
            while tokens < 2:
                await asyncio.sleep(0.02)
        conn = next(c for c in server.websockets if getattr(c.session, "client_id", "") == client.client_id)
        async with asyncio.timeout(TIMEOUT):
            while conn.session is not None and (conn.session.expire_at or 0) < time.time() + 60:
                await asyncio.sleep(0.02)
        # recovery after a forced reconnect
        conn.close(3011, "force reconnect")
        async with asyncio.timeout(TIMEOUT):
            while conn in server.websockets:
                await asyncio.sleep(0.01)
        await api_call(server, "publish", {"channel": "chat:py", "data": {"missed": 1}})
        await json_client.call("publish", {"channel": "chat:py", "data": {"missed": 2}})
        second = await asyncio.wait_for(subscribed.get(), TIMEOUT)
        assert second.was_recovering and second.recovered
        missed = [await asyncio.wait_for(pubs.get(), TIMEOUT) for _ in range(2)]
        assert [json.loads(p.data) for p in missed] == [{"missed": 1}, {"missed": 2}]
        assert [p.offset for p in missed] == [4, 5]
        assert pubs.empty()
    finally:
        await client.disconnect()
        await json_client.ws.close()


# -- centrifuge-js in Protobuf mode, under Node -----------------------------------------------------------


async def test_centrifuge_js_protobuf_under_node(app: hubbub.App) -> None:
    modules = node_modules()
    port = app.server.port
    proc = await asyncio.create_subprocess_exec(
        "node", str(modules.parent / "interop.cjs"), f"ws://127.0.0.1:{port}/connection/websocket",
        "chat:nodepb", "protobuf", f"http://127.0.0.1:{port}/api", API_KEY, token("bob", ttl=2),
        token("bob"), "private:nodepb", token("bob", ttl=2, channel="private:nodepb"),
        token("bob", channel="private:nodepb"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 4 * TIMEOUT)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert [p["data"] for p in result["got"]] == [{"n": 1}, {"n": "api"}, {"n": 2}, {"n": 3}, {"n": 4}]
    assert [p["offset"] for p in result["got"]] == [1, 2, 3, 4, 5]
    assert result["subscribed"][1] == {"recovered": True, "wasRecovering": True}
    assert result["reconnectCode"] == 3011
    assert result["presenceClients"] == 1 and result["numClients"] == 1
    assert result["history"] == [{"n": 1}, {"n": "api"}]
    assert result["rpc"] == {"echo": {"q": 1}}
    assert result["refreshed"] >= 2
    assert result["subRefreshed"] == 2 and result["privateData"] == {"private": True}
    assert result["privateSubscribed"] == 1  # refreshed in place (sub_refresh), not resubscribed


# -- under an ASGI server (uvicorn) ------------------------------------------------------------------------


async def test_protobuf_through_asgi_under_uvicorn() -> None:
    from centrifuge import Client, PublicationContext, SubscriptionEventHandler

    from .test_asgi import uvicorn_serving

    app = chat_app()
    received: asyncio.Queue = asyncio.Queue()

    class Handler(SubscriptionEventHandler):
        async def on_publication(self, ctx: PublicationContext) -> None:
            received.put_nowait(ctx.pub.data)

    async with uvicorn_serving(app) as port:
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        # the subprotocol is answered in uvicorn's 101 (the ASGI accept names it)
        async with websockets.connect(url, subprotocols=["centrifuge-protobuf"]) as ws:
            assert ws.response.headers["Sec-WebSocket-Protocol"] == "centrifuge-protobuf"
        # an unknown one is refused before accept
        with pytest.raises(websockets.InvalidStatus) as exc:
            await websockets.connect(url, subprotocols=["mqtt"])
        assert exc.value.response.status_code in (400, 403)  # 403 where the server lacks the HTTP-response extension
        client = Client(url, use_protobuf=True)
        sub = client.new_subscription("chat:asgi", Handler())
        try:
            await client.connect()
            await sub.subscribe()
            await asyncio.wait_for(sub.ready(), TIMEOUT)
            await sub.publish(b"\x00binary\xff")
            await app.hub.publish("chat:asgi", {"from": "server"})
            assert await asyncio.wait_for(received.get(), TIMEOUT) == b"\x00binary\xff"
            assert json.loads(await asyncio.wait_for(received.get(), TIMEOUT)) == {"from": "server"}
            assert json.loads((await client.rpc("echo", b"[1]")).data) == {"echo": [1]}
        finally:
            await client.disconnect()


async def test_centrifuge_python_protobuf_answers_pings_and_gets_server_side_subscriptions(start_server) -> None:
    from centrifuge import Client, ClientEventHandler, ServerSubscribedContext

    server = await start_server(ping_interval=0.5, pong_timeout=0.3, api_key=API_KEY)
    subscribed: asyncio.Queue = asyncio.Queue()

    class Events(ClientEventHandler):
        async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
            subscribed.put_nowait(ctx.channel)

    client = Client(ws_url(server), events=Events(), use_protobuf=True)
    try:
        await client.connect()
        await asyncio.wait_for(client.ready(), TIMEOUT)
        conn = next(iter(server.websockets))
        # three full ping rounds: each ping (an empty Reply) must be answered, else 3012
        start = server._ping_round
        async with asyncio.timeout(TIMEOUT):
            while server._ping_round < start + 3 * server.ping_wheel.slots + 1:
                await asyncio.sleep(0.05)
        assert conn in server.websockets and not conn.session.closed
        # a server-side subscription (server API) reaches the SDK as a subscribe push
        await api_call(server, "subscribe", {"user": "", "channel": "news", "client": client.client_id})
        assert await asyncio.wait_for(subscribed.get(), TIMEOUT) == "news"
    finally:
        await client.disconnect()


async def test_centrifuge_python_protobuf_refreshes_its_subscription_token(start_server) -> None:
    """A private subscription whose token expires soon: the SDK asks get_token again and
    sends sub_refresh over Protobuf; the subscription outlives its first token."""
    from centrifuge import Client, PublicationContext, SubscribedContext, SubscriptionEventHandler

    from hubbub.config import NamespaceOptions

    server = await start_server(token_hmac_secret=SECRET, client_expired_sub_close_delay=0, namespaces={
        "private": NamespaceOptions(require_subscription_token=True, allow_publish_for_client=True)})
    pubs: asyncio.Queue = asyncio.Queue()
    subscribed: asyncio.Queue = asyncio.Queue()
    asked: list[str] = []

    class SubEvents(SubscriptionEventHandler):
        async def on_publication(self, ctx: PublicationContext) -> None:
            pubs.put_nowait(ctx.pub.data)

        async def on_subscribed(self, ctx: SubscribedContext) -> None:
            subscribed.put_nowait(ctx)

    async def get_sub_token(channel: str) -> str:
        asked.append(channel)
        return token("carol", ttl=2 if len(asked) == 1 else 3600, channel=channel)

    client = Client(ws_url(server), token=token("carol"), use_protobuf=True)
    sub = client.new_subscription("private:p", SubEvents(), get_token=get_sub_token)
    try:
        await client.connect()
        await sub.subscribe()
        await asyncio.wait_for(subscribed.get(), TIMEOUT)
        session = next(iter(server.hub.user_sessions("carol")))
        first_expiry = session.sub_expire_at["private:p"]
        async with asyncio.timeout(TIMEOUT):  # the SDK refreshes before the 2 s token runs out
            while len(asked) < 2 or session.sub_expire_at.get("private:p", 0) <= first_expiry:
                await asyncio.sleep(0.02)
        assert session.sub_expire_at["private:p"] > time.time() + 3000
        # past the first token's exp, still subscribed: publications arrive
        async with asyncio.timeout(TIMEOUT):
            while time.time() < first_expiry + 1.1:
                await asyncio.sleep(0.05)
        await server.hub.publish("private:p", {"still": "subscribed"})
        assert json.loads(await asyncio.wait_for(pubs.get(), TIMEOUT)) == {"still": "subscribed"}
        assert "private:p" in session.channels
        assert subscribed.empty() and len(asked) == 2  # refreshed in place (sub_refresh), not resubscribed
    finally:
        await client.disconnect()


async def test_mixed_formats_across_two_nodes_through_redis(start_server, redis_server: RedisServer,  # noqa: F811
                                                            clients: list) -> None:
    """A Protobuf client's binary and JSON publications on node A reach JSON and Protobuf
    subscribers on node B in their own forms, and history (in Redis) keeps both."""
    from hubbub.config import NamespaceOptions

    ns = {"chat": NamespaceOptions(history_size=10, history_ttl=60)}
    a = await start_server(broker=redis_server.url, namespaces=ns)
    b = await start_server(broker=redis_server.url, namespaces=ns)
    pub = await RawClient.open(a)
    sub = await RawClient.open(b)
    j = await proto_client(b)
    clients.append(j)
    try:
        await pub.call("connect")
        await sub.call("connect")
        await sub.call("subscribe", channel="chat:redis")
        await j.call("subscribe", {"channel": "chat:redis"})
        await pub.call("publish", channel="chat:redis", data=b"\x00\xffraw")
        await pub.call("publish", channel="chat:redis", data=b'{"ok":true}')
        assert [(await sub.push()).pub.data for _ in range(2)] == [b"\x00\xffraw", b'{"ok":true}']
        assert [(await json_pub(j))["data"] for _ in range(2)] == [base64.b64encode(b"\x00\xffraw").decode(),
                                                                   {"ok": True}]
        history = await sub.call("history", channel="chat:redis", limit=-1)
        assert [p.data for p in history.history.publications] == [b"\x00\xffraw", b'{"ok":true}']
    finally:
        await pub.close()
        await sub.close()
