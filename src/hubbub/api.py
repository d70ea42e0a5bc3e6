"""The server HTTP API: ``POST /api/{method}`` with a JSON body.

Request and reply shapes follow Centrifugo's server API (centrifugal.dev
``docs/server/server_api.md``), so the ``cent`` SDK works unchanged:

* the key comes in the ``X-API-Key`` header (or ``Authorization: apikey KEY``);
  a missing or wrong key gets HTTP 401;
* a body that is not a JSON object, or a bad field, gets HTTP 400 with the reason;
* an unknown method gets HTTP 404;
* a result is ``{"result": {...}}`` with HTTP 200; a command error is
  ``{"error": {"code": C, "message": "..."}}`` with HTTP 200, as Centrifugo;
* when the broker is unavailable, publishing gets HTTP 503 (nothing was
  published).

Methods: publish, broadcast, subscribe, unsubscribe, disconnect, refresh,
presence, presence_stats, history, history_remove, channels, info, batch.
Beyond Centrifugo, ``publish`` and ``broadcast`` take ``exclude_client``
(a connection id that must not receive the publication).

The user-targeted methods (subscribe, unsubscribe, disconnect, refresh) act
on the connections of this node.
"""

from __future__ import annotations

import base64
import fnmatch
import hmac
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import __version__
from .brokers.base import Publication, StreamPosition
from .codes import DisconnectCode, ErrorCode
from .errors import BrokerError, Disconnect, ProtocolError
from .http import HTTPRequest, HTTPResponse
from .session import encode_data, loads

if TYPE_CHECKING:
    from .server import Server


class _BadRequest(Exception):
    pass


class _Unavailable(Exception):
    pass


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True,
           default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        if required:
            raise _BadRequest(f"{name} is required")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _BadRequest(f"{name} must be {names}")
    return value


class ServerAPI:
    """Handles ``POST /api/{method}`` for a :class:`~hubbub.server.Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.hub = server.hub
        self.config = server.config
        self.node_id = str(uuid.uuid4())
        self.node_name = f"{os.uname().nodename}_{os.getpid()}"
        self._methods: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            name[len("_api_"):]: getattr(self, name) for name in dir(self) if name.startswith("_api_")
        }

    def _authorized(self, request: HTTPRequest) -> bool:
        if self.config.api_insecure:
            return True
        key = self.config.api_key
        if not key:
            return False
        given = request.headers.get("x-api-key", "")
        if not given:
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("apikey "):
                given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), key.encode())

    async def handle(self, request: HTTPRequest) -> HTTPResponse:
        """The HTTP handler (see the module docstring for status codes)."""
        if request.method != "POST":
            return HTTPResponse.json({"error": "use POST"}, 405)
        if not self._authorized(request):
            reason = "unauthorized" if self.config.api_key else "the HTTP API needs api_key to be set"
            return HTTPResponse.json({"error": reason}, 401)
        method = request.params.get("method", "")
        handler = self._methods.get(method)
        if handler is None:
            return HTTPResponse.json({"error": f"unknown method {method!r}"}, 404)
        try:
            body = loads((request.body or b"{}").decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            return HTTPResponse.json({"error": f"malformed JSON body: {exc}"}, 400)
        if not isinstance(body, dict):
            return HTTPResponse.json({"error": "body must be a JSON object"}, 400)
        try:
            result = await handler(body)
            if method == "batch":  # Centrifugo answers a batch with {"replies": [...]} at the top
                return HTTPResponse.json(result)
            return HTTPResponse.json({"result": result})
        except _BadRequest as exc:
            return HTTPResponse.json({"error": str(exc)}, 400)
        except _Unavailable as exc:
            return HTTPResponse.json({"error": {"code": 100, "message": str(exc), "temporary": True}}, 503)
        except ProtocolError as exc:
            return HTTPResponse.json({"error": {"code": exc.code, "message": exc.message}})

    # -- publishing -----------------------------------------------------------------

    def _publication(self, body: dict[str, Any]) -> Publication:
        b64 = _field(body, "b64data", str, required=False)
        if b64 is not None:
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError:
                raise _BadRequest("b64data is not valid base64") from None
            pub = Publication(json.dumps(b64).encode(), raw=raw, binary=True)
        elif "data" not in body:
            raise _BadRequest("data is required")
        else:
            pub = Publication(encode_data(body["data"]))
        tags = _field(body, "tags", dict, required=False)
        if tags is not None:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
                raise _BadRequest("tags must map strings to strings")
            pub.tags = tags
        pub.exclude_client = _field(body, "exclude_client", str, required=False)
        return pub

    async def _publish(self, channel: str, pub: Publication, key: str | None) -> dict[str, Any]:
        position = await self._unavailable_on_broker_error(
            self.hub.publish(channel, pub, idempotency_key=key, source="api"))
        return {"offset": position.offset, "epoch": position.epoch} if position.epoch else {}

    async def _api_publish(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = _field(body, "channel", str)
        key = _field(body, "idempotency_key", str, required=False)
        return await self._publish(channel, self._publication(body), key)

    async def _api_broadcast(self, body: dict[str, Any]) -> dict[str, Any]:
        channels = _field(body, "channels", list)
        if not all(isinstance(c, str) for c in channels):
            raise _BadRequest("channels must be a list of strings")
        key = _field(body, "idempotency_key", str, required=False)
        responses = []
        for channel in channels:
            try:
                responses.append({"result": await self._publish(channel, self._publication(body), key)})
            except ProtocolError as exc:
                responses.append({"error": {"code": exc.code, "message": exc.message}})
            except _Unavailable as exc:
                responses.append({"error": {"code": 100, "message": str(exc)}})
        return {"responses": responses}

    # -- user connections -------------------------------------------------------------

    def _sessions(self, body: dict[str, Any]) -> list[Any]:
        user = _field(body, "user", str, default="")
        return self.hub.user_sessions(user, _field(body, "client", str, required=False))

    async def _api_subscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = _field(body, "channel", str)
        self.hub.namespace(channel)
        for session in self._sessions(body):
            try:
                await session.server_subscribe(channel)
            except ProtocolError as exc:
                if exc.code != ErrorCode.ALREADY_SUBSCRIBED:
                    raise
            except Disconnect as exc:
                session.disconnect(exc.code, exc.reason)
        return {}

    async def _api_unsubscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = _field(body, "channel", str)
        for session in self._sessions(body):
            session.server_unsubscribe(channel)
        return {}

    async def _api_disconnect(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = _field(body, "disconnect", dict, required=False) or {}
        code = spec.get("code") or DisconnectCode.FORCE_DISCONNECT
        if not isinstance(code, int) or not (3000 <= code < 5000):
            raise _BadRequest("disconnect.code must be 3000-4999")
        reason = spec.get("reason") or "force disconnect"
        keep = set(_field(body, "whitelist", list, required=False) or ())
        for session in self._sessions(body):
            if session.client_id not in keep:
                session.disconnect(code, str(reason))
        return {}

    async def _api_refresh(self, body: dict[str, Any]) -> dict[str, Any]:
        expired = _field(body, "expired", bool, required=False, default=False)
        expire_at = _field(body, "expire_at", (int, float), required=False)
        for session in self._sessions(body):
            if expired:
                session.disconnect(DisconnectCode.EXPIRED)
            elif expire_at is not None:
                session.expire_at = float(expire_at)
        return {}

    # -- channels -------------------------------------------------------------------------

    async def _api_presence(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = _field(body, "channel", str)
        self._need(channel, "presence")
        entries = await self._broker(self.hub.broker.presence(channel))
        return {"presence": {client: info.to_json() for client, info in entries.items()}}

    async def _api_presence_stats(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = _field(body, "channel", str)
        self._need(channel, "presence")
        clients, users = await self._broker(self.hub.broker.presence_stats(channel))
        return {"num_clients": clients, "num_users": users}

    async def _api_history(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = _field(body, "channel", str)
        self._need(channel, "history")
        limit = _field(body, "limit", int, required=False, default=0)
        since_raw = _field(body, "since", dict, required=False)
        since = None
        if since_raw is not None:
            offset = _field(since_raw, "offset", int, required=False, default=0)
            since = StreamPosition(offset, _field(since_raw, "epoch", str, required=False, default=""))
        reverse = _field(body, "reverse", bool, required=False, default=False)
        return await self._unavailable_on_broker_error(
            self.hub.history(channel, since=since, limit=limit, reverse=reverse))

    async def _api_history_remove(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = _field(body, "channel", str)
        self._need(channel, "history")
        await self._broker(self.hub.broker.remove_history(channel))
        return {}

    async def _api_channels(self, body: dict[str, Any]) -> dict[str, Any]:
        pattern = _field(body, "pattern", str, required=False, default="")
        return {"channels": {
            name: {"num_clients": count}
            for name, count in self.hub.channels().items()
            if not pattern or fnmatch.fnmatchcase(name, pattern)
        }}

    async def _api_info(self, body: dict[str, Any]) -> dict[str, Any]:
        channels = self.hub.channels()
        return {"nodes": [{
            "uid": self.node_id,
            "name": self.node_name,
            "version": __version__,
            "num_clients": sum(len(s) for s in self.hub.sessions.values()),
            "num_users": len([u for u in self.hub.sessions if u]),
            "num_channels": len(channels),
            "num_subs": sum(channels.values()),
            "uptime": int(time.time() - self.server.started_at),
        }]}

    async def _api_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        commands = _field(body, "commands", list)
        replies = []
        for command in commands:
            if not isinstance(command, dict) or len(command) != 1:
                raise _BadRequest("each batch command is {method: params}")
            (method, params), = command.items()
            handler = self._methods.get(method)
            if handler is None or method == "batch" or not isinstance(params, dict):
                replies.append({"error": {"code": ErrorCode.METHOD_NOT_FOUND, "message": "method not found"}})
                continue
            try:
                replies.append({method: await handler(params)})
            except ProtocolError as exc:
                replies.append({"error": {"code": exc.code, "message": exc.message}})
        return {"replies": replies}

    # -- helpers ----------------------------------------------------------------------------

    def _need(self, channel: str, feature: str) -> Any:
        ns = self.hub.namespace(channel)
        if not getattr(ns, feature):
            raise ProtocolError(ErrorCode.NOT_AVAILABLE)
        return ns

    async def _unavailable_on_broker_error(self, awaitable: Awaitable[Any]) -> Any:
        """Await a hub call; a failure caused by the broker becomes HTTP 503."""
        try:
            return await awaitable
        except ProtocolError as exc:
            if exc.code == ErrorCode.INTERNAL and isinstance(exc.__cause__, BrokerError):
                raise _Unavailable(exc.message) from exc
            raise

    async def _broker(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except BrokerError as exc:
            raise _Unavailable(f"broker error: {exc}") from exc
