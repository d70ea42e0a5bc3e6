"""hubbub.wheel: the ping wheel's slots and the pong deadlines, and the server's
ping tick driven by hand (no sockets, an injected loop time)."""

from __future__ import annotations

import weakref
from collections import Counter
from typing import Any

import pytest

from hubbub.codes import DisconnectCode
from hubbub.config import Config
from hubbub.server import PING_TICK, Server
from hubbub.wheel import Deadlines, Wheel


def test_slots_and_tick_follow_period_and_resolution() -> None:
    wheel: Wheel[int] = Wheel(25.0, 0.1)
    assert wheel.slots == 250 and wheel.tick == pytest.approx(0.1)
    short: Wheel[int] = Wheel(0.05, 0.1)  # shorter than one tick: one slot, ticking once per period
    assert short.slots == 1 and short.tick == pytest.approx(0.05)
    odd: Wheel[int] = Wheel(0.25, 0.1)  # ticks no longer than the resolution
    assert odd.slots == 3 and odd.tick == pytest.approx(0.25 / 3)
    for period, resolution in ((0.0, 0.1), (1.0, 0.0), (-1.0, 0.1)):
        with pytest.raises(ValueError):
            Wheel(period, resolution)


def test_a_burst_of_items_is_spread_evenly_and_each_is_visited_once_per_period() -> None:
    wheel: Wheel[int] = Wheel(25.0, 0.1)
    slots = {item: wheel.add(item) for item in range(10_000)}
    assert len(wheel) == 10_000
    per_slot = Counter(slots.values())
    assert set(per_slot) == set(range(125, 250))  # the far half of the wheel ...
    assert set(per_slot.values()) == {80}  # ... evenly: 80 per slot, never a round of thousands
    visited: Counter[int] = Counter()
    largest = 0
    for turn in range(wheel.slots):
        slot = wheel.turn()
        assert slot == turn
        batch = wheel.items(slot)
        if turn < 125:
            assert batch == []  # nothing is visited within half a period of joining
        largest = max(largest, len(batch))
        visited.update(batch)
    assert largest == 80
    assert visited == Counter(range(10_000))  # every item exactly once per turn of the wheel
    assert wheel.turn() == 0 and wheel.items(0) == []  # round two: the same slots again


def test_items_added_later_join_the_far_half_from_where_the_wheel_is() -> None:
    wheel: Wheel[int] = Wheel(1.0, 0.1)
    for _ in range(3):
        wheel.turn()  # the next turn visits slot 3
    assert [wheel.add(item) for item in range(6)] == [8, 9, 0, 1, 2, 8]  # 5-9 slots ahead of slot 3
    single: Wheel[int] = Wheel(0.05, 0.1)  # one slot: visited every turn
    assert single.add(1) == 0 and single.items(single.turn()) == [1]


def test_discarded_items_are_not_visited_and_discard_is_idempotent() -> None:
    wheel: Wheel[str] = Wheel(0.3, 0.1)
    slot_a, slot_b = wheel.add("a"), wheel.add("b")
    assert (slot_a, slot_b) == (1, 2)
    wheel.discard("a", slot_a)
    wheel.discard("a", slot_a)
    wheel.discard("b", 7)  # a slot the wheel does not have: nothing happens
    assert len(wheel) == 1
    assert [wheel.items(wheel.turn()) for _ in range(3)] == [[], [], ["b"]]


def test_deadlines_come_due_in_order_once() -> None:
    due: Deadlines[str] = Deadlines()
    due.add(1.0, "first")
    due.add(1.0, "second")
    due.add(2.5, "third")
    assert due.pop_due(0.99) == []
    assert due.pop_due(1.0) == ["first", "second"]
    assert due.pop_due(2.0) == [] and len(due) == 1
    assert due.pop_due(9.0) == ["third"] and len(due) == 0
    due.add(3.0, "late")
    due.clear()
    assert due.pop_due(9.0) == []


class FakeSession:
    """What the ping tick uses of a session: ``ping``, ``check_pong``, ``closed``."""

    def __init__(self) -> None:
        self.pings = 0
        self.pong_expected = False
        self.closed = False
        self.code: int | None = None
        self.awaits_connect = False

    def ping(self) -> None:
        self.pings += 1
        self.pong_expected = True

    def pong(self) -> None:
        self.pong_expected = False

    def check_pong(self) -> None:
        if self.pong_expected and not self.closed:
            self.closed = True
            self.code = DisconnectCode.NO_PONG


class FakeConn:
    def __init__(self) -> None:
        self.session = FakeSession()
        self.ping_slot = -1
        self.open = True


def wheel_server(ping_interval: float, pong_timeout: float, conns: int) -> tuple[Server, list[Any]]:
    server = Server(Config(ping_interval=ping_interval, pong_timeout=pong_timeout))
    server.ping_wheel = Wheel(ping_interval, PING_TICK)  # what start() makes
    fakes: list[Any] = [FakeConn() for _ in range(conns)]
    for conn in fakes:
        server.websocket_opened(conn)
    return server, fakes


def first_pings(server: Server, conns: list[Any], now: float) -> tuple[float, list[Any]]:
    """Tick until a slot pings; the time of that tick and the connections pinged."""
    wheel = server.ping_wheel
    assert wheel is not None
    for _ in range(wheel.slots):
        server._ping_tick(now)
        pinged = [c for c in conns if c.session.pings]
        if pinged:
            return now, pinged
        now += wheel.tick
    raise AssertionError("a whole round pinged nothing")


def test_the_server_pings_one_slot_per_tick_and_closes_3012_pong_timeout_later() -> None:
    server, conns = wheel_server(ping_interval=1.0, pong_timeout=0.35, conns=100)
    wheel = server.ping_wheel
    assert wheel is not None and wheel.slots == 10
    now, pinged = first_pings(server, conns, 0.0)
    assert now >= 0.5  # not at once: half a ping interval after they joined, at the earliest
    assert len(pinged) == 20  # one slot (of the five in the far half), not every connection
    quiet, answering = pinged[:10], pinged[10:]
    for conn in answering:
        conn.session.pong()
    ticks = 1
    for _ in range(3):  # +0.1 .. +0.3 s: the pongs are not due yet
        now += wheel.tick
        server._ping_tick(now)
        ticks += 1
    assert not any(c.session.closed for c in pinged)
    now += wheel.tick  # +0.4 s: the first tick after pong_timeout checks that slot's pongs
    server._ping_tick(now)
    ticks += 1
    assert [c.session.code for c in quiet] == [DisconnectCode.NO_PONG] * 10
    assert not any(c.session.closed for c in answering)
    for _ in range(wheel.slots - ticks):  # the rest of the round
        now += wheel.tick
        server._ping_tick(now)
    assert all(c.session.pings == 1 for c in conns)  # each connection once per ping_interval


def test_a_connection_closed_after_its_ping_is_not_held_until_its_pong_check() -> None:
    server, conns = wheel_server(ping_interval=1.0, pong_timeout=0.5, conns=1)
    now, pinged = first_pings(server, conns, 0.0)
    assert pinged == conns and conns[0].session.pings == 1
    del pinged
    ref = weakref.ref(conns[0].session)
    server.connection_closed(conns[0])
    del conns[:]
    assert ref() is None  # nothing of the wheel (nor the pong check due at 0.5 s) keeps it
    server._ping_tick(now + 0.6)  # the check finds the slot empty


def test_closed_connections_leave_the_wheel_and_closed_ones_are_not_pinged() -> None:
    server, conns = wheel_server(ping_interval=0.2, pong_timeout=0.1, conns=4)
    wheel = server.ping_wheel
    assert wheel is not None and len(wheel) == 4
    server.websocket_opened(conns[0])  # opened twice (a stream, then ...): still one slot
    assert len(wheel) == 4
    server.connection_closed(conns[1])
    conns[2].open = False  # closing: no ping
    assert len(wheel) == 3
    for tick in range(wheel.slots):
        server._ping_tick(tick * wheel.tick)
    assert [c.session.pings for c in conns] == [1, 0, 0, 1]
