"""`hubbub consume` and `hubbub produce` on the relay (``ws://HOST:PORT/ws/CHANNEL``):
raw messages in and out, refusals with the HTTP status, and URLs that name no
endpoint refused before connecting."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time

import jwt
import pytest
import websockets

from .conftest import ROOT, TIMEOUT, proto_client, ws_url

SECRET = "cli-relay-secret-of-at-least-32-bytes"
HINT = "use ws://HOST:PORT (protocol) or ws://HOST:PORT/ws/CHANNEL (relay)"


def hs256(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + 3600)}, SECRET, algorithm="HS256")


async def cli(*args: str, input: str | None = None) -> tuple[int, str, str]:
    """Run ``hubbub ARGS`` to completion (bounded); returns (code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hubbub", *args, cwd=ROOT,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input.encode() if input is not None else None), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def hubbub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hubbub", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=ROOT)


def test_endpoint_tells_protocol_from_relay() -> None:
    from hubbub.client import Endpoint, EndpointError, endpoint

    assert endpoint("ws://h:1") == Endpoint("protocol", "ws://h:1/connection/websocket")
    assert endpoint("ws://h:1/") == Endpoint("protocol", "ws://h:1/connection/websocket")
    assert endpoint("wss://h/connection/websocket") == Endpoint("protocol", "wss://h/connection/websocket")
    assert endpoint("ws://h:1/ws/news?sub_token=x") == Endpoint("relay", "ws://h:1/ws/news?sub_token=x", "news")
    assert endpoint("ws://h:1/ws/chat%3Aroom").channel == "chat:room"
    assert endpoint("ws://h:1/rt/ws/news").kind == "relay"  # under a mount prefix
    for url in ("ws://h:1/foo", "ws://h:1/ws", "ws://h:1/ws/", "ws://h:1/connection"):
        with pytest.raises(EndpointError, match="ws://HOST:PORT/ws/CHANNEL"):
            endpoint(url)


def test_help_explains_both_modes() -> None:
    consume = hubbub("consume", "--help").stdout
    produce = hubbub("produce", "--help").stdout
    for text in (consume, produce):
        assert "ws://HOST:PORT/ws/CHANNEL" in text and "protocol" in text and "relay" in text
        assert "examples:" in text
    assert "base64" in consume
    assert "does not acknowledge" in produce and "echo=false" in produce


async def test_produce_on_a_relay_url_sends_raw_text(start_server, clients) -> None:
    server = await start_server()
    relay = await websockets.connect(ws_url(server, "/ws/news"), ping_interval=None)
    clients.append(relay)
    sub = await proto_client(server)
    clients.append(sub)
    assert "subscribe" in await sub.call("subscribe", {"channel": "news"})

    code, _, err = await cli("produce", ws_url(server, "/ws/news"), "news", '{"a": 1}', "hello")
    assert code == 0, err
    # the relay consumer gets each argument as it was given, not protocol commands
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == '{"a": 1}'
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == "hello"
    # a protocol subscriber gets the JSON value, or the text as a JSON string
    assert [(await sub.next_push())["pub"]["data"] for _ in range(2)] == [{"a": 1}, "hello"]

    # stdin: one message per non-blank line
    code, _, err = await cli("produce", ws_url(server, "/ws/news"), "news", input="line one\n\nline two\n")
    assert code == 0, err
    assert [await asyncio.wait_for(relay.recv(), TIMEOUT) for _ in range(2)] == ["line one", "line two"]


async def test_consume_on_a_relay_url_prints_raw_messages(start_server, clients) -> None:
    server = await start_server()
    consumer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hubbub", "consume", ws_url(server, "/ws/news"), "--count", "4", cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert consumer.stderr is not None
        line = await asyncio.wait_for(consumer.stderr.readline(), TIMEOUT)
        assert line.decode().strip() == "hubbub: subscribed to news"
        producer = await websockets.connect(ws_url(server, "/ws/news"), ping_interval=None)
        clients.append(producer)
        await producer.send("plain text")
        await producer.send('{"a": 1}')
        await producer.send(b"\x00\x01\xff")
        publisher = await proto_client(server)
        clients.append(publisher)
        assert "publish" in await publisher.call("publish", {"channel": "news", "data": {"b": [1, 2]}})
        out, rest = await asyncio.wait_for(consumer.communicate(), TIMEOUT)
    finally:
        if consumer.returncode is None:
            consumer.kill()
            await consumer.wait()
    assert consumer.returncode == 0, rest.decode()
    assert out.decode().splitlines() == ["plain text", '{"a": 1}', base64.b64encode(b"\x00\x01\xff").decode(),
                                         '{"b":[1,2]}']
    assert "binary message, 3 bytes, printed as base64" in rest.decode()


async def test_a_path_that_is_no_endpoint_is_refused_before_connecting() -> None:
    # nothing listens on port 9: a connection attempt would be "cannot connect" (exit 1)
    for args in (("produce", "ws://127.0.0.1:9/foo", "news", "hi"),
                 ("consume", "ws://127.0.0.1:9/foo", "news"),
                 ("consume", "ws://127.0.0.1:9/ws/", "news")):
        code, _, err = await cli(*args)
        assert code == 2, (args, err)
        assert HINT in err and "cannot connect" not in err
        assert len(err.strip().splitlines()) == 1, err
    # a relay URL's channel is its path's: for consume a different CHANNEL is a usage error, as is
    # --recover (for produce it is the first DATA: test_produce_on_a_relay_url_names_the_channel_once)
    code, _, err = await cli("consume", "ws://127.0.0.1:9/ws/news", "sports")
    assert code == 2 and "'sports'" in err and "'news'" in err
    code, _, err = await cli("consume", "ws://127.0.0.1:9/ws/news", "--recover")
    assert code == 2 and "--recover" in err


async def test_a_refused_relay_handshake_names_the_status(start_server, clients) -> None:
    server = await start_server(token_hmac_secret=SECRET, allow_anonymous=False)
    url = ws_url(server, "/ws/news")
    for args in (("produce", url, "news", "hi"), ("consume", url, "--count", "1")):
        code, _, err = await cli(*args)
        assert code == 1, err
        assert "HTTP 401" in err and "--token" in err, err
        assert len(err.strip().splitlines()) == 1, err

    # --token is the connection token in both modes: Authorization: Bearer on the relay
    relay = await websockets.connect(url, ping_interval=None,
                                     additional_headers={"Authorization": f"Bearer {hs256('reader')}"})
    clients.append(relay)
    code, _, err = await cli("produce", url, "news", "with a token", "--token", hs256("writer"))
    assert code == 0, err
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == "with a token"
    code, _, err = await cli("produce", ws_url(server, ""), "news", "protocol", "--token", hs256("writer"))
    assert code == 0, err
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == '"protocol"'


async def test_endpoints_at_other_paths_need_protocol_or_relay(start_server, clients) -> None:
    server = await start_server(relay_path="/rooms/{channel}", protocol_path="/hub")
    relay_url, protocol_url = ws_url(server, "/rooms/lobby"), ws_url(server, "/hub")
    code, _, err = await cli("produce", relay_url, "lobby", "hi")
    assert code == 2 and "--relay" in err, err
    relay = await websockets.connect(relay_url, ping_interval=None)
    clients.append(relay)
    code, _, err = await cli("produce", relay_url, "lobby", "raw", "--relay")
    assert code == 0, err
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == "raw"
    code, _, err = await cli("produce", protocol_url, "lobby", "published", "--protocol")
    assert code == 0, err
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == '"published"'


async def test_produce_on_a_relay_url_names_the_channel_once(start_server, clients) -> None:
    """``hubbub produce ws://host/ws/news news hi`` needed the channel twice (issue 28, defect 7):
    the path names it, so every argument after the URL is DATA; the older form still works."""
    server = await start_server()
    relay = await websockets.connect(ws_url(server, "/ws/news"), ping_interval=None)
    clients.append(relay)
    code, _, err = await cli("produce", ws_url(server, "/ws/news"), "hello", "second message")
    assert code == 0, err
    assert [await asyncio.wait_for(relay.recv(), TIMEOUT) for _ in range(2)] == ["hello", "second message"]
    code, _, err = await cli("produce", ws_url(server, "/ws/news"), "news", "older form")
    assert code == 0, err
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == "older form"
    code, _, err = await cli("produce", ws_url(server, "/ws/news"), input="from stdin\n")
    assert code == 0, err
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == "from stdin"
    usage = hubbub("produce", "--help").stdout
    assert "hubbub produce ws://127.0.0.1:8000/ws/news hello" in usage
    code, _, err = await cli("produce", ws_url(server, ""))  # the protocol still needs CHANNEL
    assert code == 2 and "CHANNEL is required" in err


async def test_an_undeclared_namespace_says_to_declare_it(start_server, clients) -> None:
    """``produce ... chat:x hi`` answered ``102: unknown channel`` with no hint that the namespace
    must be declared (issue 28, defect 7): produce and consume, protocol and relay, now say how."""
    server = await start_server()
    for args in (("produce", ws_url(server, ""), "chat:x", "hi"),
                 ("consume", ws_url(server, ""), "chat:x", "--count", "1"),
                 ("produce", ws_url(server, "/ws/chat:x"), "hi"),
                 ("consume", ws_url(server, "/ws/chat:x"), "--count", "1")):
        code, _, err = await cli(*args)
        assert code == 1, (args, err)
        assert "unknown channel" in err and "namespace 'chat'" in err and "[namespaces.chat]" in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    code, _, err = await cli("produce", ws_url(server, ""), "news", "hi")  # no namespace, no hint needed
    assert code == 0, err
