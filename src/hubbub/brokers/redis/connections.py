"""What the Redis broker's modules share about redis-py: its imports (with a
clear error when it is missing), the connection options, RESP packing, and how
a failure reads in a log line."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ...errors import ConfigError

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
    from redis.asyncio.connection import AbstractConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.utils import HIREDIS_AVAILABLE
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigError("the redis broker needs the 'redis' package: pip install 'hubbub[redis]'") from exc

__all__ = ["HIREDIS_AVAILABLE", "PARSER", "AbstractConnection", "NoBackoff", "Retry", "aioredis", "describe", "log",
           "pack_command", "redis_errors"]

log = logging.getLogger("hubbub.broker")

if HIREDIS_AVAILABLE:  # replies are parsed, and commands packed, in C (``pip install 'redis[hiredis]'``)
    import hiredis
    from redis._parsers import _AsyncHiredisParser  # redis-py exports no public name for it

    #: redis-py connection options that select the reply parser
    PARSER: dict[str, Any] = {"parser_class": _AsyncHiredisParser}
else:  # pragma: no cover - depends on the environment
    PARSER = {}
    log.warning("hiredis is not installed: the redis broker parses replies in Python (slower)")


def _pack_command(args: tuple[Any, ...]) -> bytes:
    """One command in RESP (arguments: bytes, str or int), without hiredis."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is str:
            arg = arg.encode()
        elif type(arg) is int:
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


#: One command in RESP: hiredis's packer (C) when installed.
pack_command: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command if HIREDIS_AVAILABLE else _pack_command


def describe(exc: BaseException | None) -> str:
    """``exc`` for a log line or an error message: ``"Type: text"``."""
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
