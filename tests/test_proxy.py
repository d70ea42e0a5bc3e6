"""Proxy hooks over HTTP (hubbub.proxy) against a fake backend on a real socket, and
user-limited channels (hubbub.core).

The backend is an aiohttp web server on 127.0.0.1 port 0 whose answer to each event the
test sets: a result, an ``error``, a ``disconnect``, garbage, a slow answer, or no server
at all. Clients are bare protocol clients over `websockets` (tests/conftest.py); the real
Django backend with real SDKs is in tests/test_proxy_django.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest
import websockets
from aiohttp import web

import hubbub.server
from hubbub.config import Config, NamespaceOptions, ProxyOptions
from hubbub.errors import ConfigError
from hubbub.server import Server
from tests.conftest import TIMEOUT, proto_client, until, ws_url

SECRET = "proxy-test-secret-of-thirty-two-bytes!"

Answer = Callable[[dict[str, Any]], Awaitable[Any]]


class Backend:
    """A fake backend: ``answers[event]`` makes the answer to each POST /EVENT (a dict is
    sent as JSON, bytes as they are, a ``web.Response`` as it is); ``calls`` keeps
    (event, body, headers) of every request."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, event: str) -> str:
        return f"http://127.0.0.1:{self.port}/{event}"

    def events(self, event: str) -> list[dict[str, Any]]:
        return [body for name, body, _ in self.calls if name == event]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        event = request.match_info["event"]
        body = await request.json()
        self.calls.append((event, body, dict(request.headers)))
        answer = self.answers.get(event, {"result": {}})
        if callable(answer):
            answer = await answer(body)
        if isinstance(answer, web.StreamResponse):
            return answer
        if isinstance(answer, bytes):
            return web.Response(body=answer, content_type="application/json")
        return web.json_response(answer)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{event}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    yield b
    await b.stop()


@pytest.fixture
async def hub(start_server: Callable[..., Awaitable[Server]], backend: Backend,
              monkeypatch: pytest.MonkeyPatch) -> Callable[..., Awaitable[Server]]:
    """Start a hubbub whose proxies point at the backend: ``await hub(connect=True, ...)``."""
    monkeypatch.setattr(hubbub.server, "SWEEP_INTERVAL", 0.05)

    async def start(*, events: tuple[str, ...] = ("connect",), **kw: Any) -> Server:
        settings: dict[str, Any] = {"allow_anonymous": False, "token_hmac_secret": SECRET, "ping_interval": 0,
                                    "proxy_http_headers": ["Cookie", "Authorization"]}
        for event in events:
            settings[f"proxy_{event}_endpoint"] = backend.url(event)
        settings.update(kw)
        return await start_server(**settings)

    return start


async def connect(server: Server, headers: dict[str, str] | None = None,
                  params: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    client = await proto_client(server, connect=False, additional_headers=headers or {})
    return client, await client.call("connect", params or {})


# -- connect ------------------------------------------------------------------------------------


async def test_connect_proxy_authenticates_by_forwarded_cookie(hub: Any, backend: Backend) -> None:
    async def who(body: dict[str, Any]) -> dict[str, Any]:
        return {"result": {"user": "42", "info": {"name": "ann"}, "data": {"hello": 1}, "channels": ["news"]}}

    backend.answers["connect"] = who
    server = await hub()
    client, reply = await connect(server, {"Cookie": "sessionid=abc", "X-Other": "no"},
                                  {"name": "js", "version": "1.0", "data": {"x": 1}})
    assert reply["connect"]["data"] == {"hello": 1}
    assert "news" in reply["connect"]["subs"]
    [(event, body, headers)] = backend.calls
    assert body["client"] == reply["connect"]["client"]
    assert (body["transport"], body["protocol"], body["encoding"]) == ("websocket", "json", "json")
    assert (body["name"], body["version"], body["data"]) == ("js", "1.0", {"x": 1})
    assert headers["Cookie"] == "sessionid=abc" and "X-Other" not in headers
    assert server.hub.user_connections("42") == 1
    await client.ws.close()


async def test_connect_with_token_skips_the_proxy(hub: Any, backend: Backend) -> None:
    server = await hub()
    token = jwt.encode({"sub": "7"}, SECRET)
    client, reply = await connect(server, params={"token": token})
    assert "connect" in reply and backend.calls == []
    await client.ws.close()


async def test_connect_proxy_error_and_disconnect(hub: Any, backend: Backend) -> None:
    server = await hub()
    backend.answers["connect"] = {"error": {"code": 1000, "message": "custom", "temporary": True}}
    client, reply = await connect(server)
    assert reply["error"] == {"code": 1000, "message": "custom", "temporary": True}
    await client.ws.close()
    backend.answers["connect"] = {"disconnect": {"code": 4501, "reason": "unauthorized"}}
    client, _ = await connect_and_close(server)
    assert client == (4501, "unauthorized")
    backend.answers["connect"] = {}  # no result: not authenticated (Centrifugo: 3501)
    closed, _ = await connect_and_close(server)
    assert closed[0] == 3501


async def connect_and_close(server: Server) -> tuple[tuple[int, str], None]:
    client = await proto_client(server, connect=False)
    await client.send({"id": 1, "connect": {}})
    return await client.closed(), None


@pytest.mark.parametrize("failure", ["down", "slow", "not_json", "status_500", "result_not_object",
                                     "bad_error", "bad_user"])
async def test_connect_proxy_failures_give_error_100(hub: Any, backend: Backend, failure: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    settings: dict[str, Any] = {"proxy_connect_timeout": 0.3}
    if failure == "down":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        settings["proxy_connect_endpoint"] = f"http://127.0.0.1:{port}/connect"
    elif failure == "slow":
        async def slow(body: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(5)
            return {"result": {"user": "1"}}
        backend.answers["connect"] = slow
    else:
        backend.answers["connect"] = {
            "not_json": b"<html>oops",
            "status_500": web.Response(status=500, text="boom"),
            "result_not_object": {"result": [1]},
            "bad_error": {"error": {"code": "x"}},
            "bad_user": {"result": {"user": 42}},
        }[failure]
    server = await hub(**settings)
    caplog.set_level(logging.ERROR, "hubbub.proxy")
    started = time.monotonic()
    client, reply = await connect(server)
    assert reply["error"] == {"code": 100, "message": "internal server error", "temporary": True}
    assert time.monotonic() - started < 0.3 + 2
    lines = [r for r in caplog.records if r.name == "hubbub.proxy"]
    assert len(lines) == 1 and "connect proxy" in lines[0].getMessage()
    assert server.hub.stats.proxy_errors["connect"] == 1
    # the server goes on serving: a second try gets the same defined answer
    reply = await client.call("connect", {})
    assert reply["error"]["code"] == 100
    await client.ws.close()


async def test_bounded_pool(hub: Any, backend: Backend) -> None:
    inflight = peak = 0

    async def counting(body: dict[str, Any]) -> dict[str, Any]:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0.05)
        inflight -= 1
        return {"result": {"user": "u"}}

    backend.answers["connect"] = counting
    server = await hub(proxy_max_connections=2, proxy_connect_timeout=5)
    results = await asyncio.gather(*(connect(server) for _ in range(8)))
    assert all("connect" in reply for _, reply in results)
    assert peak == 2
    for client, _ in results:
        await client.ws.close()


# -- subscribe, publish, rpc ---------------------------------------------------------------------


async def test_subscribe_proxy_per_namespace(hub: Any, backend: Backend) -> None:
    async def decide(body: dict[str, Any]) -> dict[str, Any]:
        if body["channel"] == "room:open":
            return {"result": {"info": {"role": "guest"}}}
        return {"error": {"code": 103, "message": "permission denied"}}

    backend.answers["connect"] = {"result": {"user": "5"}}
    backend.answers["subscribe"] = decide
    server = await hub(events=("connect", "subscribe"),
                       namespaces={"room": NamespaceOptions(subscribe_proxy="default", join_leave=True)})
    client, _ = await connect(server, {"Cookie": "c=1"})
    assert "subscribe" in await client.call("subscribe", {"channel": "room:open", "data": {"why": 1}})
    refused = await client.call("subscribe", {"channel": "room:closed"})
    assert refused["error"]["code"] == 103
    # the default namespace names no proxy: not asked
    assert "subscribe" in await client.call("subscribe", {"channel": "plain"})
    bodies = backend.events("subscribe")
    assert [b["channel"] for b in bodies] == ["room:open", "room:closed"]
    assert bodies[0]["user"] == "5" and bodies[0]["data"] == {"why": 1}
    assert backend.calls[1][2]["Cookie"] == "c=1"
    await client.ws.close()


async def test_publish_proxy_replaces_data(hub: Any, backend: Backend) -> None:
    async def stamp(body: dict[str, Any]) -> dict[str, Any]:
        if body["data"].get("bad"):
            return {"error": {"code": 103, "message": "permission denied"}}
        return {"result": {"data": {**body["data"], "checked": True}}}

    backend.answers["connect"] = {"result": {"user": "5"}}
    backend.answers["publish"] = stamp
    server = await hub(events=("connect", "publish"), channels=NamespaceOptions(publish_proxy="default"))
    client, _ = await connect(server)
    await client.call("subscribe", {"channel": "chat"})
    assert "publish" in await client.call("publish", {"channel": "chat", "data": {"text": "hi"}})
    push = await client.next_push()
    assert push["pub"]["data"] == {"text": "hi", "checked": True}
    assert (await client.call("publish", {"channel": "chat", "data": {"bad": 1}}))["error"]["code"] == 103
    await client.ws.close()


async def test_rpc_proxy_per_method(hub: Any, backend: Backend) -> None:
    async def answer(body: dict[str, Any]) -> dict[str, Any]:
        return {"result": {"data": {"method": body["method"], "echo": body["data"]}}}

    backend.answers["connect"] = {"result": {"user": "5"}}
    backend.answers["rpc"] = answer
    backend.answers["rpc2"] = {"result": {"b64data": base64.b64encode(b'{"from":"named"}').decode()}}
    server = await hub(events=("connect",), proxies={"other": ProxyOptions(backend.url("rpc2"))},
        proxy_rpc_endpoint=backend.url("rpc"), rpc_proxies={"named": "other", "local": ""})
    client, _ = await connect(server)
    reply = await client.call("rpc", {"method": "sum", "data": [1, 2]})
    assert reply["rpc"]["data"] == {"method": "sum", "echo": [1, 2]}
    assert (await client.call("rpc", {"method": "named"}))["rpc"]["data"] == {"from": "named"}
    # "" in rpc_proxies: the application's on_rpc, which knows no method here
    assert (await client.call("rpc", {"method": "local"}))["error"]["code"] == 104
    await client.ws.close()


async def test_refresh_proxy_extends_then_expires(hub: Any, backend: Backend) -> None:
    now = time.time()
    backend.answers["connect"] = {"result": {"user": "5", "expire_at": int(now) + 100}}
    answers = [{"result": {"expire_at": int(now) + 300}}, {"result": {"expired": True}}]

    async def refresh(body: dict[str, Any]) -> dict[str, Any]:
        return answers.pop(0)

    backend.answers["refresh"] = refresh
    server = await hub(events=("connect", "refresh"))
    client, reply = await connect(server)
    assert "expires" not in reply["connect"]  # the server refreshes, not the client
    # time passes on the hub's injected wall clock: the sweep finds the connection expired
    server.context.wall = lambda: now + 200
    await until(lambda: len(backend.events("refresh")) == 1, "the first refresh")
    server.context.wall = lambda: now + 400
    assert (await client.closed())[0] == 3005
    assert [b["user"] for b in backend.events("refresh")] == ["5", "5"]


async def test_sub_refresh_proxy(hub: Any, backend: Backend) -> None:
    backend.answers["connect"] = {"result": {"user": "5"}}
    now = time.time()
    backend.answers["subscribe"] = {"result": {"expire_at": int(now) + 100}}
    backend.answers["sub_refresh"] = {"result": {"expired": True}}
    server = await hub(events=("connect", "subscribe", "sub_refresh"), client_expired_sub_close_delay=0,
                       channels=NamespaceOptions(subscribe_proxy="default", sub_refresh_proxy="default"))
    client, _ = await connect(server)
    reply = await client.call("subscribe", {"channel": "c"})
    assert "expires" not in reply["subscribe"]  # the server refreshes, not the client
    server.context.wall = lambda: now + 200  # the subscription expired: the sweep asks sub_refresh
    push = await client.next_push()
    assert push["channel"] == "c" and push["unsubscribe"]["code"] == 2501
    assert backend.events("sub_refresh")[0]["channel"] == "c"
    await client.ws.close()


async def test_proxy_metrics(hub: Any, backend: Backend) -> None:
    backend.answers["connect"] = b"garbage"
    server = await hub()
    client, reply = await connect(server)
    assert reply["error"]["code"] == 100
    from tests.test_asgi import ahttp
    status, body = await ahttp("GET", f"http://127.0.0.1:{server.port}/metrics")
    text = body.decode()
    assert 'hubbub_proxy_errors_total{event="connect",worker="0"} 1.0' in text
    assert 'hubbub_proxy_call_duration_seconds_count{event="connect",worker="0"} 1.0' in text
    await client.ws.close()


def test_settings() -> None:
    with pytest.raises(ConfigError, match="names proxy 'nope'"):
        Config.from_dict({"namespaces": {"a": {"subscribe_proxy": "nope"}}})
    with pytest.raises(ConfigError, match="must be an http"):
        Config.from_dict({"proxy_connect_endpoint": "ftp://x"})
    with pytest.raises(ConfigError, match="subscribe_proxy names proxy 'default'"):
        Config.from_dict({"channels": {"subscribe_proxy": "default"}})
    config = Config.from_dict({"proxies": {"b": {"endpoint": "http://b/x", "timeout": 2}},
                               "namespaces": {"a": {"publish_proxy": "b"}}, "rpc_proxies": {"m": "b"}})
    assert config.proxy_enabled and config.proxy_options("publish", "b").timeout == 2.0  # type: ignore[union-attr]
    assert not Config().proxy_enabled


# -- user-limited channels, subs ------------------------------------------------------------------


@pytest.mark.parametrize("with_proxy", [False, True])
async def test_user_limited_channels(start_server: Callable[..., Awaitable[Server]], backend: Backend,
                                     with_proxy: bool) -> None:
    settings: dict[str, Any] = {"token_hmac_secret": SECRET, "allow_anonymous": False, "ping_interval": 0,
                                "namespaces": {"dialog": NamespaceOptions(allow_user_limited_channels=True,
                                                                          subscribe_proxy="default" if with_proxy else "")}}
    if with_proxy:
        settings["proxy_subscribe_endpoint"] = backend.url("subscribe")
    server = await start_server(**settings)

    async def as_user(user: str) -> Any:
        client = await proto_client(server, connect=False)
        assert "connect" in await client.call("connect", {"token": jwt.encode({"sub": user}, SECRET)})
        return client

    c42, c43, c44 = await as_user("42"), await as_user("43"), await as_user("44")
    assert "subscribe" in await c42.call("subscribe", {"channel": "dialog:chat#42,43"})
    assert "subscribe" in await c43.call("subscribe", {"channel": "dialog:chat#42,43"})
    assert (await c44.call("subscribe", {"channel": "dialog:chat#42,43"}))["error"]["code"] == 103
    assert (await c44.call("subscribe", {"channel": "dialog:chat#4"}))["error"]["code"] == 103
    assert backend.calls == []  # user-limited channels are not asked to the subscribe proxy
    for c in (c42, c43, c44):
        await c.ws.close()


async def test_user_limited_off_by_default(start_server: Callable[..., Awaitable[Server]]) -> None:
    server = await start_server(token_hmac_secret=SECRET, allow_anonymous=False, ping_interval=0)
    client = await proto_client(server, connect=False)
    await client.call("connect", {"token": jwt.encode({"sub": "44"}, SECRET)})
    assert "subscribe" in await client.call("subscribe", {"channel": "chat#42,43"})
    await client.ws.close()


async def test_subs_claim_subscribes_on_connect(start_server: Callable[..., Awaitable[Server]]) -> None:
    server = await start_server(token_hmac_secret=SECRET, allow_anonymous=False, ping_interval=0)
    client = await proto_client(server, connect=False)
    token = jwt.encode({"sub": "1", "channels": ["a"], "subs": {"b": {"info": {"x": 1}}}}, SECRET)
    reply = await client.call("connect", {"token": token})
    assert set(reply["connect"]["subs"]) == {"a", "b"}
    await client.ws.close()


async def test_connect_proxy_subs(hub: Any, backend: Backend) -> None:
    backend.answers["connect"] = {"result": {"user": "9", "subs": {"personal#9": {}}}}
    server = await hub(channels=NamespaceOptions(allow_user_limited_channels=True))
    client, reply = await connect(server)
    assert set(reply["connect"]["subs"]) == {"personal#9"}
    await client.ws.close()


async def test_relay_uses_the_proxies(hub: Any, backend: Backend) -> None:
    backend.answers["connect"] = {"result": {"user": "3"}}

    async def decide(body: dict[str, Any]) -> dict[str, Any]:
        ok = body["channel"] == "yes"
        return {"result": {}} if ok else {"error": {"code": 103, "message": "permission denied"}}

    backend.answers["subscribe"] = decide
    server = await hub(events=("connect", "subscribe"), channels=NamespaceOptions(subscribe_proxy="default"))
    async with websockets.connect(ws_url(server, "/ws/yes"), additional_headers={"Cookie": "s=1"}) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello"
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(ws_url(server, "/ws/no"))
    assert info.value.response.status_code == 403
    assert [body["transport"] for _, body, _ in backend.calls] == ["relay", "relay", "relay", "relay"]
    assert backend.calls[0][2]["Cookie"] == "s=1"


@pytest.mark.parametrize(("path", "body"), [("/connection/http_stream", b'{"id": 1, "connect": {}}'),
                                             ("/connection/uni_http_stream", b"{}")])
async def test_headers_of_streaming_requests_are_forwarded(hub: Any, backend: Backend, path: str, body: bytes) -> None:
    import aiohttp

    backend.answers["connect"] = {"result": {"user": "8"}}
    server = await hub()
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{server.port}{path}", data=body,
            headers={"Cookie": "sessionid=s1", "Authorization": "Bearer b", "X-Not": "n",
                         "Content-Type": "application/json"}) as response:
        assert response.status == 200
        line = await asyncio.wait_for(response.content.readline(), TIMEOUT)
        assert "connect" in json.loads(line), line
    [(_, request, headers)] = backend.calls
    assert headers["Cookie"] == "sessionid=s1" and headers["Authorization"] == "Bearer b" and "X-Not" not in headers
    assert request["transport"] == path.rpartition("/")[2]


async def test_protobuf_client_binary_data_goes_as_b64data(hub: Any, backend: Backend) -> None:
    from centrifuge.protocol import client_pb2 as pb

    from tests.pbframes import frame, read_replies

    backend.answers["connect"] = {"result": {"user": "5"}}
    backend.answers["publish"] = {"result": {"b64data": base64.b64encode(b"\x01\x02 from backend").decode()}}
    server = await hub(events=("connect", "publish"), channels=NamespaceOptions(publish_proxy="default"))
    async with websockets.connect(ws_url(server), subprotocols=["centrifuge-protobuf"],  # type: ignore[list-item]
                                  additional_headers={"Cookie": "c=pb"}) as ws:
        await ws.send(frame(pb.Command(id=1, connect=pb.ConnectRequest()),
                            pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="chat")),
                            pb.Command(id=3, publish=pb.PublishRequest(channel="chat", data=b"\x00\xff raw"))))
        replies: list[Any] = []
        while not any(r.id == 3 for r in replies) or not any(r.push.pub.data for r in replies):
            replies += read_replies(await asyncio.wait_for(ws.recv(), TIMEOUT), pb.Reply)  # type: ignore[arg-type]
        assert not any(r.HasField("error") for r in replies), replies
        [pub] = [r.push.pub for r in replies if r.push.pub.data]
        assert pub.data == b"\x01\x02 from backend"
    [connect] = backend.events("connect")
    assert (connect["protocol"], connect["encoding"]) == ("protobuf", "json")
    [publish] = backend.events("publish")
    assert (publish["encoding"], "data" in publish) == ("binary", False)
    assert base64.b64decode(publish["b64data"]) == b"\x00\xff raw"


async def test_relay_messages_go_to_the_publish_proxy(hub: Any, backend: Backend) -> None:
    async def check(body: dict[str, Any]) -> dict[str, Any]:
        if body["data"] == "forbidden":
            return {"error": {"code": 103, "message": "permission denied"}}
        return {"result": {"data": {"checked": body["data"]}}}

    backend.answers["connect"] = {"result": {"user": "r"}}
    backend.answers["publish"] = check
    server = await hub(events=("connect", "publish"), channels=NamespaceOptions(publish_proxy="default"))
    async with websockets.connect(ws_url(server, "/ws/room")) as ws:
        await ws.send("hello")
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"checked": "hello"}
        await ws.send("forbidden")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 3507
    assert [b["transport"] for b in backend.events("publish")] == ["relay", "relay"]


async def test_large_answers_are_read_whole_and_bounded(hub: Any, backend: Backend) -> None:
    from hubbub.proxy import MAX_ANSWER

    blob = "x" * 300_000
    backend.answers["connect"] = {"result": {"user": "5"}}
    backend.answers["rpc"] = {"result": {"data": {"blob": blob}}}
    backend.answers["rpc2"] = {"result": {"data": "y" * MAX_ANSWER}}
    server = await hub(events=("connect", "rpc"), proxies={"big": ProxyOptions(backend.url("rpc2"))},
                       rpc_proxies={"too_big": "big"}, max_message_size=1 << 20, max_pending_output=4 << 20)
    client, _ = await connect(server)
    assert (await client.call("rpc", {"method": "fine"}))["rpc"]["data"] == {"blob": blob}
    assert (await client.call("rpc", {"method": "too_big"}))["error"]["code"] == 100
    await client.ws.close()
