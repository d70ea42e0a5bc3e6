"""Channel event streams (``hubbub.eventstream``, ``GET /sse/{channel}``) against real clients.
Resuming, refusals and the output bound are in tests/test_streams.py; EventSource in Chromium in
tests/test_browser.py."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from hubbub.errors import BadRequest
from hubbub.eventstream import farewell, parse_event_id

from .conftest import TIMEOUT

SECRET = "eventstream-test-secret-of-at-least-32-bytes"


async def test_a_handshake_not_decided_within_connect_timeout_is_refused(stuck_server) -> None:
    """Issue 23, defect 7: ``connect_timeout`` bounds a channel stream's awaited handshake (a hook,
    a JWKS fetch): 503 once it passes, instead of a request held open for ever."""
    server = await stuck_server(token_hmac_secret=SECRET, connect_timeout=0.3)
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with await asyncio.wait_for(session.get(f"http://127.0.0.1:{server.port}/sse/news"), TIMEOUT) as r:
            assert r.status == 503
            assert "connect_timeout" in (await r.json())["error"]
    assert time.monotonic() - started < TIMEOUT
    assert server.context.hooks.calls == 1  # type: ignore[attr-defined]
    assert not server.websockets  # no stream was begun


async def test_a_channel_stream_without_a_token_is_refused_at_once(start_server) -> None:
    """On a hub that requires tokens, ``/sse/{channel}`` without one is 401 before anything streams."""
    server = await start_server(token_hmac_secret=SECRET, connect_timeout=0.3)
    async with aiohttp.ClientSession() as session:
        async with await asyncio.wait_for(session.get(f"http://127.0.0.1:{server.port}/sse/news"), TIMEOUT) as r:
            assert r.status == 401
    assert not server.websockets


def test_event_ids_and_the_farewell() -> None:
    assert parse_event_id("e1:42").offset == 42 and parse_event_id("a:b:7").epoch == "a:b"
    for bad in ("", "nocolon", "e:-1", "e:" + "9" * 21, "e:x"):
        with pytest.raises(BadRequest):
            parse_event_id(bad)
    assert farewell(3001, "shutdown") == b'{"code":3001,"reason":"shutdown"}'
