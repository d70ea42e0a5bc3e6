"""The broker contract (``hubbub.brokers.base``), one suite for every broker.

Each test runs against the memory broker and the Redis broker (a real
``redis-server``). A :class:`Recorder` stands in for the hub. Time-based
expiry uses a fake clock for the memory broker and Redis' own clock (polled
with a deadline) for Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hubbub.brokers import MemoryBroker
from hubbub.brokers.base import Broker, ClientInfo, Publication, StreamPosition
from hubbub.errors import BrokerUnavailable

from .conftest import TIMEOUT
from .redis_server import redis_cluster, redis_sentinel, redis_server, redis_shards  # noqa: F401

HISTORY = {"history_size": 10, "history_ttl": 300.0}


class Recorder:
    """A :class:`~hubbub.brokers.base.BrokerEventHandler` that records every event."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(maxsize=100_000)
        self.reconnects: asyncio.Queue[None] = asyncio.Queue(maxsize=100)

    def on_publication(self, channel: str, pub: Publication) -> None:
        self.events.put_nowait(("pub", channel, pub))

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.events.put_nowait(("join", channel, info))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.events.put_nowait(("leave", channel, info))

    def on_stream_gap(self, channel: str) -> None:
        self.events.put_nowait(("gap", channel))

    def on_broker_reconnect(self) -> None:
        self.reconnects.put_nowait(None)

    async def next(self) -> tuple[Any, ...]:
        return await asyncio.wait_for(self.events.get(), TIMEOUT)

    async def next_pub(self, channel: str) -> Publication:
        kind, got, pub = await self.next()
        assert (kind, got) == ("pub", channel), (kind, got, pub)
        return pub


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """A started broker, its recorder, and how to make time pass or lose data."""

    kind: str
    broker: Broker
    handler: Recorder
    clock: FakeClock | None = None
    server: Any = None  # RedisServer, RedisGroup or RedisCluster: stop(), start(), flushall()

    async def tick(self) -> None:
        """Let a little time pass (0.1 s of fake time, or a short real pause)."""
        if self.clock is not None:
            self.clock.now += 0.1
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(0.02)

    async def until(self, condition: Callable[[], Awaitable[bool]]) -> None:
        """Tick until ``condition()`` holds (fails after TIMEOUT seconds)."""
        async with asyncio.timeout(TIMEOUT):
            while not await condition():
                await self.tick()

    def lose_streams(self) -> None:
        """Make the backend lose every stream (Redis: FLUSHALL; memory: meta TTL passes)."""
        if self.server is not None:
            self.server.flushall()
        else:
            assert self.clock is not None
            self.clock.now += 3601  # past meta_ttl


_prefixes = itertools.count()


@pytest.fixture(params=["memory", "redis", "redis-shards", "redis-cluster", "redis-sentinel"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    handler = Recorder()
    if request.param == "memory":
        clock = FakeClock()
        broker: Broker = MemoryBroker(meta_ttl=3600, sweep_interval=0, clock=clock)
        b = Backend("memory", broker, handler, clock=clock)
    else:
        from hubbub.brokers.sharded import create_redis_broker

        fixture = {"redis": "redis_server", "redis-shards": "redis_shards",
                   "redis-cluster": "redis_cluster", "redis-sentinel": "redis_sentinel"}[request.param]
        server = request.getfixturevalue(fixture)
        broker = create_redis_broker(server.url, prefix=f"contract{next(_prefixes)}", timeout=1.0)
        b = Backend(request.param, broker, handler, server=server)
    await broker.start(handler)
    assert broker.healthy
    try:
        yield b
    finally:
        await broker.close()
        await broker.close()  # idempotent


# -- delivery ---------------------------------------------------------------------------------


async def test_publication_reaches_handler_with_every_field(backend: Backend) -> None:
    broker, rec = backend.broker, backend.handler
    await broker.subscribe("c")
    info = ClientInfo("conn-1", "alice", b'{"name":"A"}', b'{"role":"x"}')
    pub = Publication(b'{"text": "hi\\n", "n": [1, 2]}', info=info, tags={"k": "v"}, exclude_client="conn-2")
    position = await broker.publish("c", pub)
    assert position == StreamPosition()
    got = await rec.next_pub("c")
    assert got == pub and got.offset == 0

    relayed = Publication(b'"bin"', raw=b"\xff\x00\n\x80 end", binary=True)
    await broker.publish("c", relayed)
    assert await rec.next_pub("c") == relayed
    text = Publication(b'"not json"', raw="not json \u2603".encode())
    await broker.publish("c", text)
    assert await rec.next_pub("c") == text


async def test_publications_keep_their_order_per_channel(backend: Backend) -> None:
    broker, rec = backend.broker, backend.handler
    await broker.subscribe("plain")
    await broker.subscribe("stream")
    for i in range(200):
        await broker.publish("plain", Publication(str(i).encode()))
    assert [(await rec.next_pub("plain")).data for _ in range(200)] == [str(i).encode() for i in range(200)]

    # concurrent publishers: delivery order is the order of the offsets
    positions = await asyncio.gather(*(
        broker.publish("stream", Publication(str(i).encode()), history_size=1000, history_ttl=60)
        for i in range(200)
    ))
    assert sorted(p.offset for p in positions) == list(range(1, 201))
    sent = {p.offset: str(i).encode() for i, p in enumerate(positions)}
    got = [await rec.next_pub("stream") for _ in range(200)]
    assert [p.offset for p in got] == list(range(1, 201))
    assert all(p.data == sent[p.offset] for p in got)


async def test_subscribe_called_after_unsubscribe_ends_subscribed(backend: Backend) -> None:
    broker, rec = backend.broker, backend.handler
    await broker.subscribe("flip")
    pending = broker.unsubscribe("flip")  # called first, run later (as the hub's background task)
    await broker.subscribe("flip")
    await pending
    await broker.publish("flip", Publication(b"1"))
    assert (await rec.next_pub("flip")).data == b"1"


async def test_join_and_leave_keep_order_with_publications(backend: Backend) -> None:
    broker, rec = backend.broker, backend.handler
    await broker.subscribe("room")
    info = ClientInfo("conn-9", "bob", b'{"a":1}')
    await broker.publish("room", Publication(b"1"), **HISTORY)
    await broker.publish_join("room", info)
    await broker.publish("room", Publication(b"2"), **HISTORY)
    await broker.publish_leave("room", info)
    events = [await rec.next() for _ in range(4)]
    assert [(e[0], e[1]) for e in events] == [("pub", "room"), ("join", "room"), ("pub", "room"), ("leave", "room")]
    assert events[1][2] == info and events[3][2] == info
    assert [events[0][2].offset, events[2][2].offset] == [1, 2]


# -- streams: offsets, history, epochs -------------------------------------------------------------


async def test_offsets_increment_and_history_trims(backend: Backend) -> None:
    broker = backend.broker
    positions = [await broker.publish("h", Publication(str(i).encode()), history_size=5, history_ttl=60)
                 for i in range(1, 8)]
    assert [p.offset for p in positions] == list(range(1, 8))
    epoch = positions[0].epoch
    assert epoch and all(p.epoch == epoch for p in positions)

    async def offsets(**kw: Any) -> list[int]:
        result = await broker.history("h", **kw)
        assert result.position == StreamPosition(7, epoch)
        return [p.offset for p in result.publications]

    assert await offsets() == [3, 4, 5, 6, 7]  # trimmed to history_size
    assert [p.data for p in (await broker.history("h")).publications] == [b"3", b"4", b"5", b"6", b"7"]
    assert await offsets(limit=2) == [3, 4]
    assert await offsets(limit=2, reverse=True) == [7, 6]
    assert await offsets(reverse=True) == [7, 6, 5, 4, 3]
    assert await offsets(since=StreamPosition(5, epoch)) == [6, 7]
    assert await offsets(since=StreamPosition(5, epoch), limit=1) == [6]
    assert await offsets(since=StreamPosition(4, epoch), limit=2, reverse=True) == [7, 6]
    assert await offsets(since=StreamPosition(1, epoch)) == [3, 4, 5, 6, 7]  # 2 is gone: caller sees the hole
    assert await offsets(since=StreamPosition(7, epoch)) == []
    assert await offsets(since=StreamPosition(9, epoch)) == []
    assert await offsets(limit=0) == []


async def test_a_new_stream_has_an_epoch_before_its_first_publication(backend: Backend) -> None:
    broker = backend.broker
    first = (await broker.history("fresh", limit=0)).position
    assert first.offset == 0 and first.epoch
    assert (await broker.history("fresh")).position == first
    assert await broker.publish("fresh", Publication(b"1"), **HISTORY) == StreamPosition(1, first.epoch)


async def test_lost_stream_gets_a_new_epoch(backend: Backend) -> None:
    broker = backend.broker
    for i in range(3):
        old = await broker.publish("e", Publication(str(i).encode()), **HISTORY)
    assert old.offset == 3
    backend.lose_streams()
    top = (await broker.history("e")).position
    assert top.offset == 0 and top.epoch and top.epoch != old.epoch
    assert (await broker.history("e")).publications == []
    assert await broker.publish("e", Publication(b"x"), **HISTORY) == StreamPosition(1, top.epoch)


async def test_history_expires_but_the_position_stays(backend: Backend) -> None:
    broker = backend.broker
    position = await broker.publish("t", Publication(b"1"), history_size=10, history_ttl=0.2)

    async def empty() -> bool:
        return not (await broker.history("t")).publications

    await backend.until(empty)
    assert (await broker.history("t")).position == position
    assert (await broker.publish("t", Publication(b"2"), history_size=10, history_ttl=60)).offset == 2


async def test_remove_history_keeps_the_position(backend: Backend) -> None:
    broker = backend.broker
    for i in range(3):
        last = await broker.publish("r", Publication(str(i).encode()), **HISTORY)
    await broker.remove_history("r")
    result = await broker.history("r")
    assert result.publications == [] and result.position == last
    nxt = await broker.publish("r", Publication(b"x"), **HISTORY)
    assert nxt == StreamPosition(4, last.epoch)
    assert [p.offset for p in (await broker.history("r")).publications] == [4]


# -- idempotency ----------------------------------------------------------------------------------


async def test_idempotent_publish_is_stored_and_delivered_once(backend: Backend) -> None:
    broker, rec = backend.broker, backend.handler
    await broker.subscribe("i")
    positions = [await broker.publish("i", Publication(b'"once"'), idempotency_key="k1", **HISTORY)
                 for _ in range(3)]
    assert positions == [StreamPosition(1, positions[0].epoch)] * 3
    other = await broker.publish("i", Publication(b'"other"'), idempotency_key="k2", **HISTORY)
    assert other.offset == 2
    assert [p.data for p in (await broker.history("i")).publications] == [b'"once"', b'"other"']
    # delivered once: the next event after the first is the other key's publication
    assert [(await rec.next_pub("i")).data for _ in range(2)] == [b'"once"', b'"other"']

    # the same key in another channel is another publication
    assert (await broker.publish("i2", Publication(b"1"), idempotency_key="k1", **HISTORY)).offset == 1


async def test_idempotent_publish_without_history(backend: Backend) -> None:
    broker, rec = backend.broker, backend.handler
    await broker.subscribe("n")
    for _ in range(3):
        assert await broker.publish("n", Publication(b"1"), idempotency_key="k") == StreamPosition()
    await broker.publish("n", Publication(b"2"))
    assert [(await rec.next_pub("n")).data for _ in range(2)] == [b"1", b"2"]


# -- presence -------------------------------------------------------------------------------------------


async def test_presence_add_refresh_remove_and_stats(backend: Backend) -> None:
    broker = backend.broker
    a = ClientInfo("a", "alice", b'{"n":1}')
    b = ClientInfo("b", "bob")
    b2 = ClientInfo("b2", "bob", None, b'{"c":2}')
    anon = ClientInfo("x")
    for info in (a, b, b2, anon):
        await broker.add_presence("p", info, ttl=60)
    assert await broker.presence("p") == {"a": a, "b": b, "b2": b2, "x": anon}
    assert await broker.presence_stats("p") == (4, 3)
    a_new = ClientInfo("a", "alice", b'{"n":2}')
    await broker.add_presence("p", a_new, ttl=60)  # refresh replaces the info
    assert (await broker.presence("p"))["a"] == a_new
    await broker.remove_presence("p", "b")
    await broker.remove_presence("p", "nobody")
    assert await broker.presence_stats("p") == (3, 3)
    await broker.remove_presence("p", "x")
    assert await broker.presence_stats("p") == (2, 2)
    assert await broker.presence("empty") == {} and await broker.presence_stats("empty") == (0, 0)


async def test_presence_expires_unless_refreshed(backend: Backend) -> None:
    broker = backend.broker
    gone, kept, refreshed = ClientInfo("gone", "u1"), ClientInfo("kept", "u2"), ClientInfo("refreshed", "u3")
    await broker.add_presence("q", gone, ttl=0.3)
    await broker.add_presence("q", refreshed, ttl=0.3)
    await broker.add_presence("q", kept, ttl=60)
    await broker.add_presence("q", refreshed, ttl=60)

    async def expired() -> bool:
        return "gone" not in await broker.presence("q")

    await backend.until(expired)
    assert await broker.presence("q") == {"kept": kept, "refreshed": refreshed}
    assert await broker.presence_stats("q") == (2, 2)


# -- the backend goes away ------------------------------------------------------------------------------


async def test_backend_outage(backend: Backend) -> None:
    broker, rec = backend.broker, backend.handler
    if backend.server is None:
        assert broker.healthy  # the memory broker has no backend to lose
        pytest.skip("the memory broker has no backend that can go away")
    await broker.subscribe("o")
    await broker.subscribe("o2")
    assert (await broker.publish("o", Publication(b"1"), **HISTORY)).offset == 1
    assert (await rec.next_pub("o")).data == b"1"

    backend.server.stop()

    async def down() -> bool:
        return not broker.healthy

    await backend.until(down)
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: broker.publish("o", Publication(b"lost"), **HISTORY),
        lambda: broker.publish("o", Publication(b"lost")),
        lambda: broker.history("o"),
        lambda: broker.presence("o"),
        lambda: broker.presence_stats("o"),
        lambda: broker.add_presence("o", ClientInfo("c"), ttl=5),
        lambda: broker.remove_presence("o", "c"),
        lambda: broker.publish_join("o", ClientInfo("c")),
        lambda: broker.publish_leave("o", ClientInfo("c")),
        lambda: broker.remove_history("o"),
        lambda: broker.subscribe("new"),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await call()
        assert time.monotonic() - started < 1.0, "must fail fast"
    await broker.unsubscribe("o2")  # an outage does not make unsubscribing fail

    backend.server.start()  # same port, empty data
    await asyncio.wait_for(rec.reconnects.get(), TIMEOUT)  # once per server that came back

    async def up() -> bool:
        return broker.healthy

    await backend.until(up)
    # resubscribed: delivery works again, in a new epoch
    position = await broker.publish("o", Publication(b"2"), **HISTORY)
    assert position.offset == 1
    got = await rec.next_pub("o")
    assert (got.data, got.offset) == (b"2", 1)
    await broker.publish("o2", Publication(b"not wanted"))
    await broker.subscribe("new")
    await broker.publish("new", Publication(b"3"))
    assert (await rec.next_pub("new")).data == b"3"  # and nothing of "o2" before it
