"""hubbub: a real-time messaging hub and WebSocket framework for Python.

The public names below are loaded on first use (PEP 562), so importing a
core module (``hubbub.hub``, ``hubbub.session``, ``hubbub.core``, ...) does
not load the network layer, ``websockets`` or ``h11``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: public name -> module that defines it
_EXPORTS = {
    "App": "app",
    "Config": "config",
    "NamespaceOptions": "config",
    "WebSocket": "endpoint",
    "broadcast": "endpoint",
    "ClientCore": "core",
    "ClientContext": "core",
    "ConnectRequest": "core",
    "ConnectResult": "core",
    "SessionHooks": "core",
    "ClientSession": "session",
    "Hub": "hub",
    "Server": "server",
    "HostedApp": "hosting",
    "StreamPosition": "brokers.base",
    "Publication": "brokers.base",
    "BadRequest": "errors",
    "BrokerError": "errors",
    "BrokerUnavailable": "errors",
    "ClientError": "errors",
    "ConfigError": "errors",
    "Disconnect": "errors",
    "HubbubError": "errors",
    "ProtocolError": "errors",
    "ReplyError": "errors",
    "NotStarted": "errors",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # names for type checkers; loaded lazily at run time
    from .app import App
    from .brokers.base import Publication, StreamPosition
    from .config import Config, NamespaceOptions
    from .core import ClientContext, ClientCore, ConnectRequest, ConnectResult, SessionHooks
    from .endpoint import WebSocket, broadcast
    from .errors import (
        BadRequest,
        BrokerError,
        BrokerUnavailable,
        ClientError,
        ConfigError,
        Disconnect,
        HubbubError,
        NotStarted,
        ProtocolError,
        ReplyError,
    )
    from .hosting import HostedApp
    from .hub import Hub
    from .server import Server
    from .session import ClientSession


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hubbub' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
