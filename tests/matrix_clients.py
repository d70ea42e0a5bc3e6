"""Client adapters of the rule-by-way-in matrix (tests/test_rule_matrix.py).

One adapter per way into a hub. Each speaks its wire format with a real client
on a real socket (``websockets`` for WebSocket ways, a small raw HTTP/1.1
client for the streaming ways) and reduces what the server answers to an
:data:`Outcome`: a refused handshake (HTTP status), a close (close code, or the
``disconnect`` push / event that ends a stream), an error reply, an
``unsubscribe`` push. The rules (the matrix's columns) are written once, over
the adapters' common primitives (:class:`Adapter`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import websockets
from centrifuge.protocol import client_pb2 as pb  # type: ignore[import-untyped]  # the SDK ships no stubs
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.pbframes import frame as pb_frame
from tests.pbframes import read_replies

SECRET = "matrix-secret-of-more-than-32-bytes-for-hs256"
API_KEY = "matrix-api-key"
USER = "alice"
#: the channel every way in subscribes to (the default namespace: clients may subscribe)
CHANNEL = "news"
#: a channel of a namespace that requires a subscription token (none is given)
PRIVATE = "secret:x"
#: the endpoint path of the matrix's App (it subscribes to CHANNEL and echoes)
ENDPOINT = "/chat"
#: seconds any single wait of a cell may take (a failing cell fails fast)
WAIT = 4.0
#: how big an oversized inbound message is (the matrix sets max_message_size to 1024)
OVERSIZED = 4096

# -- outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ok:
    """Connected (and subscribed where asked): nothing refused."""


@dataclass(frozen=True)
class Refused:
    """The handshake or request was answered with this HTTP status."""

    status: int


@dataclass(frozen=True)
class Closed:
    """The connection was closed with this code: a WebSocket close frame, or the
    ``disconnect`` push / event that ends a stream (1006: ended without either)."""

    code: int


@dataclass(frozen=True)
class Error:
    """An error reply with this protocol error code (the connection stays open)."""

    code: int


@dataclass(frozen=True)
class Unsubscribed:
    """The hub no longer delivers the channel to the client; ``code`` is the
    ``unsubscribe`` push it was told, ``None`` where the way in has no such message."""

    code: int | None


@dataclass(frozen=True)
class Released:
    """The server let go of a client (the hub no longer holds or delivers to it)."""


@dataclass(frozen=True)
class NotSubscribed:
    """A one-way client connected, and the channel it asked for is not among its ``subs``."""


@dataclass(frozen=True)
class Pub:
    """A publication arrived (internal: the rules skip them)."""

    data: Any


@dataclass(frozen=True)
class Timeout:
    """Nothing decisive happened within the wait."""

    what: str


@dataclass(frozen=True)
class Broken:
    """The client could not make sense of the server's answer."""

    what: str


Outcome = Ok | Refused | Closed | Error | Unsubscribed | NotSubscribed | Released | Timeout | Broken
Event = Outcome | Pub


@dataclass(frozen=True)
class NotApplicable:
    """A cell whose rule does not apply to its way in, and why."""

    why: str


# -- the hub under test, seen from outside -------------------------------------------------------


class Env:
    """The served App: its port, tokens for it and its server API.

    Args:
        app: the ``hubbub.App`` (its ``hub`` is read to wait for subscriptions).
        port: where it listens (hubbub's own server, or uvicorn).
    """

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port
        self.hook_calls: list[str] = []

    @property
    def hub(self) -> Any:
        return self.app.hub

    @staticmethod
    def token(user: str = USER, *, expires_in: float = 3600.0) -> str:
        """An HS256 connection token for ``user`` expiring ``expires_in`` seconds from now."""
        return jwt.encode({"sub": user, "exp": int(time.time() + expires_in)}, SECRET, algorithm="HS256")

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def api(self, method: str, params: dict[str, Any]) -> int:
        """``POST /api/{method}``; the status (the body is read and dropped)."""
        response = await http_request(self.port, "POST", f"/api/{method}", json.dumps(params).encode(),
                                      {"X-API-Key": API_KEY, "Content-Type": "application/json"})
        await response.read_all()
        response.close()
        return response.status

    def subscribed(self, channel: str = CHANNEL) -> int:
        """How many subscribers ``channel`` has on this node."""
        return len(self.hub.subscribers(channel))

    async def wait_for(self, condition: Callable[[], Any], timeout: float = WAIT) -> bool:
        """Whether ``condition()`` became true within ``timeout`` (polled every 5 ms)."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    await asyncio.sleep(0.005)
        except TimeoutError:
            return False
        return True


# -- a raw HTTP/1.1 client for streamed responses ------------------------------------------------------


class HTTPResponse:
    """A response read from a raw socket: status, headers, then the body piece by piece."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int,
                 headers: dict[str, str]) -> None:
        self.reader = reader
        self.writer = writer
        self.status = status
        self.headers = headers
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.remaining = int(headers["content-length"]) if "content-length" in headers else None
        self.done = False

    async def piece(self) -> bytes:
        """The next piece of the body (``b""`` at its end)."""
        if self.done:
            return b""
        reader = self.reader
        if self.chunked:
            size_line = await reader.readline()
            if not size_line:
                self.done = True
                return b""
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.done = True
                return b""
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            return data
        if self.remaining is not None:
            if self.remaining == 0:
                self.done = True
                return b""
            data = await reader.read(self.remaining)
            self.remaining -= len(data)
        else:
            data = await reader.read(65536)
        if not data:
            self.done = True
        return data

    async def read_all(self) -> bytes:
        out = []
        async with asyncio.timeout(WAIT):
            while piece := await self.piece():
                out.append(piece)
        return b"".join(out)

    def close(self) -> None:
        self.writer.close()


async def http_request(port: int, method: str, target: str, body: bytes = b"",
                       headers: dict[str, str] | None = None, *, rcvbuf: int | None = None,
                       timeout: float = WAIT) -> HTTPResponse:
    """Send one request on a new connection and read the response head (within ``timeout`` seconds).

    ``rcvbuf``: the socket's receive buffer (a client that stops reading fills it soon).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        await loop.sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16384)
        head = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            parsed[name.strip().lower()] = value.strip()
    return HTTPResponse(reader, writer, status, parsed)


class LineMessages:
    """Newline-delimited JSON messages of a streamed body."""

    def __init__(self, response: HTTPResponse) -> None:
        self.response = response
        self.buffer = b""

    async def next(self) -> tuple[str, Any] | None:
        """``("message", value)``, or ``None`` at the end of the body."""
        while b"\n" not in self.buffer:
            piece = await self.response.piece()
            if not piece:
                return None
            self.buffer += piece
        line, _, self.buffer = self.buffer.partition(b"\n")
        if not line.strip():
            return await self.next()
        return "message", json.loads(line)


class SSEMessages:
    """Server-Sent Events of a streamed body: ``(event name, data)``."""

    def __init__(self, response: HTTPResponse) -> None:
        self.response = response
        self.buffer = b""
        self.queued: list[tuple[str, Any]] = []

    async def next(self) -> tuple[str, Any] | None:
        """The next message: an event's ``data`` lines may hold several JSON
        messages (the protocol joins replies with newlines)."""
        while not self.queued:
            event = await self._event()
            if event is None:
                return None
            name, data = event
            self.queued.extend((name, json.loads(line)) for line in data.split(b"\n") if line.strip())
        return self.queued.pop(0)

    async def _event(self) -> tuple[str, bytes] | None:
        while True:
            self.buffer = self.buffer.replace(b"\r\n", b"\n")
            while b"\n\n" not in self.buffer:
                piece = await self.response.piece()
                if not piece:
                    return None
                self.buffer = (self.buffer + piece).replace(b"\r\n", b"\n")
            block, _, self.buffer = self.buffer.partition(b"\n\n")
            name, data = "message", []
            for line in block.split(b"\n"):
                field, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if field == b"event":
                    name = value.decode()
                elif field == b"data":
                    data.append(value)
            if data:
                return name, b"\n".join(data)


# -- adapters ---------------------------------------------------------------------------------------


class Adapter:
    """A way in. Primitives the rules use (each returns an :data:`Event` or
    :data:`Outcome`, never raises for what the server does):

    * :meth:`start`: open, connect with ``token`` (``None``: none), subscribe
      to ``channel``; :class:`Ok`, or the first refusal.
    * :meth:`publish`, :meth:`flood`: send one publication / many commands.
    * :meth:`next_event`: the next error, push, publication or close.
    * :meth:`open_idle`: open and never authenticate.
    * :meth:`send_oversized`: send a message over ``max_message_size``.
    """

    #: whether the way in tells its client about a server-side unsubscribe
    tells_unsubscribe = True

    def __init__(self, env: Env) -> None:
        self.env = env

    async def start(self, token: str | None, channel: str = CHANNEL, *, small_rcvbuf: bool = False) -> Event:
        raise NotImplementedError

    async def publish(self, data: Any) -> Outcome | None:
        raise NotImplementedError

    async def flood(self, n: int) -> Outcome | None:
        raise NotImplementedError

    async def next_event(self) -> Event:
        raise NotImplementedError

    async def open_idle(self) -> Outcome | None:
        raise NotImplementedError

    async def send_oversized(self) -> Outcome | None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def until_closed(self) -> Event:
        """Read until the connection ends; :class:`Closed` with its code."""
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    event = await self.next_event()
                    if isinstance(event, (Closed, Broken, Timeout)):
                        return event
        except TimeoutError:
            return Timeout("still open")

    async def first_decisive(self) -> Event:
        """The next event that is not a publication (an error, a push, a close)."""
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    event = await self.next_event()
                    if not isinstance(event, Pub):
                        return event
        except TimeoutError:
            return Timeout("nothing decisive")


# -- WebSocket ways ------------------------------------------------------------------------------------


class MuteWebSocket:
    """A WebSocket client on a raw socket with a 4 KiB receive buffer that reads
    only inside :meth:`recv` (websockets' sans-I/O ``ClientProtocol``): once the
    test stops calling it, nothing reads the socket, so what the server sends
    piles up in its own buffers. (``websockets.connect`` may keep reading.)
    The subset of ``ClientConnection`` the adapters use."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.frames: list[Frame] = []

    @classmethod
    async def connect(cls, url: str, port: int, subprotocols: list[str] | None) -> MuteWebSocket | Outcome:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        protocol = ClientProtocol(parse_uri(url), subprotocols=subprotocols, max_size=None)  # type: ignore[arg-type]
        ws = cls(sock, protocol)
        async with asyncio.timeout(WAIT):
            await ws.loop.sock_connect(sock, ("127.0.0.1", port))
            protocol.send_request(protocol.connect())
            await ws._flush()
            while True:
                events = await ws._read()
                for index, event in enumerate(events):
                    if isinstance(event, Response):
                        # frames that came in the same read as the 101 (a server that speaks first)
                        ws.frames.extend(e for e in events[index + 1:] if isinstance(e, Frame))
                        if event.status_code != 101:
                            sock.close()
                            return Refused(event.status_code)
                        if protocol.handshake_exc is not None:
                            sock.close()
                            return Broken(f"handshake: {protocol.handshake_exc!r}")
                        return ws
                    ws.frames.append(event)

    def _closed_error(self) -> websockets.ConnectionClosed:
        protocol = self.protocol
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        order = protocol.close_rcvd_then_sent if rcvd is not None and sent is not None else None
        return websockets.ConnectionClosed(rcvd, sent, order)

    async def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await self.loop.sock_sendall(self.sock, data)

    async def _read(self) -> list[Any]:
        try:
            data = await self.loop.sock_recv(self.sock, 65536)
        except OSError:
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        try:
            await self._flush()  # the close frame's answer
        except OSError:
            pass
        events = self.protocol.events_received()
        if not data and not events:
            raise self._closed_error()
        return events

    async def recv(self) -> str | bytes:
        while True:
            while self.frames:
                frame = self.frames.pop(0)
                if frame.opcode is Opcode.TEXT:
                    return bytes(frame.data).decode()
                if frame.opcode is Opcode.BINARY:
                    return bytes(frame.data)
                if frame.opcode is Opcode.CLOSE:
                    raise self._closed_error()
            self.frames.extend(await self._read())

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        try:
            await self._flush()
        except OSError:
            raise self._closed_error() from None

    async def close(self) -> None:
        self.sock.close()


class WebSocketAdapter(Adapter):
    """Shared by the WebSocket ways: the socket, refusals, close codes."""

    subprotocols: list[str] | None = None

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.ws: ClientConnection | None = None
        self.opened: list[ClientConnection] = []

    async def _open(self, path: str, *, small_rcvbuf: bool = False) -> Outcome | None:
        if small_rcvbuf:
            try:
                mute = await MuteWebSocket.connect(self.env.ws_url(path), self.env.port, self.subprotocols)
            except (OSError, TimeoutError) as exc:
                return Broken(f"handshake: {exc!r}")
            if not isinstance(mute, MuteWebSocket):
                return mute
            self.ws = mute  # type: ignore[assignment]
            self.opened.append(mute)  # type: ignore[arg-type]
            return None
        kw: dict[str, Any] = {"ping_interval": None, "max_size": None, "open_timeout": WAIT,
                              "close_timeout": 1}
        if self.subprotocols:
            kw["subprotocols"] = self.subprotocols
        try:
            ws = await websockets.connect(self.env.ws_url(path), **kw)
        except websockets.InvalidStatus as exc:
            return Refused(exc.response.status_code)
        except (websockets.InvalidHandshake, OSError, TimeoutError) as exc:
            return Broken(f"handshake: {exc!r}")
        self.ws = ws
        self.opened.append(ws)
        return None

    def _closed(self) -> Closed:
        assert self.ws is not None
        rcvd = self.ws.protocol.close_rcvd
        return Closed(1006 if rcvd is None else rcvd.code)

    async def _recv(self) -> str | bytes | Closed | Timeout:
        assert self.ws is not None
        try:
            async with asyncio.timeout(WAIT):
                return await self.ws.recv()
        except websockets.ConnectionClosed:
            return self._closed()
        except TimeoutError:
            return Timeout("no message")

    async def _send(self, message: str | bytes) -> Closed | None:
        assert self.ws is not None
        try:
            await self.ws.send(message)
        except websockets.ConnectionClosed:
            return self._closed()
        return None

    async def open_idle(self) -> Outcome | None:
        return await self._open(self.path())

    def path(self) -> str:
        raise NotImplementedError

    async def close(self) -> None:
        for ws in self.opened:
            try:
                await asyncio.wait_for(ws.close(), 2)
            except Exception:
                pass


class ProtocolJSON(WebSocketAdapter):
    """``/connection/websocket``, JSON."""

    def path(self) -> str:
        return "/connection/websocket"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.next_id = 0
        self.pending: list[dict[str, Any]] = []

    def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        return {"id": self.next_id, method: params}

    def encode(self, commands: list[dict[str, Any]]) -> str | bytes:
        return "\n".join(json.dumps(c) for c in commands)

    def decode(self, message: str | bytes) -> list[dict[str, Any]]:
        assert isinstance(message, str), "JSON frames are text"
        return [json.loads(line) for line in message.split("\n") if line.strip()]

    async def call(self, method: str, params: dict[str, Any]) -> Event:
        """Send one command; :class:`Ok` for its reply, or the error / close."""
        command = self.command(method, params)
        closed = await self._send(self.encode([command]))
        if closed is not None:
            return closed
        while True:
            got = await self._message()
            if isinstance(got, (Closed, Timeout, Broken)):
                return got
            if got.get("id") == command["id"]:
                if "error" in got:
                    return Error(got["error"]["code"])
                return Ok()
            self.pending.append(got)

    async def _message(self) -> dict[str, Any] | Closed | Timeout | Broken:
        if self.pending:
            return self.pending.pop(0)
        raw = await self._recv()
        if isinstance(raw, (Closed, Timeout)):
            return raw
        try:
            self.pending.extend(self.decode(raw))
        except Exception as exc:
            return Broken(f"undecodable: {exc!r}")
        return await self._message() if self.pending else {}

    async def start(self, token: str | None, channel: str = CHANNEL, *, small_rcvbuf: bool = False) -> Event:
        refused = await self._open(self.path(), small_rcvbuf=small_rcvbuf)
        if refused is not None:
            return refused
        params = {} if token is None else {"token": token}
        connected = await self.call("connect", params)
        if not isinstance(connected, Ok):
            return connected
        return await self.call("subscribe", {"channel": channel})

    async def publish(self, data: Any) -> Outcome | None:
        return await self._send(self.encode([self.command("publish", {"channel": CHANNEL, "data": data})]))

    async def flood(self, n: int) -> Outcome | None:
        return await self._send(self.encode([self.command("ping", {}) for _ in range(n)]))

    async def send_oversized(self) -> Outcome | None:
        started = await self.start(self.env.token())
        if not isinstance(started, Ok):
            return Broken(f"could not start: {started}")
        return await self.publish({"blob": "x" * OVERSIZED})

    async def next_event(self) -> Event:
        got = await self._message()
        if isinstance(got, (Closed, Timeout, Broken)):
            return got
        return protocol_event(got)


def protocol_event(message: dict[str, Any]) -> Event:
    """What one message of the bidirectional protocol means for a rule."""
    if "error" in message:
        return Error(message["error"]["code"])
    push = message.get("push")
    if push is not None:
        if "unsubscribe" in push:
            return Unsubscribed(push["unsubscribe"].get("code", 0))
        if "disconnect" in push:
            return Closed(push["disconnect"]["code"])
        if "pub" in push:
            return Pub(push["pub"].get("data"))
    return Pub(None)  # a reply or another push: not decisive


class ProtocolProtobuf(ProtocolJSON):
    """``/connection/websocket`` with the ``centrifuge-protobuf`` subprotocol (the SDKs' own classes)."""

    subprotocols = ["centrifuge-protobuf"]

    def encode(self, commands: list[dict[str, Any]]) -> str | bytes:
        out = []
        for c in commands:
            cmd = pb.Command(id=c["id"])
            if "connect" in c:
                cmd.connect.CopyFrom(pb.ConnectRequest(token=c["connect"].get("token", "")))
            elif "subscribe" in c:
                cmd.subscribe.CopyFrom(pb.SubscribeRequest(channel=c["subscribe"]["channel"]))
            elif "publish" in c:
                p = c["publish"]
                cmd.publish.CopyFrom(pb.PublishRequest(channel=p["channel"], data=json.dumps(p["data"]).encode()))
            elif "ping" in c:
                cmd.ping.CopyFrom(pb.PingRequest())
            out.append(cmd)
        return pb_frame(*out)

    def decode(self, message: str | bytes) -> list[dict[str, Any]]:
        assert isinstance(message, bytes), "Protobuf frames are binary"
        out: list[dict[str, Any]] = []
        for reply in read_replies(message, pb.Reply):
            item: dict[str, Any] = {"id": reply.id}
            if reply.HasField("error"):
                item["error"] = {"code": reply.error.code}
            elif reply.HasField("push"):
                push = reply.push
                if push.HasField("unsubscribe"):
                    item["push"] = {"unsubscribe": {"code": push.unsubscribe.code}}
                elif push.HasField("disconnect"):
                    item["push"] = {"disconnect": {"code": push.disconnect.code}}
                elif push.HasField("pub"):
                    item["push"] = {"pub": {"data": bytes(push.pub.data)}}
                else:
                    item["push"] = {}
            out.append(item)
        return out


class Relay(WebSocketAdapter):
    """``/ws/{channel}``: authenticated at the handshake; every message is a publication."""

    tells_unsubscribe = False

    def path(self) -> str:
        return f"/ws/{CHANNEL}"

    async def start(self, token: str | None, channel: str = CHANNEL, *, small_rcvbuf: bool = False) -> Event:
        query = "" if token is None else "?" + urllib.parse.urlencode({"token": token})
        refused = await self._open(f"/ws/{channel}{query}", small_rcvbuf=small_rcvbuf)
        return Ok() if refused is None else refused

    async def publish(self, data: Any) -> Outcome | None:
        return await self._send(json.dumps(data))

    async def flood(self, n: int) -> Outcome | None:
        for i in range(n):
            closed = await self._send(json.dumps({"n": i}))
            if closed is not None:
                return closed
        return None

    async def send_oversized(self) -> Outcome | None:
        started = await self.start(self.env.token())
        if not isinstance(started, Ok):
            return Broken(f"could not start: {started}")
        return await self._send("x" * OVERSIZED)

    async def next_event(self) -> Event:
        raw = await self._recv()
        if isinstance(raw, (Closed, Timeout)):
            return raw
        return Pub(raw)


class Endpoint(Relay):
    """A framework endpoint (``@app.websocket("/chat")``) that subscribes to
    CHANNEL in ``connect`` and echoes every message."""

    async def start(self, token: str | None, channel: str = CHANNEL, *, small_rcvbuf: bool = False) -> Event:
        query = "" if token is None else "?" + urllib.parse.urlencode({"token": token})
        refused = await self._open(f"{ENDPOINT}{query}", small_rcvbuf=small_rcvbuf)
        return Ok() if refused is None else refused

    def path(self) -> str:
        return ENDPOINT


class UniWebSocket(WebSocketAdapter):
    """``/connection/uni_websocket``: the connect object is the first message."""

    def path(self) -> str:
        return "/connection/uni_websocket"

    async def start(self, token: str | None, channel: str = CHANNEL, *, small_rcvbuf: bool = False) -> Event:
        refused = await self._open(self.path(), small_rcvbuf=small_rcvbuf)
        if refused is not None:
            return refused
        connect: dict[str, Any] = {"subs": {channel: {}}}
        if token is not None:
            connect["token"] = token
        closed = await self._send(json.dumps(connect))
        if closed is not None:
            return closed
        return connected_push(await self._recv(), channel)

    async def send_oversized(self) -> Outcome | None:
        refused = await self._open(self.path())
        if refused is not None:
            return refused
        return await self._send(json.dumps({"token": self.env.token(), "data": "x" * OVERSIZED}))

    async def next_event(self) -> Event:
        raw = await self._recv()
        if isinstance(raw, (Closed, Timeout)):
            return raw
        return uni_event(json.loads(raw))


def connected_push(raw: Any, channel: str) -> Event:
    """The outcome of a one-way client's first message (the ``connect`` push)."""
    if isinstance(raw, (Closed, Refused, Timeout, Broken)):
        return raw
    message = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    if "connect" not in message:
        return uni_event(message)
    return Ok() if channel in message["connect"].get("subs", {}) else NotSubscribed()


def uni_event(message: dict[str, Any]) -> Event:
    """A push of the one-way protocol (a bare ``Push`` object)."""
    if "disconnect" in message:
        return Closed(message["disconnect"]["code"])
    if "unsubscribe" in message:
        return Unsubscribed(message["unsubscribe"].get("code", 0))
    if "pub" in message:
        return Pub(message["pub"].get("data"))
    return Pub(None)


class SocketIO(WebSocketAdapter):
    """Socket.IO over its WebSocket transport (``/socket.io/?EIO=4&transport=websocket``), raw
    Engine.IO/Socket.IO v5 text: the connect token is ``auth.token`` in ``CONNECT``; with no Python
    application the client uses hub channels itself (``subscribe``/``publish`` events with
    acknowledgements, ``publication``/``unsubscribe`` events; hubbub.sio.session.HubHandlers).
    A refused ``CONNECT`` is ``CONNECT_ERROR`` with the code in its data: :class:`Error`, the
    connection stays open."""

    def path(self) -> str:
        return "/socket.io/?EIO=4&transport=websocket"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.next_ack = 0
        self.pending: list[str] = []

    async def _packet(self) -> str | Closed | Timeout:
        if self.pending:
            return self.pending.pop(0)
        while True:
            raw = await self._recv()
            if isinstance(raw, (Closed, Timeout)):
                return raw
            if isinstance(raw, bytes):
                continue  # an attachment: the matrix sends no binary
            if raw == "2":
                await self._send("3")
                continue
            return raw

    async def emit(self, *args: Any) -> tuple[int, Closed | None]:
        self.next_ack += 1
        return self.next_ack, await self._send(f"42{self.next_ack}" + json.dumps(list(args)))

    async def acked(self, ack: int) -> Event:
        """:class:`Ok`, or the acknowledgement's error, or what ended the wait."""
        while True:
            packet = await self._packet()
            if isinstance(packet, (Closed, Timeout)):
                return packet
            if packet.startswith(f"43{ack}["):
                reply = json.loads(packet[len(f"43{ack}"):])
                error = reply[0].get("error") if reply and isinstance(reply[0], dict) else None
                return Error(error["code"]) if error else Ok()
            self.pending.append(packet)

    async def start(self, token: str | None, channel: str = CHANNEL, *, small_rcvbuf: bool = False) -> Event:
        refused = await self._open(self.path(), small_rcvbuf=small_rcvbuf)
        if refused is not None:
            return refused
        opened = await self._packet()
        if isinstance(opened, (Closed, Timeout)) or not opened.startswith("0{"):
            return opened if isinstance(opened, (Closed, Timeout)) else Broken(f"no open packet: {opened!r}")
        closed = await self._send("40" + ("" if token is None else json.dumps({"token": token})))
        if closed is not None:
            return closed
        connected = await self._packet()
        if isinstance(connected, (Closed, Timeout)):
            return connected
        if connected.startswith("44"):
            return Error(json.loads(connected[2:])["data"]["code"])
        if not connected.startswith("40{"):
            return Broken(f"not a CONNECT reply: {connected!r}")
        ack, closed = await self.emit("subscribe", channel)
        return closed if closed is not None else await self.acked(ack)

    async def publish(self, data: Any) -> Outcome | None:
        return (await self.emit("publish", CHANNEL, data))[1]

    async def flood(self, n: int) -> Outcome | None:
        for _ in range(n):
            closed = (await self.emit("publish", "nowhere"))[1]
            if closed is not None:
                return closed
        return None

    async def send_oversized(self) -> Outcome | None:
        started = await self.start(self.env.token())
        if not isinstance(started, Ok):
            return Broken(f"could not start: {started}")
        return await self.publish({"blob": "x" * OVERSIZED})

    async def open_idle(self) -> Outcome | None:
        return await self._open(self.path())

    async def next_event(self) -> Event:
        packet = await self._packet()
        if isinstance(packet, (Closed, Timeout)):
            return packet
        if packet.startswith("42["):
            event = json.loads(packet[2:])
            if event[0] == "publication":
                return Pub(event[2])
            if event[0] == "unsubscribe":
                return Unsubscribed(event[2]["code"])
        elif packet.startswith("43"):
            digits = len(packet) - len(packet[2:].lstrip("0123456789"))
            reply = json.loads(packet[digits:])
            error = reply[0].get("error") if reply and isinstance(reply[0], dict) else None
            if error:
                return Error(error["code"])
        return Pub(None)  # the open packet, a DISCONNECT before the close, another ack: not decisive


class SocketIOPolling(SocketIO):
    """Socket.IO over Engine.IO's HTTP long-polling (``/socket.io/?EIO=4&transport=polling``): the
    handshake ``GET`` opens the session, each ``POST`` carries packets, one ``GET`` at a time waits
    for some (kept pending across waits: a second poll while one waits would end the session).

    Engine.IO's close packet (``1``) carries no code: :class:`Closed` holds the code the hub counted
    for the close (``stats.disconnects``, the ``hubbub_disconnects_total{code}`` metric) since this
    client started. A ``POST`` answered 413 (over ``maxPayload``) is :class:`Refused`; a request
    for a session that is gone (400) ends the client as the close packet does."""

    PATH = "/socket.io/?EIO=4&transport=polling"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.sid = ""
        self.inbox: list[str] = []
        self.poll: asyncio.Task[tuple[int, bytes]] | None = None
        self.ended: Closed | None = None
        self.counted = dict(env.hub.stats.disconnects)

    async def _get(self, target: str) -> tuple[int, bytes]:
        response = await http_request(self.env.port, "GET", target, timeout=40)
        try:
            return response.status, await _read_body(response)
        finally:
            response.close()

    async def _open(self, path: str, *, small_rcvbuf: bool = False) -> Outcome | None:
        try:
            status, body = await self._get(self.PATH)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            return Broken(f"handshake: {exc!r}")
        if status != 200:
            return Refused(status)
        opened = body.decode()
        if not opened.startswith("0{"):
            return Broken(f"no open packet: {opened!r}")
        self.sid = json.loads(opened[1:])["sid"]
        self.inbox.append(opened)
        return None

    async def _end(self) -> Closed:
        """The session ended: :class:`Closed` with the code the hub counted for it."""
        if self.ended is None:
            stats = self.env.hub.stats

            def new_codes() -> list[int]:
                return [code for code, n in stats.disconnects.items() if n > self.counted.get(code, 0)]

            await self.env.wait_for(new_codes, timeout=1.0)
            codes = new_codes()
            self.ended = Closed(codes[-1] if codes else 1006)
        return self.ended

    async def _recv(self) -> str | bytes | Closed | Timeout:
        if self.inbox:
            return self.inbox.pop(0)
        if self.ended is not None:
            return self.ended
        if self.poll is None:
            target = f"{self.PATH}&sid={urllib.parse.quote(self.sid)}"
            self.poll = asyncio.ensure_future(asyncio.wait_for(self._get(target), 40))
        done, _ = await asyncio.wait({self.poll}, timeout=WAIT)
        if not done:
            return Timeout("no message")
        poll, self.poll = self.poll, None
        try:
            status, body = poll.result()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return await self._end()
        if status != 200:
            return await self._end()
        for packet in body.decode().split("\x1e"):
            if packet == "1":
                self.inbox.append("")  # the close packet: what came before it is read first
                break
            if packet != "6":
                self.inbox.append(packet)
        packet = self.inbox.pop(0) if self.inbox else "6"
        if packet == "":
            self.inbox.clear()
            return await self._end()
        return packet if packet != "6" else await self._recv()

    async def _send(self, message: str | bytes) -> Closed | None:
        if self.ended is not None:
            return self.ended
        text = message if isinstance(message, str) else "b" + base64.b64encode(message).decode()
        target = f"{self.PATH}&sid={urllib.parse.quote(self.sid)}"
        try:
            response = await http_request(self.env.port, "POST", target, text.encode(),
                                          {"Content-Type": "text/plain;charset=UTF-8"})
            await _read_body(response)
            response.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return await self._end()
        if response.status == 413:
            return Refused(413)  # type: ignore[return-value]  # SocketIO's callers pass any Outcome on
        return None if response.status == 200 else await self._end()

    async def publish(self, data: Any) -> Outcome | None:
        ack, sent = await self.emit("publish", CHANNEL, data)
        return sent

    async def close(self) -> None:
        if self.poll is not None:
            self.poll.cancel()
            with contextlib.suppress(BaseException):
                await self.poll
        if self.sid and self.ended is None:
            with contextlib.suppress(Exception):
                response = await http_request(self.env.port, "POST", f"{self.PATH}&sid={self.sid}", b"1")
                await _read_body(response)
                response.close()


async def _read_body(response: HTTPResponse) -> bytes:
    out = []
    while piece := await response.piece():
        out.append(piece)
    return b"".join(out)


# -- streaming HTTP ways ---------------------------------------------------------------------------------


class StreamAdapter(Adapter):
    """Shared by the HTTP streaming ways: one streamed response, its messages."""

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.response: HTTPResponse | None = None
        self.messages: LineMessages | SSEMessages | None = None
        self.responses: list[HTTPResponse] = []

    async def _request(self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None,
                       *, small_rcvbuf: bool = False, sse: bool = False) -> Outcome | None:
        try:
            response = await http_request(self.env.port, method, target, body, headers,
                                          rcvbuf=4096 if small_rcvbuf else None)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            return Broken(f"request: {exc!r}")
        self.responses.append(response)
        if response.status != 200:
            return Refused(response.status)
        self.response = response
        self.messages = SSEMessages(response) if sse else LineMessages(response)
        return None

    async def _next(self) -> tuple[str, Any] | Closed | Timeout | Broken:
        assert self.messages is not None
        try:
            async with asyncio.timeout(WAIT):
                got = await self.messages.next()
        except TimeoutError:
            return Timeout("no message")
        except (ValueError, asyncio.IncompleteReadError, OSError) as exc:
            return Broken(f"stream: {exc!r}")
        return Closed(1006) if got is None else got

    async def close(self) -> None:
        for response in self.responses:
            response.close()


class Emulated(StreamAdapter):
    """centrifuge-js's emulation: ``POST /connection/http_stream`` (or ``GET
    /connection/sse?cf_connect=``) carries ``connect``; later commands go as
    ``POST /emulation``."""

    def __init__(self, env: Env, transport: str) -> None:
        super().__init__(env)
        self.transport = transport
        self.session = ""
        self.node = ""
        self.next_id = 0
        self.pending: list[dict[str, Any]] = []

    def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        return {"id": self.next_id, method: params}

    async def _open_stream(self, first: bytes, *, small_rcvbuf: bool = False) -> Outcome | None:
        if self.transport == "http_stream":
            return await self._request("POST", "/connection/http_stream", first,
                                       {"Content-Type": "application/json"}, small_rcvbuf=small_rcvbuf)
        target = "/connection/sse?" + urllib.parse.urlencode({"cf_connect": first.decode()})
        return await self._request("GET", target, headers={"Accept": "text/event-stream"},
                                   small_rcvbuf=small_rcvbuf, sse=True)

    async def _message(self) -> dict[str, Any] | Closed | Timeout | Broken:
        if self.pending:
            return self.pending.pop(0)
        got = await self._next()
        if isinstance(got, (Closed, Timeout, Broken)):
            return got
        return got[1]  # type: ignore[no-any-return]

    async def _reply(self, cid: int) -> Event:
        while True:
            got = await self._message()
            if isinstance(got, (Closed, Timeout, Broken)):
                return got
            if isinstance(got, dict) and got.get("id") == cid:
                if "error" in got:
                    return Error(got["error"]["code"])
                if "connect" in got:
                    self.session, self.node = got["connect"]["session"], got["connect"]["node"]
                return Ok()
            if isinstance(got, dict) and "disconnect" in got.get("push", {}):
                return Closed(got["push"]["disconnect"]["code"])
            self.pending.append(got)

    async def emulate(self, commands: list[dict[str, Any]], *, data: str | None = None) -> Outcome | None:
        """``POST /emulation`` with ``commands``; a :class:`Refused` unless 204."""
        body = {"session": self.session, "node": self.node,
                "data": data if data is not None else "\n".join(json.dumps(c) for c in commands)}
        try:
            response = await http_request(self.env.port, "POST", "/emulation", json.dumps(body).encode(),
                                          {"Content-Type": "application/json"})
            await response.read_all()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            return Broken(f"/emulation: {exc!r}")
        response.close()
        return None if response.status == 204 else Refused(response.status)

    async def start(self, token: str | None, channel: str = CHANNEL, *, small_rcvbuf: bool = False) -> Event:
        connect = self.command("connect", {} if token is None else {"token": token})
        refused = await self._open_stream(json.dumps(connect).encode(), small_rcvbuf=small_rcvbuf)
        if refused is not None:
            return refused
        connected = await self._reply(connect["id"])
        if not isinstance(connected, Ok):
            return connected
        subscribe = self.command("subscribe", {"channel": channel})
        refused = await self.emulate([subscribe])
        if refused is not None:
            return refused
        return await self._reply(subscribe["id"])

    async def publish(self, data: Any) -> Outcome | None:
        return await self.emulate([self.command("publish", {"channel": CHANNEL, "data": data})])

    async def flood(self, n: int) -> Outcome | None:
        return await self.emulate([self.command("ping", {}) for _ in range(n)])

    async def open_idle(self) -> Outcome | None:
        return await self._open_stream(b"{}")

    async def send_oversized(self) -> Outcome | None:
        if self.transport == "http_stream":  # the opening request's body
            connect = self.command("connect", {"token": self.env.token(), "data": "x" * OVERSIZED})
            return await self._open_stream(json.dumps(connect).encode())
        started = await self.start(self.env.token())  # sse: a later command, through /emulation
        if not isinstance(started, Ok):
            return Broken(f"could not start: {started}")
        return await self.emulate([self.command("publish", {"channel": CHANNEL, "data": "x" * OVERSIZED})])

    async def next_event(self) -> Event:
        got = await self._message()
        if isinstance(got, (Closed, Timeout, Broken)):
            return got
        return protocol_event(got)


class UniStream(StreamAdapter):
    """``uni_sse`` (GET with ``cf_connect``) and ``uni_http_stream`` (POST body):
    the request is the connect object; pushes stream back."""

    def __init__(self, env: Env, transport: str) -> None:
        super().__init__(env)
        self.transport = transport

    async def _open_uni(self, connect: dict[str, Any], *, small_rcvbuf: bool = False) -> Outcome | None:
        raw = json.dumps(connect)
        if self.transport == "uni_sse":
            target = "/connection/uni_sse?" + urllib.parse.urlencode({"cf_connect": raw})
            return await self._request("GET", target, headers={"Accept": "text/event-stream"},
                                       small_rcvbuf=small_rcvbuf, sse=True)
        return await self._request("POST", "/connection/uni_http_stream", raw.encode(),
                                   {"Content-Type": "application/json"}, small_rcvbuf=small_rcvbuf)

    async def start(self, token: str | None, channel: str = CHANNEL, *, small_rcvbuf: bool = False) -> Event:
        connect: dict[str, Any] = {"subs": {channel: {}}}
        if token is not None:
            connect["token"] = token
        refused = await self._open_uni(connect, small_rcvbuf=small_rcvbuf)
        if refused is not None:
            return refused
        got = await self._next()
        if isinstance(got, (Closed, Timeout, Broken)):
            return got
        return connected_push(got[1], channel)

    async def send_oversized(self) -> Outcome | None:
        return await self._open_uni({"token": self.env.token(), "data": "x" * OVERSIZED})

    async def next_event(self) -> Event:
        got = await self._next()
        if isinstance(got, (Closed, Timeout, Broken)):
            return got
        return uni_event(got[1])


class ChannelSSE(StreamAdapter):
    """``GET /sse/{channel}``: authenticated as the relay; each publication is one event."""

    tells_unsubscribe = False

    async def start(self, token: str | None, channel: str = CHANNEL, *, small_rcvbuf: bool = False) -> Event:
        query = "" if token is None else "?" + urllib.parse.urlencode({"token": token})
        refused = await self._request("GET", f"/sse/{channel}{query}", headers={"Accept": "text/event-stream"},
                                      small_rcvbuf=small_rcvbuf, sse=True)
        return Ok() if refused is None else refused

    async def next_event(self) -> Event:
        got = await self._next()
        if isinstance(got, (Closed, Timeout, Broken)):
            return got
        name, data = got
        if name == "disconnect":
            return Closed(data["code"])
        return Pub(data)


ADAPTERS: dict[str, Callable[[Env], Adapter]] = {
    "ws_json": ProtocolJSON,
    "ws_protobuf": ProtocolProtobuf,
    "http_stream": lambda env: Emulated(env, "http_stream"),
    "sse": lambda env: Emulated(env, "sse"),
    "uni_websocket": UniWebSocket,
    "uni_sse": lambda env: UniStream(env, "uni_sse"),
    "uni_http_stream": lambda env: UniStream(env, "uni_http_stream"),
    "channel_sse": ChannelSSE,
    "relay": Relay,
    "endpoint": Endpoint,
    "socketio": SocketIO,
    "socketio_polling": SocketIOPolling,
}
