"""A timer wheel: items spread over slots, one slot visited per tick.

The server pings its connections with it (:class:`hubbub.server.Server`): each
connection sits in one slot, a tick every ``period / slots`` seconds visits the
next slot, so every connection is visited once per ``period`` and a tick touches
only the connections of its slot. With 10,000 connections, a ping interval of
25 s and ticks of 100 ms, a tick pings 40 connections (and 40 pongs come back),
where one ping round at once would stall the event loop for tens of
milliseconds.

An item added goes into the far half of the wheel (round-robin over the slots
half a period to a period ahead), so its first visit comes at least half a period
after it joins (a connection that has just shaken hands is not pinged at once)
and a burst of connections (a reconnect storm) is spread evenly over half the
period: 80 per slot for 10,000 connections with 250 slots.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")
D = TypeVar("D")

#: Seconds between ticks at most (a wheel with a shorter period ticks once per period).
RESOLUTION = 0.1


class Wheel(Generic[T]):
    """Items in ``slots`` buckets; :meth:`turn` returns the next bucket's items.

    Args:
        period: seconds in which every slot is visited once (> 0).
        resolution: longest tick, seconds (> 0): ``slots`` is
            ``ceil(period / resolution)``, ``tick`` is ``period / slots``.

    Raises:
        ValueError: ``period`` or ``resolution`` is not positive.
    """

    __slots__ = ("period", "slots", "tick", "_buckets", "_added", "_next", "_size")

    def __init__(self, period: float, resolution: float = RESOLUTION) -> None:
        if not period > 0 or not resolution > 0:
            raise ValueError(f"a wheel needs a positive period and resolution, not {period!r}, {resolution!r}")
        self.period = period
        #: buckets on the wheel
        self.slots = max(1, math.ceil(period / resolution - 1e-9))
        #: seconds between two calls of :meth:`turn` for each item to be visited once per ``period``
        self.tick = period / self.slots
        # lists, not sets: 8 bytes per item where a set's table cost 80 (idle memory,
        # docs/benchmarks.md workload 4); a slot holds tens to hundreds of items, so
        # finding one to discard is a short scan in C
        self._buckets: list[list[T]] = [[] for _ in range(self.slots)]
        self._added = 0  # round-robin over the far half of the wheel
        self._next = 0  # the slot the next turn visits
        self._size = 0

    def add(self, item: T) -> int:
        """Put ``item`` in a slot half a period to a period ahead (round-robin over
        them); returns its slot, which :meth:`discard` needs (the caller keeps it,
        e.g. ``conn.ping_slot``). The caller adds an item once (until it is
        discarded): the wheel does not look for it first."""
        near = self.slots // 2  # slots visited in less than half a period: not these
        far = self.slots - near
        slot = (self._next + near + self._added % far) % self.slots
        self._added = (self._added + 1) % far
        self._buckets[slot].append(item)
        self._size += 1
        return slot

    def discard(self, item: T, slot: int) -> None:
        """Take ``item`` out of ``slot`` (nothing happens if it is not there)."""
        if 0 <= slot < self.slots:
            bucket = self._buckets[slot]
            try:
                index = bucket.index(item)
            except ValueError:
                return
            last = bucket.pop()  # the order within a slot does not matter: the last fills the gap
            if index < len(bucket):
                bucket[index] = last
            self._size -= 1

    def turn(self) -> int:
        """Advance one slot; returns the slot visited (its items: :meth:`items`)."""
        slot = self._next
        self._next = (slot + 1) % self.slots
        return slot

    def items(self, slot: int) -> list[T]:
        """The items in ``slot`` now (a copy: they may come and go while the caller walks it)."""
        return list(self._buckets[slot])

    def __len__(self) -> int:
        return self._size


class Deadlines(Generic[D]):
    """Batches due at a time, taken in order once due: the pong checks of the ping
    wheel's ticks (the slot pinged, so that nothing holds a closed connection).
    Times are the caller's clock (``loop.time()``); batches must be added in order
    of due time (a fixed delay after each tick is)."""

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due: deque[tuple[float, D]] = deque()

    def add(self, due: float, batch: D) -> None:
        """``batch`` falls due at ``due`` (not before the last batch added)."""
        self._due.append((due, batch))

    def pop_due(self, now: float) -> list[D]:
        """The batches due at ``now`` or before, oldest first (each returned once)."""
        out: list[D] = []
        due = self._due
        while due and due[0][0] <= now:
            out.append(due.popleft()[1])
        return out

    def clear(self) -> None:
        """Forget every batch."""
        self._due.clear()

    def __len__(self) -> int:
        return len(self._due)
