"""Settings of a hub, and channel namespaces.

A :class:`Config` holds every setting of ``hubbub serve``; it is built from
keyword arguments, from a TOML file (:meth:`Config.from_toml`), or both.
Example file::

    host = "127.0.0.1"
    port = 8000
    ping_interval = 25.0

    [channels]            # options of the default namespace (no ``:`` in the name)
    history_size = 0

    [namespaces.chat]     # channels named ``chat:...``
    history_size = 100
    history_ttl = 300
    presence = true
    join_leave = true

A channel ``chat:room1`` is channel ``room1`` of namespace ``chat``; a channel
without ``:`` is in the default namespace. A channel in a namespace that is not
configured is unknown (error 102).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

NAMESPACE_SEPARATOR = ":"


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """Options of a channel namespace.

    Attributes:
        history_size: publications kept per channel (0: no history, no stream).
        history_ttl: seconds a channel's history is kept after its last
            publication (0: no history).
        force_recovery: every subscription is recoverable, whatever the
            client asked.
        presence: keep presence (who is subscribed) for channels.
        join_leave: send ``join``/``leave`` pushes on subscribe/unsubscribe.
        allow_publish_for_client: clients may publish with the ``publish`` command.
        allow_subscribe_for_client: clients may subscribe.
        allow_history_for_client: clients may call ``history``.
        allow_presence_for_client: clients may call ``presence``/``presence_stats``.
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
    exclude_publisher: bool = False

    @property
    def history(self) -> bool:
        """Whether channels of this namespace keep a stream with history."""
        return self.history_size > 0 and self.history_ttl > 0


def _positive(name: str, value: Any, *, allow_zero: bool = True, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return kind(value)


def _namespace_from_dict(where: str, raw: dict[str, Any]) -> NamespaceOptions:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    known = {f.name: f for f in dataclasses.fields(NamespaceOptions)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown option {key!r}")
        if f.type == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
            values[key] = value
        elif f.type == "int":
            values[key] = _positive(f"{where}.{key}", value, kind=int)
        else:
            values[key] = _positive(f"{where}.{key}", value)
    return NamespaceOptions(**values)


@dataclass(slots=True)
class Config:
    """Settings of a hub. Units: seconds and bytes.

    Attributes:
        host, port: where ``hubbub serve`` listens.
        broker: ``"memory"`` (one process) or a ``redis://`` URL.
        max_message_size: largest incoming WebSocket message (bytes); larger
            ones close the connection with 1009.
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
        max_http_body: largest plain HTTP request body (bytes); past it 413.
        channel_max_length: longest channel name (bytes).
        channels: options of the default namespace.
        namespaces: options per namespace name.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    broker: str = "memory"
    max_message_size: int = 65536
    max_pending_output: int = 1024 * 1024
    ping_interval: float = 25.0
    pong_timeout: float = 8.0
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    close_timeout: float = 5.0
    max_handshake_size: int = 16384
    max_http_body: int = 1024 * 1024
    channel_max_length: int = 255
    channels: NamespaceOptions = field(default_factory=NamespaceOptions)
    namespaces: dict[str, NamespaceOptions] = field(default_factory=dict)

    def namespace(self, channel: str) -> NamespaceOptions | None:
        """The options for ``channel``, or ``None`` if its namespace is unknown."""
        name, sep, _ = channel.partition(NAMESPACE_SEPARATOR)
        if not sep:
            return self.channels
        return self.namespaces.get(name)

    def validate(self) -> Config:
        """Check every setting; raise :class:`ConfigError` naming the bad one."""
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ConfigError(f"port must be 0-65535, got {self.port!r}")
        for name in ("max_message_size", "max_pending_output", "max_handshake_size", "max_http_body",
                     "channel_max_length"):
            _positive(name, getattr(self, name), allow_zero=False, kind=int)
        for name in ("ping_interval", "pong_timeout", "handshake_timeout", "connect_timeout",
                     "close_timeout"):
            _positive(name, getattr(self, name))
        if self.broker != "memory" and not self.broker.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"broker must be 'memory' or a redis:// URL, got {self.broker!r}")
        return self

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> Config:
        """Build a config from a parsed TOML document; unknown keys are errors."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown setting {key!r}")
            if key == "channels":
                values[key] = _namespace_from_dict("channels", value)
            elif key == "namespaces":
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: namespaces must be a table of tables")
                values[key] = {
                    name: _namespace_from_dict(f"namespaces.{name}", options)
                    for name, options in value.items()
                }
            else:
                values[key] = value
        try:
            config = cls(**values)
        except TypeError as exc:  # pragma: no cover - guarded by the key check
            raise ConfigError(str(exc)) from None
        return config.validate()

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> Config:
        """Read a TOML file; ``overrides`` (not ``None``) win over the file."""
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw, source=str(path))
