"""The hub (``hubbub.hub``) without sockets: fan-out encodes once per wire and delivers in order,
one queue operation per subscriber per iteration, and subscriptions come and go cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from hubbub.brokers.base import Publication
from hubbub.brokers.memory import MemoryBroker
from hubbub.codes import ErrorCode
from hubbub.config import Config, NamespaceOptions
from hubbub.errors import ProtocolError
from hubbub.hub import Hub, Subscriber
from hubbub.outbox import FrameBatch

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
