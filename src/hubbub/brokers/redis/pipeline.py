"""The Redis broker's publish pipeline: publications, joins and leaves leave in
pipelines, one round trip for everything queued during an event-loop iteration.

Each call queues its command with a callback (:meth:`PublishPipeline.queue`;
:meth:`PublishPipeline.send` gives a future instead); one writer task sends up
to :data:`MAX_PIPELINE` commands per pipeline, one pipeline in flight.

See ``docs/design.md``, "The broker contract" (Batches) and "The Redis broker".
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import BrokerError, BrokerUnavailable
from ...stats import Stats
from .connections import describe, log, pack_command, redis_errors

#: Commands per publish pipeline at most (a longer queue goes in several).
MAX_PIPELINE = 1024

#: What a pipeline calls with a command's outcome: ``(reply, None)`` or ``(None, error)``.
ReplyCallback = Callable[[Any, "BaseException | None"], None]


class _Queued:
    """A command waiting for the next pipeline, and the callback its outcome
    goes to (called in the loop iteration its reply was read)."""

    __slots__ = ("args", "done", "retried")

    def __init__(self, args: tuple[Any, ...], done: ReplyCallback) -> None:
        self.args = args
        self.done = done
        self.retried = False

    def finish(self, reply: Any, exc: BaseException | None) -> None:
        """Hand the outcome to the callback; a failing callback is logged, and
        the rest of the pipeline is still answered."""
        try:
            self.done(reply, exc)
        except Exception:
            log.exception("a redis pipeline callback failed")


def into(future: asyncio.Future[Any]) -> ReplyCallback:
    """A :data:`ReplyCallback` that resolves ``future`` (unless its caller gave up)."""

    def done(reply: Any, exc: BaseException | None) -> None:
        if future.done():
            return  # cancelled: the command ran all the same
        if exc is None:
            future.set_result(reply)
        else:
            future.set_exception(exc)

    return done


def publish_error(exc: BaseException) -> BaseException:
    """A publish pipeline's failure as the broker's error: unreachable ->
    ``BrokerUnavailable``, refused -> ``BrokerError`` (ours pass through)."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)):
        return BrokerUnavailable(f"redis publish failed: {describe(exc)}")
    if isinstance(exc, redis_errors.RedisError):
        return BrokerError(f"redis publish failed: {describe(exc)}")
    return exc


class PublishPipeline:
    """The outbox of publish-path commands and the task that sends it.

    Args:
        pool: the broker's redis-py connection pool (``get_connection``/``release``).
        timeout: seconds a pipeline's round trip may take.
        scripts: the broker's registered scripts (``.script``: the Lua text),
            loaded in front of the next pipeline after a ``NOSCRIPT``.
        stats: the broker's current :class:`~hubbub.stats.Stats`.
        after: called after each pipeline's replies were handled (the pub/sub
            side hands over the messages it held for them).
    """

    def __init__(self, pool: Any, *, timeout: float, scripts: Sequence[Any], stats: Callable[[], Stats],
                 after: Callable[[], None]) -> None:
        self._pool = pool
        self._timeout = timeout
        self._scripts = tuple(scripts)
        self._stats = stats
        self._after = after
        #: commands for the next pipeline, in order
        self._outbox: list[_Queued] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None  # sends the outbox, one pipeline at a time
        self._closed = False
        self._reload_scripts = False  # Redis answered NOSCRIPT: load them in front of the next pipeline
        #: a pipeline awaits its replies
        self.in_flight = False

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """:meth:`queue` ``args``; the future resolves with the reply (or the error).

        Raises:
            BrokerUnavailable: the broker is closed.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue(args, into(future))
        return future

    def queue(self, args: tuple[Any, ...], done: ReplyCallback) -> None:
        """Queue one command for the next pipeline; ``done`` gets its reply (or
        the error) as soon as the reply was read, in command order.

        Raises:
            BrokerUnavailable: the broker is closed.
        """
        if self._closed:
            raise BrokerUnavailable("the redis broker is closed")
        self._outbox.append(_Queued(args, done))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="hubbub redis publish")
        self._wake.set()

    def stop(self) -> list[asyncio.Task[None]]:
        """Refuse new commands and cancel the writer; return it, to be awaited."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is None:
            return []
        writer.cancel()
        self._wake.set()  # a writer whose cancellation was lost below it wakes up and finds the pipeline closed
        return [writer]

    def fail_queued(self) -> None:
        """Fail every command still queued (after :meth:`stop`)."""
        outbox, self._outbox = self._outbox, []
        for queued in outbox:
            queued.finish(None, BrokerUnavailable("the redis broker is closed"))

    async def _write_loop(self) -> None:
        """Send the outbox as pipelines, one at a time, until stopped.

        A cancellation always ends it, even one that the Redis driver turned
        into an error on its way up (the task still says it is cancelling).
        """
        task = asyncio.current_task()
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox and not self._closed:
                batch = self._outbox[:MAX_PIPELINE]
                del self._outbox[:MAX_PIPELINE]
                self.in_flight = True
                try:
                    await self._run_pipeline(batch)
                except asyncio.CancelledError:
                    for queued in batch:
                        queued.finish(None, BrokerUnavailable("the redis broker is closed"))
                    raise
                except Exception as exc:  # a bug, not an outage: fail this batch, keep the writer alive
                    log.exception("redis publish pipeline failed")
                    for queued in batch:
                        queued.finish(None, BrokerError(f"redis publish failed: {describe(exc)}"))
                finally:
                    self.in_flight = False
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError("the redis publish writer was cancelled")
                self._after()

    async def _run_pipeline(self, batch: list[_Queued]) -> None:
        """One round trip: send ``batch`` as a pipeline (no transaction, no
        retry: a command must never run twice) and resolve its futures."""
        scripts = self._scripts if self._reload_scripts else ()
        commands = [("SCRIPT", "LOAD", script.script) for script in scripts]
        commands += [queued.args for queued in batch]
        try:
            replies = await self.round_trip(self._pool, commands)
        except (OSError, redis_errors.RedisError) as exc:  # unreachable: nothing is acknowledged
            for queued in batch:
                queued.finish(None, exc)
            return
        stats = self._stats()
        stats.broker_round_trips += 1
        stats.broker_publish_round_trips += 1
        stats.broker_publications += len(batch)
        if scripts:
            self._reload_scripts = False
        retry: list[_Queued] = []
        for queued, reply in zip(batch, replies[len(scripts) :], strict=True):
            if isinstance(reply, redis_errors.NoScriptError) and not queued.retried:
                # the script never ran (Redis restarted, or SCRIPT FLUSH): safe to send again
                queued.retried = True
                retry.append(queued)
            elif isinstance(reply, Exception):
                queued.finish(None, reply)
            else:
                queued.finish(reply, None)
        if retry:
            self._reload_scripts = True
            self._outbox[:0] = retry

    async def round_trip(self, pool: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` on one connection of ``pool`` in one write and read
        their replies (an error reply is returned as its exception), all within
        ``timeout`` seconds.

        Raises:
            redis.exceptions.ConnectionError, TimeoutError, OSError: the
                connection failed; it is closed (replies not read are lost,
                and the commands may or may not have run).
        """
        conn = await pool.get_connection()
        try:
            replies: list[Any] = []
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.send_packed_command(b"".join(map(pack_command, commands)), check_health=False)
                    for _ in commands:
                        try:
                            replies.append(await conn.read_response(timeout=math.inf))
                        except redis_errors.ResponseError as exc:
                            replies.append(exc)
            except TimeoutError as exc:
                await conn.disconnect(nowait=True)
                raise redis_errors.TimeoutError(f"no answer within {self._timeout} s") from exc
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
            return replies
        finally:
            await pool.release(conn)
