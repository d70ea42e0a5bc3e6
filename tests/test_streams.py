"""Streaming transports with real independent clients: curl, aiohttp, websockets, cent-style raw POSTs.

Bidirectional emulation under centrifuge-js is in tests/test_streams_js.py; EventSource in
Chromium in tests/test_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
import websockets

from hubbub.server import Server

from .conftest import TIMEOUT, history_ns, until
from .pbframes import read_replies
from .redis_server import redis_server  # noqa: F401

JSON_TYPE = {"Content-Type": "application/json"}
#: well-formed ids of a session and a node that do not exist
NOBODY = "00000000-0000-4000-8000-000000000000"
ELSEWHERE = "11111111-1111-4111-8111-111111111111"
NODE_A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
NODE_B = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
SECRET = "streams-test-secret-of-at-least-32-bytes"


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + 3600), **claims}, SECRET, algorithm="HS256")


def http(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=TIMEOUT)) as s:
        yield s


async def publish(server: Server, channel: str, data: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(http(server, "/api/publish"), json={"channel": channel, "data": data},
                          headers={"X-API-Key": "k"}) as r:
            assert r.status == 200
            return await r.json()


class SSEReader:
    """Events of an SSE response, parsed as the WHATWG spec says (enough of it)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> dict[str, str]:
        event: dict[str, str] = {}
        while True:
            line = await asyncio.wait_for(self.response.content.readline(), TIMEOUT)
            if not line:
                raise EOFError("stream ended")
            text = line.decode().rstrip("\r\n")
            if not text:
                if "data" in event:
                    return event
                event = {}  # a block without data (retry:) dispatches nothing
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[name] = event[name] + "\n" + value if name == "data" and name in event else value

    async def data(self) -> Any:
        return json.loads((await self.next())["data"])


async def next_line(response: aiohttp.ClientResponse) -> Any:
    while True:
        line = await asyncio.wait_for(response.content.readline(), TIMEOUT)
        if not line:
            raise EOFError("stream ended")
        if line.strip():
            return json.loads(line)


# -- one-way transports -------------------------------------------------------------------------


async def test_curl_on_uni_http_stream_receives_publications(start_server) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed (.ci/run installs it)")
    server = await start_server(api_key="k", namespaces={"chat": history_ns()})
    proc = await asyncio.create_subprocess_exec(
        curl, "-sN", "-X", "POST", http(server, "/connection/uni_http_stream"), "-d", '{"subs": {"chat:curl": {}}}',
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        connect = json.loads(await asyncio.wait_for(proc.stdout.readline(), TIMEOUT))
        assert "chat:curl" in connect["connect"]["subs"]
        assert connect["connect"]["session"] and connect["connect"]["ping"] == 25
        for n in (1, 2):
            await publish(server, "chat:curl", {"n": n})
        got = [json.loads(await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)) for _ in range(2)]
        assert got == [{"channel": "chat:curl", "pub": {"data": {"n": 1}, "offset": 1}},
                       {"channel": "chat:curl", "pub": {"data": {"n": 2}, "offset": 2}}]
    finally:
        proc.kill()
        await proc.wait()


async def test_uni_sse_get_with_cf_connect_token_channels_and_recovery(start_server, session) -> None:
    server = await start_server(api_key="k", token_hmac_secret=SECRET, namespaces={"chat": history_ns()})
    await publish(server, "chat:one", "before")
    first = await publish(server, "chat:one", "missed")
    connect = {"token": token("alice", channels=["chat:one"]),
               "subs": {"chat:one": {"recover": True, "offset": 1, "epoch": first["result"]["epoch"]}}}
    async with session.get(http(server, "/connection/uni_sse"), params={"cf_connect": json.dumps(connect)}) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = SSEReader(r)
        reply = (await events.data())["connect"]
        sub = reply["subs"]["chat:one"]
        assert sub["recovered"] is True and sub["was_recovering"] is True
        assert [p["data"] for p in sub["publications"]] == ["missed"]
        await publish(server, "chat:one", "live")
        assert await events.data() == {"channel": "chat:one", "pub": {"data": "live", "offset": 3}}


async def test_uni_sse_post_and_server_api_disconnect_ends_with_a_disconnect_push(start_server, session) -> None:
    server = await start_server(api_key="k", token_hmac_secret=SECRET)
    async with session.post(http(server, "/connection/uni_sse"), json={"token": token("bob")}) as r:
        events = SSEReader(r)
        assert "connect" in await events.data()
        async with session.post(http(server, "/api/disconnect"), json={"user": "bob"},
                                headers={"X-API-Key": "k"}) as api:
            assert api.status == 200
        assert (await events.data())["disconnect"]["code"] == 3503
        assert await asyncio.wait_for(r.content.read(), TIMEOUT) == b""  # the stream ended


async def test_uni_transports_refuse_bad_tokens_and_unknown_namespaces_with_statuses(start_server, session) -> None:
    server = await start_server(token_hmac_secret=SECRET, allow_anonymous=False)
    url = http(server, "/connection/uni_http_stream")
    async with session.post(url, json={}) as r:
        assert r.status == 401 and "token required" in (await r.json())["error"]
    async with session.post(url, json={"token": "not-a-jwt"}) as r:
        assert r.status == 401
    async with session.post(url, json={"token": token("carol"), "subs": {"nope:x": {}}}) as r:
        assert r.status == 400 and "nope:x" in (await r.json())["error"]
    async with session.post(url, data=b"{bad json") as r:
        assert r.status == 400 and "malformed connect object" in (await r.json())["error"]
    async with session.get(url) as r:
        assert r.status == 405


async def test_uni_connect_obeys_the_channel_limit_and_skips_channels_it_may_not_join(start_server, session) -> None:
    server = await start_server(client_channel_limit=2, namespaces={"closed": history_ns(allow_subscribe_for_client=False)})
    url = http(server, "/connection/uni_http_stream")
    async with session.post(url, json={"subs": {"a": {}, "b": {}, "c": {}}}) as r:
        assert r.status == 429 and "limit" in (await r.json())["error"]
    async with session.post(url, json={"subs": {"a": {}, "closed:x": {}}}) as r:
        assert r.status == 200
        assert list((await next_line(r))["connect"]["subs"]) == ["a"]
    assert server.hub.clients == 1  # the refused one left nothing behind


@pytest.mark.slow
async def test_emulated_sessions_are_pinged_and_closed_3012_without_a_pong(start_server, session) -> None:
    server = await start_server(ping_interval=1.0, pong_timeout=0.5)
    url = http(server, "/connection/http_stream")
    async with session.post(url, data='{"id":1,"connect":{}}', headers=JSON_TYPE) as quiet, \
            session.post(url, data='{"id":1,"connect":{}}', headers=JSON_TYPE) as polite:
        ids = {}
        for name, r in (("quiet", quiet), ("polite", polite)):
            connect = (await next_line(r))["connect"]
            ids[name] = {"session": connect["session"], "node": connect["node"]}
        for _ in range(3):  # three pings, each answered with {} through /emulation
            assert await next_line(polite) == {}
            async with session.post(http(server, "/emulation"), json={**ids["polite"], "data": "{}"}) as e:
                assert e.status == 204
        assert await next_line(quiet) == {}
        assert (await next_line(quiet))["push"]["disconnect"]["code"] == 3012
        assert await asyncio.wait_for(quiet.content.read(), TIMEOUT) == b""
        async with session.post(http(server, "/emulation"), json={**ids["quiet"], "data": "{}"}) as e:
            assert e.status == 404  # its session is gone


async def test_uni_websocket_first_message_connects_then_pushes_and_pings(start_server) -> None:
    server = await start_server(api_key="k", ping_interval=1.0, pong_timeout=0.5, namespaces={"chat": history_ns()})
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/connection/uni_websocket") as ws:
        await ws.send(json.dumps({"subs": {"chat:ws": {}}}))
        connect = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["connect"]
        assert "chat:ws" in connect["subs"] and connect["ping"] == 1 and "pong" not in connect
        await publish(server, "chat:ws", [1, 2])
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"channel": "chat:ws",
                                                                           "pub": {"data": [1, 2], "offset": 1}}
        # the server pings with {} and expects no answer: still open after two ping rounds
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {}
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {}
        await publish(server, "chat:ws", "still here")
        while (msg := json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))) == {}:
            pass
        assert msg["pub"]["data"] == "still here"


async def test_uni_websocket_malformed_connect_closes_3501(start_server) -> None:
    server = await start_server()
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/connection/uni_websocket") as ws:
        await ws.send("[1, 2")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 3501


# -- a channel as an event stream -------------------------------------------------------------------


async def test_channel_sse_resumes_with_last_event_id_or_says_unrecoverable(start_server, session) -> None:
    server = await start_server(api_key="k", namespaces={"chat": history_ns(history_size=2)})
    url = http(server, "/sse/chat:news")
    async with session.get(url, headers={"Accept": "text/event-stream"}) as r:
        assert r.status == 200
        events = SSEReader(r)
        p1 = await publish(server, "chat:news", {"n": 1})
        first = await events.next()
        epoch = p1["result"]["epoch"]
        assert first == {"id": f"{epoch}:1", "data": '{"n":1}'}
    await publish(server, "chat:news", {"n": 2})  # while away
    async with session.get(url, headers={"Last-Event-ID": f"{epoch}:1"}) as r:
        events = SSEReader(r)
        assert await events.next() == {"id": f"{epoch}:2", "data": '{"n":2}'}
        await publish(server, "chat:news", {"n": 3})
        assert await events.next() == {"id": f"{epoch}:3", "data": '{"n":3}'}
    for n in (4, 5, 6):
        await publish(server, "chat:news", {"n": n})  # history keeps 2: offset 4 is gone
    async with session.get(url, headers={"Last-Event-ID": f"{epoch}:3"}) as r:
        events = SSEReader(r)
        assert await events.next() == {"event": "unrecoverable", "data": json.dumps(
            {"epoch": epoch, "offset": 6}, separators=(",", ":"))}
        await publish(server, "chat:news", {"n": 7})
        assert (await events.next())["id"] == f"{epoch}:7"
    async with session.get(url, headers={"Last-Event-ID": "other-epoch:3"}) as r:
        assert (await SSEReader(r).next())["event"] == "unrecoverable"


async def test_channel_sse_auth_and_permissions_refuse_before_streaming(start_server, session) -> None:
    server = await start_server(token_hmac_secret=SECRET, allow_anonymous=False, namespaces={
        "private": history_ns(require_subscription_token=True), "closed": history_ns(allow_subscribe_for_client=False)})
    cases = [
        ("/sse/news", {}, 401),
        ("/sse/news?token=garbage", {}, 401),
        ("/sse/nope:x", {"Authorization": f"Bearer {token('dave')}"}, 404),
        ("/sse/closed:x", {"Authorization": f"Bearer {token('dave')}"}, 403),
        ("/sse/private:x", {"Authorization": f"Bearer {token('dave')}"}, 403),
        ("/sse/" + "x" * 300, {"Authorization": f"Bearer {token('dave')}"}, 400),
        ("/sse/news", {"Authorization": f"Bearer {token('dave')}", "Accept": "application/json"}, 406),
    ]
    for path, headers, status in cases:
        async with session.get(http(server, path), headers=headers) as r:
            assert r.status == status, (path, await r.text())
            assert "error" in await r.json()
    sub_token = jwt.encode({"sub": "dave", "channel": "private:x"}, SECRET, algorithm="HS256")
    async with session.get(http(server, f"/sse/private:x?token={token('dave')}&sub_token={sub_token}")) as r:
        assert r.status == 200


async def test_channel_sse_is_closed_3008_when_it_does_not_read(start_server) -> None:
    server = await start_server(api_key="k", max_pending_output=64 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1024)
    writer.transport.set_write_buffer_limits(0)  # type: ignore[attr-defined]
    writer.write(b"GET /sse/flood HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200")
    writer.transport.pause_reading()  # a consumer that never reads
    deadline = time.monotonic() + TIMEOUT
    while server.slow_closed == 0:
        assert time.monotonic() < deadline, "a stream that does not read was never closed"
        await server.hub.publish("flood", "x" * 8000)
        await asyncio.sleep(0)
    assert server.stats.disconnects[3008] >= 1
    writer.close()


# -- bidirectional emulation: wire checks (centrifuge-js runs in test_streams_js.py) -------------------


async def test_http_stream_and_emulation_round_trip(start_server, session) -> None:
    server = await start_server(namespaces={"chat": history_ns()})
    body = '{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"chat:e"}}'
    async with session.post(http(server, "/connection/http_stream"), data=body,
                            headers={"Content-Type": "application/json"}) as r:
        connect = (await next_line(r))["connect"]
        assert connect["session"] and connect["node"] and connect["pong"] is True
        assert (await next_line(r))["id"] == 2
        request = {"session": connect["session"], "node": connect["node"],
                   "data": '{"id":3,"publish":{"channel":"chat:e","data":{"via":"emulation"}}}'}
        async with session.post(http(server, "/emulation"), json=request) as e:
            assert e.status == 204
        got = [await next_line(r), await next_line(r)]
        assert {"id": 3, "publish": {"offset": 1, "epoch": got[0].get("publish", got[1].get("publish", {})).get(
            "epoch")}} in got
        assert {"push": {"channel": "chat:e", "pub": {"data": {"via": "emulation"}, "offset": 1,
                                                      "info": {"user": "", "client": connect["client"]}}}} in got


async def test_bad_emulation_and_stream_requests_get_clear_4xx(start_server, session) -> None:
    server = await start_server(max_message_size=1024)
    post = http(server, "/emulation")
    for data, status, words in [
        (b"{not json", 400, "malformed JSON"),
        (b'{"node": "", "data": "{}"}', 400, "session"),
        (b'{"session": "s", "data": 5}', 400, "data"),
        (b'{"session": "s", "node": "", "data": "{}"}', 400, "malformed session id"),
        (json.dumps({"session": NOBODY, "node": "elsewhere", "data": "{}"}).encode(), 400, "malformed node id"),
        (json.dumps({"session": NOBODY, "node": "", "data": "{}"}).encode(), 404, "no session"),
        (json.dumps({"session": NOBODY, "node": ELSEWHERE, "data": "{}"}).encode(), 404, "unknown node"),
        (json.dumps({"session": NOBODY, "data": "x" * 2000}).encode(), 413, "max_message_size"),
    ]:
        async with session.post(post, data=data, headers=JSON_TYPE) as r:
            assert r.status == status, (data, await r.text())
            assert words in (await r.json())["error"]
    async with session.get(post) as r:
        assert r.status == 405
    async with session.post(post, data=b"\x0a\x05x", headers={"Content-Type": "application/octet-stream"}) as r:
        assert r.status == 400  # a truncated Protobuf EmulationRequest
        assert "Protobuf" in (await r.json())["error"]
    async with session.get(http(server, "/connection/sse")) as r:
        assert r.status == 400 and "cf_connect" in (await r.json())["error"]
    async with session.post(http(server, "/connection/http_stream"), data=b"", headers=JSON_TYPE) as r:
        assert r.status == 400
    async with session.post(http(server, "/connection/http_stream"), data=b"x" * 2000, headers=JSON_TYPE) as r:
        assert r.status == 413
    async with session.post(http(server, "/connection/http_stream"), data=b"{bad", headers=JSON_TYPE) as r:
        assert r.status == 200  # the stream is the protocol's: a malformed command is a disconnect push
        assert (await next_line(r))["push"]["disconnect"]["code"] == 3501


# -- legacy POST /api ------------------------------------------------------------------------------------


async def test_legacy_api_runs_newline_delimited_commands_in_order(start_server, session) -> None:
    server = await start_server(api_key="k", namespaces={"chat": history_ns()})
    body = "\n".join(json.dumps(c) for c in [
        {"method": "publish", "params": {"channel": "chat:l", "data": 1}},
        {"method": "publish", "params": {"channel": "chat:l", "data": 2}},
        {"method": "nope", "params": {}},
        {"method": "publish", "params": {"channel": "bad channel name\u0000"}},
        {"method": "history", "params": {"channel": "chat:l", "limit": 10}},
    ])
    async with session.post(http(server, "/api"), data=body, headers={"Authorization": "apikey k"}) as r:
        assert r.status == 200
        replies = [json.loads(line) for line in (await r.text()).split("\n")]
    assert [r["result"]["offset"] for r in replies[:2]] == [1, 2]
    assert replies[2]["error"]["code"] == 104 and replies[3]["error"]["code"] == 107
    assert [p["data"] for p in replies[4]["result"]["publications"]] == [1, 2]
    async with session.post(http(server, "/api"), data=body) as r:
        assert r.status == 401
    async with session.post(http(server, "/api"), data="{bad", headers={"X-API-Key": "k"}) as r:
        assert r.status == 400 and "line 1" in (await r.json())["error"]


async def test_stream_endpoints_can_be_turned_off(start_server, session) -> None:
    server = await start_server(channel_sse_path="", uni_http_stream_path="", http_stream_path="/custom/stream")
    async with session.get(http(server, "/sse/x")) as r:
        assert r.status == 404
    async with session.post(http(server, "/connection/uni_http_stream"), json={}) as r:
        assert r.status == 404
    async with session.post(http(server, "/custom/stream"), data='{"id":1,"connect":{}}') as r:
        assert "connect" in await next_line(r)


# -- under an ASGI server (hubbub mounted in FastAPI, served by uvicorn) ---------------------------


async def test_streams_under_asgi_in_fastapi(session) -> None:
    pytest.importorskip("uvicorn")
    fastapi = pytest.importorskip("fastapi")
    import hubbub

    from .test_asgi import uvicorn_serving

    hub = hubbub.App(api_key="k", namespaces={"chat": {"history_size": 10, "history_ttl": 300}})
    api = fastapi.FastAPI()
    api.mount("/rt", hub)
    async with uvicorn_serving(api) as port:
        base = f"http://127.0.0.1:{port}/rt"
        async with session.post(f"{base}/api/publish", json={"channel": "chat:asgi", "data": 0},
                                headers={"X-API-Key": "k"}) as r:
            epoch = (await r.json())["result"]["epoch"]
        async with session.get(f"{base}/sse/chat:asgi", headers={"Last-Event-ID": f"{epoch}:0"}) as channel, \
                session.post(f"{base}/connection/uni_http_stream", json={"subs": {"chat:asgi": {}}}) as uni, \
                session.get(f"{base}/connection/uni_sse") as uni_sse:
            assert channel.status == uni.status == uni_sse.status == 200
            events = SSEReader(channel)
            assert await events.next() == {"id": f"{epoch}:1", "data": "0"}  # recovered
            assert "connect" in await next_line(uni)
            assert "connect" in await SSEReader(uni_sse).data()
            await hub.server.hub.publish("chat:asgi", {"n": 1})
            assert await events.next() == {"id": f"{epoch}:2", "data": '{"n":1}'}
            assert await next_line(uni) == {"channel": "chat:asgi", "pub": {"data": {"n": 1}, "offset": 2}}
        async with session.post(f"{base}/connection/http_stream", data='{"id":1,"connect":{}}',
                                headers=JSON_TYPE) as emulated:
            connect = (await next_line(emulated))["connect"]
            command = {"session": connect["session"], "node": connect["node"],
                       "data": '{"id":2,"subscribe":{"channel":"chat:asgi"}}'}
            async with session.post(f"{base}/emulation", json=command) as e:
                assert e.status == 204
            assert (await next_line(emulated))["id"] == 2
        await until_streams_closed(hub.server)


async def until_streams_closed(server: Server) -> None:
    deadline = time.monotonic() + TIMEOUT
    while server.websockets:
        assert time.monotonic() < deadline, "the streams of gone clients were never released"
        await asyncio.sleep(0.01)


# -- cross-node /emulation: the seam, over a stand-in for the cluster's control channel -----------------


class FakeCluster:
    """Two nodes' control channels in one process: ``send`` runs the other node's handler."""

    def __init__(self, uid: str, nodes: dict[str, FakeCluster]) -> None:
        self.uid = uid
        self.nodes = nodes
        self.handlers: dict[str, Any] = {}
        self.sent: list[str] = []
        nodes[uid] = self

    def register(self, kind: str, handler: Any) -> None:
        self.handlers[kind] = handler

    def peers(self) -> list[str]:
        return [uid for uid in self.nodes if uid != self.uid]

    async def send(self, node: str, kind: str, payload: Any = None) -> Any:
        self.sent.append(node)
        if node not in self.nodes:
            raise TimeoutError(f"node {node} did not answer")
        return await self.nodes[node].handlers[kind](json.loads(json.dumps(payload)), self.uid)


async def test_emulation_reaches_the_session_on_another_node(start_server, session) -> None:
    a, b = await start_server(), await start_server()
    nodes: dict[str, FakeCluster] = {}
    a.streams.emulation.use_cluster(FakeCluster(NODE_A, nodes))
    b.streams.emulation.use_cluster(FakeCluster(NODE_B, nodes))
    async with session.post(http(a, "/connection/http_stream"), data='{"id":1,"connect":{}}', headers=JSON_TYPE) as r:
        connect = (await next_line(r))["connect"]
        assert connect["node"] == NODE_A
        command = {"session": connect["session"], "node": NODE_A, "data": '{"id":2,"rpc":{"method":"x"}}'}
        async with session.post(http(b, "/emulation"), json=command) as e:  # reaches node b
            assert e.status == 204
        assert (await next_line(r)) == {"id": 2, "error": {"code": 104, "message": "method not found"}}
        for node, sid in ((NODE_A, NOBODY), (ELSEWHERE, connect["session"])):
            async with session.post(http(b, "/emulation"), json={**command, "node": node, "session": sid}) as e:
                assert e.status == 404
        assert ELSEWHERE not in nodes[NODE_B].sent  # a node the cluster does not know costs no request


async def test_emulation_across_two_nodes_on_redis(start_server, session, redis_server) -> None:  # noqa: F811
    a = await start_server(broker=redis_server.url)
    b = await start_server(broker=redis_server.url)
    assert a.streams.emulation.node == a.cluster.uid
    await until(lambda: a.cluster.uid in b.cluster.peers(), "node b hears node a")  # /emulation names known nodes
    async with session.post(http(a, "/connection/http_stream"), data='{"id":1,"connect":{}}', headers=JSON_TYPE) as r:
        connect = (await next_line(r))["connect"]
        command = {"session": connect["session"], "node": connect["node"],
                   "data": '{"id":2,"subscribe":{"channel":"across"}}\n{"id":3,"publish":{"channel":"across","data":7}}'}
        async with session.post(http(b, "/emulation"), json=command) as e:  # the other node
            assert e.status == 204, await e.text()
        got = [await next_line(r) for _ in range(3)]
        assert got[0] == {"id": 2, "subscribe": {}}
        assert {"id": 3, "publish": {}} in got[1:]
        assert any(m.get("push", {}).get("pub", {}).get("data") == 7 for m in got[1:])
        async with session.post(http(b, "/emulation"), json={**command, "session": NOBODY}) as e:
            assert e.status == 404


# -- issue 23, defect 7: emulated streams that never connect expire (connect_timeout, 3502) -------------


async def read_to_end(response: aiohttp.ClientResponse) -> bytes:
    """The rest of a stream's body; fails the test if it does not end within TIMEOUT."""
    return await asyncio.wait_for(response.content.read(), TIMEOUT)


@pytest.mark.parametrize("kind", ["http_stream", "sse", "protobuf"])
async def test_emulated_streams_without_connect_end_with_3502(start_server, session, kind: str) -> None:
    """Issue 23, defect 7: on a hub that requires tokens, an emulated stream whose opening
    request holds no ``connect`` (``{}``, ``cf_connect={}``, a Protobuf body ``00``) gets the
    ``disconnect`` push 3502 and its stream ends after ``connect_timeout``, as a WebSocket."""
    server = await start_server(token_hmac_secret=SECRET, connect_timeout=0.3)
    if kind == "http_stream":
        opened = session.post(http(server, "/connection/http_stream"), data=b"{}", headers=JSON_TYPE)
    elif kind == "sse":
        opened = session.get(http(server, "/connection/sse?cf_connect={}"))
    else:
        opened = session.post(http(server, "/connection/http_stream"), data=b"\x00",
                              headers={"Content-Type": "application/octet-stream"})
    started = time.monotonic()
    async with opened as r:
        assert r.status == 200
        body = await read_to_end(r)
    assert time.monotonic() - started < TIMEOUT
    if kind == "protobuf":
        from centrifuge.protocol.client_pb2 import Reply

        pushes = [reply.push.disconnect for reply in read_replies(body, Reply) if reply.push.HasField("disconnect")]
        assert [(d.code, d.reason) for d in pushes] == [(3502, "connect timeout")]
    else:
        lines = [line.removeprefix(b"data: ") for line in body.split(b"\n") if line.strip(b"\r\n ")]
        pushes = [json.loads(line) for line in lines if line.startswith(b"{")]
        disconnects = [push["push"]["disconnect"] for push in pushes if "disconnect" in push.get("push", {})]
        assert [(d["code"], d["reason"]) for d in disconnects] == [(3502, "connect timeout")]
    assert server.stats.disconnects[3502] == 1
    assert len(server.streams.emulation) == 0  # the registry forgot the session
    await until(lambda: not server.websockets, "the stream is released")


# -- issue 23, defect 9: /emulation checks the ids' shape and the node before any work -------------------


async def test_emulation_refuses_a_malformed_node_at_once_without_logging_it(start_server, session,
                                                                             caplog) -> None:
    """Issue 23, defect 9: a ``node`` that is not a node id (here with a newline that would forge
    a log line) is 400 at once: no request to the other node, no line with the client's text."""
    server = await start_server()
    sent: list[Any] = []

    async def send(node: str, kind: str, payload: Any = None) -> Any:
        sent.append(node)
        return False

    server.cluster.send = send  # type: ignore[method-assign]  # counts what would go over the broker
    caplog.set_level("DEBUG", logger="hubbub")
    forged = "x\nINFO hubbub.admin: admin login accepted"
    started = time.monotonic()
    async with session.post(http(server, "/emulation"), json={"session": NOBODY, "node": forged, "data": "{}"}) as r:
        assert r.status == 400
        assert "malformed node id" in (await r.json())["error"]
    assert time.monotonic() - started < 1.0
    assert sent == []
    assert not any("\n" in record.getMessage() or "forged" in record.getMessage() or "admin login accepted"
                   in record.getMessage() for record in caplog.records)


async def test_emulation_answers_an_unknown_node_404_without_waiting(start_server, session, caplog) -> None:
    """Issue 23, defect 9: a well-formed id of a node the cluster does not know is 404 at once,
    not after the control channel's timeout, and costs no broker publish."""
    server = await start_server(node_request_timeout=2.0)
    published: list[Any] = []
    broker_publish = server.hub.broker.publish

    async def publish(channel: str, *args: Any, **kw: Any) -> Any:
        published.append(channel)
        return await broker_publish(channel, *args, **kw)

    server.hub.broker.publish = publish  # type: ignore[method-assign]
    caplog.set_level("INFO", logger="hubbub")
    started = time.monotonic()
    async with session.post(http(server, "/emulation"), json={"session": NOBODY, "node": ELSEWHERE, "data": "{}"}) as r:
        assert r.status == 404
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 * server.config.node_request_timeout, elapsed
    assert not [channel for channel in published if ELSEWHERE in channel]
    assert not [record for record in caplog.records if ELSEWHERE in record.getMessage()]


async def test_emulated_stream_without_connect_ends_with_3502_under_asgi(session) -> None:
    """Issue 23, defect 7, under an ASGI server: the same sweep closes the stream (3502)."""
    pytest.importorskip("uvicorn")
    import hubbub

    from .test_asgi import uvicorn_serving

    app = hubbub.App(token_hmac_secret=SECRET, connect_timeout=0.3)
    async with uvicorn_serving(app) as port:
        async with session.post(f"http://127.0.0.1:{port}/connection/http_stream", data=b"{}",
                                headers=JSON_TYPE) as r:
            assert r.status == 200
            body = await read_to_end(r)
        pushes = [json.loads(line) for line in body.split(b"\n") if line.strip()]
        assert [p["push"]["disconnect"]["code"] for p in pushes if "disconnect" in p.get("push", {})] == [3502]
        await until_streams_closed(app.server)
