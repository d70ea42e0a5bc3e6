"""Brokers: how nodes share channels. ``memory`` (one process) and Redis (one
server, shards, Cluster, Sentinel)."""

from __future__ import annotations

from .base import Broker, BrokerEventHandler, ClientInfo, HistoryResult, Publication, StreamPosition
from .memory import MemoryBroker

__all__ = [
    "Broker",
    "BrokerEventHandler",
    "ClientInfo",
    "HistoryResult",
    "MemoryBroker",
    "Publication",
    "StreamPosition",
    "create_broker",
]


def create_broker(url: str) -> Broker:
    """The broker for a ``--broker`` value: ``"memory"``, ``redis://host:port/db``,
    several ``redis://`` URLs (shards, comma- or space-separated),
    ``redis+cluster://host:port,...`` or ``redis+sentinel://host:port,.../master``
    (see ``docs/scaling.md``).

    Raises:
        ConfigError: not one of these.
    """
    if url == "memory":
        return MemoryBroker()
    from .sharded import create_redis_broker  # imported lazily: only Redis users need it

    return create_redis_broker(url)
