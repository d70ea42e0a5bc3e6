"""The server HTTP API: ``POST /api/{method}`` with a JSON body.

Request and reply shapes follow Centrifugo's server API (centrifugal.dev
``docs/server/server_api.md``), so the ``cent`` SDK works unchanged.

See ``docs/design.md``, "The server API" (statuses and errors) and "The
cluster" (what reaches the other nodes).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .brokers.base import Publication, StreamPosition
from .codes import DisconnectCode, ErrorCode
from .errors import BadRequest, BrokerError, BrokerUnavailable, ProtocolError
from .http import HTTPRequest, HTTPResponse
from .strictjson import dumps, encode_data, loads
from .validation import Params

if TYPE_CHECKING:
    from .cluster import Cluster
    from .config import Config, NamespaceOptions
    from .hub import Hub

log = logging.getLogger("hubbub.api")

#: ``history.limit`` is an int32 in Centrifugo's API; ``since.offset`` a uint64.
_INT32 = (-(2**31), 2**31 - 1)
_UINT64_MAX = 2**64 - 1

Handler = Callable[[Params], Awaitable[dict[str, Any]]]


def _error(exc: ProtocolError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message}}


def _unavailable(exc: BrokerUnavailable) -> dict[str, Any]:
    return {"error": {"code": int(ErrorCode.INTERNAL), "message": str(exc), "temporary": True}}


class ServerAPI:
    """Handles ``POST /api/{method}`` for one node.

    Args:
        hub: the node's hub (channels, sessions by user, broker).
        config: the node's settings (API key, channel name length).
        cluster: the node's cluster (user commands on every node, ``channels``, ``info``).
    """

    def __init__(self, hub: Hub, config: Config, *, cluster: Cluster) -> None:
        self.hub = hub
        self.config = config
        self.cluster = cluster
        self._methods: dict[str, Handler] = {
            name[len("_api_"):]: getattr(self, name) for name in dir(self) if name.startswith("_api_")
        }

    def _authorized(self, request: HTTPRequest) -> bool:
        """Whether the request carries the API key: the ``X-API-Key`` header,
        ``Authorization: apikey KEY``, or ``?api_key=KEY`` in the query (as
        Centrifugo documents it), compared in constant time."""
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
        if not given:
            given = request.query.get("api_key", "")
        # digests of equal length: the time taken does not depend on the key's length or contents
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(key.encode()).digest())

    def _refused(self) -> HTTPResponse:
        """401: the key is missing or wrong, or the API has none; says how to set and send it."""
        if self.config.api_key:
            reason = ("unauthorized: send the API key as the X-API-Key header (curl -H 'X-API-Key: KEY'), "
                      "as Authorization: apikey KEY, or as ?api_key=KEY in the URL")
        else:
            reason = ("the HTTP API needs api_key to be set: start the hub with HUBBUB_API_KEY=KEY in its "
                      "environment, hubbub serve --api-key KEY (or hubbub run --api-key KEY), or api_key = \"KEY\" "
                      "in its config file; then send the key as the X-API-Key header")
        return HTTPResponse.json({"error": reason}, 401)

    async def handle(self, request: HTTPRequest) -> HTTPResponse:
        """The HTTP handler (see the module docstring for status codes)."""
        try:
            return await self._handle(request)
        except Exception:
            log.exception("unexpected error in the server API (%s)", request.path)
            return HTTPResponse(500, b'{"error":"internal server error"}', "application/json")

    async def _handle(self, request: HTTPRequest) -> HTTPResponse:
        if request.method != "POST":
            return HTTPResponse.json({"error": "use POST"}, 405)
        if not self._authorized(request):
            return self._refused()
        method = request.params.get("method", "")
        if method not in self._methods:
            return HTTPResponse.json({"error": f"unknown method {method!r}"}, 404)
        try:
            body = loads(request.body or b"{}")
        except ValueError as exc:
            return HTTPResponse.json({"error": f"malformed JSON body: {exc}"}, 400)
        status, reply = await self.call(method, body)
        return HTTPResponse.json(reply, status)

    async def call(self, method: str, body: Any) -> tuple[int, dict[str, Any]]:
        """Run one API method for a caller already authorized another way
        (the operator's dashboard, :mod:`hubbub.admin`), with the statuses and
        reply shapes of ``POST /api/{method}``.

        Args:
            method: an API method name (``publish``, ``history``, ...).
            body: the parsed request body (a JSON object).

        Returns:
            ``(HTTP status, reply)``: 200 with ``{"result": ...}`` or a command
            ``{"error": ...}``; 400 for bad parameters; 404 for an unknown
            method; 503 when the broker is unavailable. Never raises for bad input.
        """
        handler = self._methods.get(method)
        if handler is None:
            return 404, {"error": f"unknown method {method!r}"}
        try:
            params = Params(body)
        except BadRequest:
            return 400, {"error": "body must be a JSON object"}
        try:
            result = await handler(params)
        except BadRequest as exc:
            return 400, {"error": exc.message}
        except BrokerUnavailable as exc:
            return 503, {"error": {"code": 100, "message": str(exc), "temporary": True}}
        except ProtocolError as exc:
            return 200, _error(exc)
        if method == "batch":  # Centrifugo answers a batch with {"replies": [...]} at the top
            return 200, result
        return 200, {"result": result}

    async def handle_commands(self, request: HTTPRequest) -> HTTPResponse:
        """``POST /api`` (the legacy form that cent.js ``pipeline()`` sends):
        newline-delimited commands ``{"method": "publish", "params": {...}}``,
        answered with one newline-delimited reply per command, in order:
        ``{"result": {...}}`` or ``{"error": {"code": C, "message": "..."}}``.
        The key rules and methods are those of ``/api/{method}``; a body that
        is not such commands gets HTTP 400 and runs none of them."""
        try:
            return await self._handle_commands(request)
        except Exception:
            log.exception("unexpected error in the server API (%s)", request.path)
            return HTTPResponse(500, b'{"error":"internal server error"}', "application/json")

    async def _handle_commands(self, request: HTTPRequest) -> HTTPResponse:
        if request.method != "POST":
            return HTTPResponse.json({"error": "use POST"}, 405)
        if not self._authorized(request):
            return self._refused()
        commands: list[tuple[str, Any]] = []
        for number, line in enumerate(request.body.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                command = loads(line)
            except ValueError as exc:
                return HTTPResponse.json({"error": f"line {number}: malformed JSON: {exc}"}, 400)
            if not isinstance(command, dict) or not isinstance(command.get("method"), str):
                return HTTPResponse.json({"error": f"line {number}: a command is {{\"method\": ..., \"params\": {{...}}}}"}, 400)
            commands.append((command["method"], command.get("params") or {}))
        if not commands:
            return HTTPResponse.json({"error": "no commands in the body"}, 400)
        replies: list[bytes] = []
        for method, raw in commands:
            handler = self._methods.get(method)
            reply: dict[str, Any]
            if handler is None:
                reply = {"error": {"code": int(ErrorCode.METHOD_NOT_FOUND), "message": "method not found"}}
            else:
                try:
                    reply = {"result": await handler(Params(raw, f"{method}."))}
                except ProtocolError as exc:  # BadRequest included: code 107 for this command only
                    reply = _error(exc)
                except BrokerUnavailable as exc:
                    reply = _unavailable(exc)
            replies.append(dumps(reply))
        return HTTPResponse(200, b"\n".join(replies), "application/json")

    # -- publishing -----------------------------------------------------------------

    def _channel(self, params: Params) -> str:
        return params.channel("channel", max_length=self.config.channel_max_length)

    @staticmethod
    def _publication(params: Params) -> Callable[[], Publication]:
        """Read ``data`` or ``b64data``, ``tags``, ``exclude_client`` and ``delta``
        (Centrifugo's publish API: the publication may go as a Fossil delta to
        subscribers that negotiated one); returns a factory of fresh
        publications (the broker sets each one's offset)."""
        raw: bytes | None = None
        if params.raw.get("b64data") is not None:
            b64 = params.str("b64data")
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError:  # binascii.Error, or not ASCII
                raise BadRequest("b64data is not valid base64") from None
            data = dumps(b64)
        elif "data" not in params:
            raise BadRequest("data is required")
        else:
            data = encode_data(params.raw["data"])
        return functools.partial(
            Publication, data, raw=raw, binary=raw is not None,
            tags=params.string_map("tags") or None,
            exclude_client=params.str("exclude_client") or None,
            delta=params.bool("delta"),
        )

    async def _publish(self, channel: str, pub: Publication, key: str | None) -> dict[str, Any]:
        position = await self._unavailable_on_broker_error(
            self.hub.publish(channel, pub, idempotency_key=key, source="api"))
        return {"offset": position.offset, "epoch": position.epoch} if position.epoch else {}

    async def _api_publish(self, params: Params) -> dict[str, Any]:
        channel = self._channel(params)
        publication = self._publication(params)
        key = params.str("idempotency_key") or None
        return await self._publish(channel, publication(), key)

    async def _api_broadcast(self, params: Params) -> dict[str, Any]:
        channels = params.strings("channels", required=True)
        publication = self._publication(params)
        key = params.str("idempotency_key") or None
        responses = []
        for channel in channels:  # each name is checked by Hub.publish: a bad one is that channel's error
            try:
                responses.append({"result": await self._publish(channel, publication(), key)})
            except ProtocolError as exc:
                responses.append(_error(exc))
            except BrokerUnavailable as exc:
                responses.append(_unavailable(exc))
        return {"responses": responses}

    # -- user connections (every node: hubbub.cluster) -------------------------------------

    def _target(self, params: Params, method: str) -> dict[str, Any]:
        """The command for ``user`` (``""``: anonymous), only ``client``'s connection if given."""
        command: dict[str, Any] = {"method": method, "user": params.str("user")}
        client = params.str("client")
        if client:
            command["client"] = client
        return command

    async def _on_every_node(self, command: dict[str, Any]) -> dict[str, Any]:
        """Apply ``command`` here and on every other node (503 if it could not reach them)."""
        await self._broker(self.cluster.user_command(command))
        return {}

    async def _api_subscribe(self, params: Params) -> dict[str, Any]:
        channel = self._channel(params)
        command = self._target(params, "subscribe")
        self.hub.namespace(channel)
        command["channel"] = channel
        return await self._on_every_node(command)

    async def _api_unsubscribe(self, params: Params) -> dict[str, Any]:
        channel = self._channel(params)
        command = self._target(params, "unsubscribe")
        command["channel"] = channel
        return await self._on_every_node(command)

    async def _api_disconnect(self, params: Params) -> dict[str, Any]:
        code: int = DisconnectCode.FORCE_DISCONNECT
        reason = ""
        spec = params.object("disconnect")
        if spec is not None:
            code = spec.int("code", default=code, minimum=3000, maximum=4999)
            reason = spec.str("reason")
        command = self._target(params, "disconnect")
        command.update(code=code, reason=reason or "force disconnect", whitelist=params.strings("whitelist"))
        return await self._on_every_node(command)

    async def _api_refresh(self, params: Params) -> dict[str, Any]:
        command = self._target(params, "refresh")
        command.update(expired=params.bool("expired"), expire_at=params.number("expire_at"))
        return await self._on_every_node(command)

    # -- channels -------------------------------------------------------------------------

    async def _api_presence(self, params: Params) -> dict[str, Any]:
        channel = self._channel(params)
        self._need(channel, "presence")
        entries = await self._broker(self.hub.broker.presence(channel))
        return {"presence": {client: info.to_json() for client, info in entries.items()}}

    async def _api_presence_stats(self, params: Params) -> dict[str, Any]:
        channel = self._channel(params)
        self._need(channel, "presence")
        clients, users = await self._broker(self.hub.broker.presence_stats(channel))
        return {"num_clients": clients, "num_users": users}

    async def _api_history(self, params: Params) -> dict[str, Any]:
        channel = self._channel(params)
        limit = params.int("limit", minimum=_INT32[0], maximum=_INT32[1])
        since = None
        since_params = params.object("since")
        if since_params is not None:
            since = StreamPosition(since_params.int("offset", minimum=0, maximum=_UINT64_MAX),
                                   since_params.str("epoch"))
        reverse = params.bool("reverse")
        self._need(channel, "history")
        result: dict[str, Any] = await self._unavailable_on_broker_error(
            self.hub.history(channel, since=since, limit=limit, reverse=reverse))
        return result

    async def _api_history_remove(self, params: Params) -> dict[str, Any]:
        channel = self._channel(params)
        self._need(channel, "history")
        await self._broker(self.hub.broker.remove_history(channel))
        return {}

    async def _api_channels(self, params: Params) -> dict[str, Any]:
        pattern = params.str("pattern")
        channels = await self._broker(self.cluster.channels(pattern))
        return {"channels": {name: {"num_clients": count} for name, count in sorted(channels.items())}}

    async def _api_info(self, params: Params) -> dict[str, Any]:
        return {"nodes": self.cluster.nodes()}

    async def _api_batch(self, params: Params) -> dict[str, Any]:
        # the shape of every command is checked before any runs: a malformed batch does nothing
        commands = []
        for command in params.objects("commands", required=True):
            if len(command.raw) != 1:
                raise BadRequest("each batch command is {method: params}")
            commands.append(next(iter(command.raw.items())))
        replies: list[dict[str, Any]] = []
        for i, (method, raw) in enumerate(commands):
            handler = self._methods.get(method)
            if handler is None or method == "batch":
                replies.append({"error": {"code": int(ErrorCode.METHOD_NOT_FOUND), "message": "method not found"}})
                continue
            try:
                replies.append({method: await handler(Params(raw, f"commands[{i}].{method}."))})
            except ProtocolError as exc:  # BadRequest included: code 107 for this command only
                replies.append(_error(exc))
            except BrokerUnavailable as exc:
                replies.append(_unavailable(exc))
        return {"replies": replies}

    # -- helpers ----------------------------------------------------------------------------

    def _need(self, channel: str, feature: str) -> NamespaceOptions:
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
                raise BrokerUnavailable(exc.message) from exc
            raise

    async def _broker(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except BrokerError as exc:
            raise BrokerUnavailable(f"broker error: {exc}") from exc
