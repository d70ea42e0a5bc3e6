"""The one-way transports (``hubbub.uni``: ``uni_websocket``, ``uni_sse``, ``uni_http_stream``)
against real clients. The wire checks of each transport are in tests/test_streams.py."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import websockets

from .conftest import TIMEOUT, until

SECRET = "uni-test-secret-of-at-least-32-bytes-long"


@pytest.mark.parametrize("transport", ["uni_http_stream", "uni_sse"])
async def test_a_connect_not_decided_within_connect_timeout_is_refused(stuck_server, transport: str) -> None:
    """Issue 23, defect 7: ``connect_timeout`` bounds the connect of the one-way HTTP transports
    too: a connect that a hook does not decide in time is refused (503), nothing stays open."""
    server = await stuck_server(token_hmac_secret=SECRET, connect_timeout=0.3)
    url = f"http://127.0.0.1:{server.port}/connection/{transport}"
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        request = session.post(url, data=b"{}", headers={"Content-Type": "application/json"})
        async with await asyncio.wait_for(request, TIMEOUT) as r:
            assert r.status == 503
            assert "connect_timeout" in (await r.json())["error"]
    assert time.monotonic() - started < TIMEOUT
    assert server.context.hooks.calls == 1  # type: ignore[attr-defined]
    assert not server.websockets  # no stream was begun


async def test_uni_websocket_without_its_connect_object_is_closed_3502(start_server) -> None:
    """``uni_websocket``: no connect object within ``connect_timeout`` closes 3502 (the sweep of
    every protocol client; kept here with its HTTP siblings above)."""
    server = await start_server(token_hmac_secret=SECRET, connect_timeout=0.3)
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/connection/uni_websocket") as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 3502
    await until(lambda: not server.websockets, "the connection is released")


async def test_uni_http_stream_with_a_valid_token_streams_its_connect_push(start_server) -> None:
    """The same hub accepts a one-way client that sends its token (the refusals above are not blanket)."""
    import jwt

    server = await start_server(token_hmac_secret=SECRET, connect_timeout=0.3)
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{server.port}/connection/uni_http_stream",
                                json={"token": token}) as r:
            assert r.status == 200
            line = await asyncio.wait_for(r.content.readline(), TIMEOUT)
            assert "connect" in json.loads(line)
