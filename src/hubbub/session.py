"""The Centrifugo client protocol (v2, JSON) as a sans-I/O session.

One :class:`ClientSession` per connection on ``/connection/websocket``. It
takes each incoming WebSocket message (:meth:`ClientSession.handle_message`),
decodes the newline-separated commands in it, runs them against the hub, and
queues the replies, newline-batched, on its :class:`~hubbub.outbox.Outbox`.

Wire format (centrifugal/protocol ``client.proto``; centrifugal.dev
``docs/transports/client_protocol.md``):

* command: ``{"id": N, "<method>": {...}}``; ``send`` has no id and no reply;
  an empty object ``{}`` is a pong.
* reply: ``{"id": N, "<method>": {...}}`` or ``{"id": N, "error": {...}}``.
* push (no id): ``{"push": {"channel": "c", "pub": {...}}}``, and ``join``,
  ``leave``, ``unsubscribe``...
* ping: the server sends ``{}``; a client told ``"pong": true`` in the connect
  reply answers ``{}``.

Rules enforced here: malformed JSON or an unknown command shape closes with
3501; any command before ``connect`` closes with 3501; a second ``connect``
closes with 3501; errors of single commands are error replies.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import __version__
from .brokers.base import ClientInfo, Publication, StreamPosition
from .codes import DISCONNECT_REASONS, DisconnectCode, ErrorCode
from .errors import Disconnect, ProtocolError
from .auth import InvalidToken, TokenExpired, TokenVerifier
from .hub import Hub, Subscriber
from .outbox import FrameBatch, FrameEncoder, Outbox

log = logging.getLogger("hubbub.session")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: Strict JSON parsing: NaN and Infinity (which Python accepts) are refused,
#: since no client's JSON parser would read them back.
_loads = json.JSONDecoder(parse_constant=_reject_constant).decode


def loads(text: str) -> Any:
    """Parse strict JSON text.

    Raises:
        ValueError: not JSON, NaN/Infinity, or nested too deeply.
    """
    try:
        return _loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps(value: Any) -> bytes:
    """Compact JSON bytes."""
    return _dumps(value).encode()


def encode_data(value: Any) -> bytes:
    """Encode a JSON value given by a client as compact JSON bytes.

    Raises:
        ProtocolError: 107 if it cannot be encoded as JSON (a lone surrogate,
            nesting too deep).
    """
    try:
        return _dumps(value).encode()
    except (ValueError, UnicodeEncodeError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "data is not valid JSON") from None


# -- pushes (encoded once per publication, shared by every subscriber) --------


def _channel_json(channel: str) -> bytes:
    return dumps(channel)


def encode_pub_push(channel: str, pub: Publication) -> bytes:
    """``{"push":{"channel":..,"pub":{"data":..,"offset":..,"info":..}}}`` as bytes."""
    parts = [b'{"push":{"channel":', _channel_json(channel), b',"pub":{"data":', pub.data]
    if pub.offset:
        parts.append(b',"offset":%d' % pub.offset)
    if pub.info is not None:
        parts.append(b',"info":' + dumps(pub.info.to_json()))
    if pub.tags:
        parts.append(b',"tags":' + dumps(pub.tags))
    parts.append(b"}}}")
    return b"".join(parts)


def encode_join_push(channel: str, info: ClientInfo) -> bytes:
    return b'{"push":{"channel":%s,"join":{"info":%s}}}' % (_channel_json(channel), dumps(info.to_json()))


def encode_leave_push(channel: str, info: ClientInfo) -> bytes:
    return b'{"push":{"channel":%s,"leave":{"info":%s}}}' % (_channel_json(channel), dumps(info.to_json()))


def encode_unsubscribe_push(channel: str, code: int, reason: str) -> bytes:
    return dumps({"push": {"channel": channel, "unsubscribe": {"code": code, "reason": reason}}})


class ProtocolWire:
    """Encodes pushes for protocol clients: Centrifugo JSON in a text frame."""

    __slots__ = ("frames", "ping")

    def __init__(self, frames: FrameEncoder) -> None:
        self.frames = frames
        #: the server's ping (an empty reply ``{}``), framed once for every connection
        self.ping = frames.text(b"{}")

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        return self.frames.text(encode_pub_push(channel, pub))

    def encode_join(self, channel: str, info: ClientInfo) -> bytes:
        return self.frames.text(encode_join_push(channel, info))

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes:
        return self.frames.text(encode_leave_push(channel, info))


#: Subscribe ``flag`` bit: answer 112 instead of ``recovered: false``.
FLAG_REJECT_UNRECOVERED = 2

#: The server's ping message (an empty reply).
PING = b"{}"

# -- hooks -----------------------------------------------------------------------


@dataclass(slots=True)
class ConnectResult:
    """Who a connection is, as decided by its token or the ``on_connect`` hook.

    Attributes:
        user: user id (``""``: anonymous).
        info: connection info (any JSON), shown in presence and publications.
        data: sent to the client in the connect reply.
        channels: server-side subscriptions made on connect.
        expire_at: unix time (seconds) when the connection expires unless
            refreshed (3005); ``None``: never.
    """

    user: str = ""
    info: Any = None
    data: Any = None
    channels: tuple[str, ...] = ()
    expire_at: float | None = None


@dataclass(slots=True)
class ConnectRequest:
    """What a client sent in ``connect``, for the ``on_connect`` hook.

    ``result`` is what the token (if any) established; the default hook
    returns it unchanged.
    """

    client: str
    token: str
    data: Any
    name: str
    version: str
    headers: dict[str, str]
    result: ConnectResult = dataclasses.field(default_factory=ConnectResult)


class SessionHooks:
    """Application hooks of the protocol endpoint. The defaults allow everything
    (anonymous users). :class:`hubbub.App` and the auth layer replace them.

    Every hook may raise :class:`~hubbub.errors.ProtocolError` (an error reply)
    or :class:`~hubbub.errors.Disconnect` (the connection closes).
    """

    #: Whether ``on_connect`` authenticates by itself, so a connect without a
    #: token is passed to it even when anonymous clients are not allowed.
    handles_auth = False

    async def on_connect(self, request: ConnectRequest) -> ConnectResult:
        return request.result

    async def on_subscribe(self, session: ClientSession, channel: str, params: dict[str, Any]) -> Any:
        """Return channel info (any JSON value) or ``None``."""
        return None

    async def on_publish(self, session: ClientSession, channel: str, data: Any) -> Any:
        """Return the data to publish (possibly transformed)."""
        return data

    async def on_rpc(self, session: ClientSession, method: str, data: Any) -> Any:
        raise ProtocolError(ErrorCode.METHOD_NOT_FOUND)

    async def on_message(self, session: ClientSession, data: Any) -> None:
        return None

    async def on_disconnect(self, session: ClientSession) -> None:
        return None


_DEFAULT_HOOKS = SessionHooks()

_METHODS = (
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
)


class ClientSession:
    """One protocol client's session. See the module docstring.

    Args:
        hub: the node's hub.
        out: the connection's output.
        wire: the encoder for this connection's pushes (shared by all protocol
            connections without per-connection compression).
        hooks: application hooks (:class:`SessionHooks`).
        headers: the handshake's HTTP headers (lower-cased names).
        client_id: connection id; a random UUID by default.
    """

    #: the connection may drop a lone ``{}`` message (a pong) before it reaches the session
    inline_pong = True

    __slots__ = (
        "hub", "config", "verifier", "out", "wire", "hooks", "headers", "client_id", "connected", "closed",
        "user", "conn_info", "info", "expire_at", "channels", "pong_expected", "created_at", "_replies",
        "_tokens", "_tokens_at", "_rejected", "_subscriber_cache", "_late", "__weakref__",
    )

    def __init__(
        self,
        hub: Hub,
        out: Outbox,
        wire: ProtocolWire,
        *,
        hooks: SessionHooks = _DEFAULT_HOOKS,
        headers: dict[str, str] | None = None,
        client_id: str | None = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.hub = hub
        self.config = hub.config
        self.verifier = verifier
        self.out = out
        self.wire = wire
        self.hooks = hooks
        self.headers = headers or {}
        self.client_id = client_id or str(uuid.uuid4())
        self.connected = False
        self.closed = False
        self.user = ""
        self.conn_info: bytes | None = None
        self.info = ClientInfo(self.client_id)
        self.expire_at: float | None = None
        #: channel -> ClientInfo used for presence/join/leave in that channel
        self.channels: dict[str, ClientInfo] = {}
        self.pong_expected = False
        self.created_at = time.monotonic()
        self._replies: list[bytes] = []
        self._tokens = float(self.config.client_command_burst)
        self._tokens_at = time.monotonic()
        self._rejected = 0
        self._subscriber_cache: dict[bool, Subscriber] = {}
        self._late: tuple[str, list[Publication]] | None = None

    # -- incoming -----------------------------------------------------------

    async def open(self) -> None:
        """Called once after the handshake; the client speaks first."""

    def open_nowait(self) -> bool:
        """Open without waiting: there is nothing to do until the client speaks."""
        return True

    async def handle_message(self, data: bytes | str, binary: bool = False) -> None:
        """Handle one WebSocket message: one or more commands, one per line.

        Never raises for bad input: errors become error replies or a close.
        """
        if self.closed:
            return
        try:
            text = data.decode() if isinstance(data, (bytes, bytearray)) else data
            for line in text.split("\n"):
                if not line.strip():
                    continue
                try:
                    command = loads(line)
                except ValueError:
                    raise Disconnect(DisconnectCode.BAD_REQUEST, "malformed JSON") from None
                await self._handle_command(command)
                if self.closed:
                    return
        except Disconnect as exc:
            self.disconnect(exc.code, exc.reason)
        except UnicodeDecodeError:
            self.disconnect(DisconnectCode.BAD_REQUEST, "invalid UTF-8")
        finally:
            self._flush_replies()

    async def _handle_command(self, command: Any) -> None:
        if not isinstance(command, dict):
            raise Disconnect(DisconnectCode.BAD_REQUEST, "command must be an object")
        cid = command.get("id", 0)
        if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "invalid command id")
        methods = [key for key in command if key != "id"]
        if not methods:
            if cid == 0:  # {} is a pong
                self.pong_expected = False
                return
            raise Disconnect(DisconnectCode.BAD_REQUEST, "command without method")
        if len(methods) != 1 or methods[0] not in _METHODS:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "unknown command")
        method = methods[0]
        if not self._allow_command():
            if cid:
                self._reply(dumps({"id": cid, "error": {"code": 111, "message": "too many requests",
                                                        "temporary": True}}))
            return
        params = command[method]
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise Disconnect(DisconnectCode.BAD_REQUEST, f"{method} must be an object")
        if method == "send":
            if self.connected:
                await self._guard(self.hooks.on_message(self, params.get("data")))
            else:
                raise Disconnect(DisconnectCode.BAD_REQUEST, "send before connect")
            return
        if cid == 0:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "command without id")
        if method != "connect" and not self.connected:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "command before connect")
        handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] = getattr(self, "_cmd_" + method)
        started = time.perf_counter()
        try:
            result = await handler(params)
        except ProtocolError as exc:
            error: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.temporary:
                error["temporary"] = True
            self._reply(dumps({"id": cid, "error": error}))
            return
        except Disconnect:
            raise
        except Exception:
            log.exception("error in %s command", method)
            self._reply(dumps({"id": cid, "error": {"code": 100, "message": "internal server error",
                                                    "temporary": True}}))
            return
        finally:
            self.hub.stats.commands[method].observe(time.perf_counter() - started)
        if self.closed:
            return
        self._reply(dumps({"id": cid, method: result}))
        if method == "subscribe" and self._late:
            self._flush_replies()
            channel, late = self._late
            self._late = None
            for pub in late:
                self._deliver(self.wire.encode_publication(channel, pub))

    def _allow_command(self) -> bool:
        """Token bucket: ``client_command_rate`` per second, ``client_command_burst`` at once.

        Raises:
            Disconnect: 3013 after ``client_command_burst`` refusals in a row.
        """
        rate = self.config.client_command_rate
        if rate <= 0:
            return True
        now = time.monotonic()
        burst = self.config.client_command_burst
        self._tokens = min(float(burst), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._rejected = 0
            return True
        self._rejected += 1
        if self._rejected >= max(burst, 1):
            raise Disconnect(DisconnectCode.TOO_MANY_REQUESTS)
        return False

    async def _guard(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except (ProtocolError, Disconnect):
            raise
        except Exception:
            log.exception("error in hook")
            return None

    def _reply(self, payload: bytes) -> None:
        self._replies.append(payload)

    def _flush_replies(self) -> None:
        if self._replies:
            if self.out.open:
                self.out.send_text(b"\n".join(self._replies))
            self._replies.clear()

    # -- commands -------------------------------------------------------------

    async def _cmd_connect(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.connected:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "already connected")
        token = _str(params, "token")
        request = ConnectRequest(
            client=self.client_id,
            token=token,
            data=params.get("data"),
            name=_str(params, "name"),
            version=_str(params, "version"),
            headers=self.headers,
        )
        if token and self.verifier is not None and self.verifier.enabled:
            claims = await self._verify(self.verifier.connection(token))
            request.result = ConnectResult(claims.user, claims.info, None, claims.channels, claims.expire_at)
        elif not self.config.anonymous and not self.hooks.handles_auth:
            raise Disconnect(DisconnectCode.INVALID_TOKEN, "connection token required")
        result = await self.hooks.on_connect(request)
        if result.expire_at is not None and result.expire_at <= time.time():
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED)
        self.user = result.user
        self.conn_info = None if result.info is None else encode_data(result.info)
        self.info = ClientInfo(self.client_id, self.user, self.conn_info)
        self.expire_at = result.expire_at
        limit = self.config.client_user_connection_limit
        if limit and self.user and self.hub.user_connections(self.user) >= limit:
            raise Disconnect(DisconnectCode.CONNECTION_LIMIT)
        self.connected = True
        self.hub.add_session(self)
        reply: dict[str, Any] = {"client": self.client_id, "version": __version__}
        interval = self.hub.config.ping_interval
        if interval > 0:
            reply["ping"] = max(1, round(interval))
            reply["pong"] = True
        if result.data is not None:
            reply["data"] = result.data
        if result.expire_at is not None:
            reply["expires"] = True
            reply["ttl"] = max(0, int(result.expire_at - time.time()))
        subs: dict[str, Any] = {}
        for channel in result.channels:
            try:
                subs[channel] = await self._subscribe(channel, {}, server_side=True)
            except ProtocolError as exc:
                log.warning("server-side subscription to %r failed: %s", channel, exc.message)
        if subs:
            reply["subs"] = subs
        return reply

    @staticmethod
    async def _verify(awaitable: Awaitable[Any]) -> Any:
        """Map token errors: expired -> error 109, invalid -> disconnect 3500."""
        try:
            return await awaitable
        except TokenExpired:
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED) from None
        except InvalidToken as exc:
            raise Disconnect(DisconnectCode.INVALID_TOKEN, "invalid token") from exc

    def namespace(self, channel: str) -> Any:
        """The namespace of ``channel`` for this client.

        Raises:
            ProtocolError: 107/102 for a bad channel; 103 if the client is
                anonymous and the namespace does not allow anonymous clients.
        """
        ns = self.hub.namespace(channel)
        if not self.user and not self.config.anonymous_in(ns):
            raise ProtocolError(ErrorCode.PERMISSION_DENIED)
        return ns

    def _subscriber(self, recoverable: bool) -> Subscriber:
        sub = self._subscriber_cache.get(recoverable)
        if sub is None:
            sub = self._subscriber_cache[recoverable] = Subscriber(
                self.client_id, self.wire, self._deliver, self._disconnect_code, recoverable
            )
        return sub

    def _deliver(self, frame: bytes | FrameBatch) -> None:
        """Queue a push; replies computed before it go first (a subscribe reply
        must precede the channel's pushes)."""
        if self._replies:
            self._flush_replies()
        self.out.deliver(frame)

    def _disconnect_code(self, code: int) -> None:
        self.disconnect(code)

    async def _cmd_subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = _channel(params)
        return await self._subscribe(channel, params)

    async def _subscribe(self, channel: str, params: dict[str, Any], *, server_side: bool = False) -> dict[str, Any]:
        hub = self.hub
        ns = hub.namespace(channel) if server_side else self.namespace(channel)
        if channel in self.channels:
            raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED)
        if len(self.channels) >= self.config.client_channel_limit:
            if server_side:
                raise Disconnect(DisconnectCode.CHANNEL_LIMIT)
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, "channel limit exceeded")
        chan_info = None
        if not server_side:
            if not ns.allow_subscribe_for_client:
                raise ProtocolError(ErrorCode.PERMISSION_DENIED)
            if ns.require_subscription_token:
                chan_info = await self._subscription_token(channel, _str(params, "token"))
            hooked = await self.hooks.on_subscribe(self, channel, params)
            if hooked is not None:
                chan_info = hooked
        info = self.info if chan_info is None else ClientInfo(
            self.client_id, self.user, self.conn_info, encode_data(chan_info))
        recover = bool(params.get("recover"))
        positioned = bool(params.get("positioned"))
        recoverable = ns.history and (ns.force_recovery or recover or bool(params.get("recoverable")))
        since: StreamPosition | None = None
        if recover and recoverable:
            since = StreamPosition(_uint(params, "offset"), _str(params, "epoch"))
        self.channels[channel] = info  # reserve: a second subscribe meanwhile gets 105
        try:
            result = await hub.subscribe(
                channel,
                self._subscriber(recoverable or positioned),
                ns=ns,
                info=info,
                recover_since=since,
                positioned=positioned,
            )
        except BaseException:
            self.channels.pop(channel, None)
            raise
        if self.closed:
            hub.unsubscribe(channel, self.client_id, info=info)
            return {}
        reply: dict[str, Any] = {}
        if ns.history:
            reply["epoch"] = result.position.epoch
            reply["offset"] = result.position.offset
            if recoverable:
                reply["recoverable"] = True
            if positioned or recoverable:
                reply["positioned"] = True
        if since is not None:
            reply["was_recovering"] = True
            reply["recovered"] = result.recovered
            if result.recovered:
                # As Centrifugo: the reply keeps the client's offset and the
                # publications advance it (client.go, res.Offset = req.Offset).
                reply["offset"] = since.offset
                if result.publications:
                    reply["publications"] = [p.to_json() for p in result.publications]
            elif _int(params.get("flag")) & FLAG_REJECT_UNRECOVERED:
                hub.unsubscribe(channel, self.client_id, info=info)
                self.channels.pop(channel, None)
                raise ProtocolError(ErrorCode.UNRECOVERABLE_POSITION)
        if ns.join_leave:
            reply["join_leave"] = True
        if result.late:
            self._late = (channel, result.late)
        return reply

    async def _subscription_token(self, channel: str, token: str) -> Any:
        """Check the subscription token of a private channel; returns its ``info``.

        Raises:
            ProtocolError: 103 without a valid token for this channel and
                user, 109 if it expired.
        """
        if not token or self.verifier is None or not self.verifier.enabled:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "subscription token required")
        try:
            claims = await self.verifier.subscription(token)
        except TokenExpired:
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED) from None
        except InvalidToken:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "invalid subscription token") from None
        if claims.channel != channel or claims.user != self.user:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "subscription token is for another channel or user")
        return claims.info

    async def _cmd_unsubscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = _channel(params)
        info = self.channels.pop(channel, None)
        if info is not None:
            self.hub.unsubscribe(channel, self.client_id, info=info)
        return {}

    async def _cmd_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = _channel(params)
        ns = self.namespace(channel)
        if not ns.allow_publish_for_client:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED)
        if "data" not in params:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "publish without data")
        data = await self.hooks.on_publish(self, channel, params["data"])
        pub = Publication(
            encode_data(data),
            info=self.channels.get(channel, self.info),
            exclude_client=self.client_id if ns.exclude_publisher else None,
        )
        position = await self.hub.publish(channel, pub, source="client")
        if position.epoch:
            return {"offset": position.offset, "epoch": position.epoch}
        return {}

    async def _cmd_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = _channel(params)
        ns = self.namespace(channel)
        if not ns.history:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE)
        if not ns.allow_history_for_client:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED)
        limit = params.get("limit", 0)
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "limit must be an integer")
        since_raw = params.get("since")
        since = None
        if since_raw is not None:
            if not isinstance(since_raw, dict):
                raise ProtocolError(ErrorCode.BAD_REQUEST, "since must be an object")
            since = StreamPosition(_uint(since_raw, "offset"), _str(since_raw, "epoch"))
        return await self.hub.history(channel, since=since, limit=limit,
                                      reverse=bool(params.get("reverse", False)))

    async def _presence_check(self, params: dict[str, Any]) -> str:
        channel = _channel(params)
        ns = self.namespace(channel)
        if not ns.presence:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE)
        if not ns.allow_presence_for_client:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED)
        return channel

    async def _cmd_presence(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = await self._presence_check(params)
        entries = await self._broker_call(self.hub.broker.presence(channel))
        return {"presence": {client: info.to_json() for client, info in entries.items()}}

    async def _cmd_presence_stats(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = await self._presence_check(params)
        clients, users = await self._broker_call(self.hub.broker.presence_stats(channel))
        return {"num_clients": clients, "num_users": users}

    async def _broker_call(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(ErrorCode.INTERNAL, f"broker error: {exc}", temporary=True) from exc

    async def _cmd_ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _cmd_rpc(self, params: dict[str, Any]) -> dict[str, Any]:
        method = _str(params, "method")
        data = await self.hooks.on_rpc(self, method, params.get("data"))
        return {} if data is None else {"data": data}

    async def _cmd_refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        token = _str(params, "token")
        if not token:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "refresh without token")
        if self.verifier is None or not self.verifier.enabled:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE)
        claims = await self._verify(self.verifier.connection(token))
        if claims.user != self.user:
            raise Disconnect(DisconnectCode.INVALID_TOKEN, "token is for another user")
        self.expire_at = claims.expire_at
        reply: dict[str, Any] = {"client": self.client_id, "version": __version__}
        if claims.expire_at is not None:
            reply["expires"] = True
            reply["ttl"] = max(0, int(claims.expire_at - time.time()))
        return reply

    async def _cmd_sub_refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        raise ProtocolError(ErrorCode.NOT_AVAILABLE)

    # -- server-side ------------------------------------------------------------

    def ping(self) -> None:
        """Send a ping (called by the server's shared ping timer).

        Clients that have not connected yet are not pinged. Any message from
        the client, a pong included, counts as the answer.
        """
        if self.closed or not self.connected:
            return
        self.pong_expected = True
        self.out.deliver(self.wire.ping)

    def check_pong(self) -> None:
        """Close with 3012 "no pong" if the last ping went unanswered (called
        ``pong_timeout`` seconds after :meth:`ping`)."""
        if self.pong_expected and not self.closed:
            self.disconnect(DisconnectCode.NO_PONG)

    def disconnect(self, code: int, reason: str | None = None) -> None:
        """Close the connection with a disconnect code (see :mod:`hubbub.codes`)."""
        if self.closed:
            return
        self._flush_replies()
        self.closed = True
        self.out.close(code, DISCONNECT_REASONS.get(code, "") if reason is None else reason)

    def check_expiry(self, now: float) -> None:
        """Close with 3005 if the connection's token expired (``now``: unix seconds)."""
        if self.expire_at is not None and now >= self.expire_at and not self.closed:
            self.disconnect(DisconnectCode.EXPIRED)

    async def server_subscribe(self, channel: str) -> None:
        """Subscribe from the server side (HTTP API) and tell the client with a
        ``subscribe`` push.

        Raises:
            ProtocolError: as for a subscribe command.
        """
        reply = await self._subscribe(channel, {}, server_side=True)
        self.out.send_text(dumps({"push": {"channel": channel, "subscribe": reply}}))

    def server_unsubscribe(self, channel: str) -> bool:
        """Unsubscribe from the server side and tell the client (code 2000)."""
        info = self.channels.pop(channel, None)
        if info is None:
            return False
        self.hub.unsubscribe(channel, self.client_id, info=info)
        self.out.send_text(encode_unsubscribe_push(channel, 2000, "server unsubscribe"))
        return True

    def on_closed(self) -> None:
        """The connection is gone: leave every channel (idempotent)."""
        self.closed = True
        if self.connected:
            self.hub.remove_session(self)
            self.connected = False
        for channel, info in self.channels.items():
            self.hub.unsubscribe(channel, self.client_id, info=info)
        self.channels.clear()


def _str(params: dict[str, Any], key: str) -> str:
    value = params.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{key} must be a string")
    return value


def _uint(params: dict[str, Any], key: str) -> int:
    value = params.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{key} must be a non-negative integer")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _channel(params: dict[str, Any]) -> str:
    channel = params.get("channel")
    if not isinstance(channel, str) or not channel:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "channel required")
    return channel
