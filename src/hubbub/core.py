"""The client core: every rule about a client, in one place.

Every way a client comes in is a subclass of :class:`ClientCore` that does I/O
and wire formats only. Codes: centrifugal.dev ``docs/server/codes.md``. The
core holds no sockets: output goes to an :class:`~hubbub.outbox.Outbox`, time
comes from the :class:`ClientContext`'s clocks (injectable in tests).

See ``docs/design.md``, "Choke points: one rule, one place".
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import itertools
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from .auth import TokenVerifier
from .brokers.base import ClientInfo, Publication, PublishCallback, StreamPosition
from .codes import UNSUBSCRIBE_REASONS, DisconnectCode, ErrorCode, UnsubscribeCode
from .config import DEFAULT_PROXY, Config, NamespaceOptions
from .errors import BadRequest, BrokerError, Disconnect, InvalidToken, ProtocolError, TokenExpired
from .hub import DeltaWire, Hub, Subscriber, SubscribeResult, Wire
from .outbox import FrameBatch, Outbox
from .strictjson import encode_data

log = logging.getLogger("hubbub.core")


class Handshake(enum.Enum):
    """Sentinels of a handshake decision (defined once, compared with ``is``)."""

    #: the decision needs an ``await`` (a hook, a JWKS fetch, a proxy): call ``handshake()``
    PENDING = "pending"


#: What a session's ``handshake_nowait`` returns when ``handshake`` must be awaited.
PENDING: Final = Handshake.PENDING

#: This process's client ids: a random prefix, then a counter (:func:`new_client_id`).
_id_prefix = ""
_id_counter = itertools.count(1)


def _new_id_prefix() -> None:
    """A fresh random prefix (at import, and in a forked child, which must not repeat its parent's ids)."""
    global _id_prefix, _id_counter
    h = uuid.uuid4().hex
    _id_prefix = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-"
    _id_counter = itertools.count(1)


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def new_client_id() -> str:
    """A connection's id, unique among nodes and restarts: UUID-shaped (36
    characters, lower-case hex), a random prefix made once per process
    and a 48-bit counter. The protocol needs only uniqueness (``client`` in
    ``ConnectResult``, ``ClientInfo``; centrifuge-js keeps it as an opaque
    string); a tenth of the CPU of ``str(uuid.uuid4())``, paid on every
    connect. Not a secret: other clients see it in presence and join/leave."""
    return f"{_id_prefix}{next(_id_counter):012x}"


#: A handshake refusal: (HTTP status, reason text).
Refusal = tuple[int, str]

#: A handshake decision made at once: ``None`` accepts, a :data:`Refusal` refuses,
#: :data:`PENDING` means the session's ``handshake()`` must be awaited.
HandshakeDecision = Refusal | None | Literal[Handshake.PENDING]

# -- hooks ------------------------------------------------------------------------


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
    """What a client sent to connect, for the ``on_connect`` hook.

    ``result`` is what the token (if any) established; the default hook
    returns it unchanged. ``transport`` names the way in (``"websocket"``,
    ``"relay"``, ``"endpoint"``).
    """

    client: str
    token: str
    data: Any
    name: str
    version: str
    headers: dict[str, str]
    result: ConnectResult = dataclasses.field(default_factory=ConnectResult)
    transport: str = "websocket"


class SessionHooks:
    """Application hooks, called for every client whatever its way in. The
    defaults allow everything. :class:`hubbub.App` replaces them.

    Every hook may raise :class:`~hubbub.errors.ProtocolError` (an error reply,
    or a refused handshake) or :class:`~hubbub.errors.Disconnect` (the
    connection closes).
    """

    #: Whether ``on_connect`` authenticates by itself, so a connect without a
    #: token is passed to it even when anonymous clients are not allowed.
    handles_auth = False
    @property
    def active(self) -> bool:
        """Whether ``on_connect``, ``on_subscribe`` or ``on_publish`` is
        overridden (False: the core skips the calls, and a relay handshake is
        decided without waiting)."""
        cls = type(self)
        return (cls.on_connect is not SessionHooks.on_connect or cls.on_subscribe is not SessionHooks.on_subscribe
                or cls.on_publish is not SessionHooks.on_publish)

    async def on_connect(self, request: ConnectRequest) -> ConnectResult:
        return request.result

    async def on_subscribe(self, client: ClientCore, channel: str, params: dict[str, Any]) -> Any:
        """Return channel info (any JSON value) or ``None``."""
        return None

    async def on_publish(self, client: ClientCore, channel: str, data: Any) -> Any:
        """Return the data to publish (possibly transformed)."""
        return data

    async def on_rpc(self, client: ClientCore, method: str, data: Any) -> Any:
        raise ProtocolError(ErrorCode.METHOD_NOT_FOUND)

    async def on_message(self, client: ClientCore, data: Any) -> None:
        return None

    async def on_disconnect(self, client: ClientCore) -> None:
        return None


class Proxy(Protocol):
    """The backend's proxy hooks, as :class:`ClientCore` calls them: the events
    of Centrifugo's proxy (centrifugal.dev ``docs/server/proxy.md``). The core
    holds no sockets: the HTTP implementation is :class:`hubbub.proxy.HTTPProxy`,
    given to the :class:`ClientContext`.

    Every call raises :class:`~hubbub.errors.ProtocolError` (the backend's
    ``error``, or 100 temporary when the backend is down, slow past its timeout
    or answers garbage) or :class:`~hubbub.errors.Disconnect` (the backend's
    ``disconnect``); nothing else.
    """

    def handles(self, event: str, name: str = DEFAULT_PROXY) -> bool:
        """Whether proxy ``name`` (a namespace's ``subscribe_proxy``, ...) is set for
        ``event`` (``"connect"``, ``"refresh"``, ``"subscribe"``, ``"publish"``,
        ``"sub_refresh"``); for ``"rpc"``, ``name`` is the method."""
        ...

    async def connect(self, client: ClientCore, request: ConnectRequest) -> ConnectResult: ...

    async def refresh(self, client: ClientCore) -> float | None:
        """The connection's new ``expire_at`` (unix seconds; ``None``: never).

        Raises:
            Disconnect: 3005 when the backend says ``expired``.
        """
        ...

    async def subscribe(self, client: ClientCore, channel: str, name: str, token: str,
                        data: Any) -> tuple[Any, float | None]:
        """The channel info (``None``: none) and the subscription's ``expire_at``."""
        ...

    async def publish(self, client: ClientCore, channel: str, name: str, data: Any,
                      publication: Publication | None) -> Publication | None:
        """The publication the backend returned in place of the client's; ``None``: the client's."""
        ...

    async def sub_refresh(self, client: ClientCore, channel: str, name: str) -> float | None:
        """The subscription's new ``expire_at``.

        Raises:
            ProtocolError: 109 when the backend says ``expired``.
        """
        ...

    async def rpc(self, client: ClientCore, method: str, data: Any) -> Any:
        """The RPC's result data (``None``: none)."""
        ...

    def refresh_later(self, client: ClientCore, channel: str = "") -> None:
        """Run ``client.refresh_by_proxy(channel)`` (:meth:`ClientCore.refresh_by_proxy`)
        in a task the proxy owns."""
        ...

    async def close(self) -> None:
        """Cancel the calls in flight and close the connection pool."""
        ...


class ClientContext:
    """What every client of one node shares: settings, hub, token verifier,
    hooks and clocks.

    Args:
        hub: the node's hub (its ``config`` is used).
        verifier: the token verifier; by default one for ``hub.config``.
        hooks: application hooks.
        clock: monotonic seconds (rate limits); injectable in tests.
        wall: unix seconds (token expiry); injectable in tests.
        proxy: the backend's proxy hooks (``None``: none); they run before the
            Python hooks of the same event (docs/howto/proxy.md).
    """

    __slots__ = ("hub", "config", "verifier", "hooks", "anonymous", "clock", "wall", "_exposed", "proxy")

    def __init__(self, hub: Hub, *, verifier: TokenVerifier | None = None, hooks: SessionHooks | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 proxy: Proxy | None = None) -> None:
        self.hub = hub
        self.config: Config = hub.config
        self.verifier = verifier or TokenVerifier(hub.config)
        self.hooks = hooks or SessionHooks()
        self.proxy = proxy
        self.clock = clock
        self.wall = wall
        self._exposed: ClientContext | None = None
        self.refresh()

    def at(self, local: str) -> ClientContext:
        """The context for a client that connected to address ``local``
        (:attr:`hubbub.http.HTTPRequest.local`): this one, or, on a non-loopback address
        of a node whose settings were checked for loopback (an ASGI server listening on
        several), a sibling sharing hub, verifier, hooks and clocks whose
        :attr:`anonymous` follows ``Config.anonymous_at``. The exposure rule holds per
        connection, whichever address was asked first (docs/security.md)."""
        if not local:
            return self
        anonymous = self.config.anonymous_at(local)
        if anonymous == self.anonymous:
            return self
        exposed = self._exposed
        if exposed is None:
            exposed = self._exposed = ClientContext(self.hub, verifier=self.verifier, hooks=self.hooks,
                                                    clock=self.clock, wall=self.wall, proxy=self.proxy)
        exposed.hooks = self.hooks  # the application may set its hooks after the first connection
        exposed.anonymous = anonymous
        return exposed

    def refresh(self) -> None:
        """Read again what is cached from the settings (``anonymous``): call it
        after changing ``allow_anonymous``, the bind address or token keys."""
        #: ``config.anonymous``, read at every connect
        self.anonymous = self.config.anonymous

    def anonymous_in(self, ns: NamespaceOptions) -> bool:
        """Whether anonymous clients may use namespace ``ns``."""
        return self.anonymous if ns.allow_anonymous is None else ns.allow_anonymous

    @property
    def hooks_active(self) -> bool:
        """Whether the hooks or a backend proxy do anything (read live: an App
        registers hooks after its server exists)."""
        return self.hooks.active or self.proxy is not None


class CommandRate:
    """``client_command_rate`` per connection: a token bucket for commands and
    a second bucket for refusals.

    A command is allowed while the first bucket (``burst`` tokens, refilled at
    ``rate`` per second) has a token; otherwise it gets error 111. Refusals
    fill the second bucket, which drains at ``rate`` per second: once it holds
    more than ``burst``, the client is flooding and :meth:`allow` raises
    ``Disconnect(3013)``. An occasional refusal drains away, but a sustained
    flood ends within ``2 * burst`` refused commands, however the allowed
    ones interleave with them.
    """

    __slots__ = ("rate", "burst", "_tokens", "_refused", "_at")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._tokens = float(self.burst)
        self._refused = 0.0
        self._at = now

    def allow(self, now: float) -> bool:
        """Whether one more command may run at ``now`` (monotonic seconds).

        Raises:
            Disconnect: 3013 when refusals pile up faster than they drain.
        """
        elapsed = max(0.0, now - self._at)
        self._at = now
        tokens = self._tokens + elapsed * self.rate
        if tokens > self.burst:
            # only time spent under the rate (refill that overflows a full
            # bucket) forgives earlier refusals
            if self._refused:
                self._refused = max(0.0, self._refused - (tokens - self.burst))
            tokens = float(self.burst)
        self._tokens = tokens
        if self._tokens >= 1.0 - 1e-9:
            self._tokens -= 1.0
            return True
        self._refused += 1.0
        if self._refused > self.burst:
            raise Disconnect(DisconnectCode.TOO_MANY_REQUESTS)
        return False


def _map_token_errors(exc: Exception) -> ProtocolError | Disconnect:
    """Token errors as the protocol answers them: expired is error 109 (the
    client refreshes), anything else closes with 3500."""
    if isinstance(exc, TokenExpired):
        return ProtocolError(ErrorCode.TOKEN_EXPIRED)
    return Disconnect(DisconnectCode.INVALID_TOKEN, "invalid token")


class ClientCore:
    """One client, whatever its transport: identity, subscriptions, rules.

    Subclasses implement :meth:`disconnect` (close with a code) and may
    override :meth:`_push_subscribed` / :meth:`_push_unsubscribed` (tell the
    client about server-side subscription changes) and :meth:`_deliver`.

    Args:
        context: the node's shared :class:`ClientContext`.
        out: the connection's output.
        wire: the encoder of pushes for this client (shared by every client of
            the same codec and transport).
        headers: the handshake's HTTP headers (lower-case names); for a WebSocket,
            without the upgrade's own (``upgrade``, ``connection``,
            ``sec-websocket-key``, ``-version``, ``-extensions``).
        client_id: connection id; a random UUID by default.
    """

    __slots__ = (
        "context", "hub", "config", "out", "wire", "headers", "client_id", "user", "conn_info", "_info",
        "expire_at", "channels", "sub_expire_at", "connected", "closed", "pong_expected", "_rate", "__weakref__",
    )

    #: the transport's name in hooks and metrics
    transport = "websocket"
    #: what the node's counters call it: ``"protocol"``, ``"relay"`` or ``"endpoint"``
    kind = "endpoint"
    #: whether the client authenticates after the transport opened (the protocol's ``connect``
    #: command, within ``connect_timeout``); the others authenticate at the handshake
    awaits_connect = False
    #: the WebSocket subprotocol the transport names in its ``101`` (a protocol session's codec)
    subprotocol: str | None = None
    #: whether a text message ``{}`` is a pong the transport may answer without the session's
    #: ``handle_message`` (the protocol's JSON pong)
    inline_pong = False
    #: whether an anonymous client is registered for the server API's
    #: user-targeted methods (user ``""``), as protocol clients are
    register_anonymous = True

    def __init__(self, context: ClientContext, out: Outbox, wire: Wire, *, headers: dict[str, str] | None = None,
                 client_id: str | None = None) -> None:
        self.context = context
        self.hub = context.hub
        self.config = context.config
        self.out = out
        self.wire = wire
        self.headers = headers or {}
        self.client_id = client_id or new_client_id()
        self.user = ""
        self.conn_info: bytes | None = None
        self._info: ClientInfo | None = None  # made when first needed (memory per connection)
        self.expire_at: float | None = None
        #: channel -> ClientInfo used for presence/join/leave in that channel
        #: (None where the namespace shows nobody: :meth:`info` stands for it)
        self.channels: dict[str, ClientInfo | None] = _NO_CHANNELS  # a dict of its own once subscribed
        #: channel -> unix time (seconds) its subscription token expires, for
        #: subscriptions made with a token that has ``exp`` (``None``: none)
        self.sub_expire_at: dict[str, float] | None = None
        self.connected = False
        self.closed = False
        self.pong_expected = False
        rate = self.config.client_command_rate
        self._rate = CommandRate(rate, self.config.client_command_burst, context.clock()) if rate > 0 else None

    @property
    def protocol(self) -> str:
        """The client's protocol format, as proxy requests name it: ``"json"`` or ``"protobuf"``."""
        return "json"

    @property
    def info(self) -> ClientInfo:
        """Who this client is, as presence, join/leave and publications show it."""
        info = self._info
        if info is None:
            info = self._info = ClientInfo(self.client_id, self.user, self.conn_info)
        return info

    # -- output (subclasses) ---------------------------------------------------------

    def disconnect(self, code: int, reason: str | None = None) -> None:
        """Close the connection with a close code (see :mod:`hubbub.codes`)."""
        raise NotImplementedError

    def _deliver(self, frame: bytes | FrameBatch) -> None:
        """Queue an encoded push (called by the hub's fan-out)."""
        self.out.deliver(frame)

    def _disconnect_code(self, code: int) -> None:
        self.disconnect(code)

    def _push_subscribed(self, channel: str, result: SubscribeResult, ns: NamespaceOptions) -> None:
        """Tell the client about a server-side subscription (default: nothing)."""

    def _push_unsubscribed(self, channel: str, code: int, reason: str) -> None:
        """Tell the client about a server-side unsubscription (default: nothing)."""

    # -- authentication ------------------------------------------------------------------

    def authenticate_nowait(self, token: str) -> ConnectResult | None:
        """:meth:`authenticate` without waiting, when no hook and no key lookup
        must be awaited; ``None`` (nothing changed) when it must be awaited.

        Raises:
            Disconnect: 3500 invalid or missing token, 3504 connection limit.
            ProtocolError: 109 token expired.
        """
        context = self.context
        if context.hooks_active or (token and context.verifier.needs_lookup):
            return None
        result = _ANONYMOUS
        if token and context.verifier.enabled:
            try:
                claims = context.verifier.connection_nowait(token)
            except (TokenExpired, InvalidToken) as exc:
                raise _map_token_errors(exc) from None
            result = ConnectResult(claims.user, claims.info, None, claims.channels, claims.expire_at)
            if result.expire_at is not None and result.expire_at <= context.wall():
                raise ProtocolError(ErrorCode.TOKEN_EXPIRED)
        elif not context.anonymous:
            raise Disconnect(DisconnectCode.INVALID_TOKEN, "connection token required")
        self._connected(result)
        return result

    async def authenticate(self, token: str, *, data: Any = None, name: str = "", version: str = "") -> ConnectResult:
        """Establish who the client is: verify ``token`` (a connection JWT),
        run the ``on_connect`` hook, apply the connection limit.

        Raises:
            Disconnect: 3500 invalid token, or none while anonymous clients are
                not allowed; 3504 over ``client_user_connection_limit``.
            ProtocolError: 109 token expired; what the hook raises.
        """
        if self.connected:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "already connected")
        context = self.context
        request = ConnectRequest(self.client_id, token, data, name, version, self.headers, transport=self.transport)
        if token and context.verifier.enabled:
            try:
                claims = await context.verifier.connection(token)
            except (TokenExpired, InvalidToken) as exc:
                raise _map_token_errors(exc) from None
            request.result = ConnectResult(claims.user, claims.info, None, claims.channels, claims.expire_at)
        elif context.proxy is not None and context.proxy.handles("connect"):
            request.result = await context.proxy.connect(self, request)
        elif not context.anonymous and not context.hooks.handles_auth:
            raise Disconnect(DisconnectCode.INVALID_TOKEN, "connection token required")
        result = await context.hooks.on_connect(request)
        if result.expire_at is not None and result.expire_at <= context.wall():
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED)
        if self.closed:
            raise Disconnect(DisconnectCode.NORMAL)
        self._connected(result)
        return result

    def _connected(self, result: ConnectResult) -> None:
        user = self.user = result.user
        if user or result.info is not None:
            self.conn_info = None if result.info is None else encode_data(result.info)
            self._info = None  # made again with the user
        self.expire_at = result.expire_at
        limit = self.config.client_user_connection_limit
        if limit and user and self.hub.user_connections(user) >= limit:
            raise Disconnect(DisconnectCode.CONNECTION_LIMIT)
        self.connected = True
        self.hub.add_session(self, register=bool(user) or self.register_anonymous)

    async def refresh(self, token: str) -> None:
        """Take a new connection token for the same user (extends ``expire_at``).

        Raises:
            ProtocolError: 107 without token, 108 without token keys, 109 expired.
            Disconnect: 3500 invalid token or another user's.
        """
        if not token:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "refresh without token")
        verifier = self.context.verifier
        if not verifier.enabled:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE)
        try:
            claims = await verifier.connection(token)
        except (TokenExpired, InvalidToken) as exc:
            raise _map_token_errors(exc) from None
        if claims.user != self.user:
            raise Disconnect(DisconnectCode.INVALID_TOKEN, "token is for another user")
        self.expire_at = claims.expire_at

    @property
    def expires(self) -> bool:
        """Whether the connection or a subscription has a token that expires."""
        return self.expire_at is not None or bool(self.sub_expire_at)

    def check_expiry(self, now: float) -> None:
        """End what expired (``now``: unix seconds): close with 3005 if the
        connection's token expired; end each subscription whose subscription
        token expired more than ``client_expired_sub_close_delay`` seconds ago
        and was not refreshed (:meth:`_subscription_expired`)."""
        if self.closed:
            return
        if self.expire_at is not None and now >= self.expire_at:
            proxy = self.context.proxy
            if proxy is None or not proxy.handles("refresh"):
                self.disconnect(DisconnectCode.EXPIRED)
                return
            self.expire_at = None  # until the backend answers
            proxy.refresh_later(self)
        expiring = self.sub_expire_at
        if not expiring:
            return
        deadline = now - self.config.client_expired_sub_close_delay
        for channel, expire_at in list(expiring.items()):
            if not self.subscribed_to(channel):
                del expiring[channel]
            elif expire_at <= deadline:
                del expiring[channel]
                self._subscription_expired(channel)
                if self.closed:
                    return

    def subscribed_to(self, channel: str) -> bool:
        """Whether this client is subscribed to ``channel`` (or is about to be)."""
        return channel in self.channels

    def _subscription_expired(self, channel: str) -> None:
        """End a subscription whose token expired: unsubscribe push 2501, after
        which an SDK subscribes again with a new token (centrifugal/centrifuge
        ``client.go``, ``checkSubscriptionExpiration``). Transports that cannot
        tell a client about one subscription override this. With a
        ``sub_refresh_proxy``, the backend is asked instead."""
        if self._sub_refresh_proxy(channel):
            assert self.context.proxy is not None
            self.context.proxy.refresh_later(self, channel)
            return
        if self.leave(channel):
            self._push_unsubscribed(channel, UnsubscribeCode.EXPIRED, UNSUBSCRIBE_REASONS[UnsubscribeCode.EXPIRED])

    async def refresh_subscription(self, channel: Any, token: str) -> float | None:
        """Take a new subscription token for a channel this client is
        subscribed to (the protocol's ``sub_refresh``); returns its ``exp``
        (unix seconds) or ``None`` if it does not expire.

        Raises:
            BadRequest: 107 invalid channel name or no token.
            ProtocolError: 103 not subscribed, or a token that is invalid or
                for another channel or user; 109 expired.
        """
        self.hub.namespace(channel)  # validates the name (107)
        if channel not in self.channels:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "not subscribed")
        if not token and self._sub_refresh_proxy(channel):
            return await self._proxy_sub_refresh(channel)
        if not token:
            raise BadRequest("sub_refresh without token")
        with self._subscription_token(token) as verifier:
            claims = await verifier.subscription(token)
        self._check_subscription_claims(channel, claims)
        if channel not in self.channels:  # unsubscribed meanwhile
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "not subscribed")
        return claims.expire_at

    # -- rate --------------------------------------------------------------------------------

    def allow_command(self) -> bool:
        """Whether one more command may run now (``client_command_rate``).

        Raises:
            Disconnect: 3013 for a sustained flood (:class:`CommandRate`).
        """
        rate = self._rate
        return True if rate is None else rate.allow(self.context.clock())

    # -- channel permissions -------------------------------------------------------------

    def namespace(self, channel: Any) -> NamespaceOptions:
        """The namespace of ``channel`` for this client.

        Raises:
            BadRequest: 107 for an invalid channel name.
            ProtocolError: 102 unknown namespace; 103 if the client is
                anonymous and the namespace does not allow anonymous clients.
        """
        ns = self.hub.namespace(channel)
        if not self.user and not self.context.anonymous_in(ns):
            raise ProtocolError(ErrorCode.PERMISSION_DENIED)
        return ns

    def _check_subscribe(self, channel: Any, server_side: bool) -> NamespaceOptions:
        ns = self.hub.namespace(channel) if server_side else self.namespace(channel)
        if channel in self.channels:
            raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED)
        limit = self.config.client_channel_limit
        if limit and len(self.channels) >= limit:
            if server_side:
                raise Disconnect(DisconnectCode.CHANNEL_LIMIT)
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, "channel limit exceeded")
        if not server_side and not ns.allow_subscribe_for_client:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED)
        return ns

    @contextlib.contextmanager
    def _subscription_token(self, token: str) -> Iterator[TokenVerifier]:
        """Verify a subscription token inside the block (with the verifier it
        yields); token errors become the protocol's: 103 missing or invalid,
        109 expired."""
        verifier = self.context.verifier
        if not token or not verifier.enabled:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "subscription token required")
        try:
            yield verifier
        except TokenExpired:
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED) from None
        except InvalidToken:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "invalid subscription token") from None

    def _check_subscription_claims(self, channel: str, claims: Any) -> Any:
        """The channel info of a verified subscription token for ``channel``;
        notes its ``exp`` for the subscription about to be made."""
        if claims.channel != channel or claims.user != self.user:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "subscription token is for another channel or user")
        if claims.expire_at is not None:
            expiring = self.sub_expire_at
            if expiring is None:
                expiring = self.sub_expire_at = {}
            expiring[channel] = claims.expire_at
        elif self.sub_expire_at:
            self.sub_expire_at.pop(channel, None)
        return claims.info

    def subscription_expires(self, channel: str) -> float | None:
        """When the subscription token of ``channel`` expires (unix seconds), or ``None``."""
        expiring = self.sub_expire_at
        return expiring.get(channel) if expiring else None

    def authorize_subscribe_nowait(self, channel: Any, token: str = "") -> tuple[NamespaceOptions, Any] | None:
        """:meth:`authorize_subscribe` without waiting; ``None`` when a hook or a
        key lookup must be awaited. Same errors."""
        context = self.context
        if context.hooks_active or (token and context.verifier.needs_lookup):
            return None
        ns = self._check_subscribe(channel, False)
        chan_info = None
        if ns.require_subscription_token:
            with self._subscription_token(token) as verifier:
                claims = verifier.subscription_nowait(token)
            chan_info = self._check_subscription_claims(channel, claims)
        else:
            self._check_user_limited(channel, ns)
        return ns, chan_info

    async def authorize_subscribe(self, channel: Any, token: str = "", params: dict[str, Any] | None = None, *,
                                  server_side: bool = False) -> tuple[NamespaceOptions, Any]:
        """Decide whether this client may subscribe to ``channel``; returns
        its namespace and the channel info (from the subscription token or the
        ``on_subscribe`` hook, ``None`` without).

        ``server_side`` subscriptions (the connection token's ``channels``, the
        server API, framework code) skip client permissions but not validation
        or limits.

        Raises:
            BadRequest: 107 invalid name.
            ProtocolError: 102, 103 (permission, subscription token), 105
                already subscribed, 106 channel limit, 109 token expired.
            Disconnect: 3505 channel limit of a server-side subscription.
        """
        ns = self._check_subscribe(channel, server_side)
        if server_side:
            return ns, None
        chan_info = None
        if ns.require_subscription_token:
            with self._subscription_token(token) as verifier:
                claims = await verifier.subscription(token)
            chan_info = self._check_subscription_claims(channel, claims)
        elif not self._check_user_limited(channel, ns):
            proxy = self.context.proxy
            if ns.subscribe_proxy and proxy is not None and proxy.handles("subscribe", ns.subscribe_proxy):
                chan_info, expire_at = await proxy.subscribe(self, channel, ns.subscribe_proxy, token,
                                                             (params or {}).get("data"))
                self._note_sub_expiry(channel, expire_at)
        hooks = self.context.hooks
        if self.context.hooks_active:
            hooked = await hooks.on_subscribe(self, channel, params or {})
            if hooked is not None:
                chan_info = hooked
            if channel in self.channels:  # subscribed meanwhile
                raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED)
        return ns, chan_info

    def _check_user_limited(self, channel: str, ns: NamespaceOptions) -> bool:
        """Whether ``channel`` is user-limited (``allow_user_limited_channels`` and a
        ``#`` in its name, centrifugal.dev ``docs/server/channels.md``, "user channel
        boundary"): then only the users listed after its last ``#`` (separated by
        ``,``) may subscribe.

        Raises:
            ProtocolError: 103 for a user not listed.
        """
        if not ns.allow_user_limited_channels or USER_BOUNDARY not in channel:
            return False
        if not self.user or self.user not in channel.rpartition(USER_BOUNDARY)[2].split(USER_SEPARATOR):
            raise ProtocolError(ErrorCode.PERMISSION_DENIED)
        return True

    def _note_sub_expiry(self, channel: str, expire_at: float | None) -> None:
        """Note when the subscription about to be made to ``channel`` expires (``None``: never)."""
        if expire_at is not None:
            expiring = self.sub_expire_at
            if expiring is None:
                expiring = self.sub_expire_at = {}
            expiring[channel] = expire_at
        elif self.sub_expire_at:
            self.sub_expire_at.pop(channel, None)

    def _sub_refresh_proxy(self, channel: str) -> str:
        """The ``sub_refresh_proxy`` of ``channel``'s namespace when the node's proxy serves it, else ``""``."""
        proxy = self.context.proxy
        if proxy is None:
            return ""
        ns = self.hub.config.namespace(channel)
        name = ns.sub_refresh_proxy if ns is not None else ""
        return name if name and proxy.handles("sub_refresh", name) else ""

    async def _proxy_sub_refresh(self, channel: str) -> float | None:
        """Ask the ``sub_refresh`` proxy to extend the subscription to ``channel``; its new ``expire_at``."""
        assert self.context.proxy is not None
        expire_at = await self.context.proxy.sub_refresh(self, channel, self._sub_refresh_proxy(channel))
        if channel not in self.channels:  # unsubscribed meanwhile
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "not subscribed")
        self._note_sub_expiry(channel, expire_at)
        return expire_at

    def client_refreshes(self, channel: str = "") -> bool:
        """Whether the client refreshes the connection (``channel == ""``) or the
        subscription to ``channel`` itself when its ``expire_at`` nears (the replies
        tell it ``expires`` and ``ttl``); not when a refresh or ``sub_refresh`` proxy
        extends it from the server side, as Centrifugo's ``ClientSideRefresh``."""
        if channel:
            return not self._sub_refresh_proxy(channel)
        proxy = self.context.proxy
        return proxy is None or not proxy.handles("refresh")

    async def refresh_by_proxy(self, channel: str = "") -> None:
        """Extend the connection (or the subscription to ``channel``) from the
        server side through the refresh (``sub_refresh``) proxy, when it
        expired: the backend's ``expired`` closes the connection with 3005 (a
        subscription it refuses or says ``expired`` ends with 2501, 3006 on the
        relay); a backend that fails closes the connection with 3004 (the SDK
        reconnects, and the connect proxy is asked again).
        Called in a task owned by the proxy (:meth:`Proxy.refresh_later`)."""
        proxy = self.context.proxy
        if proxy is None or self.closed:
            return
        try:
            if channel:
                if channel in self.channels:
                    await self._proxy_sub_refresh(channel)
            else:
                self.expire_at = await proxy.refresh(self)
        except Disconnect as exc:
            self.disconnect(exc.code, exc.reason)
        except ProtocolError as exc:
            if not channel or exc.code == ErrorCode.INTERNAL:
                self.disconnect(DisconnectCode.SERVER_ERROR)
            elif self.leave(channel):  # expired, or refused by the backend: the SDK subscribes again
                self._push_unsubscribed(channel, UnsubscribeCode.EXPIRED, UNSUBSCRIBE_REASONS[UnsubscribeCode.EXPIRED])

    async def rpc(self, method: str, data: Any) -> Any:
        """Answer the client's ``rpc``: the backend's rpc proxy when it serves
        ``method``, else the ``on_rpc`` hook. Returns the result's data.

        Raises:
            ProtocolError: 104 unknown method; what the proxy or hook raises.
            Disconnect: the backend's ``disconnect``.
        """
        proxy = self.context.proxy
        if proxy is not None and proxy.handles("rpc", method):
            return await proxy.rpc(self, method, data)
        return await self.context.hooks.on_rpc(self, method, data)

    # -- subscriptions -------------------------------------------------------------------

    def _channel_info(self, chan_info: Any, ns: NamespaceOptions) -> ClientInfo | None:
        """The ClientInfo of a subscription, or ``None`` where nothing shows it
        (no channel info, presence or join/leave: memory per connection)."""
        if chan_info is None:
            return self.info if ns.presence or ns.join_leave else None
        return ClientInfo(self.client_id, self.user, self.conn_info, encode_data(chan_info))

    def _subscriber(self, recoverable: bool, delta: DeltaWire | None = None) -> Subscriber:
        # a new Subscriber per subscription, held by the hub only: no reference cycle;
        # the outbox's own deliver when the session adds nothing to it (one call less
        # per delivery on the fan-out path)
        deliver = self._deliver if type(self)._deliver is not ClientCore._deliver else self.out.deliver
        return Subscriber(self.client_id, delta or self.wire, deliver, self._disconnect_code, recoverable, delta)

    def subscribe_nowait(self, channel: str, ns: NamespaceOptions, chan_info: Any = None) -> SubscribeResult | None:
        """Join ``channel`` at once when the hub can (no history to read, the
        node already subscribed); ``None``, having changed nothing, otherwise.
        The caller has authorized the subscription."""
        info = self._channel_info(chan_info, ns)
        result = self.hub.subscribe_nowait(channel, self._subscriber(False), ns=ns, info=info)
        if result is not None:
            self._remember(channel, info)
        return result

    async def join(self, channel: str, ns: NamespaceOptions, chan_info: Any = None, *,
                   recover_since: StreamPosition | None = None, recoverable: bool = False,
                   positioned: bool = False, delta: DeltaWire | None = None) -> SubscribeResult:
        """Join ``channel`` (authorized by :meth:`authorize_subscribe`) in the hub;
        with ``delta`` (a negotiated Fossil delta) publications come through that wire.

        Raises:
            ProtocolError: 105 already subscribed; 100 (temporary) broker failure.
        """
        info = self._channel_info(chan_info, ns)
        self._remember(channel, info)  # reserve: a second subscribe meanwhile gets 105
        try:
            result = await self.hub.subscribe(
                channel, self._subscriber(recoverable or positioned, delta), ns=ns, info=info,
                recover_since=recover_since, positioned=positioned,
            )
        except BaseException:
            self._forget(channel)
            raise
        if self.closed:
            self.leave(channel)
        return result

    def leave(self, channel: str) -> bool:
        """Leave ``channel``; returns whether the client was subscribed."""
        if channel not in self.channels:
            return False
        info = self._forget(channel)
        self.hub.unsubscribe(channel, self.client_id, info=info)
        return True

    def _remember(self, channel: str, info: ClientInfo | None) -> None:
        """Note a subscription (``info``: what the hub was given for it)."""
        channels = self.channels
        if channels is _NO_CHANNELS:
            channels = self.channels = {}
        channels[channel] = info

    def _forget(self, channel: str) -> ClientInfo | None:
        """Drop a subscription noted by :meth:`_remember`; its info."""
        if self.sub_expire_at:
            self.sub_expire_at.pop(channel, None)
        return self.channels.pop(channel, None) if self.channels is not _NO_CHANNELS else None

    async def server_subscribe(self, channel: str) -> None:
        """Subscribe from the server side (server API) and tell the client.

        Raises:
            ProtocolError: as :meth:`authorize_subscribe` (105 included).
            Disconnect: 3505 channel limit.
        """
        ns, _ = await self.authorize_subscribe(channel, server_side=True)
        result = await self.join(channel, ns)
        if not self.closed:
            self._push_subscribed(channel, result, ns)

    def server_unsubscribe(self, channel: str) -> bool:
        """Unsubscribe from the server side and tell the client (code 2000)."""
        if not self.leave(channel):
            return False
        self._push_unsubscribed(channel, 2000, "server unsubscribe")
        return True

    # -- publishing, history, presence ---------------------------------------------------

    async def publish(self, channel: Any, data: Any = None, *, publication: Publication | None = None,
                      source: str = "client") -> StreamPosition:
        """Publish as this client: ``data`` (any JSON value), or a prepared
        ``publication`` (the relay's raw messages).

        Raises:
            BadRequest: 107 invalid name or data.
            ProtocolError: 102, 103 (not allowed), 100 (temporary) broker failure.
        """
        ns = self._publish_check(channel)
        proxy = self.context.proxy
        if ns.publish_proxy and proxy is not None and proxy.handles("publish", ns.publish_proxy):
            answered = await proxy.publish(self, channel, ns.publish_proxy, data, publication)
            if answered is not None:
                publication, data = answered, None
        if self.context.hooks_active:
            hooks = self.context.hooks
            original = data if publication is None else publication.value()
            hooked = await hooks.on_publish(self, channel, original)
            if hooked is not original:
                publication = None
                data = hooked
        return await self.hub.publish(channel, self._as_publisher(ns, channel, data, publication), source=source)

    def publish_nowait(self, channel: Any, done: PublishCallback, data: Any = None, *,
                       publication: Publication | None = None, source: str = "client") -> None:
        """:meth:`publish` on a pipelined broker without awaiting it (see
        :meth:`Hub.publish_nowait`): the same checks, then ``done(position,
        None)`` or ``done(None, ProtocolError)`` once the broker answered.
        Only without application hooks (``on_publish`` is awaited).

        Raises:
            BadRequest, ProtocolError: as :meth:`publish`, before anything is
                sent (``done`` is not called).
        """
        ns = self._publish_check(channel)
        self.hub.publish_nowait(channel, self._as_publisher(ns, channel, data, publication), done, source=source)

    def _publish_check(self, channel: Any) -> NamespaceOptions:
        ns = self.namespace(channel)
        if not ns.allow_publish_for_client:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED)
        return ns

    def _as_publisher(self, ns: NamespaceOptions, channel: str, data: Any,
                      publication: Publication | None) -> Publication:
        """The publication as this client publishes it: its info, and not back to it when the namespace says so."""
        if publication is None:
            publication = Publication(encode_data(data))
        publication.info = self.channels.get(channel) or self.info
        if ns.exclude_publisher:
            publication.exclude_client = self.client_id
        return publication

    async def history(self, channel: Any, *, since: StreamPosition | None = None, limit: int = 0,
                      reverse: bool = False, as_objects: bool = False) -> dict[str, Any]:
        """The channel's history for this client (``HistoryResult`` shape;
        ``as_objects``: publications as :class:`Publication` objects, see :meth:`Hub.history`).

        Raises:
            ProtocolError: 102, 103, 107, 108 no history, 112 wrong epoch, 100 broker failure.
        """
        ns = self.namespace(channel)
        if not ns.history:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE)
        if not ns.allow_history_for_client:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED)
        return await self.hub.history(channel, since=since, limit=limit, reverse=reverse, as_objects=as_objects)

    def _presence_check(self, channel: Any) -> str:
        ns = self.namespace(channel)
        if not ns.presence:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE)
        if not ns.allow_presence_for_client:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED)
        name: str = channel  # a valid channel name: namespace() checked it
        return name

    async def presence(self, channel: Any) -> dict[str, Any]:
        """``{"presence": {client: ClientInfo}}`` (errors as :meth:`history`, 108 without presence)."""
        channel = self._presence_check(channel)
        entries = await _broker_call(self.hub.broker.presence(channel))
        return {"presence": {client: info.to_json() for client, info in entries.items()}}

    async def presence_stats(self, channel: Any) -> dict[str, Any]:
        """``{"num_clients": N, "num_users": M}`` (errors as :meth:`presence`)."""
        channel = self._presence_check(channel)
        clients, users = await _broker_call(self.hub.broker.presence_stats(channel))
        return {"num_clients": clients, "num_users": users}

    # -- keepalive and the end -------------------------------------------------------------

    def ping(self) -> None:
        """Send a WebSocket ping (called by the server's shared ping timer)."""
        if not self.closed:
            self.pong_expected = True
            self.out.send_ping()

    def pong(self) -> None:
        """The client answered (any message counts)."""
        self.pong_expected = False

    def check_pong(self) -> None:
        """Close if the last ping went unanswered (``pong_timeout`` after :meth:`ping`)."""
        if self.pong_expected and not self.closed:
            self.disconnect(DisconnectCode.NO_PONG)

    def abandon(self) -> None:
        """End the session without its transport's help: a refused handshake, a stream that
        never started, a request that failed. Marks it closed and leaves every channel
        (:meth:`on_closed`, idempotent); nothing is sent."""
        self.on_closed()

    def on_closed(self) -> None:
        """The connection is gone: leave every channel (idempotent)."""
        self.closed = True
        if self.connected:
            self.hub.remove_session(self)
            self.connected = False
        channels, self.channels = self.channels, _NO_CHANNELS
        for channel, info in channels.items():
            self.hub.unsubscribe(channel, self.client_id, info=info)


#: Centrifugo's user channel boundary and separator: ``dialog#42,43`` (``allow_user_limited_channels``).
USER_BOUNDARY: Final = "#"
USER_SEPARATOR: Final = ","

#: The result of a connect without token or hook (read only).
_ANONYMOUS = ConnectResult()

#: The channels of a client that holds none: shared, never written (memory per connection).
_NO_CHANNELS: dict[str, ClientInfo | None] = {}


async def _broker_call(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except BrokerError as exc:
        raise ProtocolError(ErrorCode.INTERNAL, f"broker error: {exc}", temporary=True) from exc
