"""A small client of the Centrifugo protocol, used by ``hubbub consume`` and
``hubbub produce`` (and handy in scripts and tests).

It speaks JSON protocol v2 over ``websockets``' asyncio client: commands are
sent with increasing ids and matched to replies; server pings (``{}``) are
answered; publications are queued (bounded) for :meth:`Client.publications`.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection

from .errors import ClientError, ReplyError

#: Publications buffered before the client stops reading (and the server
#: eventually closes it as slow).
MAX_QUEUED = 10_000


def protocol_url(url: str) -> str:
    """Add ``/connection/websocket`` to a ``ws://host:port`` URL without a path.

    Raises:
        ClientError: not a ``ws://`` or ``wss://`` URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ClientError(f"URL must look like ws://host:port, got {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/connection/websocket")
    return urlunsplit(parts)


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
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise ClientError(f"cannot connect to {self.url}: {exc}") from None
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


def backoff(attempt: int, *, base: float = 0.5, cap: float = 20.0) -> float:
    """Reconnect delay in seconds: exponential with full jitter."""
    return random.uniform(0, min(cap, base * 2**attempt))
