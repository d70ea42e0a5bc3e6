"""hubbub: a real-time messaging hub and WebSocket framework for Python."""

from __future__ import annotations

__version__ = "0.1.0"

from .app import App  # noqa: E402
from .config import Config, NamespaceOptions  # noqa: E402
from .endpoint import WebSocket  # noqa: E402
from .session import ClientSession, ConnectRequest, ConnectResult  # noqa: E402
from .errors import (  # noqa: E402
    BrokerError,
    BrokerUnavailable,
    ClientError,
    ConfigError,
    Disconnect,
    HubbubError,
    ProtocolError,
    ReplyError,
)

__all__ = [
    "App",
    "ClientSession",
    "ConnectRequest",
    "ConnectResult",
    "WebSocket",
    "BrokerError",
    "BrokerUnavailable",
    "ClientError",
    "Config",
    "ConfigError",
    "Disconnect",
    "HubbubError",
    "NamespaceOptions",
    "ProtocolError",
    "ReplyError",
    "__version__",
]
