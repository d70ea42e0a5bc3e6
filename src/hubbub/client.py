"""hubbub's own clients, used by ``hubbub consume`` and ``hubbub produce`` (and
handy in scripts and tests).

:func:`endpoint` tells the two WebSocket endpoints apart by the URL's path,
under a mount prefix too: the protocol (``ws://host:port`` or
``.../connection/websocket``: :class:`Client`, JSON protocol v2 over
``websockets``; replies matched by id, server pings answered, publications
queued, bounded, for :meth:`Client.publications`) and the relay
(``.../ws/{channel}``: :class:`RelayClient`, raw messages, no
acknowledgements). A refused handshake raises :class:`ClientError` naming the
HTTP status, with a hint.

See ``docs/design.md``, "Layers" (command line).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection

from .errors import ClientError, EndpointError, ReplyError

#: Publications buffered before the client stops reading (and the server
#: eventually closes it as slow).
MAX_QUEUED = 10_000


#: The protocol endpoint's path (added to a URL without a path).
PROTOCOL_PATH = "/connection/websocket"
#: The relay endpoint's path, before the channel.
RELAY_PREFIX = "/ws/"
#: What to write instead of a URL that names no hubbub endpoint.
ENDPOINT_HINT = "use ws://HOST:PORT (protocol) or ws://HOST:PORT/ws/CHANNEL (relay)"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a URL names: ``kind`` is ``"protocol"`` or ``"relay"``; ``url`` is
    the URL to open; ``channel`` is the relay's channel (percent-decoded)."""

    kind: str
    url: str
    channel: str = ""


def display_url(url: str) -> str:
    """``url`` without its query and fragment (which may hold a token), for messages."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))


def _ws_parts(url: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ClientError(f"URL must look like ws://host:port, got {display_url(url)!r}")
    return parts


def _relay_channel(path: str) -> str | None:
    """The channel of a relay path (``[PREFIX]/ws/CHANNEL``), else ``None``."""
    at = path.find(RELAY_PREFIX)
    return None if at < 0 else unquote(path[at + len(RELAY_PREFIX):])


def endpoint(url: str, kind: str | None = None) -> Endpoint:
    """Which hub endpoint ``url`` names.

    * no path (or ``/``), or a path ending in ``/connection/websocket``: the
      protocol (``/connection/websocket`` is added when there is no path);
    * ``/ws/CHANNEL``: the relay, for ``CHANNEL``;

    each also under a mount prefix (``/rt/ws/CHANNEL``). ``kind``
    (``"protocol"`` or ``"relay"``) says which instead, for a server that
    serves it at another path (``protocol_path``, ``relay_path``); a relay's
    channel is then known only if the path has ``/ws/CHANNEL``.

    Raises:
        ClientError: not a ``ws://`` or ``wss://`` URL.
        EndpointError: any other path, or ``/ws/`` without a channel.
    """
    parts = _ws_parts(url)
    path = parts.path
    if kind == "protocol" or (kind is None and (path in ("", "/") or path.endswith(PROTOCOL_PATH))):
        if path in ("", "/"):
            url = urlunsplit(parts._replace(path=PROTOCOL_PATH))
        return Endpoint("protocol", url)
    channel = _relay_channel(path)
    if kind == "relay":
        if path in ("", "/"):
            raise EndpointError(f"{display_url(url)} has no path: the relay is at ws://HOST:PORT/ws/CHANNEL")
        return Endpoint("relay", url, channel or "")
    if channel == "":
        raise EndpointError(f"{display_url(url)} names no channel after /ws/; {ENDPOINT_HINT}")
    if channel is not None:
        return Endpoint("relay", url, channel)
    raise EndpointError(f"{display_url(url)}: {path} is not a hubbub endpoint; {ENDPOINT_HINT}, "
                        "or say which with --protocol or --relay (an endpoint at another path)")


def protocol_url(url: str) -> str:
    """Add ``/connection/websocket`` to a ``ws://host:port`` URL without a path.

    Other paths are kept (a protocol endpoint served elsewhere), except a relay
    path (``/ws/CHANNEL``), which does not speak the protocol.

    Raises:
        ClientError: not a ``ws://`` or ``wss://`` URL, or a relay URL.
    """
    parts = _ws_parts(url)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path=PROTOCOL_PATH))
    if _relay_channel(parts.path):
        raise ClientError(f"{display_url(url)} is the relay, which does not speak the protocol: use "
                          f"ws://HOST:PORT for the protocol, or RelayClient for the relay")
    return url


#: A hint for a refused handshake, by HTTP status.
_REFUSAL_HINTS: dict[int, str] = {
    400: "invalid channel name",
    401: "a connection token is required, or the one given is invalid or expired: pass --token JWT",
    403: "not allowed: this user may not use this channel (a private namespace also needs "
         "?sub_token=JWT), or the Origin is refused",
    404: "no such endpoint or namespace: check the URL's path and the channel's namespace",
    429: "connection limit reached: try again later",
    503: "the server is shutting down or unavailable: try again",
}


def namespace_hint(channel: str) -> str:
    """What to do about error 102 "unknown channel" (or a relay's HTTP 404) for ``channel``:
    declare its namespace on the server; ``""`` for a channel without one (``news``)."""
    namespace, sep, _ = channel.partition(":")
    if not sep:
        return ""
    return (f"the namespace {namespace!r} (the part of {channel!r} before ':') is not declared on the server: "
            f"add [namespaces.{namespace}] to its config file (hubbub serve --config FILE; an empty table "
            f"will do), or namespaces={{{namespace!r}: ...}} to hubbub.App; a channel without ':' needs none")


def _connect_error(url: str, exc: BaseException) -> ClientError:
    """A one-line :class:`ClientError` for a failed opening handshake."""
    if isinstance(exc, websockets.InvalidStatus):
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
        body = " ".join(body.split())[:200]
        text = f"{display_url(url)} refused the connection: HTTP {status}"
        if body:
            text += f" ({body})"
        hint = _REFUSAL_HINTS.get(status)
        if status == 404 and "unknown channel" in body:  # the relay's answer for an undeclared namespace
            hint = namespace_hint(_relay_channel(urlsplit(url).path) or "") or hint
        return ClientError(f"{text}; {hint}" if hint else text)
    return ClientError(f"cannot connect to {display_url(url)}: {exc}")


_CONNECT_ERRORS = (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI)


@dataclass(slots=True)
class Push:
    """A publication received by the client: channel, data, offset."""

    channel: str
    data: Any
    offset: int = 0


class Client:
    """A connection to a hub's protocol endpoint.

    Args:
        url: ``ws://host:port`` (``/connection/websocket`` is added) or a full URL.
        token: connection token (JWT), if the hub requires one.
        open_timeout: seconds to wait for the handshake and the connect reply.
    """

    def __init__(self, url: str, *, token: str = "", open_timeout: float = 10.0) -> None:
        self.url = protocol_url(url)
        self.token = token
        self.open_timeout = open_timeout
        self.client_id = ""
        self._ws: ClientConnection | None = None
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pushes: asyncio.Queue[Push | None] = asyncio.Queue(MAX_QUEUED)
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> dict[str, Any]:
        """Open the WebSocket and send ``connect``; returns the connect reply.

        Raises:
            ClientError: the server cannot be reached or refused the connection.
            ReplyError: the server answered ``connect`` with an error.
        """
        try:
            self._ws = await websockets.connect(self.url, open_timeout=self.open_timeout, max_size=None,
                                                ping_interval=None)
        except _CONNECT_ERRORS as exc:
            raise _connect_error(self.url, exc) from None
        self._reader = asyncio.get_running_loop().create_task(self._read())
        params: dict[str, Any] = {"name": "hubbub-cli"}
        if self.token:
            params["token"] = self.token
        reply = await asyncio.wait_for(self.command("connect", params), self.open_timeout)
        self.client_id = reply.get("client", "")
        return reply

    async def close(self) -> None:
        """Close the connection (1000) and stop the reader."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await self._reader
            except Exception:
                pass

    def send_command(self, method: str, params: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send a command now; the returned future resolves to its reply."""
        if self._ws is None:
            raise ClientError("not connected")
        self._next_id += 1
        cid = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.close_code is not None:
            fut.set_exception(self._closed_error())
            return fut
        self._waiting[cid] = fut
        payload = json.dumps({"id": cid, method: params}, separators=(",", ":"))
        asyncio.ensure_future(self._send(payload, fut))
        return fut

    async def _send(self, payload: str, fut: asyncio.Future[dict[str, Any]]) -> None:
        try:
            assert self._ws is not None
            await self._ws.send(payload)
        except websockets.ConnectionClosed:
            if not fut.done():
                fut.set_exception(self._closed_error())

    async def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send a command and wait for its reply (raises :class:`ReplyError`)."""
        return await self.send_command(method, params)

    async def subscribe(self, channel: str, **params: Any) -> dict[str, Any]:
        """Subscribe; ``params`` may be ``recover=True, epoch=..., offset=...``."""
        return await self.command("subscribe", {"channel": channel, **params})

    async def publish(self, channel: str, data: Any) -> dict[str, Any]:
        return await self.command("publish", {"channel": channel, "data": data})

    async def publications(self) -> AsyncIterator[Push]:
        """Publications as they arrive; ends when the connection closes."""
        while True:
            push = await self._pushes.get()
            if push is None:
                return
            yield push

    def _closed_error(self) -> ClientError:
        return ClientError(f"connection closed: {self.close_code} {self.close_reason}".rstrip())

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                for line in (message if isinstance(message, str) else message.decode()).split("\n"):
                    if line.strip():
                        await self._dispatch(json.loads(line))
        except websockets.ConnectionClosed:
            pass
        finally:
            rcvd = self._ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else 1006
            self.close_reason = rcvd.reason if rcvd is not None else "connection lost"
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(self._closed_error())
            self._waiting.clear()
            try:
                self._pushes.put_nowait(None)
            except asyncio.QueueFull:
                pass

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        cid = msg.get("id")
        if cid:
            fut = self._waiting.pop(cid, None)
            if fut is None or fut.done():
                return
            if "error" in msg:
                err = msg["error"]
                fut.set_exception(ReplyError(err.get("code", 0), err.get("message", "")))
            else:
                fut.set_result(next((v for k, v in msg.items() if k != "id"), {}) or {})
            return
        push = msg.get("push")
        if push is None:
            if not msg and self._ws is not None:  # server ping
                await self._ws.send("{}")
            return
        pub = push.get("pub")
        if pub is not None:
            await self._pushes.put(Push(push.get("channel", ""), pub.get("data"), pub.get("offset", 0)))


class RelayClient:
    """A connection to a hub's relay at ``/ws/{channel}``: raw messages in and out.

    Every message sent is published to the channel as it is (text or binary);
    every publication of the channel arrives as one message (a relay client's
    as it was sent, a protocol client's as its JSON data, in text). The relay
    does not acknowledge messages: a refused or failed one closes the
    connection (3507 not allowed, 3013 too many, 1013 try again), which
    :attr:`closed_cleanly` and :meth:`send` report.

    Args:
        url: ``ws://host:port/ws/CHANNEL``, or the relay at another path
            (``?sub_token=JWT`` is passed on).
        token: connection token (JWT), sent as ``Authorization: Bearer``.
        echo: whether to receive one's own messages (``?echo=false`` otherwise).
        open_timeout: seconds to wait for the handshake.
        close_timeout: seconds to wait for the server's answer to a close.
    """

    def __init__(self, url: str, *, token: str = "", echo: bool = True, open_timeout: float = 10.0,
                 close_timeout: float = 10.0) -> None:
        self.channel = endpoint(url, "relay").channel
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if not echo and not any(name == "echo" for name, _ in query):
            query.append(("echo", "false"))
        self.url = urlunsplit(parts._replace(query=urlencode(query)))
        self.token = token
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> RelayClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the WebSocket.

        Raises:
            ClientError: the server cannot be reached or refused the handshake
                (the message names the HTTP status: 401 token, 403 permission,
                404 namespace).
        """
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            self._ws = await websockets.connect(self.url, additional_headers=headers, open_timeout=self.open_timeout,
                                                close_timeout=self.close_timeout, max_size=None,
                                                ping_interval=None)
        except _CONNECT_ERRORS as exc:
            raise _connect_error(self.url, exc) from None

    def _conn(self) -> ClientConnection:
        if self._ws is None:
            raise ClientError("not connected")
        return self._ws

    async def send(self, message: str | bytes) -> None:
        """Send one message (text for ``str``, binary for ``bytes``).

        Raises:
            ClientError: the connection is closed (the message names the code).
        """
        try:
            await self._conn().send(message)
        except websockets.ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is None:
                raise ClientError("connection lost") from None
            raise ClientError(f"connection closed: {rcvd.code} {rcvd.reason}".rstrip()) from None

    async def messages(self) -> AsyncIterator[str | bytes]:
        """Messages as they arrive; ends when the connection closes."""
        try:
            async for message in self._conn():
                yield message
        except websockets.ConnectionClosed:
            pass

    async def close(self) -> None:
        """Close with 1000 and wait for the server's answer (or ``close_timeout``)."""
        if self._ws is not None:
            await self._ws.close()

    @property
    def close_code(self) -> int | None:
        """The code the server closed with (1006 for a lost connection); ``None`` while open."""
        ws = self._ws
        if ws is None or ws.state in (websockets.State.CONNECTING, websockets.State.OPEN):
            return None
        rcvd = ws.protocol.close_rcvd
        return rcvd.code if rcvd is not None else 1006

    @property
    def close_reason(self) -> str:
        rcvd = self._ws.protocol.close_rcvd if self._ws is not None else None
        if rcvd is not None:
            return rcvd.reason
        return "connection lost" if self.close_code == 1006 else ""

    @property
    def closed_cleanly(self) -> bool:
        """Whether this client closed first, with 1000, and the server answered in kind."""
        ws = self._ws
        if ws is None or ws.state is not websockets.State.CLOSED:
            return False
        proto = ws.protocol
        return (proto.close_sent is not None and proto.close_sent.code == 1000 and proto.close_rcvd is not None
                and proto.close_rcvd.code == 1000 and proto.close_rcvd_then_sent is False)


def backoff(attempt: int, *, base: float = 0.5, cap: float = 20.0) -> float:
    """Reconnect delay in seconds: exponential with full jitter."""
    return random.uniform(0, min(cap, base * 2**attempt))
