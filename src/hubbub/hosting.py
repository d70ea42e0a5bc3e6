"""An ASGI or WSGI application inside hubbub (``hubbub.App(http=...)``): it
answers the HTTP requests that no hubbub route takes, on hubbub's own port.
See docs/design.md (the framework layer)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .http import HTTPRequest, HTTPResponse

log = logging.getLogger("hubbub.hosting")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: how long the hosted application's lifespan shutdown may take (seconds)
SHUTDOWN_TIMEOUT = 10.0


class HostedApp:
    """An ASGI or WSGI application that answers the HTTP requests no hubbub
    route takes (``hubbub.App(http=...)``).

    A WSGI application (``app(environ, start_response)``: Flask, Django's
    WSGI handler) is wrapped with ``a2wsgi.WSGIMiddleware``. The ASGI
    application's lifespan runs in :meth:`startup` and :meth:`shutdown` when
    it supports one.

    Args:
        app: the ASGI 3 or WSGI application.

    Raises:
        TypeError: ``app`` is not callable.
    """

    def __init__(self, app: Any) -> None:
        if not callable(app):
            raise TypeError(f"http= takes an ASGI or WSGI application, not {type(app).__name__}")
        self.wsgi = not is_asgi(app)
        if self.wsgi:
            from a2wsgi import WSGIMiddleware

            app = WSGIMiddleware(app)
        self.app: ASGIApp = app
        self._lifespan: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[Message] | None = None
        self._answers: asyncio.Queue[Message] | None = None

    async def startup(self) -> None:
        """Run the application's lifespan startup (if it has a lifespan).

        Raises:
            RuntimeError: the application reported ``lifespan.startup.failed``.
        """
        if self.wsgi:
            return
        events: asyncio.Queue[Message] = asyncio.Queue()
        answers: asyncio.Queue[Message] = asyncio.Queue()
        self._events, self._answers = events, answers

        async def run() -> None:
            try:
                await self.app({"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}},
                               events.get, answers.put)
            except Exception as exc:  # an app without lifespan support raises on the scope
                await answers.put({"type": "lifespan.unsupported", "message": str(exc)})

        self._lifespan = asyncio.get_running_loop().create_task(run())
        await events.put({"type": "lifespan.startup"})
        answer = await answers.get()
        if answer["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the hosted application failed to start: {answer.get('message', '')}")
        if answer["type"] == "lifespan.unsupported":
            self._lifespan = None

    async def shutdown(self) -> None:
        """Run the application's lifespan shutdown (at most :data:`SHUTDOWN_TIMEOUT` seconds)."""
        task, self._lifespan = self._lifespan, None
        if task is None or self._events is None or self._answers is None:
            return
        await self._events.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._answers.get(), SHUTDOWN_TIMEOUT)
        except TimeoutError:
            log.warning("the hosted application did not finish its shutdown in %g s", SHUTDOWN_TIMEOUT)
        task.cancel()

    async def __call__(self, request: HTTPRequest) -> HTTPResponse:
        """Run one request through the application and collect its response
        (status 500 if it sent none)."""
        scope: Scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": request.method, "scheme": "http", "path": request.path,
            "raw_path": request.path.encode(), "root_path": "",
            "query_string": request.raw_query.encode("latin-1"),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()],
            "client": request.client, "server": None,
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await asyncio.Event().wait()  # nothing more: wait until the app is done
            return {"type": "http.disconnect"}

        status = 500
        headers: list[tuple[str, str]] = []
        body: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                body.append(bytes(message.get("body", b"")))

        await self.app(scope, receive, send)
        content_type = "application/octet-stream"
        extra: list[tuple[str, str]] = []
        for name, value in headers:
            lower = name.lower()
            if lower == "content-type":
                content_type = value
            elif lower not in ("content-length", "transfer-encoding", "connection"):
                extra.append((name, value))
        return HTTPResponse(status, b"".join(body), content_type, extra)


def is_asgi(app: Callable[..., Any]) -> bool:
    """Whether ``app`` is an ASGI application (a coroutine function, or a
    callable taking three positional arguments) rather than a WSGI one (two)."""
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else type(app).__call__
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(app):
        return True
    try:
        params = [p for p in inspect.signature(app).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return True
    return len(params) == 3
