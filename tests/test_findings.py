"""Regression tests for the findings of the outside security test.

One test (or a small group) per finding, named ``test_finding_NN_...``. Each
asserts the intended behaviour after the fix; against the code the findings
were made on, each fails for the reason its docstring names.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
import time
import urllib.error
import urllib.request
from typing import Any

import jwt
import pytest
import websockets

from hubbub.brokers.memory import MemoryBroker
from hubbub.config import Config, NamespaceOptions
from hubbub.errors import ProtocolError
from hubbub.hub import Hub
from hubbub.server import Server

from .conftest import TIMEOUT, ProtoClient, make_config, proto_client, ws_url

SECRET = "a-secret-of-at-least-32-bytes-for-hs256"
API_KEY = "k"
HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


# -- helpers ------------------------------------------------------------------------------


def token(sub: str = "u1", **claims: Any) -> str:
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


def handshake(path: str = "/connection/websocket", host: str = "x", **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return HANDSHAKE.format(path=path, host=host, extra=extra).encode()


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (the zero mask leaves the payload as it is)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    return head + b"\x00\x00\x00\x00" + payload


class FrameReader:
    """Parses the server's (unmasked) frames from a byte stream."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.close_code: int | None = None
        self.frames = 0

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 2:
            opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            at = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, at = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
            if len(self.buf) < at + n:
                return
            payload = bytes(self.buf[at:at + n])
            del self.buf[:at + n]
            self.frames += 1
            if opcode == 0x8 and self.close_code is None:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


async def read_response_head(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status code of an HTTP response, and its head."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    return int(head.split(b" ", 2)[1]), head


async def refused_status(url: str, **kw: Any) -> int | None:
    """The HTTP status a WebSocket upgrade to ``url`` is refused with, or ``None``
    if it was accepted (the connection is closed again at once)."""
    try:
        ws = await asyncio.wait_for(websockets.connect(url, ping_interval=None, **kw), TIMEOUT)
    except websockets.exceptions.InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return None


def http_post(port: int, method: str, body: bytes | str, key: str | None = API_KEY) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/{method}",
                                 data=body.encode() if isinstance(body, str) else body, method="POST")
    if key is not None:
        req.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw


async def subscribed(server: Server, channel: str, n: int) -> None:
    """Wait until the hub has ``n`` local subscribers in ``channel``."""
    async with asyncio.timeout(TIMEOUT):
        while server.hub.channels().get(channel, 0) < n:
            await asyncio.sleep(0.005)


# -- 1. the relay skips authentication ----------------------------------------------------


async def test_finding_01_relay_requires_token(start_server, clients: list) -> None:
    """Finding 1: the relay (/ws/{channel}) accepts clients without the tokens the
    protocol endpoint demands. Fixed: 401 without a valid connection token (given as
    ?token= or Authorization: Bearer), 403 without a subscription token (?sub_token=)
    for a require_subscription_token namespace, 403 for a namespace that refuses
    anonymous clients."""
    server = await start_server(token_hmac_secret=SECRET, allow_anonymous=False, api_key=API_KEY,
                                namespaces={"priv": NamespaceOptions(require_subscription_token=True)})
    # a token-holding protocol subscriber of the private channel
    member = await proto_client(server, connect=False)
    clients.append(member)
    assert "connect" in await member.call("connect", {"token": token("u1")})
    reply = await member.call("subscribe", {"channel": "priv:a", "token": token("u1", channel="priv:a")})
    assert reply.get("subscribe") is not None, reply

    async def status(path: str, **kw: Any) -> int | None:
        st = await refused_status(ws_url(server, path), **kw)
        if st is None:  # accepted: show what such a client could do
            ws = await websockets.connect(ws_url(server, path), ping_interval=None, **kw)
            await ws.send('{"intruder": true}')
            await ws.close()
        return st

    assert await status("/ws/priv:a") == 401, "relay connect without a token must be refused with 401"
    assert await status("/ws/priv:a?token=garbage") == 401
    forged = jwt.encode({"sub": "u1"}, "another-secret-of-at-least-32-bytes!", algorithm="HS256")
    assert await status("/ws/priv:a?token=" + forged) == 401
    # a valid connection token, but no (or a wrong) subscription token for a private channel
    assert await status("/ws/priv:a?token=" + token("u1")) == 403
    assert await status("/ws/priv:a", additional_headers={"Authorization": "Bearer " + token("u1")}) == 403
    wrong = token("u1", channel="priv:b")
    assert await status(f"/ws/priv:a?token={token('u1')}&sub_token={wrong}") == 403
    other_user = token("u2", channel="priv:a")
    assert await status(f"/ws/priv:a?token={token('u1')}&sub_token={other_user}") == 403
    # the Authorization header is accepted for the connection token
    open_relay = await websockets.connect(ws_url(server, "/ws/open"), ping_interval=None,
                                          additional_headers={"Authorization": "Bearer " + token("u1")})
    clients.append(open_relay)
    # both tokens: the relay client connects and receives an API publication
    relay = await websockets.connect(
        ws_url(server, f"/ws/priv:a?token={token('u1')}&sub_token={token('u1', channel='priv:a')}"),
        ping_interval=None)
    clients.append(relay)
    await subscribed(server, "priv:a", 2)
    status_code, body = await asyncio.to_thread(http_post, server.port, "publish",
                                                json.dumps({"channel": "priv:a", "data": {"n": 1}}))
    assert status_code == 200, body
    assert json.loads(await asyncio.wait_for(relay.recv(), TIMEOUT)) == {"n": 1}
    # nothing a refused client sent reached the member: its first push is the API publication
    assert (await member.next_push())["pub"]["data"] == {"n": 1}


async def test_finding_01_relay_respects_namespace_allow_anonymous(start_server, clients: list) -> None:
    """Finding 1: on a hub that allows anonymous clients, the relay ignores a
    namespace's allow_anonymous=False. Fixed: 403."""
    server = await start_server(namespaces={"locked": NamespaceOptions(allow_anonymous=False),
                                            "free": NamespaceOptions()})
    assert await refused_status(ws_url(server, "/ws/locked:a")) == 403
    assert await refused_status(ws_url(server, "/ws/free:a")) is None


# -- 2. replies are not bounded by max_pending_output ---------------------------------------------


def metric(server: Server, name: str, **labels: str) -> float:
    """The value of metric ``name`` (summed over samples matching ``labels``), as
    ``GET /metrics`` shows it."""
    from prometheus_client.parser import text_string_to_metric_families

    from hubbub.metrics import render

    total = 0.0
    for family in text_string_to_metric_families(render(server).decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def pending_output(server: Server) -> float:
    return metric(server, "hubbub_pending_output_bytes")


def closed_slow(server: Server) -> float:
    return metric(server, "hubbub_disconnects_total", code="3008")


def commands_done(server: Server, method: str) -> float:
    return metric(server, "hubbub_command_duration_seconds_count", method=method)


@pytest.fixture
async def small_sndbuf_server():
    """Start servers whose accepted sockets have a small kernel send buffer (set on
    the listening socket, inherited by accepted ones), so that what a client does not
    read piles up in the server's own buffers at once instead of in the kernel's."""
    servers: list[Server] = []

    async def start(**kw: Any) -> Server:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        listener.bind(("127.0.0.1", 0))
        server = Server(make_config(**kw))
        await server.start(sock=listener)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def raw_protocol_client(port: int, rcvbuf: int = 4096) -> tuple[socket.socket, FrameReader]:
    """A raw TCP client (receive buffer ``rcvbuf``) that does the WebSocket handshake
    and the protocol ``connect`` by hand; returns the socket, and the frame reader
    that read the connect reply. Nothing more is read (the caller decides)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, handshake() + client_frame(b'{"id":1,"connect":{}}'))
    data = b""
    frames = FrameReader()
    async with asyncio.timeout(TIMEOUT):
        while frames.frames < 1:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "closed during connect"
            if data is not None:
                data += chunk
                if b"\r\n\r\n" not in data:
                    continue
                head, _, chunk = data.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101"), head
                data = None
            frames.feed(chunk)
    assert frames.close_code is None, "closed during connect"
    return sock, frames


async def _flood_unread(server: Server, sock: socket.socket, frames: list[bytes], per_frame: int, method: str,
                        bound: float) -> float:
    """Send ``frames`` (each holding ``per_frame`` ``method`` commands) one by one on
    ``sock``, never reading; after each, wait until the server has handled them (or
    closed the connection with 3008), sampling its pending output. Stops at the 3008
    close, or as soon as the pending output passes ``bound``. Returns the peak seen."""
    loop = asyncio.get_running_loop()
    peak = 0.0
    handled = commands_done(server, method)
    async with asyncio.timeout(20):
        for frame in frames:
            if closed_slow(server) or peak >= bound:
                break
            try:
                await loop.sock_sendall(sock, frame)
            except OSError:
                break
            handled += per_frame
            while commands_done(server, method) < handled and not closed_slow(server):
                peak = max(peak, pending_output(server))
                await asyncio.sleep(0.002)
            peak = max(peak, pending_output(server))
    return peak


async def _close_code_after_reading(sock: socket.socket, frames: FrameReader) -> int | None:
    """Read what the server sent until its close frame."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        while frames.close_code is None:
            try:
                chunk = await loop.sock_recv(sock, 1 << 20)
            except OSError:
                break
            if not chunk:
                break
            frames.feed(chunk)
    return frames.close_code


async def test_finding_02_unread_history_replies_are_bounded(small_sndbuf_server, clients: list) -> None:
    """Finding 2: command replies bypass max_pending_output: a client that sends
    history commands (1 MB replies) and never reads makes the server buffer every
    reply. Fixed: the connection is closed with 3008 and its pending output stays
    within about max_pending_output plus one reply."""
    limit = 1024 * 1024
    server = await small_sndbuf_server(max_pending_output=limit, ping_interval=0,
                                       namespaces={"h": NamespaceOptions(history_size=100, history_ttl=300)})
    for _ in range(100):
        await server.hub.publish("h:x", {"p": "x" * 10000})
    bystander = await proto_client(server)
    clients.append(bystander)
    sock, reader = await raw_protocol_client(server.port)
    try:
        command = b'{"id":%d,"history":{"channel":"h:x","limit":100}}'
        frames = [b"".join(client_frame(command % (2 + i + j)) for j in range(5)) for i in range(0, 500, 5)]
        peak = await _flood_unread(server, sock, frames, 5, "history", 4 * limit)
        assert peak < 4 * limit, f"pending output reached {peak:.0f} bytes (limit {limit})"
        assert closed_slow(server) == 1, "the client that does not read was not closed with 3008"
        assert await _close_code_after_reading(sock, reader) == 3008
    finally:
        sock.close()
    assert (await bystander.call("ping"))["ping"] == {}


async def test_finding_02_unread_ping_flood_is_closed_3008(small_sndbuf_server, clients: list) -> None:
    """Finding 2: a flood of ping commands whose replies are never read is only
    closed when the server's own ping timer queues a push. Fixed: 3008 as soon as the
    replies pass max_pending_output (here with server pings off)."""
    limit = 64 * 1024
    server = await small_sndbuf_server(max_pending_output=limit, ping_interval=0)
    bystander = await proto_client(server)
    clients.append(bystander)
    sock, reader = await raw_protocol_client(server.port)
    try:
        pings = b"\n".join(b'{"id":%d,"ping":{}}' % i for i in range(2, 2002))
        frames = [client_frame(pings)] * 100  # at most 200,000 pings
        peak = await _flood_unread(server, sock, frames, 2000, "ping", 4 * limit)
        assert peak < 4 * limit, f"pending output reached {peak:.0f} bytes (limit {limit})"
        assert closed_slow(server) == 1, "the ping flood that is never read was not closed with 3008"
        assert await _close_code_after_reading(sock, reader) == 3008
    finally:
        sock.close()
    assert (await bystander.call("ping"))["ping"] == {}


# -- 3. the accept loop spins at the file descriptor limit: see tests/test_listener.py
# (test_fd_limit_hubbub_serve_stays_quiet_and_resumes) --------------------------------------


# -- 4. a channel name with a lone surrogate ----------------------------------------------


async def test_finding_04_lone_surrogate_channel_protocol(start_server, clients: list) -> None:
    """Finding 4: a channel name with a lone surrogate makes protocol commands fail
    with error 100 (temporary) and a traceback. Fixed: error 107, not temporary."""
    server = await start_server(channels=NamespaceOptions(history_size=10, history_ttl=60, presence=True))
    c = await proto_client(server)
    clients.append(c)
    bad = "\ud800"  # json.dumps sends the escape text "\ud800"
    for method, params in [("subscribe", {"channel": bad}), ("publish", {"channel": bad, "data": 1}),
                           ("history", {"channel": bad, "limit": 1}), ("presence", {"channel": bad}),
                           ("presence_stats", {"channel": bad}), ("subscribe", {"channel": "ok" + bad})]:
        reply = await c.call(method, params)
        error = reply.get("error", {})
        assert error.get("code") == 107 and not error.get("temporary"), (method, reply)
    assert (await c.call("ping"))["ping"] == {}


async def test_finding_04_lone_surrogate_channel_api(start_server) -> None:
    """Finding 4: the HTTP API answers 500 for a channel name with a lone surrogate.
    Fixed: 400, or 200 with error 107."""
    server = await start_server(api_key=API_KEY,
                                channels=NamespaceOptions(history_size=10, history_ttl=60, presence=True))
    bad = "\ud800"
    bodies = {
        "publish": {"channel": bad, "data": 1},
        "history": {"channel": bad},
        "presence": {"channel": bad},
        "presence_stats": {"channel": bad},
        "history_remove": {"channel": bad},
        "subscribe": {"channel": bad, "user": "u"},
        "unsubscribe": {"channel": bad, "user": "u"},
        "broadcast": {"channels": [bad], "data": 1},
    }
    wrong = {}
    for method, body in bodies.items():
        status, reply = await asyncio.to_thread(http_post, server.port, method, json.dumps(body))
        ok = status == 400 or (status == 200 and _has_error_107(reply))
        if method == "unsubscribe":
            ok = ok or status == 200  # nothing to unsubscribe: a no-op is fine
        if not ok:
            wrong[method] = (status, reply)
    assert not wrong, f"expected 400 or error 107: {wrong}"


def _has_error_107(reply: Any) -> bool:
    if not isinstance(reply, dict):
        return False
    if isinstance(reply.get("error"), dict) and reply["error"].get("code") == 107:
        return True
    responses = (reply.get("result") or {}).get("responses")
    return bool(responses) and all(r.get("error", {}).get("code") == 107 for r in responses)


# -- 5. API parameters of the wrong type ----------------------------------------------------


async def test_finding_05_api_wrong_types_are_4xx(start_server) -> None:
    """Finding 5: API parameters of the wrong type get HTTP 500 (e.g. an unhashable
    disconnect whitelist). Fixed: 4xx, or 200 with an error body; never 5xx."""
    server = await start_server(api_key=API_KEY,
                                namespaces={"h": NamespaceOptions(history_size=10, history_ttl=60)})
    cases = [
        ("disconnect", {"user": "u", "whitelist": [[1]]}),
        ("disconnect", {"user": "u", "whitelist": [{"a": 1}]}),
        ("disconnect", {"user": 1}),
        ("disconnect", {"user": "u", "disconnect": {"code": "x"}}),
        ("disconnect", {"user": "u", "disconnect": 1}),
        ("publish", {"channel": "a", "data": 1, "tags": {"a": 1}}),
        ("publish", {"channel": 1, "data": 1}),
        ("publish", {"channel": "a", "data": 1, "idempotency_key": 1}),
        ("broadcast", {"channels": "a"}),
        ("broadcast", {"channels": [1], "data": 1}),
        ("batch", {"commands": [{"publish": 1}]}),
        ("batch", {"commands": 1}),
        ("batch", {"commands": [{"disconnect": {"user": "u", "whitelist": [[1]]}}]}),
        ("history", {"channel": "h:x", "since": {"offset": "1"}}),
        ("history", {"channel": "h:x", "limit": "1"}),
        ("history", {"channel": "h:x", "since": 1}),
        ("refresh", {"user": "u", "expire_at": "soon"}),
        ("subscribe", {"user": "u", "channel": 1}),
        ("unsubscribe", {"user": ["u"], "channel": "a"}),
        ("channels", {"pattern": 1}),
    ]
    wrong = []
    for method, body in cases:
        status, reply = await asyncio.to_thread(http_post, server.port, method, json.dumps(body))
        if status >= 500 or not (400 <= status < 500 or (status == 200 and _error_body(reply))):
            wrong.append((method, body, status, reply))
    assert not wrong, "expected 4xx or an error body:\n" + "\n".join(map(repr, wrong))
    # the API still works
    status, reply = await asyncio.to_thread(http_post, server.port, "publish", '{"channel":"a","data":1}')
    assert status == 200 and "result" in reply


def _error_body(reply: Any) -> bool:
    if not isinstance(reply, dict):
        return False
    if "error" in reply:
        return True
    replies = reply.get("replies")
    return isinstance(replies, list) and bool(replies) and all("error" in r for r in replies)


# -- 6. a subscription token used as a connection token ------------------------------------


async def test_finding_06_subscription_token_is_not_a_connection_token(start_server, clients: list) -> None:
    """Finding 6: a subscription token (a JWT with a ``channel`` claim) is accepted as
    a connection token. Fixed: connect with it is closed with 3500."""
    server = await start_server(token_hmac_secret=SECRET)
    c = await proto_client(server, connect=False)
    clients.append(c)
    await c.send({"id": 1, "connect": {"token": token("u1", channel="news")}})
    try:
        reply = await asyncio.wait_for(c.ws.recv(), TIMEOUT)
    except websockets.ConnectionClosed:
        reply = None
    assert reply is None, f"connect with a subscription token was accepted: {reply}"
    assert c.ws.protocol.close_rcvd is not None and c.ws.protocol.close_rcvd.code == 3500
    assert server.hub.user_sessions("u1") == []
    good = await proto_client(server, connect=False)
    clients.append(good)
    assert "connect" in await good.call("connect", {"token": token("u1")})


# -- 7. origin check fooled by a matching Host header ------------------------------------------


async def test_finding_07_foreign_origin_with_matching_host_is_403(start_server) -> None:
    """Finding 7: with allowed_origins set, an upgrade whose Origin matches its own
    Host header (Origin http://evil.example, Host evil.example) passes as same-origin.
    Fixed: 403; the listed origin is still allowed."""
    server = await start_server(allowed_origins=["https://good.example"])

    async def upgrade(host: str, origin: str) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(handshake(host=host, Origin=origin))
            return (await read_response_head(reader))[0]
        finally:
            writer.close()

    assert await upgrade("evil.example", "http://evil.example") == 403
    assert await upgrade("evil.example", "https://evil.example") == 403
    assert await upgrade(f"127.0.0.1:{server.port}", "https://good.example") == 101


# -- 8. client_channel_limit = 0 -----------------------------------------------------------------


async def test_finding_08_channel_limit_zero_means_no_limit(start_server, clients: list) -> None:
    """Finding 8: client_channel_limit = 0 refuses every subscribe (error 106).
    Fixed: 0 means no limit."""
    server = await start_server(client_channel_limit=0)
    c = await proto_client(server)
    clients.append(c)
    for i in range(3):
        reply = await c.call("subscribe", {"channel": f"c{i}"})
        assert reply.get("subscribe") == {}, reply
    assert server.hub.channels() == {"c0": 1, "c1": 1, "c2": 1}


# -- 9. an oversized frame in the same TCP write as the upgrade --------------------------------------


async def _oversized_frame_close(port: int, *, same_write: bool) -> tuple[int, int | None]:
    """Send an upgrade and a frame header declaring 100000 bytes (more than
    max_message_size); return the handshake status and the close code received
    (None: the TCP connection ended without a close frame)."""
    too_big = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 100_000) + b"\x00\x00\x00\x00" + b"a" * 100
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if same_write:
            writer.write(handshake() + too_big)
            status, _ = await read_response_head(reader)
        else:
            writer.write(handshake())
            status, _ = await read_response_head(reader)
            writer.write(too_big)
        frames = FrameReader()
        async with asyncio.timeout(TIMEOUT):
            while frames.close_code is None:
                try:
                    data = await reader.read(65536)
                except ConnectionError:
                    break
                if not data:
                    break
                frames.feed(data)
        return status, frames.close_code
    finally:
        writer.close()


async def test_finding_09_oversized_frame_with_the_upgrade_gets_1009(server: Server) -> None:
    """Finding 9: a frame over max_message_size sent in the same TCP write as the
    upgrade request closes TCP without a close frame (sent after the 101 it gets
    1009). Fixed: a close frame with 1009 in both cases."""
    assert await _oversized_frame_close(server.port, same_write=False) == (101, 1009)
    assert await _oversized_frame_close(server.port, same_write=True) == (101, 1009)


# -- 10. the command rate limit does not stop a sustained flood ---------------------------------------


async def test_finding_10_command_flood_is_closed_3013(serve_process, clients: list) -> None:
    """Finding 10: with client_command_rate=1000 (burst 100), 3013 needs 100 rejected
    commands in a row, and any token refilled meanwhile resets that count: a flood of
    separate ping frames at 3x the rate is answered with error 111 forever and never
    disconnected. Fixed: a sustained flood ends in 3013 within a few seconds, and a
    bystander's pings stay fast."""
    server = serve_process(env={"HUBBUB_CLIENT_COMMAND_RATE": "1000"})
    loop = asyncio.get_running_loop()
    sock, frames = await raw_protocol_client(server.port, rcvbuf=1 << 20)
    bystander = ProtoClient(await websockets.connect(f"{server.url}/connection/websocket", ping_interval=None))
    bystander._buffer = []
    clients.append(bystander)
    assert "connect" in await bystander.call("connect", {})
    done = asyncio.Event()

    async def read() -> None:  # the flooder reads its replies (so this is not a 3008 case)
        try:
            while frames.close_code is None:
                data = await loop.sock_recv(sock, 1 << 20)
                if not data:
                    break
                frames.feed(data)
        except OSError:
            pass
        finally:
            done.set()

    rtts: list[float] = []

    async def watch() -> None:
        while True:
            started = time.monotonic()
            assert (await bystander.call("ping"))["ping"] == {}
            rtts.append(time.monotonic() - started)
            if done.is_set():
                return
            await asyncio.sleep(0.02)  # pacing: the bystander stays well under the rate

    reader, watcher = asyncio.create_task(read()), asyncio.create_task(watch())
    ping = client_frame(b'{"id":2,"ping":{}}')
    rate, sent = 3000, 0  # pings per second, one per frame: 3x client_command_rate
    started = time.monotonic()
    closed_after = None
    try:
        # at most 5 s (15,000 pings); a few per step, never a burst of catch-up
        while not done.is_set() and (elapsed := time.monotonic() - started) < 5.0:
            n = min(int(elapsed * rate) - sent, 10)
            if n > 0:
                try:
                    await loop.sock_sendall(sock, ping * n)
                except OSError:
                    break
                sent += n
            await asyncio.sleep(0.001)  # pacing of the flood
        try:
            await asyncio.wait_for(done.wait(), 2.0)
        except TimeoutError:
            pass
        if done.is_set():
            closed_after = time.monotonic() - started
    finally:
        for task in (reader, watcher):
            task.cancel()
        await asyncio.gather(reader, watcher, return_exceptions=True)
        sock.close()
    assert frames.close_code == 3013, (
        f"{sent} pings at {rate}/s over {time.monotonic() - started:.1f} s: close code {frames.close_code}")
    assert closed_after is not None and closed_after < 5.0, f"closed only after {closed_after} s"
    assert rtts and max(rtts) < 0.5, f"bystander ping round trips up to {max(rtts, default=0):.3f} s"
    assert (await bystander.call("ping"))["ping"] == {}


# -- 11. NaN and Infinity published from the application --------------------------------------------


async def test_finding_11_nan_publication_is_refused(server: Server, clients: list) -> None:
    """Finding 11: Hub.publish(channel, value) encodes NaN/Infinity as the invalid JSON
    ``NaN``/``Infinity`` and delivers it. Fixed: it raises (ProtocolError 107 or
    ValueError) and delivers nothing."""
    relay = await websockets.connect(ws_url(server, "/ws/news"), ping_interval=None)
    proto = await proto_client(server)
    clients += [relay, proto]
    await proto.call("subscribe", {"channel": "news"})
    await subscribed(server, "news", 2)
    for bad in ({"x": float("nan")}, {"x": float("inf")}, [-math.inf]):
        with pytest.raises((ProtocolError, ValueError)) as info:
            await server.hub.publish("news", bad)
        if isinstance(info.value, ProtocolError):
            assert info.value.code == 107
    await server.hub.publish("news", {"ok": 1})
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == '{"ok":1}'
    assert (await proto.next_push())["pub"]["data"] == {"ok": 1}


# -- 12. idempotency_ttl is never used -------------------------------------------------------------------


class RecordingBroker(MemoryBroker):
    """A memory broker that records the keyword arguments of each publish."""

    def __init__(self) -> None:
        super().__init__()
        self.publish_kwargs: list[dict[str, Any]] = []

    async def publish(self, channel, pub, **kw):  # type: ignore[override]
        self.publish_kwargs.append(kw)
        return await super().publish(channel, pub, **kw)


async def test_finding_12_idempotency_ttl_reaches_the_broker() -> None:
    """Finding 12: the idempotency_ttl setting is never passed to the broker (it always
    uses its own default of 300 s). Fixed: Hub.publish passes config.idempotency_ttl."""
    broker = RecordingBroker()
    hub = Hub(Config(idempotency_ttl=7.0), broker)
    await hub.start()
    try:
        first = await hub.publish("news", {"a": 1}, idempotency_key="k1")
        again = await hub.publish("news", {"a": 1}, idempotency_key="k1")
        assert first == again
    finally:
        await hub.close()
    with_key = [kw for kw in broker.publish_kwargs if kw.get("idempotency_key") == "k1"]
    assert with_key and all(kw.get("idempotency_ttl") == 7.0 for kw in with_key), broker.publish_kwargs


# -- 13. closed connections are only freed by the cyclic garbage collector: see tests/test_cycles.py
