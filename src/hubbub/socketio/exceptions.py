"""python-socketio's exception names (``socketio.exceptions``), for code that imports them. They
are classes of hubbub's one exception tree (:mod:`hubbub.errors`)."""

from __future__ import annotations

from ..errors import (
    BadNamespaceError,
    ConnectionRefusedError,
    DisconnectedError,
    SocketIOConnectionError,
    SocketIOError,
    SocketIOTimeoutError,
)

ConnectionError = SocketIOConnectionError  # noqa: A001  # python-socketio's name
TimeoutError = SocketIOTimeoutError  # noqa: A001  # python-socketio's name

__all__ = ["BadNamespaceError", "ConnectionError", "ConnectionRefusedError", "DisconnectedError",
           "SocketIOError", "TimeoutError"]
