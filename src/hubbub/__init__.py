"""hubbub: a real-time messaging hub and WebSocket framework for Python."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config, NamespaceOptions  # noqa: E402
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
