"""The PostgreSQL consumer: a transactional outbox of server API commands.

A backend inserts a row in the same transaction as its data change; hubbub runs
the row's command once the transaction commits, and never for one that rolled
back. The table has the shape of Centrifugo's PostgreSQL consumer
(centrifugal.dev ``docs/server/consumers``), so rows written for one work for
the other::

    CREATE TABLE hubbub_outbox (
        id bigserial PRIMARY KEY,
        method text NOT NULL,               -- publish, broadcast, subscribe, ...
        payload jsonb NOT NULL,             -- the method's parameters, as POST /api/{method}
        partition bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX ON hubbub_outbox (partition, id);

How it reads. One task per partition (``0 <= partition < num_partitions``)
loops over transactions: take the partition's advisory lock
(``pg_try_advisory_xact_lock``: one node at a time works a partition, so order
holds within it, while other partitions go to other nodes), claim up to
``partition_select_limit`` rows in ``id`` order ``FOR UPDATE SKIP LOCKED``, run
their commands in order, delete those that are done, commit. A node killed
before the commit leaves the rows to the next reader: delivery is at least once,
and a publication carries an idempotency key (the payload's
``idempotency_key``, else ``TABLE:ID:CREATED_AT``, remembered by the broker for
``idempotency_ttl`` seconds), so a retry is not delivered twice. A partition
that had less than a full batch waits ``partition_poll_interval`` seconds, or
until a ``NOTIFY`` on ``partition_notification_channel`` whose payload is its
number (an empty or non-numeric payload wakes every partition).

Failures, each logged and counted (``hubbub_consumer_rows_total``,
``hubbub_consumer_errors_total``); the consumer never stops for good:

- PostgreSQL unreachable or an SQL error: the transaction is dropped (its rows
  stay), and the partition retries with a backoff (10 ms doubling to 5 s).
- A malformed row (an unknown method, a payload that is not a JSON object,
  parameters the API refuses with 400): deleted (``malformed``).
- A command refused for good (102 unknown namespace, ...): deleted (``refused``).
- A command failing for a temporary reason (the broker unavailable): the
  partition stops at that row, commits what it did, and tries it again after a
  backoff; after ``command_attempts`` tries it is deleted (``failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import CommandDispatcher, Outcome, backoff

if TYPE_CHECKING:
    import asyncpg

    from ..config import Config

log = logging.getLogger("hubbub.consumers.postgresql")

#: Seconds to connect to PostgreSQL before the attempt counts as a failure.
CONNECT_TIMEOUT = 10.0
#: Seconds a query may take before it counts as a database failure (a silent network, a lock held).
QUERY_TIMEOUT = 30.0
#: Seconds between checks that the LISTEN connection is alive.
LISTEN_CHECK_INTERVAL = 5.0
#: How the consumer's connections name themselves (``pg_stat_activity.application_name``).
APPLICATION_NAME = "hubbub outbox consumer"
#: Seconds ``close()`` waits for the rows at hand before cancelling.
CLOSE_TIMEOUT = 5.0


def quote_name(name: str) -> str:
    """``schema.table`` as quoted identifiers (the name is checked by :class:`~hubbub.config.Config`)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


class PostgresConsumer:
    """Reads server API commands from a PostgreSQL outbox table (see the module docstring).

    Args:
        dispatcher: runs each row's command (:class:`~hubbub.consumers.base.APIDispatcher`).
        dsn: ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE``.
        table: the outbox table, ``NAME`` or ``SCHEMA.NAME``.
        num_partitions: partitions read in parallel, one task each.
        select_limit: rows claimed per transaction.
        poll_interval: seconds an idle partition waits before reading again.
        notification_channel: the ``LISTEN`` channel (``""``: poll only).
        command_attempts: tries of a temporarily failing command before its row is skipped.
        name: the ``consumer`` label in logs and metrics.
    """

    def __init__(self, dispatcher: CommandDispatcher, *, dsn: str, table: str = "hubbub_outbox",
                 num_partitions: int = 1, select_limit: int = 100, poll_interval: float = 0.3,
                 notification_channel: str = "", command_attempts: int = 5, name: str = "postgresql") -> None:
        self.dispatcher = dispatcher
        self.dsn = dsn
        self.table = table
        self.num_partitions = num_partitions
        self.select_limit = select_limit
        self.poll_interval = poll_interval
        self.notification_channel = notification_channel
        self.command_attempts = command_attempts
        self.name = name
        quoted = quote_name(table)
        self._select = (f"SELECT id, method, payload::text, (extract(epoch FROM created_at) * 1000000)::bigint "
                        f"FROM {quoted} WHERE partition = $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED")
        self._delete = f"DELETE FROM {quoted} WHERE id = ANY($1::bigint[])"
        self._lock_prefix = f"hubbub_outbox_{table}_"
        self._wake = [asyncio.Event() for _ in range(num_partitions)]
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_config(cls, config: Config, dispatcher: CommandDispatcher) -> PostgresConsumer:
        """The consumer that the ``postgresql_consumer_*`` settings describe."""
        return cls(
            dispatcher, dsn=config.postgresql_consumer_dsn, table=config.postgresql_consumer_outbox_table_name,
            num_partitions=config.postgresql_consumer_num_partitions,
            select_limit=config.postgresql_consumer_partition_select_limit,
            poll_interval=config.postgresql_consumer_partition_poll_interval,
            notification_channel=config.postgresql_consumer_partition_notification_channel,
            command_attempts=config.postgresql_consumer_command_attempts,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start a task per partition (and one to LISTEN). Returns at once; PostgreSQL
        being down is retried by the tasks.

        Raises:
            ConfigError: asyncpg is not installed (``pip install "hubbub[postgresql]"``).
        """
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise ConfigError('postgresql_consumer_dsn is set but asyncpg is not installed: '
                              'pip install "hubbub[postgresql]"') from None
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._partition(p), name=f"hubbub-outbox-{p}")
                       for p in range(self.num_partitions)]
        if self.notification_channel:
            self._tasks.append(asyncio.create_task(self._listen(), name="hubbub-outbox-listen"))
        log.info("PostgreSQL consumer: reading %s (%d partitions%s)", self.table, self.num_partitions,
                 f", LISTEN {self.notification_channel}" if self.notification_channel else ", polling")

    async def close(self) -> None:
        """Stop: each partition finishes (and commits) the row at hand, then its task ends;
        after :data:`CLOSE_TIMEOUT` seconds the rest are cancelled (their rows stay)."""
        self._closing.set()
        for event in self._wake:
            event.set()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing.is_set()

    @property
    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        """The running tasks: one per partition, and the LISTEN one (none once closed)."""
        return tuple(self._tasks)

    async def _pause(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep ``seconds``, less if closing (or ``wake`` is set)."""
        waiters = [asyncio.ensure_future(self._closing.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _connect(self) -> asyncpg.Connection:
        import asyncpg

        connection: asyncpg.Connection = await asyncpg.connect(
            self.dsn, timeout=CONNECT_TIMEOUT, command_timeout=QUERY_TIMEOUT,
            server_settings={"application_name": APPLICATION_NAME})
        return connection

    def _source_failed(self, what: str, exc: BaseException, failures: int) -> float:
        """Log and count a database failure; the seconds to wait before retrying."""
        delay = backoff(failures)
        self.dispatcher.stats.consumer_errors[(self.name, "source")] += 1
        log.warning("PostgreSQL consumer (%s): %s: %s; retrying in %.2f s", what, type(exc).__name__, exc, delay)
        return delay

    # -- partitions ------------------------------------------------------------------------------

    async def _partition(self, partition: int) -> None:
        """Read ``partition`` until closed (see the module docstring)."""
        connection: asyncpg.Connection | None = None
        failures = 0
        head = [0, 0]  # the row being retried at the partition's head, and its attempts
        wake = self._wake[partition]
        try:
            while not self.closing:
                wake.clear()
                try:
                    if connection is None or connection.is_closed():
                        connection = await self._connect()
                    more, retry = await self._round(connection, partition, head)
                except Exception as exc:  # the database: PostgresError, OSError, timeouts, ...
                    failures += 1
                    delay = self._source_failed(f"partition {partition}", exc, failures)
                    if connection is not None:
                        connection.terminate()
                        connection = None
                    await self._pause(delay)
                    continue
                if failures:
                    log.info("PostgreSQL consumer: partition %d reads again", partition)
                    failures = 0
                if retry:
                    await self._pause(backoff(head[1]))
                elif not more:
                    await self._pause(self.poll_interval, wake)
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 1.0)
                if not connection.is_closed():
                    connection.terminate()

    async def _round(self, connection: asyncpg.Connection, partition: int, head: list[int]) -> tuple[bool, bool]:
        """One transaction on ``partition``: ``(maybe more rows, a command is to be retried)``."""
        done: list[int] = []
        retry = False
        async with connection.transaction():
            locked = await connection.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))",
                                               self._lock_prefix + str(partition))
            if not locked:  # another node works this partition
                return False, False
            rows = await connection.fetch(self._select, partition, self.select_limit)
            for row_id, method, payload, created_us in rows:
                if self.closing:
                    break
                if await self._run(row_id, method, payload, created_us, head):
                    done.append(row_id)
                else:
                    retry = True
                    break
            if done:
                await connection.execute(self._delete, done)
        return len(rows) == self.select_limit and len(done) == len(rows), retry

    async def _run(self, row_id: int, method: Any, payload: Any, created_us: int | None, head: list[int]) -> bool:
        """Run one row's command; whether the row is finished (to delete)."""
        stats = self.dispatcher.stats
        key = f"{self.table}:{row_id}:{created_us or 0}"
        try:
            result = await self.dispatcher.dispatch(method, payload, idempotency_key=key)
        except Exception as exc:  # a dispatcher bug must not stop the partition: retried, then skipped
            log.exception("PostgreSQL consumer: row %d (%r) raised", row_id, method)
            outcome, reason = Outcome.RETRY, f"{type(exc).__name__}: {exc}"
        else:
            outcome, reason = result.outcome, result.reason
        if outcome is Outcome.RETRY:
            if head[0] != row_id:
                head[:] = [row_id, 0]
            head[1] += 1
            if head[1] < self.command_attempts:
                stats.consumer_errors[(self.name, "command")] += 1
                log.warning("PostgreSQL consumer: row %d (%s) failed (%s), attempt %d of %d; retrying",
                            row_id, method, reason, head[1], self.command_attempts)
                return False
            head[:] = [0, 0]
            stats.consumer_rows[(self.name, "failed")] += 1
            log.error("PostgreSQL consumer: row %d (%s) failed %d times (%s); skipped (deleted)",
                      row_id, method, self.command_attempts, reason)
            return True
        if head[0] == row_id:
            head[:] = [0, 0]
        stats.consumer_rows[(self.name, outcome.value)] += 1
        if outcome is not Outcome.DONE:
            log.warning("PostgreSQL consumer: row %d skipped (deleted), %s: %s", row_id, outcome.value, reason)
        return True

    # -- notifications -----------------------------------------------------------------------------

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        """A NOTIFY: wake its partition (every partition for a payload that is not a number)."""
        try:
            partition = int(payload)
        except ValueError:
            for event in self._wake:
                event.set()
            return
        if 0 <= partition < self.num_partitions:
            self._wake[partition].set()
        else:
            log.debug("PostgreSQL consumer: NOTIFY for partition %s, out of range", payload)

    async def _listen(self) -> None:
        """Keep a connection LISTENing on the notification channel until closed."""
        failures = 0
        while not self.closing:
            connection: asyncpg.Connection | None = None
            try:
                connection = await self._connect()
                await connection.add_listener(self.notification_channel, self._notified)
                if failures:
                    log.info("PostgreSQL consumer: LISTEN %s again", self.notification_channel)
                failures = 0
                for event in self._wake:  # a notification may have been missed meanwhile
                    event.set()
                while not self.closing:
                    await self._pause(LISTEN_CHECK_INTERVAL)
                    if self.closing:
                        break
                    await asyncio.wait_for(connection.execute("SELECT 1"), CONNECT_TIMEOUT)
            except Exception as exc:
                failures += 1
                delay = self._source_failed(f"LISTEN {self.notification_channel}", exc, failures)
                await self._pause(delay)
            finally:
                if connection is not None:
                    connection.terminate()
