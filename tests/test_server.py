"""The server (``hubbub.server``): one port, routes for WebSocket and HTTP, built-in ways in,
collisions named, and a handler's failure answered without a traceback to the client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from hubbub.errors import ConfigError
from hubbub.http import HTTPRequest, HTTPResponse
from hubbub.server import Server

from .conftest import TIMEOUT


async def http(server: Server, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        body = await asyncio.wait_for(reader.read(65536), TIMEOUT)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1]), body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


async def test_health_and_unknown_paths(server: Server) -> None:
    status, body = await http(server, get("/health"))
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _ = await http(server, get("/no/such/path"))
    assert status == 404


async def test_routes_added_by_the_application(server: Server) -> None:
    async def hello(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, b"hello " + request.path.encode())

    server.add_http("/hello/{name}", hello)
    status, body = await http(server, get("/hello/you"))
    assert (status, body) == (200, b"hello /hello/you")


async def test_a_failing_handler_is_a_500_without_a_traceback(server: Server) -> None:
    async def broken(request: HTTPRequest) -> HTTPResponse:
        raise RuntimeError("secret internals")

    server.add_http("/broken", broken)
    status, body = await http(server, get("/broken"))
    assert status == 500 and b"secret internals" not in body and b"Traceback" not in body
    status, _ = await http(server, get("/health"))  # the server goes on
    assert status == 200


@pytest.mark.parametrize("path", ["/ws/{room}", "/connection/websocket"])
def test_an_endpoint_on_a_built_in_path_is_a_config_error_naming_both(server: Server, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        server.add_websocket(path, lambda conn, request: (404, "x"))
    assert "relay" in str(info.value) or "protocol" in str(info.value)


async def test_unknown_subprotocol_on_the_protocol_endpoint_is_400(server: Server) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(f"ws://127.0.0.1:{server.port}/connection/websocket",
                                 subprotocols=["mqtt"])  # type: ignore[list-item]
    assert info.value.response.status_code == 400


async def test_one_port_serves_the_protocol_the_relay_and_http(server: Server) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/connection/websocket") as proto, \
            websockets.connect(f"ws://127.0.0.1:{server.port}/ws/news") as relay:
        await proto.send(json.dumps({"id": 1, "connect": {}}) + "\n" +
                         json.dumps({"id": 2, "subscribe": {"channel": "news"}}))
        replies: list[dict[str, Any]] = []
        while len(replies) < 2:
            replies += [json.loads(line) for line in str(await asyncio.wait_for(proto.recv(), TIMEOUT)).split("\n")]
        await relay.send('{"x":1}')
        push = json.loads(str(await asyncio.wait_for(proto.recv(), TIMEOUT)))
        assert push["push"]["pub"]["data"] == {"x": 1}


async def http_with_headers(server: Server, path: str) -> tuple[int, dict[str, str], str]:
    """A plain GET (Connection: close): status, lower-cased headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(get(path))
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the server closes
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split(" ", 2)[1]), headers, body.decode()


async def test_a_plain_get_on_a_websocket_path_is_426_pointing_to_the_event_stream(server: Server) -> None:
    """A plain GET on /ws/news or /connection/websocket answered 404 "not found" (issue 28): now
    426 Upgrade Required, with what the path expects and the /sse/ path a plain client can read."""
    status, headers, body = await http_with_headers(server, "/ws/news")
    assert status == 426, body
    assert headers["upgrade"] == "websocket"
    assert "/ws/news is a WebSocket endpoint" in body and "channel news" in body
    assert "GET /sse/news" in body
    status, headers, body = await http_with_headers(server, "/connection/websocket")
    assert status == 426 and headers["upgrade"] == "websocket"
    assert "protocol" in body and "/sse/{channel}" in body

    async def echo(conn: Any, request: HTTPRequest) -> Any:
        raise AssertionError("never called for a plain GET")

    server.add_websocket("/rooms/{room}", echo, "endpoint /rooms/{room}")
    status, headers, body = await http_with_headers(server, "/rooms/lobby")
    assert status == 426 and headers["upgrade"] == "websocket" and "/sse/{channel}" in body
    status, _, _ = await http_with_headers(server, "/no/such/path")
    assert status == 404  # other paths are still not found
    # and the path the 426 names does stream the channel
    status, headers, _ = await http_with_headers_first(server, "/sse/news")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")


async def http_with_headers_first(server: Server, path: str) -> tuple[int, dict[str, str], bytes]:
    """The status and headers of a streaming response (the connection stays open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    finally:
        writer.close()
    status_line, *lines = head.decode("latin-1").strip().split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split(" ", 2)[1]), headers, b""
