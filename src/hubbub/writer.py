"""The write path: one bounded output queue per connection, written once per
event-loop iteration.

Every byte hubbub sends to a client goes through a :class:`Writer`; the
:class:`Flusher` is shared by every connection of the server.

See ``docs/design.md``, "The write path".
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from .outbox import FrameBatch
from .stats import Stats

log = logging.getLogger("hubbub.writer")


class Flusher:
    """Writes every dirty connection's queue once per event-loop iteration."""

    __slots__ = ("_loop", "_dirty", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Writer] = []
        self._scheduled = False

    def add(self, writer: Writer) -> None:
        """Write ``writer``'s queue at the end of this iteration."""
        self._dirty.append(writer)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for writer in dirty:
            writer.flush()


class Writer:
    """A connection's output queue (the write half of
    :class:`~hubbub.outbox.Outbox`).

    Subclasses set :attr:`transport` when the connection is made, and
    implement :meth:`_on_slow` (close with 3008).

    Args:
        flusher: the server's shared :class:`Flusher`.
        limit: ``max_pending_output`` in bytes.
        stats: the node's counters (messages and bytes out).
    """

    # slots: an idle connection's memory is mostly its objects (docs/benchmarks.md, W4)
    __slots__ = ("transport", "open", "lost", "_flusher", "_limit", "_stats", "_out", "_out_size", "_buffered",
                 "_dirty", "_batched", "_eof_pending")

    def __init__(self, flusher: Flusher, limit: int, stats: Stats) -> None:
        self.transport: asyncio.Transport | None = None
        #: whether output is still accepted (the Outbox's ``open``)
        self.open = False
        #: whether the TCP connection is gone
        self.lost = False
        self._flusher = flusher
        self._limit = limit
        self._stats = stats
        #: the queue; ``None`` while empty (an idle connection holds no list: memory per connection)
        self._out: list[bytes | FrameBatch] | None = None
        self._out_size = 0
        self._buffered = 0  # the transport's buffer size at the last flush
        self._dirty = False
        self._batched = False  # _out holds a FrameBatch
        self._eof_pending = False

    @property
    def pending(self) -> int:
        """Bytes waiting: this queue plus the transport's buffer."""
        size = self._out_size
        if self.transport is not None and not self.lost:
            size += self.transport.get_write_buffer_size()
        return size

    # -- queueing -------------------------------------------------------------------

    def deliver(self, frame: bytes | FrameBatch) -> None:
        """Queue pre-encoded frame bytes or a shared :class:`FrameBatch` (the
        hot path: no await, no system call). A batch may still grow until it is
        written; :meth:`flush` checks the bound again with its final size."""
        if not self.open:
            return
        before = self._out_size + self._buffered
        out = self._out
        if out is None:
            self._out = [frame]
        else:
            out.append(frame)
        self._out_size += len(frame)
        if type(frame) is not bytes:
            self._batched = True
        if before + len(frame) > self._limit and before:  # one message alone may pass the bound
            self._check_slow()
        elif not self._dirty:
            self._dirty = True
            self._flusher.add(self)

    def write(self, data: bytes) -> None:
        """Queue protocol bytes (a reply, a ping), under the same bound as pushes."""
        if not self.open:
            return
        before = self._out_size + self._buffered
        out = self._out
        if out is None:
            self._out = [data]
        else:
            out.append(data)
        self._out_size += len(data)
        if before + len(data) > self._limit and before:  # one message alone may pass the bound
            self._check_slow()
        elif not self._dirty:
            self._dirty = True
            self._flusher.add(self)

    def write_control(self, data: bytes) -> None:
        """Queue bytes that start or end the connection (handshake, HTTP
        response, close frame): not refused by the bound."""
        if self.lost:
            return
        out = self._out
        if out is None:
            self._out = [data]
        else:
            out.append(data)
        self._out_size += len(data)
        self._mark_dirty()

    def finish(self) -> None:
        """Close the TCP connection once the queue is written."""
        self._eof_pending = True
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        if not self._dirty and not self.lost:
            self._dirty = True
            self._flusher.add(self)

    # -- the bound ----------------------------------------------------------------

    def _check_slow(self) -> None:
        transport = self.transport
        self._buffered = transport.get_write_buffer_size() if transport is not None else 0
        if self._out_size + self._buffered <= self._limit:
            self._mark_dirty()
            return
        pending = self._out_size + self._buffered
        self._out = None
        self._out_size = 0
        self._batched = False
        self.open = False
        self._stats.slow += 1
        self._on_slow(pending)

    def _on_slow(self, pending: int) -> None:
        """The pending output passed the bound; the queue is dropped and output
        closed. Subclasses close the connection with 3008."""
        raise NotImplementedError

    # -- writing ---------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything queued in one transport call (called by the :class:`Flusher`)."""
        self._dirty = False
        transport = self.transport
        if self.lost or transport is None:
            return
        out = self._out
        if out:
            size = self._out_size
            if self._batched:  # join shared batches (once for all) and take their final size
                self._batched = False
                size = 0
                for i, item in enumerate(out):
                    if isinstance(item, FrameBatch):
                        out[i] = item = item.join()
                    size += len(item)
                self._out_size = size
                if size + self._buffered > self._limit and self.open:
                    self._check_slow()
                    if not self.open:
                        if self._out:
                            self._dirty = True  # the close frame queued by _on_slow
                            self.flush()
                        return
            stats = self._stats
            stats.messages_out += len(out)
            stats.bytes_out += size
            self._out = None
            self._out_size = 0
            chunks = cast("list[bytes]", out)  # every FrameBatch was joined above
            if len(chunks) == 1:
                transport.write(chunks[0])
            else:
                transport.writelines(chunks)
            self._buffered = transport.get_write_buffer_size()
        if self._eof_pending:
            transport.close()  # after the buffer is written
