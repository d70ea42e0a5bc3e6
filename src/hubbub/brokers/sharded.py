"""Brokers over several Redis servers: independent shards
(:class:`ShardedRedisBroker`, rendezvous hashing of the channel name), or a
Redis Cluster (:class:`RedisClusterBroker`, hash tags and sharded pub/sub).

Each is several :class:`~hubbub.brokers.redis.RedisBroker` parts, one per
server; a channel lives on exactly one, so the contract holds per channel as
with one Redis. ``healthy`` is true only while every server is reachable.

See ``docs/design.md``, "The Redis broker", and ``docs/scaling.md``
("Independent shards", "Redis Cluster").
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import urllib.parse
from collections.abc import Coroutine
from typing import Any

from ..errors import BrokerError, BrokerUnavailable, ConfigError
from ..stats import Stats
from .base import (
    Broker,
    BrokerEventHandler,
    ClientInfo,
    HistoryResult,
    Publication,
    PublishCallback,
    StreamPosition,
)
from .redis import RedisBroker
from .redis.broker import split_prefix
from .redis.wire import hash_tagged

try:
    import redis.asyncio as aioredis
    from redis.crc import key_slot
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigError("the redis broker needs the 'redis' package: pip install 'hubbub[redis]'") from exc

log = logging.getLogger("hubbub.broker")

#: Channels whose part is remembered (a plain dict, cleared when full).
ROUTE_CACHE = 100_000


class _Parts(Broker):
    """Channels spread over several :class:`RedisBroker` parts (see the module docstring)."""

    pipelined = True  # each part is a RedisBroker

    def __init__(self) -> None:
        self._parts: dict[str, RedisBroker] = {}  # by address
        self._handler: BrokerEventHandler | None = None
        self._routes: dict[str, RedisBroker] = {}

    # -- routing (subclasses) ----------------------------------------------------------

    def _route(self, channel: str) -> RedisBroker:
        raise NotImplementedError

    def _part(self, channel: str) -> RedisBroker:
        part = self._routes.get(channel)
        if part is None:
            if len(self._routes) >= ROUTE_CACHE:
                self._routes.clear()
            part = self._routes[channel] = self._route(channel)
        return part

    # -- life cycle ---------------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        """The hub's counters, shared with every part (see :attr:`Broker.stats`)."""
        return super().stats

    @stats.setter
    def stats(self, value: Stats) -> None:
        self._stats = value
        for part in self._parts.values():
            part.stats = value

    async def _start_parts(self, parts: list[RedisBroker]) -> None:
        assert self._handler is not None
        for part in parts:
            part.stats = self.stats
        await asyncio.gather(*(part.start(self._handler) for part in parts))

    async def close(self) -> None:
        """Close every part. Idempotent."""
        await asyncio.gather(*(part.close() for part in self._parts.values()))
        self._handler = None

    @property
    def healthy(self) -> bool:
        """Whether every server is reachable now."""
        return bool(self._parts) and all(part.healthy for part in self._parts.values())

    async def round_trip(self) -> float | None:
        """The slowest part's ``PING`` (seconds; the operator's dashboard shows the worst).

        Raises:
            BrokerUnavailable: a part cannot be reached.
        """
        times = await asyncio.gather(*(part.round_trip() for part in list(self._parts.values())))
        return max(times, default=None)

    # -- the contract, per channel ----------------------------------------------------------

    def subscribe(self, channel: str) -> Coroutine[Any, Any, None]:
        """See :meth:`RedisBroker.subscribe` (the wish is recorded at call time)."""
        return self._part(channel).subscribe(channel)

    def unsubscribe(self, channel: str) -> Coroutine[Any, Any, None]:
        """See :meth:`RedisBroker.unsubscribe`."""
        return self._part(channel).unsubscribe(channel)

    async def publish(self, channel: str, pub: Publication, **kw: Any) -> StreamPosition:
        """See :meth:`RedisBroker.publish`: on the channel's server."""
        return await self._part(channel).publish(channel, pub, **kw)

    def publish_nowait(self, channel: str, pub: Publication, done: PublishCallback, **kw: Any) -> None:
        """See :meth:`RedisBroker.publish_nowait`: on the channel's server."""
        self._part(channel).publish_nowait(channel, pub, done, **kw)

    async def history(self, channel: str, **kw: Any) -> HistoryResult:
        return await self._part(channel).history(channel, **kw)

    async def remove_history(self, channel: str) -> None:
        await self._part(channel).remove_history(channel)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._part(channel).publish_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._part(channel).publish_leave(channel, info)

    async def add_presence(self, channel: str, info: ClientInfo, *, ttl: float) -> None:
        await self._part(channel).add_presence(channel, info, ttl=ttl)

    async def remove_presence(self, channel: str, client: str) -> None:
        await self._part(channel).remove_presence(channel, client)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self._part(channel).presence(channel)

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        return await self._part(channel).presence_stats(channel)


def _split_urls(value: str) -> list[str]:
    """The URLs of a broker setting: separated by commas or spaces before a
    ``scheme://`` (so a cluster URL's ``host:port,host:port`` stays whole)."""
    return [u for u in re.split(r"[,\s]+(?=[a-z][a-z0-9+.-]*://)", value.strip()) if u]


class ShardedRedisBroker(_Parts):
    """Channels spread over independent Redis servers by consistent hashing.

    Args:
        urls: the servers' ``redis://`` URLs (at least one; the same
            options as :class:`RedisBroker`'s ``url``); each server is named
            by its ``host:port/db`` for hashing, so the list's order does not
            matter, and the prefix is the same on every server.
        **options: passed to every :class:`RedisBroker`.

    Raises:
        ConfigError: no URL, a URL twice, or an invalid URL or option.
    """

    name = "redis-shards"

    def __init__(self, urls: list[str], **options: Any) -> None:
        super().__init__()
        if not urls:
            raise ConfigError("broker: no redis URL")
        for url in urls:
            part = RedisBroker(url, **options)
            if part.address in self._parts:
                raise ConfigError(f"broker: redis server {part.address} is listed twice")
            self._parts[part.address] = part
        if len({part.prefix for part in self._parts.values()}) > 1:
            raise ConfigError("broker: every shard must use the same prefix")
        self._keys = [(hashlib.blake2b(address.encode(), digest_size=8).digest(), part)
                      for address, part in sorted(self._parts.items())]

    def _route(self, channel: str) -> RedisBroker:
        # rendezvous (highest random weight) hashing: each server scores the channel
        name = channel.encode()
        best, chosen = b"", self._keys[0][1]
        for key, part in self._keys:
            score = hashlib.blake2b(name, digest_size=8, key=key).digest()
            if score > best:
                best, chosen = score, part
        return chosen

    def shard_of(self, channel: str) -> str:
        """The address (``host:port/db``) of the server that holds ``channel``."""
        return self._part(channel).address

    async def start(self, handler: BrokerEventHandler) -> None:
        """Start every part (see :meth:`RedisBroker.start`: a server that is
        down does not make this fail, it is reconnected in the background)."""
        self._handler = handler
        await self._start_parts(list(self._parts.values()))


class RedisClusterBroker(_Parts):
    """Channels on a Redis Cluster, with sharded pub/sub (Redis 7).

    Args:
        url: ``redis+cluster://[[user]:password@]host:port[,host:port...][?prefix=P&...]``:
            some of the cluster's nodes (any node will do; the others are
            found from it); query options as for :class:`RedisBroker`.
        refresh_interval: seconds between reads of the slot map while a
            master is unreachable (a replica may have taken over).
        **options: passed to the :class:`RedisBroker` of every master.

    Raises:
        ConfigError: an invalid URL or option.
    """

    name = "redis-cluster"

    def __init__(self, url: str, *, refresh_interval: float = 1.0, **options: Any) -> None:
        super().__init__()
        url, prefix = split_prefix(url)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("redis+cluster", "rediss+cluster"):
            raise ConfigError(f"broker: not a redis+cluster:// URL: {parts.scheme}://...")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        self._seeds: list[tuple[str, int]] = []
        for host in hosts.split(","):
            name, _, port = host.rpartition(":")
            try:
                self._seeds.append((name or host, int(port) if name else 6379))
            except ValueError:
                raise ConfigError(f"broker: invalid redis cluster node {host!r}") from None
        if not self._seeds or not refresh_interval > 0:
            raise ConfigError("broker: a redis+cluster:// URL names at least one node")
        self._scheme = parts.scheme.split("+")[0]
        self._userinfo = userinfo
        self._query = parts.query
        self._options = dict(options)
        if prefix is not None:
            self._options.setdefault("prefix", prefix)
        self._options["sharded_pubsub"] = True
        self._timeout = float(options.get("timeout", 2.0))
        self._refresh_interval = refresh_interval
        self._slots: list[RedisBroker | None] = [None] * 16384
        self._wanted: set[str] = set()
        self._orphans: set[str] = set()  # channels a master dropped: subscribe again
        self._refresher: asyncio.Task[None] | None = None
        self._stale = asyncio.Event()
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._covered = False  # every slot has a known master

    def _url(self, host: str, port: int) -> str:
        auth = f"{self._userinfo}@" if self._userinfo else ""
        return f"{self._scheme}://{auth}{host}:{port}/0" + (f"?{self._query}" if self._query else "")

    def _route(self, channel: str) -> RedisBroker:
        part = self._slots[key_slot(hash_tagged(channel).encode())]
        if part is None:
            self._stale.set()
            raise BrokerUnavailable("redis cluster: no master known for this channel's slot")
        return part

    def slot_owner(self, channel: str) -> str:
        """The address (``host:port/0``) of the master that holds ``channel``."""
        return self._part(channel).address

    # -- topology ----------------------------------------------------------------------

    async def _read_slots(self) -> list[tuple[int, int, str, int]]:
        """``(first, last, host, port)`` of every slot range, from the first
        node that answers ``CLUSTER SLOTS`` (the known masters, then the seeds).

        Raises:
            BrokerUnavailable: no node answered.
        """
        candidates = [(p.host, p.port) for p in self._parts.values()] + self._seeds
        last: Exception | None = None
        for host, port in dict.fromkeys(candidates):
            client = aioredis.Redis.from_url(self._url(host, port), socket_connect_timeout=self._timeout,
                                             socket_timeout=self._timeout, protocol=2)
            try:
                reply = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            except Exception as exc:  # noqa: BLE001 - try the next node
                last = exc
                continue
            finally:
                await client.aclose()
            ranges = []
            for entry in reply:
                first, end, master = entry[0], entry[1], entry[2]
                node_host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
                ranges.append((int(first), int(end), node_host or host, int(master[1])))
            return ranges
        raise BrokerUnavailable(f"redis cluster: no node answered CLUSTER SLOTS ({last})")

    async def _apply_slots(self, ranges: list[tuple[int, int, str, int]]) -> None:
        """Build the slot table from ``ranges``, start the parts of new
        masters, move the subscriptions of channels whose master changed."""
        slots: list[RedisBroker | None] = [None] * 16384
        new: list[RedisBroker] = []
        for first, end, host, port in ranges:
            address = f"{host}:{port}/0"
            part = self._parts.get(address)
            if part is None:
                part = self._parts[address] = RedisBroker(self._url(host, port), **self._options)
                part.on_lost_subscription = self._lost
                new.append(part)
            for slot in range(first, end + 1):
                slots[slot] = part
        if new:
            await self._start_parts(new)
        old: dict[str, RedisBroker | None] = {}
        for channel in self._wanted:
            slot = key_slot(hash_tagged(channel).encode())
            if self._slots[slot] is not slots[slot] or channel in self._orphans:
                old[channel] = self._slots[slot]
        moved = list(old)
        self._orphans.clear()
        self._slots = slots
        self._covered = all(part is not None for part in slots)
        self._routes.clear()
        for channel in moved:
            previous = old[channel]
            if previous is not None and previous is not self._part(channel):
                self._spawn(previous.unsubscribe(channel))
            try:
                await self._part(channel).subscribe(channel)
            except BrokerError as exc:
                log.warning("redis cluster: resubscribing %r failed: %s", channel, exc)
                self._stale.set()
        owners = {id(part) for part in slots if part is not None}
        for address, part in list(self._parts.items()):
            if id(part) not in owners:  # no longer a master (failed over, removed): let it go
                del self._parts[address]
                self._spawn(part.close())
        if moved and self._handler is not None:
            self._handler.on_broker_reconnect()  # the moved channels may have missed publications

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in a task owned by this broker (cancelled by :meth:`close`)."""

        async def run() -> None:
            try:
                await coro
            except Exception as exc:  # noqa: BLE001 - best effort
                log.debug("redis cluster background call failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lost(self, channel: str) -> None:
        """A master dropped ``channel``'s subscription (its slot moved)."""
        if channel in self._wanted:
            self._orphans.add(channel)
            self._stale.set()

    async def _refresh_loop(self) -> None:
        """Read the slot map again when something looks stale, or while a master is down."""
        while True:
            try:
                async with asyncio.timeout(self._refresh_interval):
                    await self._stale.wait()
            except TimeoutError:
                if self.healthy:
                    continue
            self._stale.clear()
            try:
                await self._apply_slots(await self._read_slots())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried on the next round
                log.debug("redis cluster: reading the slot map failed: %s", exc)

    # -- life cycle and the contract ------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        """Read the slot map and start a part per master. If no node answers,
        this does not raise: the broker starts unhealthy and keeps trying."""
        self._handler = handler
        try:
            await self._apply_slots(await self._read_slots())
        except BrokerError as exc:
            log.warning("redis cluster unavailable: %s; retrying in the background", exc)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop(), name="hubbub redis cluster")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._refresher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        await super().close()

    @property
    def healthy(self) -> bool:
        """Whether every slot has a known master and every master is reachable."""
        return self._covered and super().healthy

    def subscribe(self, channel: str) -> Coroutine[Any, Any, None]:
        """See :meth:`RedisBroker.subscribe` (the wish is recorded at call
        time, on the master that owns the channel's slot now)."""
        try:
            part = self._part(channel)
        except BrokerUnavailable as exc:
            return _fail(exc)
        self._wanted.add(channel)
        return self._subscribe(part, part.subscribe(channel), channel)

    async def _subscribe(self, part: RedisBroker, subscribing: Coroutine[Any, Any, None], channel: str) -> None:
        try:
            await subscribing
        finally:
            if not part.wants(channel):  # failed, and no later call wants it
                self._wanted.discard(channel)

    def unsubscribe(self, channel: str) -> Coroutine[Any, Any, None]:
        self._wanted.discard(channel)
        try:
            return self._part(channel).unsubscribe(channel)
        except BrokerUnavailable:
            return _nothing()

    async def publish(self, channel: str, pub: Publication, **kw: Any) -> StreamPosition:
        try:
            return await self._part(channel).publish(channel, pub, **kw)
        except BrokerError as exc:
            self._check_moved(exc)
            raise

    def publish_nowait(self, channel: str, pub: Publication, done: PublishCallback, **kw: Any) -> None:
        """See :meth:`RedisBroker.publish_nowait`: on the master of the channel's slot."""

        def finished(position: StreamPosition | None, exc: BaseException | None) -> None:
            if exc is not None:
                self._check_moved(exc)
            done(position, exc)

        self._part(channel).publish_nowait(channel, pub, finished, **kw)

    def _check_moved(self, exc: BaseException) -> None:
        if "MOVED" in str(exc) or "ASK" in str(exc):
            self._stale.set()  # the slot moved: read the map again (the caller may retry)


async def _nothing() -> None:
    return None


async def _fail(exc: BaseException) -> None:
    raise exc


def create_redis_broker(url: str, **options: Any) -> Broker:
    """The Redis broker for a broker setting (see ``docs/scaling.md``):

    * ``redis://...`` (or ``rediss://``, ``unix://``): one Redis;
    * several such URLs separated by commas or spaces: independent shards;
    * ``redis+cluster://host:port[,host:port...]``: a Redis Cluster;
    * ``redis+sentinel://host:port[,host:port...]/MASTER[/DB]``: a master
      found through Redis Sentinel.

    Raises:
        ConfigError: the value is not one of these.
    """
    urls = _split_urls(url)
    if len(urls) == 1:
        (url,) = urls
        if url.startswith(("redis+cluster://", "rediss+cluster://")):
            return RedisClusterBroker(url, **options)
        return RedisBroker(url, **options)
    for u in urls:
        if "+" in u.split("://", 1)[0]:
            raise ConfigError("broker: only redis:// URLs can be listed as shards")
    return ShardedRedisBroker(urls, **options)


__all__ = ["RedisClusterBroker", "ShardedRedisBroker", "create_redis_broker"]
