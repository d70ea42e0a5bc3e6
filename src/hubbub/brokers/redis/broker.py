"""The Redis broker: many processes and machines share channels through Redis.

Wire format: :mod:`hubbub.brokers.redis.wire`. Lua scripts: the ``lua/`` files
(:mod:`hubbub.brokers.redis.scripts`). Pub/sub upkeep: :mod:`hubbub.brokers.redis.pubsub`.
Publish pipeline: :mod:`hubbub.brokers.redis.pipeline`.

See ``docs/design.md``, "The broker contract" and "The Redis broker" (key
layout, the publish script); topologies and failover: ``docs/scaling.md``.
"""

from __future__ import annotations

import asyncio
import io
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from ...errors import BrokerError, BrokerUnavailable, ConfigError
from ...strictjson import dumps, loads
from ..base import (
    Broker,
    BrokerEventHandler,
    ClientInfo,
    HistoryResult,
    Publication,
    PublishCallback,
    StreamPosition,
)
from . import scripts
from .connections import PARSER, NoBackoff, Retry, aioredis, describe, log, redis_errors
from .pipeline import PublishPipeline, into, publish_error
from .pubsub import PubSub
from .wire import Names, decode_message, encode_body, encode_event, info_from_wire, info_to_wire, ms, new_epoch

#: Seconds :meth:`RedisBroker.close` waits for its cancelled tasks (they end at once unless a bug holds one).
CLOSE_WAIT = 2.0


class RedisBroker(Broker):
    """A broker backed by Redis (see the module docstring for the layout).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db][?prefix=P]``,
            ``rediss://...`` or ``unix://path``; redis-py's query options
            (e.g. ``?ssl_cert_reqs=none``) pass through. Or, for a master
            found through Redis Sentinel,
            ``redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/DB][?prefix=P&sentinel_password=S]``
            (at most ``max_connections`` command connections, then
            commands fail instead of waiting).
        prefix: prefix of every key and pub/sub topic (default: the URL's
            ``prefix`` query option, else ``"hubbub"``), so several hubs can
            share one Redis database.
        connect_timeout: seconds to open a connection.
        timeout: seconds a command (or a subscribe confirmation) may take;
            past it the call raises :class:`BrokerUnavailable`.
        ping_interval: seconds of silence on the pub/sub connection after
            which it is pinged; without an answer within as long again it is
            considered lost and reopened.
        meta_ttl: seconds a stream's position (offset and epoch) outlives its
            last publication (never less than the publication's history_ttl).
        max_connections: command connections at most.
        pool_timeout: seconds a command waits for a free connection when all
            ``max_connections`` are busy (Redis is up but saturated, e.g. the
            position checks of many channels after a reconnect); then it
            raises :class:`BrokerUnavailable`.
        reconnect_cap: longest pause between reconnect attempts (seconds).
        sharded_pubsub: this is one master of a Redis Cluster (used by
            :class:`~hubbub.brokers.sharded.RedisClusterBroker`): names carry
            a hash tag (see :func:`hash_tagged`) and pub/sub is sharded
            (``SSUBSCRIBE``/``SPUBLISH``, Redis 7).

    Raises:
        ConfigError: ``url`` cannot be parsed or an option is invalid.
    """

    name = "redis"
    pipelined = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        ping_interval: float = 2.0,
        meta_ttl: float = 86400.0,
        max_connections: int = 32,
        pool_timeout: float = 10.0,
        reconnect_cap: float = 2.0,
        sharded_pubsub: bool = False,
    ) -> None:
        url, url_prefix = split_prefix(url)
        prefix = prefix if prefix is not None else url_prefix if url_prefix is not None else "hubbub"
        if not prefix:
            raise ConfigError("redis broker: prefix must not be empty")
        for option, value in (("connect_timeout", connect_timeout), ("timeout", timeout),
                              ("ping_interval", ping_interval), ("meta_ttl", meta_ttl),
                              ("reconnect_cap", reconnect_cap), ("max_connections", max_connections),
                              ("pool_timeout", pool_timeout)):
            if not value > 0:
                raise ConfigError(f"redis broker: {option} must be > 0, got {value!r}")
        options: dict[str, Any] = dict(
            max_connections=max_connections,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),  # never resend: a publish must not run twice
            client_name="hubbub",
            protocol=2,  # RESP2: pub/sub messages are plain replies, read by this broker
            **PARSER,
        )
        sentinel = None
        try:
            if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
                sentinel = _sentinel_pool(url, options)
                self._pool = sentinel[0]
            else:
                self._pool = aioredis.BlockingConnectionPool.from_url(url, timeout=pool_timeout, **options)
        except ValueError as exc:
            raise ConfigError(f"broker: invalid redis URL: {exc}") from None  # the URL may hold a password
        self._redis = aioredis.Redis.from_pool(self._pool)
        kw = self._pool.connection_kwargs
        if sentinel is not None:
            self._where = sentinel[1]
            kw = {"host": sentinel[2][0], "port": sentinel[2][1]}
        else:
            self._where = kw.get("path") or f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
        #: the server's address: ``host:port/db`` (or a socket path)
        self.address = self._where
        #: the prefix of every key and topic
        self.prefix = prefix
        self.host: str = kw.get("host", "localhost")
        self.port: int = int(kw.get("port", 6379))
        self._names = Names(prefix, sharded_pubsub)
        self._timeout = timeout
        self._meta_ttl = meta_ttl
        self._publish_script = self._redis.register_script(scripts.PUBLISH)
        self._history_script = self._redis.register_script(scripts.HISTORY)
        self._presence_add_script = self._redis.register_script(scripts.PRESENCE_ADD)
        self._presence_get_script = self._redis.register_script(scripts.PRESENCE_GET)
        self._presence_stats_script = self._redis.register_script(scripts.PRESENCE_STATS)
        self._scripts = (self._publish_script, self._history_script, self._presence_add_script,
                         self._presence_get_script, self._presence_stats_script)
        #: Redis Cluster node: sharded pub/sub (SSUBSCRIBE, SPUBLISH)
        self._publish_command = "SPUBLISH" if sharded_pubsub else "PUBLISH"
        #: called with a channel whose sharded subscription Redis Cluster dropped
        self.on_lost_subscription: Callable[[str], None] | None = None
        self._closed = False
        self._pubsub = PubSub(
            self._pool, self._names, where=self._where, connect_timeout=connect_timeout, timeout=timeout,
            ping_interval=ping_interval, reconnect_cap=reconnect_cap, load_scripts=self._load_scripts,
            busy=lambda: self._pipeline.in_flight, lost=self._lost_subscription,
        )
        self._pipeline = PublishPipeline(self._pool, timeout=timeout, scripts=self._scripts, stats=lambda: self.stats,
                                         after=self._pubsub.pipeline_done)

    # -- life cycle ----------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        """Open the pub/sub connection and start delivering to ``handler``.

        Waits for the first connection attempt (at most about
        ``connect_timeout + 2 * timeout`` seconds). If Redis is unreachable
        this does not raise: the broker starts unhealthy, logs it, and keeps
        reconnecting in the background.

        Raises:
            RuntimeError: the broker was already started or closed.
        """
        if self._closed:
            raise RuntimeError("RedisBroker.start() may be called once")
        await self._pubsub.start(handler)

    async def close(self) -> None:
        """Stop delivering, cancel the broker's tasks, close every connection. Idempotent.

        Returns within about :data:`CLOSE_WAIT` seconds plus the time to close
        the connections, even if a task does not end when cancelled (that one
        is logged with its stack, and left behind). A cancellation of the
        caller reaches the caller.
        """
        if self._closed:
            return
        self._closed = True
        tasks = self._pubsub.stop() + self._pipeline.stop()
        done, stuck = await asyncio.wait(tasks, timeout=CLOSE_WAIT) if tasks else (set(), set())
        for task in done:
            if not task.cancelled() and task.exception() is not None:  # pragma: no cover - they log their own
                log.error("redis broker task %r failed", task.get_name(), exc_info=task.exception())
        for task in stuck:  # pragma: no cover - a bug: say where it hangs, and do not wait for it
            where = io.StringIO()
            task.print_stack(file=where)
            log.error("redis broker task %r did not stop within %s s; left behind:\n%s",
                      task.get_name(), CLOSE_WAIT, where.getvalue())
        self._pipeline.fail_queued()
        await self._pubsub.close_connection()
        await self._redis.aclose()

    @property
    def healthy(self) -> bool:
        """Whether the pub/sub connection to Redis is up (``/health``)."""
        return self._pubsub.healthy

    async def round_trip(self) -> float:
        """Seconds a Redis ``PING`` takes on a command connection.

        Raises:
            BrokerUnavailable: Redis is unreachable or did not answer within ``timeout``.
        """
        self._check()
        with self._errors("ping"):
            started = time.perf_counter()
            await self._redis.ping()
            return time.perf_counter() - started

    async def _load_scripts(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for script in self._scripts:
                pipe.script_load(script.script)
            await pipe.execute()

    def _lost_subscription(self, channel: str) -> None:
        if self.on_lost_subscription is not None:
            self.on_lost_subscription(channel)

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, channel: str) -> Coroutine[Any, Any, None]:
        """Start delivering ``channel`` to this node.

        The wish is recorded when this is *called* (not when the coroutine
        runs), and SUBSCRIBE/UNSUBSCRIBE commands are sent one at a time, each
        matching the latest wish: so an unsubscribe called (and scheduled)
        before a subscribe always ends subscribed. The coroutine returns once
        Redis confirmed the subscription.

        Raises:
            BrokerUnavailable: the pub/sub connection is down, or Redis did
                not confirm within ``timeout`` seconds.
        """
        return self._pubsub.subscribe(channel)

    def wants(self, channel: str) -> bool:
        """Whether this node wants ``channel`` delivered (subscribed, or being subscribed)."""
        return self._pubsub.wants(channel)

    def unsubscribe(self, channel: str) -> Coroutine[Any, Any, None]:
        """Stop delivering ``channel`` to this node (the wish is recorded at
        call time, see :meth:`subscribe`). Never raises for an outage: a
        subscription dies with its connection and is not renewed."""
        return self._pubsub.unsubscribe(channel)

    # -- commands ------------------------------------------------------------------------------

    def _check(self) -> None:
        if not self._pubsub.healthy:
            raise BrokerUnavailable(f"redis at {self._where} is unreachable")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Map redis-py's errors: unreachable -> BrokerUnavailable, others -> BrokerError."""
        self.stats.broker_round_trips += 1
        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"redis {what} failed: {describe(exc)}") from exc
        except redis_errors.RedisError as exc:
            raise BrokerError(f"redis {what} failed: {describe(exc)}") from exc

    @contextmanager
    def _pipelined(self, what: str) -> Iterator[None]:
        """Like :meth:`_errors`, for commands of the publish pipeline (which
        counts its own round trips)."""
        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"redis {what} failed: {describe(exc)}") from exc
        except redis_errors.RedisError as exc:
            raise BrokerError(f"redis {what} failed: {describe(exc)}") from exc

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
        """Publish ``pub`` (see :meth:`Broker.publish`) through
        :meth:`publish_nowait`; returns once its reply was read.

        Raises:
            BrokerUnavailable: Redis is unreachable (nothing is acknowledged;
                the publication may or may not have been stored).
            BrokerError: Redis refused the script (e.g. out of memory).
        """
        future: asyncio.Future[StreamPosition] = asyncio.get_running_loop().create_future()
        self.publish_nowait(channel, pub, into(future), history_size=history_size, history_ttl=history_ttl,
                            idempotency_key=idempotency_key, idempotency_ttl=idempotency_ttl)
        return await future

    def publish_nowait(
        self,
        channel: str,
        pub: Publication,
        done: PublishCallback,
        *,
        history_size: int = 0,
        history_ttl: float = 0.0,
        idempotency_key: str | None = None,
        idempotency_ttl: float = 300.0,
    ) -> None:
        """Start publishing ``pub`` (see :meth:`Broker.publish_nowait`): one
        ``EVALSHA`` of the publish script, or one ``PUBLISH`` without history
        and idempotency key, sent in the pipeline of this loop iteration (see
        :meth:`_queue`). ``done`` is called in the iteration its reply is read,
        with the position, or with ``BrokerUnavailable`` (unreachable: nothing
        is acknowledged, the publication may or may not have been stored) or
        ``BrokerError`` (Redis refused the script, e.g. out of memory).

        Raises:
            BrokerUnavailable: Redis is known to be unreachable, or the broker
                is closed (``done`` is not called).
        """
        self._check()
        body = encode_body(pub)
        with_history = history_size > 0 and history_ttl > 0
        if not with_history and idempotency_key is None:

            def published(reply: Any, exc: BaseException | None) -> None:
                if exc is None:
                    done(StreamPosition(), None)
                else:
                    done(None, publish_error(exc))

            self._pipeline.queue((self._publish_command, self._names.topic(channel), b"p0:" + body), published)
            return
        keys = [self._names.meta(channel), self._names.history(channel), self._names.topic(channel)]
        if idempotency_key is not None:
            keys.append(self._names.idempotency(channel, idempotency_key))

        def stored(reply: Any, exc: BaseException | None) -> None:
            if exc is not None:
                done(None, publish_error(exc))
                return
            offset, epoch, fresh = reply
            epoch = epoch.decode()
            if fresh and with_history:
                pub.offset = offset
                pub.epoch = epoch
            done(StreamPosition(offset, epoch), None)

        self._pipeline.queue(
            (
                "EVALSHA", self._publish_script.sha, len(keys), *keys,
                self._publish_command,
                body,
                history_size if with_history else 0,
                ms(history_ttl),
                ms(max(self._meta_ttl, history_ttl)),
                new_epoch(),
                ms(idempotency_ttl),
            ),
            stored,
        )

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        history_ttl: float = 0.0,
    ) -> HistoryResult:
        """Read ``channel``'s stream with one script call (see :meth:`Broker.history`).

        Creates the stream's epoch when it has none. ``history_ttl`` is not
        needed here (publish sets the TTLs).

        Raises:
            BrokerUnavailable: Redis is unreachable.
            BrokerError: Redis failed otherwise.
        """
        self._check()
        with self._errors("history"):
            reply = await self._history_script(
                keys=[self._names.meta(channel), self._names.history(channel)],
                args=[
                    -1 if since is None else since.offset,
                    -1 if limit is None else max(limit, 0),
                    1 if reverse else 0,
                    new_epoch(),
                    ms(self._meta_ttl),
                ],
            )
        position = StreamPosition(int(reply[0]), reply[1].decode())
        pubs: list[Publication] = []
        for entry in reply[2] if len(reply) > 2 else ():
            try:
                kind, pub = decode_message(entry)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignored a malformed history entry of %r: %s", channel, exc)
                continue
            if kind == b"p":
                pubs.append(pub)  # type: ignore[arg-type]
        if since is not None:
            pubs = [p for p in pubs if p.offset > since.offset]
        if reverse:
            pubs.reverse()
        return HistoryResult(pubs, position)

    async def remove_history(self, channel: str) -> None:
        """Delete ``channel``'s publications; its position stays.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        with self._errors("remove history"):
            await self._redis.delete(self._names.history(channel))

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """``PUBLISH`` a join on ``channel``'s topic.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        with self._pipelined("join"):
            await self._pipeline.send(self._publish_command, self._names.topic(channel), encode_event(b"j", info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        """``PUBLISH`` a leave on ``channel``'s topic.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        with self._pipelined("leave"):
            await self._pipeline.send(self._publish_command, self._names.topic(channel), encode_event(b"l", info))

    async def add_presence(self, channel: str, info: ClientInfo, *, ttl: float) -> None:
        """Add or refresh ``info`` in ``channel``'s presence for ``ttl`` seconds
        (Redis' clock); also drops up to 1000 expired entries.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        value = dumps(info_to_wire(info))
        with self._errors("presence add"):
            await self._presence_add_script(keys=self._names.presence(channel), args=[info.client, value, ms(ttl)])

    async def remove_presence(self, channel: str, client: str) -> None:
        """Remove connection ``client`` from ``channel``'s presence.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        data, expire = self._names.presence(channel)
        with self._errors("presence remove"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(expire, client)
                pipe.hdel(data, client)
                await pipe.execute()

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """The unexpired presence entries of ``channel`` (one script call).

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        with self._errors("presence"):
            flat = await self._presence_get_script(keys=self._names.presence(channel))
        out: dict[str, ClientInfo] = {}
        for i in range(0, len(flat) - 1, 2):
            out[flat[i].decode()] = info_from_wire(loads(flat[i + 1]))
        return out

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """``(num_clients, num_users)`` of ``channel``'s unexpired presence,
        counted in Redis (one script call).

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        with self._errors("presence stats"):
            clients, users = await self._presence_stats_script(keys=self._names.presence(channel))
        return int(clients), int(users)


def _sentinel_pool(url: str, options: dict[str, Any]) -> tuple[Any, str, tuple[str, int]]:
    """A connection pool to the master that Redis Sentinel names, for
    ``redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/DB][?sentinel_password=S]``
    (the password is the master's; ``sentinel_password`` the sentinels').

    Returns the pool, a description for logs, and the first sentinel's address.

    Raises:
        ValueError: the URL is invalid.
    """
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

    parts = urllib.parse.urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        seeds.append((name or host, int(port) if name else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not seeds or not 1 <= len(path) <= 2:
        raise ValueError("expected redis+sentinel://host:port[,host:port...]/MASTER[/DB]")
    master = urllib.parse.unquote(path[0])
    db = int(path[1]) if len(path) > 1 else 0
    query = dict(urllib.parse.parse_qsl(parts.query))
    username, _, password = userinfo.partition(":")
    sentinel_kwargs = {"socket_timeout": options["socket_timeout"],
                       "socket_connect_timeout": options["socket_connect_timeout"]}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"]
    ssl = parts.scheme.startswith("rediss")
    manager = Sentinel(seeds, sentinel_kwargs=sentinel_kwargs)
    pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        master, manager, db=db, ssl=ssl, username=urllib.parse.unquote(username) or None,
        password=urllib.parse.unquote(password) or None, **options,
    )
    where = f"sentinel master {master!r} ({','.join(f'{h}:{p}' for h, p in seeds)})/{db}"
    return pool, where, seeds[0]


def split_prefix(url: str) -> tuple[str, str | None]:
    """Take hubbub's ``prefix`` option out of ``url``'s query (redis-py rejects it)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [v for k, v in query if k == "prefix"]
    if not prefixes:
        return url, None
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "prefix"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), prefixes[-1]
