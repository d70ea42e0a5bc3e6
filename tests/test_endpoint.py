"""Framework endpoints (``hubbub.endpoint``) held to the client core's rules: authentication,
anonymous access per endpoint, the user connection limit, token expiry and refresh,
registration with the hub (server API), the command rate (issue 23, defect 2).

Real ``websockets`` clients against ``App(port=0)``; the token refusal under uvicorn too.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

import hubbub
from hubbub import App
from hubbub.codes import DisconnectCode

from .conftest import TIMEOUT, until
from .test_asgi import uvicorn_serving

SECRET = "endpoint-test-secret-" + "x" * 48
API_KEY = "endpoint-test-api-key"


def token(user: str, *, exp: float | None = None) -> str:
    claims: dict[str, Any] = {"sub": user}
    if exp is not None:
        claims["exp"] = int(exp)
    return jwt.encode(claims, SECRET, algorithm="HS256")


def echo_app(**settings: Any) -> App:
    """An App that requires tokens, with an echo endpoint at ``/chat`` (a class) and at
    ``/open`` (a function, open to anonymous clients)."""
    settings.setdefault("token_hmac_secret", SECRET)
    settings.setdefault("api_key", API_KEY)
    app = App(port=0, **settings)

    @app.websocket("/chat")
    class Chat:
        async def connect(self, ws: hubbub.WebSocket) -> None:
            await ws.subscribe("news")

        async def handle_message(self, ws: hubbub.WebSocket, message: str | bytes) -> None:
            if isinstance(message, str) and message.startswith("refresh:"):
                await ws.refresh(message.removeprefix("refresh:"))
                await ws.send("refreshed")
                return
            await ws.send(message)

    @app.websocket("/open", anonymous=True)
    async def open_echo(ws: hubbub.WebSocket) -> None:
        async for message in ws:
            await ws.send(f"{ws.user or 'anonymous'}: {message!s}")

    return app


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = echo_app(client_user_connection_limit=1)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def url(app: App, path: str, tok: str | None = None) -> str:
    query = f"?token={tok}" if tok is not None else ""
    return f"ws://127.0.0.1:{app.server.port}{path}{query}"


async def refused_status(address: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(address, open_timeout=TIMEOUT):
            pass
    return info.value.response.status_code


async def echoes(ws: Any, text: str = "hello") -> bool:
    await ws.send(text)
    return bool(await asyncio.wait_for(ws.recv(), TIMEOUT) == text)


def api(app: App, method: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{app.server.port}/api/{method}", method="POST",
                                     data=json.dumps(body).encode(), headers={"X-API-Key": API_KEY})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


# -- authentication --------------------------------------------------------------------------------


async def test_connection_without_token_is_refused(app: App) -> None:
    assert await refused_status(url(app, "/chat")) == 401
    assert await refused_status(url(app, "/chat", "not-a-jwt")) == 401
    async with websockets.connect(url(app, "/chat", token("alice"))) as ws:
        assert await echoes(ws)


async def test_token_refusal_under_uvicorn() -> None:
    app = echo_app()
    async with uvicorn_serving(app) as port:
        base = f"ws://127.0.0.1:{port}"
        assert await refused_status(f"{base}/chat") == 401
        assert await refused_status(f"{base}/chat?token={token('alice', exp=time.time() - 9)}") == 401
        async with websockets.connect(f"{base}/chat?token={token('alice')}") as ws:
            assert await echoes(ws)
        async with websockets.connect(f"{base}/open") as ws:  # an anonymous endpoint
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "anonymous: hi"


async def test_anonymous_endpoint_accepts_clients_without_token(app: App) -> None:
    async with websockets.connect(url(app, "/open")) as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "anonymous: hi"
    async with websockets.connect(url(app, "/open", token("bob"))) as ws:  # a token still names the user
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "bob: hi"
    assert await refused_status(url(app, "/open", "not-a-jwt")) == 401  # an invalid token is still refused


async def test_without_token_keys_endpoints_stay_open() -> None:
    """No token key set, on loopback: anonymous clients are welcome, as on the relay."""
    app = App(port=0)

    @app.websocket("/echo")
    async def echo(ws: hubbub.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    await app.start()
    try:
        async with websockets.connect(url(app, "/echo")) as ws:
            assert await echoes(ws)
    finally:
        await app.stop()


async def test_anonymous_refused_when_not_allowed_even_without_keys() -> None:
    """``allow_anonymous = false`` refuses endpoint clients without a token, as it does relay clients."""
    app = App(port=0, allow_anonymous=False)

    @app.websocket("/echo")
    async def echo(ws: hubbub.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    await app.start()
    try:
        assert await refused_status(url(app, "/echo")) == 401
        assert await refused_status(url(app, "/ws/news")) == 401  # the relay decides the same
    finally:
        await app.stop()


def test_anonymous_option_is_checked() -> None:
    app = App(port=0)
    with pytest.raises(TypeError):
        app.add_websocket("/x", _Endpoint, anonymous="yes")  # type: ignore[arg-type]  # a wrong type on purpose


class _Endpoint:
    async def handle_message(self, ws: hubbub.WebSocket, message: str | bytes) -> None:
        await ws.send(message)


async def test_class_attribute_allows_anonymous() -> None:
    app = App(port=0, token_hmac_secret=SECRET)

    class Lobby(_Endpoint):
        anonymous = True

    app.add_websocket("/lobby", Lobby)
    app.add_websocket("/closed", _Endpoint)
    await app.start()
    try:
        async with websockets.connect(url(app, "/lobby")) as ws:
            assert await echoes(ws)
        assert await refused_status(url(app, "/closed")) == 401
    finally:
        await app.stop()


# -- the user connection limit -------------------------------------------------------------------


async def test_second_connection_of_a_user_is_refused(app: App) -> None:
    async with websockets.connect(url(app, "/chat", token("alice"))) as first:
        assert await echoes(first)
        assert await refused_status(url(app, "/chat", token("alice"))) == 429
        assert await refused_status(url(app, "/ws/news?token=" + token("alice"))) == 429  # any way in counts
        async with websockets.connect(url(app, "/chat", token("bob"))) as other:  # another user is welcome
            assert await echoes(other)
        assert await echoes(first)
    await until(lambda: app.hub.user_connections("alice") == 0, "alice's connection gone")
    async with websockets.connect(url(app, "/chat", token("alice"))) as again:
        assert await echoes(again)


# -- expiry and refresh ------------------------------------------------------------------------------


async def test_expired_token_is_refused(app: App) -> None:
    assert await refused_status(url(app, "/chat", token("alice", exp=time.time() - 9))) == 401


async def test_token_expiry_closes_open_connection_unless_refreshed(app: App) -> None:
    now = time.time()
    clock = [now]
    app.server.context.wall = lambda: clock[0]
    exp = now + 60
    async with websockets.connect(url(app, "/chat", token("alice", exp=exp))) as refreshed, \
            websockets.connect(url(app, "/chat", token("bob", exp=exp))) as expiring:
        assert await echoes(refreshed) and await echoes(expiring)
        await refreshed.send("refresh:" + token("alice", exp=exp + 3600))
        assert await asyncio.wait_for(refreshed.recv(), TIMEOUT) == "refreshed"
        clock[0] = exp + 1  # past the first token's exp, before the new one's
        await asyncio.wait_for(expiring.wait_closed(), TIMEOUT)
        assert expiring.close_code == DisconnectCode.EXPIRED == 3005
        assert await echoes(refreshed)  # the same sweep spared the refreshed connection


# -- registration with the hub: the server API reaches endpoint connections -------------------------


async def test_endpoint_connections_are_registered_and_reached_by_the_api(app: App) -> None:
    async with websockets.connect(url(app, "/chat", token("alice"))) as ws:
        assert await echoes(ws)
        assert app.hub.clients == 1
        assert [s.user for s in app.hub.user_sessions("alice")] == ["alice"]
        await until(lambda: app.hub.channels().get("news") == 1, "subscribed to news")

        result = await asyncio.to_thread(api, app, "unsubscribe", {"user": "alice", "channel": "news"})
        assert "error" not in result
        assert "news" not in app.hub.channels()

        result = await asyncio.to_thread(api, app, "disconnect", {"user": "alice"})
        assert "error" not in result
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        assert ws.close_code == DisconnectCode.FORCE_DISCONNECT
    await until(lambda: app.hub.clients == 0, "unregistered")
    assert app.hub.user_sessions("alice") == []


# -- the command rate --------------------------------------------------------------------------------


async def test_command_rate_applies_to_endpoint_messages() -> None:
    app = echo_app(client_command_rate=1, client_command_burst=3)
    await app.start()
    try:
        async with websockets.connect(url(app, "/chat", token("alice"))) as ws:
            for i in range(50):
                await ws.send(str(i))
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert ws.close_code == DisconnectCode.TOO_MANY_REQUESTS == 3013
    finally:
        await app.stop()


# -- the contract with the transport -----------------------------------------------------------------


def test_closed_exceptions_are_plain_classes() -> None:
    import websockets.exceptions

    from hubbub import endpoint
    from hubbub.endpoint import ConnectionClosedError, ConnectionClosedOK

    assert issubclass(ConnectionClosedOK, websockets.exceptions.ConnectionClosedOK)
    assert issubclass(ConnectionClosedError, websockets.exceptions.ConnectionClosedError)
    assert issubclass(ConnectionClosedOK, ConnectionError) and issubclass(ConnectionClosedError, ConnectionError)
    assert endpoint.ConnectionClosedOK is ConnectionClosedOK
    assert not hasattr(endpoint, "EndpointSession")


async def test_an_idle_class_endpoint_connection_holds_no_task() -> None:
    """A class endpoint without ``produce`` has a task only while a hook runs (issue 24):
    ``connect`` at the start, ``handle_message`` per burst of messages, ``disconnect`` at the end."""
    import websockets

    from hubbub import App

    events: list[str] = []
    app = App(host="127.0.0.1", port=0)

    @app.websocket("/quiet")
    class Quiet:
        async def connect(self, ws):
            events.append("connect")

        async def handle_message(self, ws, message):
            events.append(message)
            await ws.send(message.upper())

        async def disconnect(self, ws):
            events.append("disconnect")

    await app.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            while any(t.get_coro().__qualname__.startswith("WebSocket.") for t in asyncio.all_tasks()):
                await asyncio.sleep(0.01)
        clients = [await websockets.connect(f"ws://127.0.0.1:{app.server.port}/quiet") for _ in range(5)]
        try:
            async with asyncio.timeout(TIMEOUT):
                while events.count("connect") < 5:
                    await asyncio.sleep(0.01)

            def endpoint_tasks() -> list[asyncio.Task]:
                return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.startswith("WebSocket.")]

            async with asyncio.timeout(TIMEOUT):
                while endpoint_tasks():
                    await asyncio.sleep(0.01)  # connect returned: nothing runs for an idle connection
            for n in range(3):
                await clients[0].send(f"m{n}")
                assert await asyncio.wait_for(clients[0].recv(), TIMEOUT) == f"M{n}"
            async with asyncio.timeout(TIMEOUT):
                while endpoint_tasks():
                    await asyncio.sleep(0.01)  # handled: idle again
            assert [e for e in events if e.startswith("m")] == ["m0", "m1", "m2"]
        finally:
            for client in clients:
                await client.close()
        async with asyncio.timeout(TIMEOUT):
            while events.count("disconnect") < 5:
                await asyncio.sleep(0.01)
    finally:
        await app.stop()
