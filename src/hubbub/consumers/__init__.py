"""Async consumers: server API commands read from a queue and executed on this node.

A consumer takes commands (``publish``, ``broadcast``, ``subscribe``, ...) that a
backend wrote to a queue, and runs each through the server API's own code path
(:meth:`hubbub.api.ServerAPI.call`), so validation, errors and metrics are those
of ``POST /api/{method}``. As Centrifugo's built-in consumers
(centrifugal.dev ``docs/server/consumers``).

- :mod:`hubbub.consumers.base`: the contracts (:class:`~hubbub.consumers.base.Consumer`,
  :class:`~hubbub.consumers.base.CommandDispatcher`), the dispatcher over the
  server API, and the retry backoff.
- :mod:`hubbub.consumers.postgresql`: the transactional outbox in a PostgreSQL
  table (``postgresql_consumer_*`` settings; ``docs/howto/outbox.md``).

See ``docs/design.md``, "Async consumers".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import APIDispatcher, Consumer

__all__ = ["Consumer", "configured"]

if TYPE_CHECKING:
    from ..api import ServerAPI
    from ..config import Config


def configured(config: Config, api: ServerAPI) -> list[Consumer]:
    """The consumers ``config`` asks for (none by default), made but not started.

    Args:
        config: the node's settings (``postgresql_consumer_dsn`` and the others).
        api: the node's server API; the consumers run their commands through it.
    """
    consumers: list[Consumer] = []
    if config.postgresql_consumer_dsn:
        from .postgresql import PostgresConsumer

        consumers.append(PostgresConsumer.from_config(config, APIDispatcher(api)))
    return consumers
