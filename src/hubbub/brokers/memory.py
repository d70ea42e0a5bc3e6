"""The in-memory broker: one process, no backend, nothing to install.

Publications are handed to the node synchronously inside :meth:`publish`, so
ordering per channel is the order of the ``publish`` calls. Memory is bounded:
each stream holds at most ``history_size`` publications, streams and
idempotency keys expire, and a shared sweep (not a timer per channel) drops
what expired.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import Broker, BrokerEventHandler, ClientInfo, HistoryResult, Publication, StreamPosition


def new_epoch() -> str:
    """A fresh random epoch (8 hex characters, as Centrifugo's are short strings)."""
    return secrets.token_hex(4)


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    publications: collections.deque[Publication] = field(default_factory=collections.deque)
    expires_at: float = 0.0  # publications expire at this time (monotonic)
    touched_at: float = 0.0  # last publish; the position is dropped after ``meta_ttl``


class MemoryBroker(Broker):
    """A broker for a single process.

    Args:
        meta_ttl: seconds a stream's position (offset and epoch) outlives its
            last publication; after it the stream starts afresh with a new
            epoch.
        sweep_interval: seconds between sweeps of expired streams, presence
            and idempotency keys.
        max_idempotency_keys: idempotency keys kept at most (oldest dropped).
        clock: monotonic clock in seconds (tests pass their own).
    """

    name = "memory"

    def __init__(
        self,
        *,
        meta_ttl: float = 86400.0,
        sweep_interval: float = 5.0,
        max_idempotency_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler: BrokerEventHandler | None = None
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, dict[str, tuple[ClientInfo, float]]] = {}
        self._idempotency: collections.OrderedDict[tuple[str, str], tuple[float, StreamPosition]] = (
            collections.OrderedDict()
        )
        self._meta_ttl = meta_ttl
        self._sweep_interval = sweep_interval
        self._max_idempotency_keys = max_idempotency_keys
        self._clock = clock
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        self._schedule_sweep()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._handler = None

    def _schedule_sweep(self) -> None:
        if self._sweep_interval > 0:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._sweep_interval, self._sweep_and_reschedule)

    def _sweep_and_reschedule(self) -> None:
        self.sweep()
        self._schedule_sweep()

    def sweep(self) -> None:
        """Drop expired publications, stream positions, presence and idempotency keys."""
        now = self._clock()
        for channel, stream in list(self._streams.items()):
            if stream.publications and now >= stream.expires_at:
                stream.publications.clear()
            if now >= stream.touched_at + self._meta_ttl:
                del self._streams[channel]
        for channel, entries in list(self._presence.items()):
            for client, (_, expires_at) in list(entries.items()):
                if now >= expires_at:
                    del entries[client]
            if not entries:
                del self._presence[channel]
        while self._idempotency:
            key, (expires_at, _) = next(iter(self._idempotency.items()))
            if now < expires_at:
                break
            del self._idempotency[key]

    # pub/sub: one node, so subscribe/unsubscribe have nothing to do.

    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    def _stream(self, channel: str, now: float) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None or now >= stream.touched_at + self._meta_ttl:
            stream = self._streams[channel] = _Stream(epoch=new_epoch(), touched_at=now)
        elif stream.publications and now >= stream.expires_at:
            stream.publications.clear()
        return stream

    async def publish(
        self,
        channel: str,
        pub: Publication,
        *,
        history_size: int = 0,
        history_ttl: float = 0.0,
        idempotency_key: str | None = None,
        idempotency_ttl: float = 300.0,
    ) -> StreamPosition:
        now = self._clock()
        if idempotency_key is not None:
            seen = self._idempotency.get((channel, idempotency_key))
            if seen is not None and now < seen[0]:
                return seen[1]
        position = StreamPosition()
        if history_size > 0 and history_ttl > 0:
            stream = self._stream(channel, now)
            stream.offset += 1
            pub.offset = stream.offset
            pub.epoch = stream.epoch
            pubs = stream.publications
            if pubs.maxlen != history_size:
                stream.publications = pubs = collections.deque(pubs, maxlen=history_size)
            pubs.append(pub)
            stream.expires_at = now + history_ttl
            stream.touched_at = now
            position = StreamPosition(stream.offset, stream.epoch)
        if idempotency_key is not None:
            self._idempotency[(channel, idempotency_key)] = (now + idempotency_ttl, position)
            if len(self._idempotency) > self._max_idempotency_keys:
                self._idempotency.popitem(last=False)
        if self._handler is not None:
            self._handler.on_publication(channel, pub)
        return position

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        history_ttl: float = 0.0,
    ) -> HistoryResult:
        stream = self._stream(channel, self._clock())
        position = StreamPosition(stream.offset, stream.epoch)
        pubs = list(stream.publications)
        if since is not None:
            pubs = [p for p in pubs if p.offset > since.offset]
        if reverse:
            pubs.reverse()
        if limit is not None:
            pubs = pubs[: max(limit, 0)]
        return HistoryResult(pubs, position)


    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.publications.clear()

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None:
            self._handler.on_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None:
            self._handler.on_leave(channel, info)

    async def add_presence(self, channel: str, info: ClientInfo, *, ttl: float) -> None:
        self._presence.setdefault(channel, {})[info.client] = (info, self._clock() + ttl)

    async def remove_presence(self, channel: str, client: str) -> None:
        entries = self._presence.get(channel)
        if entries is not None:
            entries.pop(client, None)
            if not entries:
                del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        now = self._clock()
        entries = self._presence.get(channel, {})
        return {client: info for client, (info, expires_at) in entries.items() if now < expires_at}
