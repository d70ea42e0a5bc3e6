"""Plain HTTP requests and responses (parsed and framed by h11).

Handlers are ``async def handler(request: HTTPRequest) -> HTTPResponse``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from .strictjson import dumps


@dataclass(slots=True)
class HTTPRequest:
    """An HTTP request.

    Attributes:
        method: upper-case method.
        path: the path without the query string.
        query: the query parameters (last value wins).
        headers: header names lower-cased (last value wins).
        body: the request body (bytes).
        params: path parameters of the matched route.
        client: the peer's ``(host, port)``.
        raw_query: the query string as received (without ``?``).
        stream: where a handler may answer with a streaming response (a
            :class:`hubbub.streams.StreamTransport`: the connection itself);
            ``None`` where the transport cannot stream.
        local: the address the client connected to, where the server that accepted it
            may listen on several (an ASGI scope's ``server``); ``""`` on hubbub's own
            server, whose one address is ``Config.host``. The exposure rules read it
            (``Config.anonymous_at``, ``Config.admin_enabled_at``).
    """

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    client: tuple[str, int] | None = None
    raw_query: str = ""
    stream: Any = None
    local: str = ""

    @classmethod
    def from_target(cls, method: str, target: str, headers: dict[str, str], **kw: Any) -> HTTPRequest:
        path, _, query = target.partition("?")
        return cls(method, path, dict(parse_qsl(query, keep_blank_values=True)), headers, raw_query=query, **kw)


@dataclass(slots=True)
class HTTPResponse:
    """An HTTP response: status, extra headers, body."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> HTTPResponse:
        body = dumps(value)
        return cls(status, body, "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> HTTPResponse:
        return cls(status, text.encode())


#: What a handler returns once it answered with a stream (``request.stream.begin_stream``):
#: the transport sends nothing more for it.
STREAMED = HTTPResponse(200)
