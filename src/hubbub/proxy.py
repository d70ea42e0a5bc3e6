"""Proxy hooks over HTTP: the backend decides who connects, who subscribes and publishes, and answers RPCs.

The requests and results are those of Centrifugo's HTTP proxy (centrifugal.dev
``docs/server/proxy.md``; centrifugal/centrifugo ``internal/proxyproto/proxy.proto``),
so a backend written for Centrifugo works unchanged: hubbub POSTs a JSON object
with ``client``, ``transport``, ``protocol``, ``encoding`` and the event's fields
(``user``, ``channel``, ``method``, ``data`` or ``b64data``, ...) to the event's
endpoint, with the client's forwarded headers (``proxy_http_headers``), and the
backend answers ``{"result": {...}}``, ``{"error": {"code", "message",
"temporary"}}`` or ``{"disconnect": {"code", "reason"}}``.

A backend that is down, answers an HTTP status other than 200, answers something
that is not such an object, or does not answer within the proxy's timeout gives the
client error 100 "internal server error" (temporary, as Centrifugo's
``ErrorInternal``: an SDK retries) and one log line; the call never outlives its timeout.

The core (:mod:`hubbub.core`) calls this through its :class:`~hubbub.core.Proxy`
interface; this module holds the HTTP client: aiohttp, one connection pool of
``proxy_max_connections`` for every proxy (``pip install hubbub[proxy]``).

See ``docs/design.md``, "Proxy hooks", and ``docs/howto/proxy.md``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from typing import TYPE_CHECKING, Any

from .brokers.base import Publication
from .codes import DisconnectCode, ErrorCode
from .config import DEFAULT_PROXY, Config, ProxyOptions
from .core import ClientCore, ConnectRequest, ConnectResult
from .errors import ConfigError, Disconnect, ProtocolError
from .stats import Stats
from .strictjson import dumps, encode_data, loads

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("hubbub.proxy")

#: the largest answer read from a backend (bytes); a larger one is a failure
MAX_ANSWER = 1024 * 1024


class ProxyFailure(Exception):
    """The backend did not answer as the proxy protocol says (internal to this module)."""


class HTTPProxy:
    """The backend proxies of a node's :class:`~hubbub.config.Config`, over HTTP
    (implements :class:`hubbub.core.Proxy`).

    Args:
        config: the settings (``proxy_*``, ``proxies``, ``rpc_proxies`` and the
            namespaces' ``subscribe_proxy``, ``publish_proxy``, ``sub_refresh_proxy``).
        stats: where call durations and failures are counted (``/metrics``:
            ``hubbub_proxy_call_duration_seconds{event}``, ``hubbub_proxy_errors_total{event}``).

    Raises:
        ConfigError: the ``aiohttp`` package is not installed.
    """

    def __init__(self, config: Config, stats: Stats | None = None) -> None:
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            raise ConfigError("the proxy settings need the aiohttp package (pip install hubbub[proxy])") from None
        self.config = config
        self.stats = stats or Stats()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._options: dict[tuple[str, str], ProxyOptions | None] = {}

    # -- which proxy ----------------------------------------------------------------

    def options(self, event: str, name: str = DEFAULT_PROXY) -> ProxyOptions | None:
        """The proxy ``name`` of ``event``; for ``"rpc"``, ``name`` is the method."""
        key = (event, name)
        try:
            return self._options[key]
        except KeyError:
            pass
        if event == "rpc":
            options = self.config.proxy_options("rpc", self.config.rpc_proxies.get(name, DEFAULT_PROXY))
        else:
            options = self.config.proxy_options(event, name)
        if len(self._options) < 4096:  # rpc method names come from clients
            self._options[key] = options
        return options

    def handles(self, event: str, name: str = DEFAULT_PROXY) -> bool:
        """Whether proxy ``name`` is set for ``event`` (see :class:`hubbub.core.Proxy`)."""
        return self.options(event, name) is not None

    # -- events -----------------------------------------------------------------------

    async def connect(self, client: ClientCore, request: ConnectRequest) -> ConnectResult:
        """Ask the connect proxy who the client is (``ConnectRequest``: ``name``,
        ``version``, ``data``). A ``result`` with ``user`` (``""``: anonymous)
        authenticates it, its ``channels`` and the keys of ``subs`` are subscribed
        on connect; an answer without ``result`` refuses it with 3501, as Centrifugo.

        Raises:
            ProtocolError, Disconnect: see :class:`hubbub.core.Proxy`.
        """
        options = self._must("connect", DEFAULT_PROXY)
        body = self._base(client, options)
        body["name"] = request.name
        body["version"] = request.version
        self._put_data(body, options, request.data)
        result = await self._call("connect", options, client, body)
        if result is None:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "connect proxy gave no result")
        try:
            user = _str(result, "user")
            channels = list(_str_list(result, "channels"))
            subs = result.get("subs") or {}
            if not isinstance(subs, dict):
                raise ProxyFailure("subs is not an object")
            channels += [c for c in subs if c not in channels]
            return ConnectResult(user, _value(result, "info"), _value(result, "data"), tuple(channels),
                                 _expire_at(result))
        except ProxyFailure as exc:
            raise self._failed("connect", options, client, str(exc)) from None

    async def refresh(self, client: ClientCore) -> float | None:
        """Ask the refresh proxy to extend the connection; its new ``expire_at``.

        Raises:
            Disconnect: 3005 when the backend answers ``expired``; what it answers.
            ProtocolError: 100 when the backend fails.
        """
        options = self._must("refresh", DEFAULT_PROXY)
        body = self._base(client, options)
        body["user"] = client.user
        result = await self._call("refresh", options, client, body) or {}
        if result.get("expired"):
            raise Disconnect(DisconnectCode.EXPIRED)
        try:
            return _expire_at(result)
        except ProxyFailure as exc:
            raise self._failed("refresh", options, client, str(exc)) from None

    async def subscribe(self, client: ClientCore, channel: str, name: str, token: str,
                        data: Any) -> tuple[Any, float | None]:
        """Ask the subscribe proxy ``name`` whether the client may subscribe to
        ``channel``; the channel info (``info``/``b64info``) and ``expire_at``."""
        options = self._must("subscribe", name)
        body = self._base(client, options)
        body["user"] = client.user
        body["channel"] = channel
        if token:
            body["token"] = token
        if data is not None:
            self._put_data(body, options, data)
        result = await self._call("subscribe", options, client, body) or {}
        try:
            return _value(result, "info"), _expire_at(result)
        except ProxyFailure as exc:
            raise self._failed("subscribe", options, client, str(exc)) from None

    async def publish(self, client: ClientCore, channel: str, name: str, data: Any,
                      publication: Publication | None) -> Publication | None:
        """Ask the publish proxy ``name`` whether the client may publish ``data``
        (or ``publication``) to ``channel``; the publication the backend's
        ``data``/``b64data`` replaces it with, or ``None`` to keep the client's."""
        options = self._must("publish", name)
        body = self._base(client, options)
        body["user"] = client.user
        body["channel"] = channel
        if publication is not None and publication.raw is not None and publication.binary:
            body["b64data"] = base64.b64encode(publication.raw).decode("ascii")
            body["encoding"] = "binary"
        else:
            self._put_data(body, options, data if publication is None else publication.value())
        result = await self._call("publish", options, client, body) or {}
        try:
            if "b64data" in result and result["b64data"]:
                raw = _b64(result, "b64data")
                try:
                    return Publication(encode_data(loads(raw)))
                except ValueError:
                    return Publication(dumps(base64.b64encode(raw).decode("ascii")), raw=raw, binary=True)
            if "data" in result and result["data"] is not None:
                return Publication(encode_data(result["data"]))
        except (ProxyFailure, ProtocolError) as exc:
            raise self._failed("publish", options, client, str(exc)) from None
        return None

    async def sub_refresh(self, client: ClientCore, channel: str, name: str) -> float | None:
        """Ask the sub_refresh proxy ``name`` to extend the subscription to ``channel``.

        Raises:
            ProtocolError: 109 when the backend answers ``expired``; 100 when it fails.
        """
        options = self._must("sub_refresh", name)
        body = self._base(client, options)
        body["user"] = client.user
        body["channel"] = channel
        result = await self._call("sub_refresh", options, client, body) or {}
        if result.get("expired"):
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED)
        try:
            return _expire_at(result)
        except ProxyFailure as exc:
            raise self._failed("sub_refresh", options, client, str(exc)) from None

    async def rpc(self, client: ClientCore, method: str, data: Any) -> Any:
        """Ask the rpc proxy of ``method``; the result's ``data`` (``b64data``: its
        bytes as JSON when they are JSON, else the base64 text)."""
        options = self._must("rpc", method)
        body = self._base(client, options)
        body["user"] = client.user
        body["method"] = method
        self._put_data(body, options, data)
        result = await self._call("rpc", options, client, body) or {}
        try:
            return _value(result, "data")
        except ProxyFailure as exc:
            raise self._failed("rpc", options, client, str(exc)) from None

    def refresh_later(self, client: ClientCore, channel: str = "") -> None:
        """Run ``client.refresh_by_proxy(channel)`` in a task this proxy owns
        (cancelled by :meth:`close`); it ends within the refresh proxy's timeout."""
        task = asyncio.get_running_loop().create_task(client.refresh_by_proxy(channel), name="hubbub proxy refresh")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel the refreshes in flight and close the connection pool."""
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- the HTTP call ------------------------------------------------------------------

    def _must(self, event: str, name: str) -> ProxyOptions:
        options = self.options(event, name)
        if options is None:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE)
        return options

    @staticmethod
    def _base(client: ClientCore, options: ProxyOptions) -> dict[str, Any]:
        return {"client": client.client_id, "transport": client.transport, "protocol": client.protocol,
                "encoding": "binary" if options.binary_encoding else "json"}

    @staticmethod
    def _put_data(body: dict[str, Any], options: ProxyOptions, data: Any) -> None:
        """``data`` as the request's ``data`` (JSON), or ``b64data`` with
        ``binary_encoding`` or for bytes (a Protobuf client's binary payload)."""
        if isinstance(data, (bytes, bytearray)):
            body["b64data"] = base64.b64encode(data).decode("ascii")
            body["encoding"] = "binary"
        elif options.binary_encoding:
            if data is not None:
                body["b64data"] = base64.b64encode(dumps(data)).decode("ascii")
        elif data is not None:
            body["data"] = data

    def _headers(self, client: ClientCore, options: ProxyOptions) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        for name in options.http_headers or self.config.proxy_http_headers:
            value = client.headers.get(name.lower())
            if value is not None:
                headers[name] = value
        return headers

    def _client_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.config.proxy_max_connections)
            session = self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                            skip_auto_headers=("User-Agent",))
        return session

    async def _call(self, event: str, options: ProxyOptions, client: ClientCore,
                    body: dict[str, Any]) -> dict[str, Any] | None:
        """POST ``body`` to the proxy; the answer's ``result`` (``None`` without one).

        Raises:
            ProtocolError: the answer's ``error``; 100 (temporary) when the call fails.
            Disconnect: the answer's ``disconnect``.
        """
        import aiohttp

        started = time.perf_counter()
        try:
            try:
                payload = dumps(body)
            except ValueError as exc:  # data a client sent that JSON cannot carry
                raise ProtocolError(ErrorCode.BAD_REQUEST, "data the proxy cannot carry") from exc
            try:
                async with asyncio.timeout(options.timeout):
                    async with self._client_session().post(options.endpoint, data=payload,
                                                           headers=self._headers(client, options)) as response:
                        if response.status != 200:
                            raise ProxyFailure(f"HTTP status {response.status}")
                        answer = await _read_answer(response)
            except TimeoutError:
                raise self._failed(event, options, client, f"no answer within {options.timeout:g} s") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise self._failed(event, options, client, f"{type(exc).__name__}: {exc}") from None
            except ProxyFailure as exc:
                raise self._failed(event, options, client, str(exc)) from None
            try:
                return self._answer(answer)
            except ProxyFailure as exc:
                raise self._failed(event, options, client, str(exc)) from None
        finally:
            self.stats.proxy_calls[event].observe(time.perf_counter() - started)

    @staticmethod
    def _answer(answer: bytes) -> dict[str, Any] | None:
        try:
            reply = loads(answer)
        except ValueError:
            raise ProxyFailure("answer is not JSON") from None
        if not isinstance(reply, dict):
            raise ProxyFailure("answer is not a JSON object")
        disconnect = reply.get("disconnect")
        if disconnect is not None:
            code = disconnect.get("code") if isinstance(disconnect, dict) else None
            if not isinstance(code, int) or isinstance(code, bool) or not 0 < code < 5000:
                raise ProxyFailure(f"invalid disconnect {disconnect!r}")
            reason = disconnect.get("reason")
            raise Disconnect(code, reason if isinstance(reason, str) else None)
        error = reply.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            if not isinstance(code, int) or isinstance(code, bool) or code <= 0:
                raise ProxyFailure(f"invalid error {error!r}")
            message = error.get("message")
            raise ProtocolError(code, message if isinstance(message, str) and message else None,
                                temporary=error.get("temporary") is True)
        result = reply.get("result")
        if result is not None and not isinstance(result, dict):
            raise ProxyFailure("result is not an object")
        return result

    def _failed(self, event: str, options: ProxyOptions, client: ClientCore, why: str) -> ProtocolError:
        """Count and log a failed call; the error the client gets (100, temporary)."""
        self.stats.proxy_errors[event] += 1
        log.error("%s proxy %s failed for client %s: %s", event, options.endpoint, client.client_id, why)
        return ProtocolError(ErrorCode.INTERNAL, temporary=True)


def http_proxy(config: Config, stats: Stats | None = None) -> HTTPProxy | None:
    """The node's :class:`HTTPProxy` when any proxy is set (``Config.proxy_enabled``), else ``None``.

    Raises:
        ConfigError: proxies are set and ``aiohttp`` is not installed.
    """
    return HTTPProxy(config, stats) if config.proxy_enabled else None


# -- reading results ---------------------------------------------------------------------


async def _read_answer(response: aiohttp.ClientResponse) -> bytes:
    """The body of ``response``, at most :data:`MAX_ANSWER` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise ProxyFailure(f"answer larger than {MAX_ANSWER} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _str(result: dict[str, Any], key: str) -> str:
    value = result.get(key, "")
    if not isinstance(value, str):
        raise ProxyFailure(f"{key} is not a string")
    return value


def _str_list(result: dict[str, Any], key: str) -> list[str]:
    value = result.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProxyFailure(f"{key} is not a list of strings")
    return value


def _b64(result: dict[str, Any], key: str) -> bytes:
    value = result.get(key)
    if not isinstance(value, str):
        raise ProxyFailure(f"{key} is not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProxyFailure(f"{key} is not base64") from None


def _value(result: dict[str, Any], key: str) -> Any:
    """``result[key]`` (JSON), or ``result["b64" + key]`` decoded: its bytes as
    JSON when they are, else the base64 text as a JSON string."""
    b64 = result.get("b64" + key)
    if b64:
        raw = _b64(result, "b64" + key)
        try:
            return loads(raw)
        except ValueError:
            return b64
    return result.get(key)


def _expire_at(result: dict[str, Any]) -> float | None:
    """``expire_at`` (unix seconds; 0 or absent: never)."""
    value = result.get("expire_at", 0)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ProxyFailure("expire_at is not a unix time")
    return float(value) if value else None
