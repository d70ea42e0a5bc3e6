"""The hub (``hubbub.hub``) without sockets: fan-out encodes once per wire and delivers in order,
one queue operation per subscriber per iteration, and subscriptions come and go cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from hubbub.brokers.base import HistoryResult, Publication, StreamPosition
from hubbub.brokers.memory import MemoryBroker
from hubbub.codes import ErrorCode
from hubbub.config import Config, NamespaceOptions
from hubbub.errors import BrokerError, ProtocolError
from hubbub.hub import Hub, Subscriber
from hubbub.outbox import FrameBatch

from .conftest import TIMEOUT, until

NS = NamespaceOptions()


@dataclass(eq=False)
class CountingWire:
    """A wire that counts what it encodes (hashable by identity, as the hub needs)."""

    name: str
    joinable: bool = True
    encoded: list[bytes] = field(default_factory=list)

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        self.encoded.append(pub.data)
        return self.name.encode() + b":" + pub.data + b";"

    def encode_join(self, channel: str, info: object) -> None:
        return None

    def encode_leave(self, channel: str, info: object) -> None:
        return None

    __hash__ = object.__hash__


@dataclass
class Inbox:
    """What one subscriber was handed: queue operations and the frames in them."""

    calls: int = 0
    frames: list[bytes] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)

    def deliver(self, frame: bytes | FrameBatch) -> None:
        self.calls += 1
        if isinstance(frame, FrameBatch):
            self.frames.append(frame.frames)  # type: ignore[arg-type]  # the batch's list, read at the end
        else:
            self.frames.append([frame])  # type: ignore[list-item]

    def received(self) -> list[bytes]:
        return [f for group in self.frames for f in group]  # type: ignore[union-attr]


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    h = Hub(Config(), MemoryBroker())
    await h.start()
    yield h
    await h.close()


async def subscribe(hub: Hub, channel: str, client_id: str, wire: CountingWire) -> Inbox:
    inbox = Inbox()
    await hub.subscribe(channel, Subscriber(client_id, wire, inbox.deliver, inbox.closed.append), ns=NS)
    return inbox


async def test_a_burst_is_encoded_once_per_wire_and_queued_once_per_subscriber(hub: Hub) -> None:
    json_wire, relay_wire = CountingWire("j"), CountingWire("r")
    inboxes = [await subscribe(hub, "news", f"c{i}", json_wire if i % 2 else relay_wire) for i in range(50)]
    data = [b'{"n":%d}' % i for i in range(20)]
    for d in data:  # one loop iteration: no await between publishes
        hub.on_publication("news", Publication(d))
    assert json_wire.encoded == data and relay_wire.encoded == data  # once per wire, not per subscriber
    for i, inbox in enumerate(inboxes):
        name = b"j" if i % 2 else b"r"
        assert inbox.calls == 1  # the burst shares one FrameBatch
        assert inbox.received() == [name + b":" + d + b";" for d in data]  # all, in order


async def test_a_written_batch_is_closed_and_later_publications_start_a_new_one(hub: Hub) -> None:
    wire = CountingWire("j")
    inbox, batches = Inbox(), []

    def deliver(frame: bytes | FrameBatch) -> None:
        assert isinstance(frame, FrameBatch)
        batches.append(frame)
        inbox.deliver(frame)

    await hub.subscribe("news", Subscriber("c1", wire, deliver, inbox.closed.append), ns=NS)
    hub.on_publication("news", Publication(b"1"))
    hub.on_publication("news", Publication(b"2"))
    assert batches[0].join() == b"j:1;j:2;"  # a connection wrote it: it takes no more frames
    hub.on_publication("news", Publication(b"3"))
    assert inbox.calls == 2 and batches[1].frames == [b"j:3;"]


async def test_excluded_publisher_gets_nothing(hub: Hub) -> None:
    wire = CountingWire("j")
    me, other = await subscribe(hub, "news", "me", wire), await subscribe(hub, "news", "other", wire)
    hub.on_publication("news", Publication(b"1", exclude_client="me"))
    assert me.received() == [] and other.received() == [b"j:1;"]


async def test_second_subscription_of_a_client_is_105_and_unsubscribe_drops_the_channel(hub: Hub) -> None:
    wire = CountingWire("j")
    await subscribe(hub, "news", "c1", wire)
    with pytest.raises(ProtocolError) as info:
        await subscribe(hub, "news", "c1", wire)
    assert info.value.code == ErrorCode.ALREADY_SUBSCRIBED
    assert hub.channels() == {"news": 1}
    assert hub.unsubscribe("news", "c1")
    assert not hub.unsubscribe("news", "c1")
    assert hub.channels() == {}


async def test_published_through_the_broker_reaches_local_subscribers(hub: Hub) -> None:
    wire = CountingWire("j")
    inbox = await subscribe(hub, "news", "c1", wire)
    await hub.publish("news", Publication(b'"hi"'))
    assert inbox.received() == [b'j:"hi";']


async def test_publishing_on_a_hub_that_is_not_running_raises_not_started() -> None:
    """A never-started hub answered ``StreamPosition(offset=0, epoch='')``, as if
    published, and nobody received anything (issue 28). Now it raises, saying what to start."""
    from hubbub.errors import HubbubError, NotStarted

    hub = Hub(Config(), MemoryBroker())
    with pytest.raises(NotStarted, match="never started") as raised:
        await hub.publish("news", {"headline": "lost"})
    assert isinstance(raised.value, HubbubError)
    assert "hubbub run" in str(raised.value) and "await hub.start()" in str(raised.value)
    with pytest.raises(NotStarted):
        hub.publish_nowait("news", Publication(b"1"), lambda position, exc: None)
    await hub.start()
    wire = CountingWire("j")
    inbox = await subscribe(hub, "news", "c1", wire)
    await hub.publish("news", {"headline": "kept"})
    assert inbox.received() == [b'j:{"headline":"kept"};']
    await hub.close()
    with pytest.raises(NotStarted, match="was stopped"):
        await hub.publish("news", 1)


class LaggingHub(Hub):
    """A hub whose broker's pub/sub delivery lags behind its stream (Redis: history
    is read on another connection than pub/sub): publications wait in ``held``."""

    held: list[tuple[str, Publication]] | None = None

    def on_publication(self, channel: str, pub: Publication) -> None:
        if self.held is not None:
            self.held.append((channel, pub))
            return
        super().on_publication(channel, pub)


async def test_subscribers_that_read_the_stream_ahead_of_pub_sub_do_not_get_a_publication_twice() -> None:
    """Two clients subscribe while pub/sub lags: both read offset 1 from the stream.
    When pub/sub delivers 1, neither may get it again (the second one did: the check
    compared with the first one's read, not with what pub/sub had delivered; workload 8
    with recovery counted 26 duplicates)."""
    history = NamespaceOptions(history_size=10, history_ttl=60)
    hub = LaggingHub(Config(channels=history), MemoryBroker())
    await hub.start()
    try:
        wire = CountingWire("j")
        first = Inbox()
        await hub.subscribe("news", Subscriber("c0", wire, first.deliver, first.closed.append), ns=history)
        hub.held = []
        await hub.publish("news", Publication(b"1"))
        late = [Inbox(), Inbox()]
        results = [await hub.subscribe("news", Subscriber(f"c{i + 1}", wire, inbox.deliver, inbox.closed.append),
                                       ns=history) for i, inbox in enumerate(late)]
        assert [r.position.offset for r in results] == [1, 1]  # both have 1 from the read
        held, hub.held = hub.held, None
        for channel, pub in held:
            hub.on_publication(channel, pub)
        await hub.publish("news", Publication(b"2"))
        assert first.received() == [b"j:1;", b"j:2;"]
        assert [inbox.received() for inbox in late] == [[b"j:2;"], [b"j:2;"]]
    finally:
        await hub.close()


# -- recovery: one stream read shared by the subscribers that recover at the same time ----------------------


class GatedBroker(MemoryBroker):
    """A memory broker whose stream reads are counted and, while ``gate`` is set,
    answered only when it opens. The stream is read when the call is made (Redis runs
    the script when the command arrives); only the answer waits."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int | None, int | None]] = []  # (since offset, limit) of each read
        self.gate: asyncio.Event | None = None
        self.fail: BrokerError | None = None

    async def history(self, channel: str, *, since: StreamPosition | None = None, limit: int | None = None,
                      reverse: bool = False, history_ttl: float = 0.0) -> HistoryResult:
        self.reads.append((None if since is None else since.offset, limit))
        result = await super().history(channel, since=since, limit=limit, reverse=reverse, history_ttl=history_ttl)
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), TIMEOUT)
        if self.fail is not None:
            raise self.fail
        return result


HISTORY = NamespaceOptions(history_size=10, history_ttl=60)


async def recovering_hub() -> tuple[Hub, GatedBroker, StreamPosition]:
    """A hub whose channel "news" holds publications 1..8 of a stream with history size 10."""
    broker = GatedBroker()
    hub = Hub(Config(channels=HISTORY), broker)
    await hub.start()
    for i in range(1, 9):
        await hub.publish("news", Publication(b"%d" % i))
    position = (await broker.history("news", limit=0)).position
    broker.reads.clear()
    return hub, broker, position


def recover(hub: Hub, client_id: str, since: StreamPosition, wire: CountingWire) -> Any:
    inbox = Inbox()
    return hub.subscribe("news", Subscriber(client_id, wire, inbox.deliver, inbox.closed.append, recoverable=True),
                         ns=HISTORY, recover_since=since)


async def test_concurrent_recoveries_share_one_stream_read_and_each_takes_its_own_slice() -> None:
    """Workload 8 with recovery: 15,000 clients read and decoded the same publications,
    one Redis round trip each (25 % of the storm's CPU). Those that recover together
    share one read, from the smallest offset among them."""
    hub, broker, top = await recovering_hub()
    try:
        wire = CountingWire("j")
        await recover(hub, "warm", top, wire)  # the channel exists: the next ones only read the stream
        broker.reads.clear()
        offsets = [8, 7, 5, 3, 1, 0, 5]
        results = await asyncio.gather(
            *[recover(hub, f"c{i}", StreamPosition(o, top.epoch), wire) for i, o in enumerate(offsets)],
            recover(hub, "other-epoch", StreamPosition(3, "not-" + top.epoch), wire),
            recover(hub, "ahead", StreamPosition(9, top.epoch), wire),
            hub.subscribe("news", Subscriber("plain", wire, Inbox().deliver, Inbox().closed.append), ns=HISTORY),
        )
        assert broker.reads == [(0, None)]  # one read for all ten, from the smallest offset
        for offset, result in zip(offsets, results[:len(offsets)], strict=True):
            assert result.recovered is True
            assert [p.offset for p in result.publications] == list(range(offset + 1, 9))
            assert result.position == top
        other, ahead, plain = results[-3:]
        assert other.recovered is False and other.publications == []
        assert ahead.recovered is False and ahead.publications == []
        assert plain.position == top and plain.publications == []
        # the same Publication objects (decoded once), each subscriber its own list
        assert results[5].publications[3] is results[4].publications[2]
        assert results[5].publications is not results[3].publications
    finally:
        await hub.close()


async def test_a_subscriber_that_comes_after_a_read_was_sent_does_not_join_it() -> None:
    """A publication between a read already sent and a later subscriber's buffer start
    is neither in that read nor in that buffer: the later subscriber must wait for the
    next read (joining the sent one loses the publication)."""
    hub, broker, top = await recovering_hub()
    try:
        wire = CountingWire("j")
        await recover(hub, "warm", top, wire)
        broker.reads.clear()
        broker.gate = asyncio.Event()
        early = [asyncio.ensure_future(recover(hub, f"e{i}", StreamPosition(6, top.epoch), wire)) for i in range(2)]
        await until(lambda: len(broker.reads) >= 1, "the first read sent")
        await hub.publish("news", Publication(b"9"))  # after that read, before the late ones subscribe
        late = [asyncio.ensure_future(recover(hub, f"l{i}", StreamPosition(7, top.epoch), wire)) for i in range(2)]
        await asyncio.sleep(0)  # the late ones are waiting (no read of theirs can be sent while one is in flight)
        assert len(broker.reads) == 1
        broker.gate.set()
        early_results = await asyncio.gather(*early)
        late_results = await asyncio.gather(*late)
        for result in early_results:  # 9 came through their buffers, after their read
            assert result.recovered is True
            assert [p.offset for p in result.publications] == [7, 8]
            assert [p.offset for p in result.late] == [9]
        for result in late_results:  # 9 is in their own read
            assert result.recovered is True
            assert [p.offset for p in result.publications + result.late] == [8, 9]
            assert result.position.offset == 9
        assert broker.reads == [(6, None), (7, None)]  # one read per group
    finally:
        broker.gate = None
        await hub.close()


async def test_a_failed_shared_read_fails_every_joiner_and_one_gone_joiner_cancels_nothing() -> None:
    hub, broker, top = await recovering_hub()
    try:
        wire = CountingWire("j")
        await recover(hub, "warm", top, wire)
        broker.reads.clear()
        broker.gate, broker.fail = asyncio.Event(), BrokerError("redis history failed")
        joiners = [asyncio.ensure_future(recover(hub, f"c{i}", StreamPosition(2, top.epoch), wire)) for i in range(3)]
        await until(lambda: len(broker.reads) >= 1, "the read sent")
        joiners[0].cancel()  # its client went away: the others still get the read's outcome
        broker.gate.set()
        outcomes = await asyncio.gather(*joiners, return_exceptions=True)
        assert isinstance(outcomes[0], asyncio.CancelledError)
        for exc in outcomes[1:]:
            assert isinstance(exc, ProtocolError) and exc.code == ErrorCode.INTERNAL and exc.temporary
            assert "redis history failed" in exc.message
        assert hub.channels() == {"news": 1}  # only "warm": the failed ones were not added
        broker.fail = None
        result = await recover(hub, "again", StreamPosition(2, top.epoch), wire)
        assert [p.offset for p in result.publications] == [3, 4, 5, 6, 7, 8]
    finally:
        broker.gate = None
        await hub.close()
