"""Brokers: how nodes share channels. ``memory`` (one process) and ``redis``."""

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
    """The broker for a ``--broker`` value: ``"memory"`` or ``redis://host:port/db``."""
    if url == "memory":
        return MemoryBroker()
    from .redis import RedisBroker  # imported lazily: only Redis users need it

    return RedisBroker(url)
