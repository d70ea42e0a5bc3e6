"""Handshakes that must be awaited (an App hook, a JWKS fetch) on the relay and on framework
endpoints, on hubbub's own server and under uvicorn (issue 23, defect 1)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets

import hubbub
from hubbub import App, ConnectResult
from hubbub.core import PENDING, Handshake

from .conftest import TIMEOUT
from .test_asgi import app_serving


def test_pending_is_one_object() -> None:
    import hubbub.connection
    import hubbub.endpoint
    import hubbub.relay
    import hubbub.streams

    for module in (hubbub.connection, hubbub.endpoint, hubbub.relay, hubbub.streams):
        assert getattr(module, "PENDING", PENDING) is PENDING is Handshake.PENDING


def hooked_app(seen: list[str]) -> App:
    app = App(port=0)

    @app.on_connect
    async def on_connect(request: hubbub.ConnectRequest) -> ConnectResult:
        await asyncio.sleep(0)  # a real await: the handshake cannot be decided at once
        seen.append("on_connect")
        return ConnectResult(user="u1")

    @app.websocket("/echo")
    async def echo(ws: hubbub.WebSocket) -> None:
        async for message in ws:
            await ws.send(message if ws.user == "u1" else f"not u1: {ws.user!r}")

    return app


@pytest.mark.parametrize("server", ["hubbub", "uvicorn"])
@pytest.mark.parametrize("path", ["/ws/news", "/echo"])
async def test_awaited_handshake_is_answered(server: str, path: str) -> None:
    seen: list[str] = []
    async with app_serving(hooked_app(seen), under_uvicorn=server == "uvicorn") as port:
        async with websockets.connect(f"ws://127.0.0.1:{port}{path}", open_timeout=TIMEOUT) as ws:
            await ws.send("hello")
            got: Any = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert got == "hello"  # on the endpoint, from the user on_connect named
    assert seen == ["on_connect"]  # the hook ran for the relay and the endpoint alike (issue 23, defect 2)
