"""Settings of a hub, channel namespaces, and where settings come from.

A :class:`Config` holds every setting of ``hubbub serve``, from the defaults
below, a TOML file, ``HUBBUB_<SETTING>`` environment variables (lists are
comma-separated) and command-line flags, in that order of precedence
(``README.md``, "Channels, history and presence"; ``docs/security.md``,
"Settings"). In a file, ``[channels]`` holds the default namespace's options
(channels without ``:``) and ``[namespaces.NAME]`` those of ``NAME:...``.

See ``docs/design.md``, "Layers" (base) and "Choke points" (exposure).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

NAMESPACE_SEPARATOR = ":"
ENV_PREFIX = "HUBBUB_"
#: ``HUBBUB_*`` variables that are not settings: the worker index that ``--workers``
#: gives each process, and dev.py's virtual environment.
RESERVED_ENV = frozenset({"HUBBUB_WORKER_INDEX", "HUBBUB_VENV"})
#: ``NamespaceOptions.force_recovery_mode`` values; the cache mode recovers the latest publication only
RECOVERY_MODE_CACHE = "cache"
RECOVERY_MODES = ("", "stream", RECOVERY_MODE_CACHE)
#: the settings that place the streaming and unidirectional transports (hubbub.streams)
STREAM_PATHS = ("http_stream_path", "sse_path", "emulation_path", "uni_websocket_path", "uni_sse_path",
                "uni_http_stream_path", "channel_sse_path")


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """Options of a channel namespace.

    Attributes:
        history_size: publications kept per channel (0: no history, no stream).
        history_ttl: seconds a channel's history is kept after its last
            publication (0: no history).
        force_recovery: every subscription is recoverable (the reply says
            ``recoverable: true``), so clients resubscribe with their position.
            Without it a client must ask with ``recoverable: true``.
        force_recovery_mode: what a subscribe with ``recover: true`` gets, as
            Centrifugo's option of that name: ``""`` or ``"stream"`` the
            publications missed since the client's offset; ``"cache"`` only the
            channel's latest publication (none if it has none), on subscribe and
            on every resubscribe (a centrifuge-js client asks with ``since: {}``).
            ``"cache"`` needs history (``history_size`` and ``history_ttl``);
            ``history_size = 1`` is enough. Other values raise ``ConfigError``.
        presence: keep presence (who is subscribed) for channels.
        join_leave: send ``join``/``leave`` pushes on subscribe/unsubscribe.
        allow_publish_for_client: clients may publish with the ``publish`` command.
        allow_subscribe_for_client: clients may subscribe.
        allow_history_for_client: clients may call ``history``.
        allow_presence_for_client: clients may call ``presence``/``presence_stats``.
        allow_anonymous: anonymous clients (no token) may use the namespace;
            ``None`` inherits the hub-wide ``allow_anonymous``.
        require_subscription_token: subscribing needs a subscription token
            whose ``channel`` claim is the channel (a private channel).
        exclude_publisher: a client's own publications skip its connection.
    """

    history_size: int = 0
    history_ttl: float = 0.0
    force_recovery: bool = False
    presence: bool = False
    join_leave: bool = False
    allow_publish_for_client: bool = True
    allow_subscribe_for_client: bool = True
    allow_history_for_client: bool = True
    allow_presence_for_client: bool = True
    allow_anonymous: bool | None = None
    require_subscription_token: bool = False
    exclude_publisher: bool = False
    force_recovery_mode: str = ""

    def __post_init__(self) -> None:
        if self.force_recovery_mode not in RECOVERY_MODES:
            raise ConfigError(f"force_recovery_mode must be one of {', '.join(map(repr, RECOVERY_MODES))}, "
                              f"got {self.force_recovery_mode!r}")
        if self.force_recovery_mode == RECOVERY_MODE_CACHE and not self.history:
            raise ConfigError("force_recovery_mode = 'cache' needs history (history_size and history_ttl > 0): "
                              "the latest publication is read from it")

    @property
    def history(self) -> bool:
        """Whether channels of this namespace keep a stream with history."""
        return self.history_size > 0 and self.history_ttl > 0


@dataclass(slots=True)
class Config:
    """Settings of a hub. Units: seconds and bytes.

    Attributes:
        host, port: where ``hubbub serve`` listens.
        broker: ``"memory"`` (one process), a ``redis://`` URL, several
            (shards, separated by commas or spaces), ``redis+cluster://`` or
            ``redis+sentinel://`` (see docs/scaling.md).
        workers: processes sharing the port (needs the Redis broker).
        event_loop: ``"asyncio"`` (the standard library's loop) or ``"uvloop"``
            (needs the ``uvloop`` package: ``pip install hubbub[uvloop]``); used by
            ``hubbub serve`` and ``App.serve``.
        max_message_size: largest incoming WebSocket message (bytes); larger
            ones close the connection with 1009. With permessage-deflate this
            bounds the message once decompressed.
        websocket_compression: offer permessage-deflate (RFC 7692) on every
            WebSocket way in of hubbub's own server (protocol, relay,
            ``uni_websocket``, framework endpoints). The server answers with
            ``server_no_context_takeover`` and ``client_no_context_takeover``:
            each outgoing message is compressed alone, so a publication is
            compressed once and the bytes shared by every subscriber that
            negotiated it. Off by default, as in Centrifugo. Under ASGI the
            ASGI server frames and compresses (uvicorn negotiates
            permessage-deflate itself): this setting has no effect there.
        websocket_compression_min_size: messages shorter than this (bytes) are
            sent uncompressed even when compression is negotiated.
        websocket_compression_level: zlib compression level of outgoing
            messages, 1 (fastest) to 9 (smallest).
        max_pending_output: output a connection may have waiting to be sent
            (bytes); past it the connection is closed with 3008 "slow".
        ping_interval: seconds between server pings (0 disables them).
        pong_timeout: seconds a client has to answer a ping; then 3012.
        handshake_timeout: seconds to finish the HTTP/WebSocket handshake.
        connect_timeout: seconds a protocol client has to send ``connect``
            after the handshake; then 3502 "stale".
        close_timeout: seconds to wait for the closing handshake before the
            TCP connection is dropped.
        max_handshake_size: largest HTTP request head (bytes); past it 431.
        max_request_line: longest HTTP request line (bytes); past it 414.
        max_http_body: largest plain HTTP request body (bytes); past it 413.
        channel_max_length: longest channel name (bytes).
        api_key: key for ``POST /api/...`` (header ``X-API-Key``).
        api_insecure: serve the HTTP API without a key (trusted networks only).
        token_hmac_secret: HS256/384/512 secret for connection and
            subscription tokens (JWT).
        token_rsa_public_key: RS256/384/512 public key (PEM text or a path).
        token_ecdsa_public_key: ES256/384/512 public key (PEM text or a path).
        token_jwks_url: URL of a JWKS to verify RS/ES tokens by ``kid``.
        token_audience, token_issuer: required ``aud``/``iss`` claims, if set.
        allow_anonymous: clients without a token are accepted as user ``""``.
            ``None`` (not set): allowed only on a loopback address with no
            token key configured; any other bind address refuses to start.
        allowed_origins: ``Origin`` values allowed on WebSocket upgrades, or
            ``["*"]``. When set, only these are allowed (``Host`` is the
            client's to choose, so no same-origin shortcut); when empty, only
            same-origin requests. Requests without ``Origin`` (non-browser
            clients) are always allowed. Others get 403.
        client_channel_limit: channels one connection may subscribe to
            (error 106; 3505 for server-side subscriptions); 0: no limit.
        client_command_rate: commands per second per connection (0, the default: no
            limit); over it error 111, and after ``client_command_burst``
            rejected commands in a row, disconnect 3013.
        client_command_burst: commands a connection may send at once.
        client_user_connection_limit: connections per user on this node
            (0: no limit); over it 3504.
        client_expired_sub_close_delay: seconds a subscription outlives its
            subscription token's ``exp`` without a ``sub_refresh`` before it is
            ended (unsubscribe push 2501; a relay client is closed with 3006).
            Centrifugo's default is 25; hubbub's is 1, enough for an SDK that
            refreshes when the ``ttl`` it was told (rounded down) runs out.
        idempotency_ttl: seconds a publish ``idempotency_key`` is remembered.
        presence_ttl: seconds a presence entry lives without refresh.
        node_info_interval: seconds between a node's heartbeats on the cluster
            control channel (its snapshot for ``info``; :mod:`hubbub.cluster`).
        node_timeout: seconds without a heartbeat after which a node drops
            out of the cluster (``info``, surveys); more than
            ``node_info_interval``.
        node_request_timeout: seconds a node waits for the other nodes'
            answers (the ``channels`` survey, requests forwarded to a node);
            a node that does not answer in time is left out.
        page: serve the live demo page at ``/`` (``/static/hubbub.js`` is always served).
        protocol_path: where the Centrifugo protocol endpoint is served
            (``""``: not at all).
        relay_path: where the relay is served; must hold ``{channel}`` or
            ``{channel:path}`` (``""``: not at all).
        api_path: prefix of the server API, ``{api_path}/{method}`` (``""``: off).
        health_path, metrics_path: where ``/health`` and ``/metrics`` are
            served (``""``: not at all).
        admin: serve the operator's dashboard at ``/admin`` (see ``admin_enabled``).
        admin_secret: the secret that logs in to ``/admin``. Without it the
            dashboard is served only on a loopback address, with a random
            secret made at start and written to the log.
        http_stream_path, sse_path, emulation_path: centrifuge-js's
            bidirectional emulation (HTTP streaming, SSE, and the endpoint of
            their later commands); ``""`` turns each off.
        uni_websocket_path, uni_sse_path, uni_http_stream_path: the
            unidirectional transports (pushes only, no SDK); ``""``: off.
        channel_sse_path: a channel as a plain event stream; must hold
            ``{channel}`` or ``{channel:path}`` (``""``: off).
        socketio_path: where Socket.IO clients connect (Engine.IO v4
            long-polling and WebSocket; ``""``: off). Rooms are channels of the
            ``socketio`` namespace (``socketio:{namespace}:{room}``); see
            docs/howto/socketio.md.
        socketio_max_attachments: binary attachments one Socket.IO packet may
            announce; more closes the connection.
        socketio_attachment_timeout: seconds a Socket.IO binary packet may wait
            for its attachments; then the connection closes (3501).
        socketio_recovery_window: seconds a Socket.IO client that lost its
            connection may come back with its ``pid`` and ``offset`` and get
            what it missed (needs history on the ``socketio`` namespace).
        channels: options of the default namespace.
        namespaces: options per namespace name.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    broker: str = "memory"
    workers: int = 1
    event_loop: str = "asyncio"
    max_message_size: int = 65536
    websocket_compression: bool = False
    websocket_compression_min_size: int = 128
    websocket_compression_level: int = 1
    max_pending_output: int = 1024 * 1024
    ping_interval: float = 25.0
    pong_timeout: float = 8.0
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    close_timeout: float = 5.0
    max_handshake_size: int = 16384
    max_request_line: int = 8192
    max_http_body: int = 1024 * 1024
    channel_max_length: int = 255
    api_key: str = ""
    api_insecure: bool = False
    token_hmac_secret: str = ""
    token_rsa_public_key: str = ""
    token_ecdsa_public_key: str = ""
    token_jwks_url: str = ""
    token_audience: str = ""
    token_issuer: str = ""
    allow_anonymous: bool | None = None
    allowed_origins: list[str] = field(default_factory=list)
    client_channel_limit: int = 128
    client_command_rate: float = 0.0
    client_command_burst: int = 100
    client_user_connection_limit: int = 0
    client_expired_sub_close_delay: float = 1.0
    idempotency_ttl: float = 300.0
    presence_ttl: float = 60.0
    node_info_interval: float = 1.0
    node_timeout: float = 3.0
    node_request_timeout: float = 2.0
    page: bool = True
    protocol_path: str = "/connection/websocket"
    relay_path: str = "/ws/{channel:path}"
    api_path: str = "/api"
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    admin: bool = True
    admin_secret: str = ""
    http_stream_path: str = "/connection/http_stream"
    sse_path: str = "/connection/sse"
    emulation_path: str = "/emulation"
    uni_websocket_path: str = "/connection/uni_websocket"
    uni_sse_path: str = "/connection/uni_sse"
    uni_http_stream_path: str = "/connection/uni_http_stream"
    channel_sse_path: str = "/sse/{channel:path}"
    socketio_path: str = "/socket.io/"
    socketio_max_attachments: int = 10
    socketio_attachment_timeout: float = 10.0
    socketio_recovery_window: float = 120.0
    channels: NamespaceOptions = field(default_factory=NamespaceOptions)
    namespaces: dict[str, NamespaceOptions] = field(default_factory=dict)

    # -- derived ----------------------------------------------------------------

    def namespace(self, channel: str) -> NamespaceOptions | None:
        """The options for ``channel``, or ``None`` if its namespace is unknown."""
        name, sep, _ = channel.partition(NAMESPACE_SEPARATOR)
        if not sep:
            return self.channels
        return self.namespaces.get(name)

    @property
    def token_auth(self) -> bool:
        """Whether any token key is configured."""
        return bool(self.token_hmac_secret or self.token_rsa_public_key or self.token_ecdsa_public_key
                    or self.token_jwks_url)

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is a loopback address."""
        return is_loopback(self.host)

    @property
    def admin_enabled(self) -> bool:
        """Whether ``/admin`` is served: ``admin`` is on and either
        ``admin_secret`` is set or ``host`` is a loopback address."""
        return self.admin and (bool(self.admin_secret) or self.loopback)

    @property
    def anonymous(self) -> bool:
        """Whether anonymous clients are accepted hub-wide (see ``allow_anonymous``)."""
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        return self.loopback and not self.token_auth

    def exposed_at(self, local: str) -> bool:
        """Whether a connection made to address ``local`` comes from the network: a
        non-loopback address (a Unix socket's path included) other than the one the
        settings were checked for. ``""`` is ``host`` itself (hubbub's own server)."""
        return bool(local) and self.loopback and not is_loopback(local)

    def anonymous_at(self, local: str) -> bool:
        """:attr:`anonymous` for a connection made to address ``local`` (an ASGI server may
        listen on several): on a non-loopback address, anonymous clients only with
        ``allow_anonymous = true``, as ``hubbub serve`` there would."""
        if self.allow_anonymous is not None or not self.exposed_at(local):
            return self.anonymous
        return False

    def admin_enabled_at(self, local: str) -> bool:
        """:attr:`admin_enabled` for a connection made to address ``local``: on a
        non-loopback address, only with ``admin_secret``."""
        if not self.exposed_at(local):
            return self.admin_enabled
        return self.admin and bool(self.admin_secret)

    def anonymous_in(self, ns: NamespaceOptions) -> bool:
        """Whether anonymous clients may use namespace ``ns``."""
        return self.anonymous if ns.allow_anonymous is None else ns.allow_anonymous

    @property
    def security_mode(self) -> str:
        """A one-line description for the startup log."""
        parts = ["tokens required" if self.token_auth and not self.anonymous else
                 "tokens accepted, anonymous allowed" if self.token_auth else "anonymous allowed"]
        parts.append("API key set" if self.api_key else "API open (api_insecure)" if self.api_insecure
                     else "API disabled (no api_key)")
        return ", ".join(parts)

    def check_exposure(self) -> None:
        """Refuse an open hub on a non-loopback address.

        Raises:
            ConfigError: bound beyond loopback with no token key and no
                explicit ``allow_anonymous``; the message says what to set.
        """
        if not self.loopback and not self.token_auth and self.allow_anonymous is None:
            raise ConfigError(
                f"refusing to serve on {self.host}: anonymous clients would be accepted from the network. "
                "Set token_hmac_secret (or token_rsa_public_key / token_ecdsa_public_key / token_jwks_url) "
                "to require connection tokens, or set allow_anonymous = true (HUBBUB_ALLOW_ANONYMOUS=true) "
                "to accept anonymous clients on purpose."
            )

    # -- validation -----------------------------------------------------------------

    def validate(self) -> Config:
        """Check every setting; raise :class:`ConfigError` naming each bad one."""
        errors = [msg for _, msg in _check_fields(type(self), dataclasses.asdict(self), "")]
        if not errors:
            errors = self._cross_checks()
        if errors:
            raise ConfigError("; ".join(errors))
        return self

    def _cross_checks(self) -> list[str]:
        errors = []
        if not 0 <= self.port < 65536:
            errors.append(f"port must be 0-65535, got {self.port}")
        if self.broker != "memory" and not all(
            u.startswith(("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://",
                          "redis+sentinel://", "rediss+sentinel://"))
            for u in (re.split(r"[,\s]+(?=[a-z][a-z0-9+.-]*://)", self.broker.strip()) or [""])
        ):
            errors.append(f"broker must be 'memory', a redis:// URL, several (shards), a redis+cluster:// "
                          f"or a redis+sentinel:// URL, got {self.broker!r}")
        if self.workers < 1:
            errors.append("workers must be at least 1")
        if not 1 <= self.websocket_compression_level <= 9:
            errors.append(f"websocket_compression_level must be 1-9, got {self.websocket_compression_level}")
        if self.websocket_compression_min_size < 0:
            errors.append(f"websocket_compression_min_size must be >= 0, got {self.websocket_compression_min_size}")
        if self.event_loop not in ("asyncio", "uvloop"):
            errors.append(f"event_loop must be 'asyncio' or 'uvloop', got {self.event_loop!r}")
        for name in ("protocol_path", "relay_path", "api_path", "health_path", "metrics_path", "socketio_path",
                     *STREAM_PATHS):
            value = getattr(self, name)
            if value and (not value.startswith("/") or (value != "/" and value.endswith("/") and name == "api_path")):
                errors.append(f"{name} must start with '/' (or be empty to turn it off), got {value!r}")
        if self.relay_path and "{channel" not in self.relay_path:
            errors.append(f"relay_path must hold {{channel}} or {{channel:path}}, got {self.relay_path!r}")
        if self.channel_sse_path and "{channel" not in self.channel_sse_path:
            errors.append(f"channel_sse_path must hold {{channel}} or {{channel:path}}, got {self.channel_sse_path!r}")
        if self.ping_interval > 0 and self.pong_timeout >= self.ping_interval:
            errors.append(f"pong_timeout ({self.pong_timeout}) must be shorter than ping_interval "
                          f"({self.ping_interval}): a pong is checked before the next ping")
        if not self.node_info_interval > 0 or not self.node_request_timeout > 0:
            errors.append("node_info_interval and node_request_timeout must be > 0")
        if self.node_timeout <= self.node_info_interval:
            errors.append(f"node_timeout ({self.node_timeout}) must be longer than node_info_interval "
                          f"({self.node_info_interval}): a live node must get a heartbeat in before it")
        return errors

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "config") -> Config:
        """Build a config from a parsed TOML document.

        Raises:
            ConfigError: listing every unknown or invalid key.
        """
        problems = check_dict(raw)
        if problems:
            raise ConfigError(f"{source}: " + "; ".join(msg for _, msg in problems))
        values = dict(raw)
        if "channels" in values:
            values["channels"] = NamespaceOptions(**values["channels"])
        if "namespaces" in values:
            values["namespaces"] = {k: NamespaceOptions(**v) for k, v in values["namespaces"].items()}
        for f in dataclasses.fields(cls):
            if f.name in values and f.type == "float" and isinstance(values[f.name], int):
                values[f.name] = float(values[f.name])
        config = cls(**values)
        errors = config._cross_checks()
        if errors:
            raise ConfigError(f"{source}: " + "; ".join(errors))
        return config

    @classmethod
    def load(cls, path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
             **flags: Any) -> Config:
        """Settings from a TOML file, then ``HUBBUB_*`` variables, then ``flags``
        (``None`` values are ignored).

        Raises:
            ConfigError: unreadable file, invalid TOML, unknown or invalid keys.
        """
        raw: dict[str, Any] = read_toml(path) if path else {}
        raw.update(env_settings(os.environ if env is None else env))
        raw.update({k: v for k, v in flags.items() if v is not None})
        return cls.from_dict(raw, source=str(path) if path else "settings")


# -- checking raw settings -----------------------------------------------------------


def _type_ok(type_name: str, value: Any) -> bool:
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "bool | None":
        return value is None or isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if type_name == "str":
        return isinstance(value, str)
    if type_name == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return True


_TYPE_WORDS = {
    "bool": "true or false",
    "bool | None": "true or false",
    "int": "a non-negative integer",
    "float": "a non-negative number",
    "str": "a string",
    "list[str]": "a list of strings",
}


def _check_fields(cls: type, raw: Mapping[str, Any], prefix: str) -> list[tuple[str, str]]:
    known = {f.name: f for f in dataclasses.fields(cls)}
    problems = []
    for key, value in raw.items():
        path = f"{prefix}{key}"
        f = known.get(key)
        if f is None:
            problems.append((path, f"unknown setting {path!r}"))
        elif f.type in _TYPE_WORDS and not _type_ok(str(f.type), value):
            problems.append((path, f"{path} must be {_TYPE_WORDS[str(f.type)]}, got {value!r}"))
    return problems


def check_dict(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem in a raw settings mapping, as ``(dotted.key, message)``."""
    problems = [p for p in _check_fields(Config, raw, "") if p[0] not in ("channels", "namespaces")]
    channels = raw.get("channels")
    if channels is not None:
        if isinstance(channels, dict):
            problems += _check_fields(NamespaceOptions, channels, "channels.")
        else:
            problems.append(("channels", "channels must be a table"))
    namespaces = raw.get("namespaces")
    if namespaces is not None:
        if not isinstance(namespaces, dict):
            problems.append(("namespaces", "namespaces must be a table of tables"))
        else:
            for name, options in namespaces.items():
                if not isinstance(options, dict):
                    problems.append((f"namespaces.{name}", f"namespaces.{name} must be a table"))
                elif not name or NAMESPACE_SEPARATOR in name:
                    problems.append((f"namespaces.{name}", f"invalid namespace name {name!r}"))
                else:
                    problems += _check_fields(NamespaceOptions, options, f"namespaces.{name}.")
    return problems


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file. Raises :class:`ConfigError` if unreadable or invalid."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def env_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Top-level settings from ``HUBBUB_*`` variables, converted to each setting's type.

    Raises:
        ConfigError: a variable names no setting, or its value has the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(Config) if f.name not in ("channels", "namespaces")}
    out: dict[str, Any] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower()
        f = fields.get(key)
        if f is None:
            raise ConfigError(f"environment variable {name} names no setting")
        kind = str(f.type)
        try:
            if kind in ("bool", "bool | None"):
                if text.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError
                out[key] = text.lower() in ("1", "true", "yes", "on")
            elif kind == "int":
                out[key] = int(text)
            elif kind == "float":
                out[key] = float(text)
            elif kind == "list[str]":
                out[key] = [part.strip() for part in text.split(",") if part.strip()]
            else:
                out[key] = text
        except ValueError:
            raise ConfigError(f"{name} must be {_TYPE_WORDS.get(kind, kind)}, got {text!r}") from None
    return out


def check_file(path: str | Path) -> list[str]:
    """Validate a config file; every problem as ``"FILE:LINE: message"`` (empty when valid)."""
    try:
        raw = read_toml(path)
    except ConfigError as exc:
        return [str(exc)]
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    out = [f"{path}:{_line_of(text, key)}: {msg}" for key, msg in check_dict(raw)]
    if not out:
        try:
            Config.from_dict(raw, source=str(path))
        except ConfigError as exc:
            out.append(str(exc))
    return out


def _line_of(text: str, dotted: str) -> int:
    """The line where ``dotted`` (``a.b.c``) is set, or 1 if it cannot be found."""
    *tables, key = dotted.split(".")
    table = ".".join(tables)
    current = ""
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
    assign = re.compile(r"^\s*(\"[^\"]*\"|[A-Za-z0-9_-]+)\s*=")
    for number, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            current = m.group(1).replace('"', "")
            if current == dotted:
                return number
            continue
        m = assign.match(line)
        if m and current == table and m.group(1).strip('"') == key:
            return number
    return 1


@functools.lru_cache(maxsize=16)
def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (cached: sessions ask at every connect)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
