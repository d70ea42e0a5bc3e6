"""The Redis broker's pub/sub upkeep: one pub/sub connection per node for all
its channels, kept open (reconnect with backoff, resubscribe, watchdog ping),
subscriptions brought in line with what the node wants, and messages handed
to the hub in batches.

The batching constants: :data:`PIPELINE_HOLD`, :data:`BUSY_WINDOW`,
:data:`BUSY_BATCH`, :data:`PUBSUB_HOLD`, :data:`MAX_INBOX`.

See ``docs/design.md``, "The broker contract" (Batches) and "Tasks and buffers".
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ...errors import BrokerUnavailable
from ..base import BrokerEventHandler
from .connections import AbstractConnection, describe, log, redis_errors
from .wire import Names, decode_message

#: Topics per SUBSCRIBE command when resubscribing after a reconnect.
SUBSCRIBE_BATCH = 512
#: Longest a pub/sub message waits under load, for others to travel with it (seconds).
PUBSUB_HOLD = 0.002
#: Longest a pub/sub message waits for this node's pipeline (a slow Redis; seconds).
PIPELINE_HOLD = 0.05
#: Seconds after a large hand-off during which the node counts as under load.
BUSY_WINDOW = 0.05
#: Messages in one hand-off that make it a large one.
BUSY_BATCH = 32
#: Messages held at most: a full inbox is handed over at once.
MAX_INBOX = 4096


class _Watch:
    """The watchdog state of one pub/sub connection."""

    __slots__ = ("handle", "pinged", "failure")

    def __init__(self) -> None:
        self.handle: asyncio.TimerHandle | None = None
        self.pinged = False
        self.failure: BaseException | None = None


class PubSub:
    """One node's pub/sub connection to one Redis, and its subscriptions.

    Args:
        pool: the broker's redis-py connection pool (``make_connection``).
        names: the broker's key and topic names.
        where: the server's address, for logs.
        connect_timeout, timeout, ping_interval, reconnect_cap: as
            :class:`~hubbub.brokers.redis.RedisBroker` takes them (seconds).
        load_scripts: loads the broker's scripts (after each connect).
        busy: whether this node's publish pipeline awaits its replies.
        lost: called with a channel whose sharded subscription Redis Cluster dropped.
    """

    def __init__(self, pool: Any, names: Names, *, where: str, connect_timeout: float, timeout: float,
                 ping_interval: float, reconnect_cap: float, load_scripts: Callable[[], Awaitable[None]],
                 busy: Callable[[], bool], lost: Callable[[str], None]) -> None:
        self._pool = pool
        self._names = names
        self._where = where
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._reconnect_cap = reconnect_cap
        self._load_scripts = load_scripts
        self._busy = busy
        self._lost = lost
        self._tagged = names.tagged
        if names.tagged:  # Redis Cluster: sharded pub/sub
            self._commands = {b"subscribe": "SSUBSCRIBE", b"unsubscribe": "SUNSUBSCRIBE"}
            self._confirm_kinds = {b"ssubscribe": b"subscribe", b"sunsubscribe": b"unsubscribe"}
            self._message_kind = b"smessage"
        else:
            self._commands = {b"subscribe": "SUBSCRIBE", b"unsubscribe": "UNSUBSCRIBE"}
            self._confirm_kinds = {b"subscribe": b"subscribe", b"unsubscribe": b"unsubscribe"}
            self._message_kind = b"message"

        self._handler: BrokerEventHandler | None = None
        #: the pub/sub connection is up
        self.healthy = False
        self._closed = False
        self._down_logged = False  # the "lost" line was logged; the "back" line is due
        #: the live pub/sub connection (``None`` while down)
        self._conn: AbstractConnection | None = None
        #: channels this node wants, each with the token of the subscribe call that asked
        self._wanted: dict[str, int] = {}
        #: channels subscribed (or being subscribed) on ``_conn``
        self._subscribed: set[str] = set()
        #: confirmations awaited, per (b"subscribe"|b"unsubscribe", topic), oldest first;
        #: at most one per channel outside a reconnect (commands are serialized)
        self._pending: dict[tuple[bytes, bytes], collections.deque[asyncio.Future[bool]]] = {}
        self._sub_lock = asyncio.Lock()
        self._tokens = itertools.count(1)
        self._task: asyncio.Task[None] | None = None  # owns the pub/sub connection
        self._tasks: set[asyncio.Task[None]] = set()  # background clean-ups
        self._started: asyncio.Event | None = None
        self._heard = False  # the pub/sub connection said something since the watchdog last looked
        #: pub/sub messages read and not yet handed to the hub: (kind, channel, value), in order
        self._inbox: list[tuple[bytes, str, Any]] = []
        self._inbox_timer: asyncio.Handle | None = None
        self._busy_until = -math.inf  # loop time until which pub/sub messages are held (under load)

    # -- life cycle ----------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        """Open the pub/sub connection and deliver to ``handler``; wait for the
        first attempt (at most ``connect_timeout + 2 * timeout`` seconds).

        Raises:
            RuntimeError: already started or stopped.
        """
        if self._task is not None or self._closed:
            raise RuntimeError("RedisBroker.start() may be called once")
        self._handler = handler
        self._started = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._maintain(), name="hubbub redis pub/sub")
        try:
            await asyncio.wait_for(self._started.wait(), self._connect_timeout + 2 * self._timeout)
        except TimeoutError:
            pass

    def stop(self) -> list[asyncio.Task[None]]:
        """Stop delivering and cancel every task; return them, to be awaited."""
        self._closed = True
        if self._inbox_timer is not None:
            self._inbox_timer.cancel()
            self._inbox_timer = None
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        return tasks

    async def close_connection(self) -> None:
        """Close the pub/sub connection (after :meth:`stop`)."""
        conn = self._conn
        self._drop(conn)
        if conn is not None:
            await self._disconnect(conn)
        self._handler = None

    async def _maintain(self) -> None:
        """Open the pub/sub connection, read it until it fails, reopen it, forever."""
        attempt = 0
        due = False  # a connection failed: on_broker_reconnect is due once one is up
        assert self._started is not None
        while True:
            try:
                conn = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "retry later"
                if not self._down_logged:
                    log.warning("redis broker unavailable at %s: %s; reconnecting in the background",
                                self._where, describe(exc))
                    self._down_logged = True
                else:
                    log.debug("redis reconnect attempt %d failed: %s", attempt + 1, describe(exc))
                due = True
                self._started.set()
                await asyncio.sleep(self.backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            self.healthy = True
            self._started.set()
            if self._down_logged:
                log.info("redis broker is back at %s (%d channels resubscribed)", self._where, len(self._subscribed))
                self._down_logged = False
            else:
                log.info("redis broker connected to %s", self._where)
            if due and self._handler is not None:
                try:
                    self._handler.on_broker_reconnect()
                except Exception:
                    log.exception("on_broker_reconnect failed")
            due = True
            try:
                reason = await self._read(conn)
            finally:
                self._hand_over()  # what was read before the loss comes before anything after it
                self._drop(conn)
                await self._disconnect(conn)
            log.warning("redis broker lost at %s: %s; reconnecting", self._where, describe(reason))
            self._down_logged = True

    def backoff(self, attempt: int) -> float:
        """Seconds before reconnect attempt ``attempt + 1``: exponential, with jitter, capped."""
        return min(self._reconnect_cap, 0.05 * 2.0 ** min(attempt, 16)) * random.uniform(0.5, 1.0)

    async def _open(self) -> AbstractConnection:
        """Connect, load the scripts, subscribe every wanted channel; return the connection.

        Raises:
            redis.exceptions.RedisError, OSError: Redis is unreachable or failed.
        """
        conn: AbstractConnection = self._pool.make_connection()
        try:
            async with asyncio.timeout(self._connect_timeout + self._timeout):
                await conn.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            await self._load_scripts()
            async with self._sub_lock:
                channels = list(self._wanted)
                last: asyncio.Future[bool] | None = None
                step = 1 if self._tagged else SUBSCRIBE_BATCH  # SSUBSCRIBE: one slot per command
                for i in range(0, len(channels), step):
                    topics = [self._names.topic(c) for c in channels[i : i + step]]
                    for topic in topics:
                        last = self._expect(b"subscribe", topic)
                    await conn.send_command(self._commands[b"subscribe"], *topics, check_health=False)
                # confirmations come in order: when the last one is in, all are
                async with asyncio.timeout(self._timeout + len(channels) / 1000):
                    while last is not None and not last.done():
                        reply = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
                        self._dispatch(reply)
                self._subscribed = set(channels)
                self._conn = conn
            return conn
        except BaseException:
            self._drop(None)
            await self._disconnect(conn)
            raise

    async def _read(self, conn: AbstractConnection) -> BaseException:
        """Read and dispatch pub/sub messages until the connection fails; return why.

        Reads carry no timer of their own (a timer per message would cost more
        than the message): a watchdog looks every ``ping_interval`` seconds,
        pings a connection that was silent, and closes it when the ping got
        no answer either, which ends the read.
        """
        loop = asyncio.get_running_loop()
        watch = _Watch()
        self._heard = True
        handle = loop.call_later(self._ping_interval, self._watchdog, conn, watch)
        watch.handle = handle
        try:
            while True:
                reply = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
                self._heard = True
                self._dispatch(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure ends this connection
            return watch.failure or exc
        finally:
            if watch.handle is not None:
                watch.handle.cancel()

    def _watchdog(self, conn: AbstractConnection, watch: _Watch) -> None:
        """Every ``ping_interval``: ping a silent connection; close it if the
        previous ping got no answer."""
        if self._heard:
            self._heard = False
            watch.pinged = False
        elif watch.pinged:
            watch.failure = TimeoutError(f"no answer to PING within {self._ping_interval} s")
            self._background(self._disconnect(conn), "close a silent pub/sub connection")
            return
        else:
            watch.pinged = True
            self._background(self._ping(conn), "ping the pub/sub connection")
        watch.handle = asyncio.get_running_loop().call_later(self._ping_interval, self._watchdog, conn, watch)

    async def _ping(self, conn: AbstractConnection) -> None:
        if not conn.is_connected or self._conn is not conn:  # closed: never let redis-py reopen it
            return
        try:
            await conn.send_command("PING", check_health=False)
        except Exception:  # noqa: BLE001 - the read fails too, and says why
            await self._disconnect(conn)

    def _background(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``coro`` in a task owned by this object (cancelled by :meth:`stop`)."""
        task = asyncio.get_running_loop().create_task(coro, name=f"hubbub redis: {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch(self, reply: Any) -> None:
        """Handle one pub/sub reply: a message, a (un)subscribe confirmation or a pong."""
        if not isinstance(reply, list) or len(reply) < 3:
            return  # pong
        kind = reply[0]
        if kind == self._message_kind:
            self._on_message(reply[1], reply[2])
        elif kind in self._confirm_kinds:
            kind = self._confirm_kinds[kind]
            waiters = self._pending.get((kind, reply[1]))
            if waiters:
                fut = waiters.popleft()
                if not waiters:
                    del self._pending[(kind, reply[1])]
                if not fut.done():
                    fut.set_result(True)
            elif kind == b"unsubscribe" and self._tagged:
                # Redis Cluster dropped a sharded subscription by itself (its slot moved
                # to another node): whatever comes next for it comes elsewhere
                self._lost_subscription(self._names.channel(reply[1]))

    # -- messages to the hub ----------------------------------------------------------

    def _on_message(self, topic: bytes, msg: bytes) -> None:
        """Decode one pub/sub message into the inbox; hand the inbox to the hub
        now (idle), after :data:`PUBSUB_HOLD` or with this node's pipeline
        replies (busy), or at once when it is full."""
        if self._handler is None or not topic.startswith(self._names.topic_prefix):
            return
        channel = self._names.channel(topic)
        try:
            kind, value = decode_message(msg)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed message on %r: %s", topic, exc)
            return
        inbox = self._inbox
        inbox.append((kind, channel, value))
        if len(inbox) >= MAX_INBOX:
            self._hand_over()
        elif len(inbox) == 1:
            loop = asyncio.get_running_loop()
            if self._busy():  # with the pipeline's replies (pipeline_done), or after PIPELINE_HOLD
                self._inbox_timer = loop.call_later(PIPELINE_HOLD, self._hand_over)
            elif loop.time() < self._busy_until:
                self._inbox_timer = loop.call_later(PUBSUB_HOLD, self._hand_over)
            else:
                self._inbox_timer = loop.call_soon(self._hand_over)

    def pipeline_done(self) -> None:
        """This node's publish pipeline got its replies: the pub/sub messages
        held for it (and those read in this iteration, which the reader parses
        before the next one) go to the hub together, in the next iteration."""
        if self._inbox:
            if self._inbox_timer is not None:
                self._inbox_timer.cancel()
            self._inbox_timer = asyncio.get_running_loop().call_soon(self._hand_over)

    def _hand_over(self) -> None:
        """Hand every message of the inbox to the hub, in order (one loop
        iteration: one write per subscriber for all of them)."""
        if self._inbox_timer is not None:
            self._inbox_timer.cancel()
            self._inbox_timer = None
        inbox = self._inbox
        if not inbox:
            return
        self._inbox = []
        if len(inbox) >= BUSY_BATCH:
            self._busy_until = asyncio.get_running_loop().time() + BUSY_WINDOW
        handler = self._handler
        if handler is None:
            return
        for kind, channel, value in inbox:
            try:
                if kind == b"p":
                    handler.on_publication(channel, value)
                elif kind == b"j":
                    handler.on_join(channel, value)
                elif kind == b"l":
                    handler.on_leave(channel, value)
            except Exception:
                log.exception("broker event handler failed for channel %r", channel)

    def _lost_subscription(self, channel: str) -> None:
        self._subscribed.discard(channel)
        if self._wanted.pop(channel, None) is not None:
            log.info("redis cluster moved channel %r away from %s", channel, self._where)
            self._lost(channel)

    def _expect(self, kind: bytes, topic: bytes) -> asyncio.Future[bool]:
        """A future resolved ``True`` by the confirmation of a (un)subscribe, or
        ``False`` if the connection is lost first."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.setdefault((kind, topic), collections.deque()).append(fut)
        return fut

    def _drop(self, conn: AbstractConnection | None) -> None:
        """Forget the pub/sub connection's state (it failed or the broker closes)."""
        if conn is not None and self._conn is conn:
            self._conn = None
        if self._conn is None:
            self.healthy = False
            self._subscribed.clear()
            pending, self._pending = self._pending, {}
            for waiters in pending.values():
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(False)

    async def _disconnect(self, conn: AbstractConnection) -> None:
        try:
            await conn.disconnect(nowait=True)
        except Exception as exc:  # noqa: BLE001 # pragma: no cover - closing a broken socket
            log.debug("closing the pub/sub connection: %s", describe(exc))

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, channel: str) -> Coroutine[Any, Any, None]:
        """See :meth:`hubbub.brokers.redis.RedisBroker.subscribe`."""
        token = next(self._tokens)
        self._wanted[channel] = token
        return self._apply(channel, token)

    def wants(self, channel: str) -> bool:
        """Whether this node wants ``channel`` delivered (subscribed, or being subscribed)."""
        return channel in self._wanted

    def unsubscribe(self, channel: str) -> Coroutine[Any, Any, None]:
        """See :meth:`hubbub.brokers.redis.RedisBroker.unsubscribe`."""
        self._wanted.pop(channel, None)
        return self._apply(channel, None)

    async def _apply(self, channel: str, token: int | None) -> None:
        """Bring ``channel``'s subscription in line with ``_wanted``. ``token``:
        the subscribe call this runs for (``None`` for unsubscribe)."""
        try:
            async with self._sub_lock:
                await self._apply_locked(channel, token)
        except BaseException:
            if token is not None and self._wanted.get(channel) == token:
                # the caller was told it failed: forget the wish, undo what was sent
                del self._wanted[channel]
                if not self._closed:
                    self._background(self._apply(channel, None), f"unsubscribe {channel!r}")
            raise

    async def _apply_locked(self, channel: str, token: int | None) -> None:
        conn = self._conn
        want = channel in self._wanted
        if conn is None or not conn.is_connected:
            if token is not None and want:
                raise BrokerUnavailable(f"redis at {self._where} is unreachable")
            return
        if want == (channel in self._subscribed):
            return
        kind = b"subscribe" if want else b"unsubscribe"
        topic = self._names.topic(channel)
        fut = self._expect(kind, topic)
        error: BaseException | None = None
        try:
            async with asyncio.timeout(self._timeout):
                await conn.send_command(self._commands[kind], topic, check_health=False)
                # sent: Redis will act on it unless the connection dies (which resets everything)
                if want:
                    self._subscribed.add(channel)
                else:
                    self._subscribed.discard(channel)
                confirmed = await fut
        except (OSError, redis_errors.RedisError) as exc:  # TimeoutError is an OSError
            confirmed, error = False, exc
        if not confirmed:
            if self._conn is conn:  # make the reader fail: the maintainer reconnects
                await self._disconnect(conn)
            if want and token is not None:
                why = describe(error) if error is not None else "connection lost"
                raise BrokerUnavailable(f"redis {kind.decode()} of {channel!r} failed: {why}")
