"""hubbub's exception tree: everything hubbub raises on purpose derives from
:class:`HubbubError`.

See ``docs/design.md``, "The exception tree" (the tree, and what each class means).
"""

from __future__ import annotations

from typing import Any

from .codes import DISCONNECT_REASONS, ERROR_MESSAGES, ErrorCode


class HubbubError(Exception):
    """Base class of every error hubbub raises on purpose."""


class NotStarted(HubbubError, RuntimeError):
    """The hub is not running (never started, or stopped): a publish would reach nobody.

    Raised by :meth:`hubbub.hub.Hub.publish` (and ``publish_nowait``,
    ``history``) instead of pretending to succeed. The message says what to
    start: serve the app (``hubbub run MODULE:APP``, ``App.serve()``, ``await
    App.start()``), run it under an ASGI server that sends lifespan events, or
    ``await hub.start()`` for a hub of your own.
    """


class ConfigError(HubbubError):
    """A setting is missing or invalid. The message names the setting."""


class RouteCollision(ConfigError):
    """Two routes would match the same paths.

    Attributes:
        route: the route being added (a :class:`hubbub.routing.Route`).
        other: the route already there.
    """

    def __init__(self, route: Any, other: Any) -> None:
        self.route = route
        self.other = other
        super().__init__(f"{route.name} ({route.pattern}) collides with {other.name} ({other.pattern})")


class TokenError(HubbubError):
    """A token was refused (:mod:`hubbub.auth`)."""


class TokenExpired(TokenError):
    """The token's ``exp`` has passed."""


class InvalidToken(TokenError):
    """The token is malformed, badly signed, or lacks a required claim."""


class ProtocolError(HubbubError):
    """A command failed with a protocol error code (see :class:`ErrorCode`).

    Args:
        code: one of :class:`~hubbub.codes.ErrorCode` (or an application
            code, 400-1999 by Centrifugo's convention).
        message: human-readable text; defaults to the code's standard text.
        temporary: whether the client may retry the same command.
    """

    def __init__(self, code: int, message: str | None = None, *, temporary: bool = False) -> None:
        self.code = int(code)
        self.message = message if message is not None else ERROR_MESSAGES.get(code, "error")
        self.temporary = temporary or code == ErrorCode.INTERNAL
        super().__init__(f"{self.code}: {self.message}")


class BadRequest(ProtocolError):
    """An invalid channel name or parameter (code 107 "bad request").

    Raised by :mod:`hubbub.validation`; the protocol answers it with error
    107, the server API with HTTP 400. ``message`` names the parameter.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)


class Disconnect(HubbubError):
    """The connection must be closed with this WebSocket close code.

    Args:
        code: one of :class:`~hubbub.codes.DisconnectCode`, or 4000-4999.
        reason: close reason (at most 123 bytes of UTF-8); defaults to the
            code's standard reason.
    """

    def __init__(self, code: int, reason: str | None = None) -> None:
        self.code = int(code)
        self.reason = reason if reason is not None else DISCONNECT_REASONS.get(code, "")
        super().__init__(f"{self.code} {self.reason}")


class BrokerError(HubbubError):
    """The broker backend failed; the operation was not done and may be retried."""


class BrokerUnavailable(BrokerError):
    """The broker backend cannot be reached right now."""


class ClusterError(HubbubError):
    """A request to another node failed (:mod:`hubbub.cluster`)."""


class NodeUnavailable(ClusterError):
    """The node did not answer within the timeout (it died, is unknown, or is overloaded)."""


class RemoteError(ClusterError):
    """The node's handler failed; the message is the remote error's text."""


class ClientError(HubbubError):
    """An error in hubbub's own client (``hubbub consume`` / ``produce``)."""


class ReplyError(ClientError):
    """The server answered a command with an error reply.

    Attributes:
        code: the protocol error code.
        message: the server's message.
    """

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"server error {code}: {message}")


class EndpointError(ClientError):
    """A ``ws://`` URL whose path is no hubbub endpoint (a usage error)."""


class SocketIOError(HubbubError):
    """The base of the Socket.IO errors (python-socketio's ``socketio.exceptions`` names,
    re-exported by :mod:`hubbub.socketio.exceptions`)."""


class ConnectRefused(SocketIOError):
    """A Socket.IO namespace ``CONNECT`` is refused: the client gets ``CONNECT_ERROR`` with
    ``{"message": message}`` (and ``"data"`` when given)."""

    def __init__(self, message: str = "Connection rejected by server", data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class SocketIOConnectionError(SocketIOError):
    """python-socketio's ``socketio.exceptions.ConnectionError``."""


class ConnectionRefusedError(SocketIOConnectionError):  # noqa: A001  # python-socketio's name
    """Raise it in a Socket.IO ``connect`` handler to refuse the client: ``CONNECT_ERROR`` with
    ``{"message": args[0]}`` (``"Connection rejected by server"`` without arguments) and
    ``"data"``: ``args[1]`` (``args[1:]`` when there are more). python-socketio's name."""

    def __init__(self, *args: Any) -> None:
        self.error_args: dict[str, Any] = {"message": str(args[0]) if args else "Connection rejected by server"}
        if len(args) == 2:
            self.error_args["data"] = args[1]
        elif len(args) > 2:
            self.error_args["data"] = list(args[1:])
        super().__init__(*args)


class SocketIOTimeoutError(SocketIOError):
    """No acknowledgement within the timeout (python-socketio's ``exceptions.TimeoutError``)."""


class BadNamespaceError(SocketIOError):
    """python-socketio's ``exceptions.BadNamespaceError``."""


class DisconnectedError(SocketIOError):
    """The Socket.IO client is not connected (python-socketio's ``exceptions.DisconnectedError``)."""
