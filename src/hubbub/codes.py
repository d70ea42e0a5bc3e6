"""Protocol error codes and disconnect codes.

Source: centrifugal.dev ``docs/server/codes.md`` and the ``disconnect.go`` /
``errors.go`` files of ``centrifugal/centrifuge``. Error codes travel in
error replies (``{"id": N, "error": {"code": C, "message": "..."}}``);
disconnect codes travel in the WebSocket close frame.

Disconnect codes 3000–3499 tell a client to reconnect; 3500–3999 tell it not
to. Applications may use 4000–4999.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Codes of protocol error replies."""

    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    METHOD_NOT_FOUND = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    EXPIRED = 110
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112


#: The standard message of each error code.
ERROR_MESSAGES: dict[int, str] = {
    ErrorCode.INTERNAL: "internal server error",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.UNKNOWN_CHANNEL: "unknown channel",
    ErrorCode.PERMISSION_DENIED: "permission denied",
    ErrorCode.METHOD_NOT_FOUND: "method not found",
    ErrorCode.ALREADY_SUBSCRIBED: "already subscribed",
    ErrorCode.LIMIT_EXCEEDED: "limit exceeded",
    ErrorCode.BAD_REQUEST: "bad request",
    ErrorCode.NOT_AVAILABLE: "not available",
    ErrorCode.TOKEN_EXPIRED: "token expired",
    ErrorCode.EXPIRED: "expired",
    ErrorCode.TOO_MANY_REQUESTS: "too many requests",
    ErrorCode.UNRECOVERABLE_POSITION: "unrecoverable position",
}


class DisconnectCode(enum.IntEnum):
    """Close codes hubbub sends. See :func:`should_reconnect`."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    # 3000-3499: the client should reconnect.
    SHUTDOWN = 3001
    SERVER_ERROR = 3004
    EXPIRED = 3005
    SUBSCRIPTION_EXPIRED = 3006
    SLOW = 3008
    WRITE_ERROR = 3009
    INSUFFICIENT_STATE = 3010
    FORCE_RECONNECT = 3011
    NO_PONG = 3012
    TOO_MANY_REQUESTS = 3013
    # 3500-3999: the client should not reconnect.
    INVALID_TOKEN = 3500
    BAD_REQUEST = 3501
    STALE = 3502
    FORCE_DISCONNECT = 3503
    CONNECTION_LIMIT = 3504
    CHANNEL_LIMIT = 3505
    INAPPROPRIATE_PROTOCOL = 3506
    PERMISSION_DENIED = 3507
    NOT_AVAILABLE = 3508
    TOO_MANY_ERRORS = 3509


#: The standard reason of each disconnect code.
DISCONNECT_REASONS: dict[int, str] = {
    DisconnectCode.NORMAL: "",
    DisconnectCode.GOING_AWAY: "going away",
    DisconnectCode.MESSAGE_TOO_BIG: "message too big",
    DisconnectCode.INTERNAL_ERROR: "internal error",
    DisconnectCode.SHUTDOWN: "shutdown",
    DisconnectCode.SERVER_ERROR: "internal server error",
    DisconnectCode.EXPIRED: "connection expired",
    DisconnectCode.SUBSCRIPTION_EXPIRED: "subscription expired",
    DisconnectCode.SLOW: "slow",
    DisconnectCode.WRITE_ERROR: "write error",
    DisconnectCode.INSUFFICIENT_STATE: "insufficient state",
    DisconnectCode.FORCE_RECONNECT: "force reconnect",
    DisconnectCode.NO_PONG: "no pong",
    DisconnectCode.TOO_MANY_REQUESTS: "too many requests",
    DisconnectCode.INVALID_TOKEN: "invalid token",
    DisconnectCode.BAD_REQUEST: "bad request",
    DisconnectCode.STALE: "stale",
    DisconnectCode.FORCE_DISCONNECT: "force disconnect",
    DisconnectCode.CONNECTION_LIMIT: "connection limit",
    DisconnectCode.CHANNEL_LIMIT: "channel limit",
    DisconnectCode.INAPPROPRIATE_PROTOCOL: "inappropriate protocol",
    DisconnectCode.PERMISSION_DENIED: "permission denied",
    DisconnectCode.NOT_AVAILABLE: "not available",
    DisconnectCode.TOO_MANY_ERRORS: "too many errors",
}


def should_reconnect(code: int) -> bool:
    """Whether a client closed with ``code`` should reconnect.

    3000–3499 mean reconnect, 3500–3999 mean don't; transport-level codes
    (1000–2999) and application codes (4000–4999, by convention) reconnect
    except 1000 (a deliberate close).
    """
    if 3500 <= code < 4000:
        return False
    return code != DisconnectCode.NORMAL


class UnsubscribeCode(enum.IntEnum):
    """Codes of a server-side ``unsubscribe`` push (centrifugal/centrifuge
    ``unsubscribe.go``). 2500 and above tell an SDK to subscribe again (with
    a new subscription token where it needs one); below 2500 it stays
    unsubscribed."""

    SERVER = 2000
    INSUFFICIENT_STATE = 2500
    EXPIRED = 2501


#: The standard reason of each unsubscribe code.
UNSUBSCRIBE_REASONS: dict[int, str] = {
    UnsubscribeCode.SERVER: "server unsubscribe",
    UnsubscribeCode.INSUFFICIENT_STATE: "insufficient state",
    UnsubscribeCode.EXPIRED: "subscription expired",
}
