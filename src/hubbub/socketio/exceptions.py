"""python-socketio's exceptions (``socketio.exceptions``), for code that imports them."""

from __future__ import annotations

from typing import Any

from ..errors import HubbubError

__all__ = ["BadNamespaceError", "ConnectionError", "ConnectionRefusedError", "DisconnectedError",
           "SocketIOError", "TimeoutError"]


class SocketIOError(HubbubError):
    """The base of python-socketio's exceptions."""


class ConnectionError(SocketIOError):  # noqa: A001  # python-socketio's name
    pass


class ConnectionRefusedError(ConnectionError):  # noqa: A001  # python-socketio's name
    """Raise it in a ``connect`` handler to refuse the client: ``CONNECT_ERROR`` with
    ``{"message": args[0]}`` (``"Connection rejected by server"`` without arguments) and
    ``"data"``: ``args[1]`` (or ``args[1:]`` when there are more)."""

    def __init__(self, *args: Any) -> None:
        self.error_args: dict[str, Any] = {"message": str(args[0]) if args else "Connection rejected by server"}
        if len(args) == 2:
            self.error_args["data"] = args[1]
        elif len(args) > 2:
            self.error_args["data"] = list(args[1:])
        super().__init__(*args)


class TimeoutError(SocketIOError):  # noqa: A001  # python-socketio's name
    pass


class BadNamespaceError(SocketIOError):
    pass


class DisconnectedError(SocketIOError):
    pass
