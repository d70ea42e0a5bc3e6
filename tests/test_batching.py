"""Shared frame batches: a burst on a channel is queued once per subscriber per
loop iteration, without reordering, losing or leaking a publication."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hubbub.brokers.base import Publication
from hubbub.brokers.memory import MemoryBroker
from hubbub.config import Config
from hubbub.connection import WebSocketFrames
from hubbub.hub import Hub, Subscriber
from hubbub.outbox import FrameBatch
from hubbub.relay import RelayWire
from hubbub.server import Server

from .conftest import TIMEOUT, proto_client
from .test_fuzz import split_frames


class Recorder:
    """A subscriber's queue, written the way Connection.flush writes it."""

    def __init__(self, hub: Hub, client_id: str, wire: RelayWire) -> None:
        self.queue: list[Any] = []
        self.sub = Subscriber(client_id, wire, self.queue.append, lambda code: None)

    def written(self) -> list[bytes]:
        data = b"".join(item.join() if isinstance(item, FrameBatch) else item for item in self.queue)
        self.queue.clear()
        return [json.loads(frame[2:]) for frame in split_frames(data)]


async def hub_with(*names: str) -> tuple[Hub, dict[str, Recorder]]:
    hub = Hub(Config(), MemoryBroker())
    await hub.start()
    wire = RelayWire(WebSocketFrames())
    recorders = {name: Recorder(hub, name, wire) for name in names}
    return hub, recorders


async def test_a_burst_is_one_queue_operation_per_subscriber() -> None:
    hub, r = await hub_with("a", "b")
    for rec in r.values():
        await hub.subscribe("c", rec.sub, ns=hub.namespace("c"))
    for i in range(100):  # one loop iteration: the memory broker never yields
        await hub.publish("c", i)
    assert [len(rec.queue) for rec in r.values()] == [1, 1]
    assert r["a"].written() == list(range(100)) and r["b"].written() == list(range(100))
    await hub.publish("c", "after the write")  # the written batch is closed: a new one starts
    assert r["a"].written() == ["after the write"]
    await hub.close()


async def test_a_subscriber_that_joins_mid_burst_gets_only_what_follows() -> None:
    hub, r = await hub_with("early", "late")
    await hub.subscribe("c", r["early"].sub, ns=hub.namespace("c"))
    await hub.publish("c", 1)
    await hub.subscribe("c", r["late"].sub, ns=hub.namespace("c"))
    await hub.publish("c", 2)
    assert r["early"].written() == [1, 2]
    assert r["late"].written() == [2]
    await hub.close()


async def test_a_subscriber_that_leaves_mid_burst_gets_nothing_after() -> None:
    hub, r = await hub_with("stays", "leaves")
    for rec in r.values():
        await hub.subscribe("c", rec.sub, ns=hub.namespace("c"))
    await hub.publish("c", 1)
    hub.unsubscribe("c", "leaves")
    await hub.publish("c", 2)
    assert r["leaves"].written() == [1]
    assert r["stays"].written() == [1, 2]
    await hub.close()


async def test_exclude_sender_mid_burst_keeps_the_order() -> None:
    hub, r = await hub_with("a", "b")
    for rec in r.values():
        await hub.subscribe("c", rec.sub, ns=hub.namespace("c"))
    await hub.publish("c", 1)
    await hub.publish("c", Publication(b"2", exclude_client="a"))
    await hub.publish("c", 3)
    assert r["b"].written() == [1, 2, 3]
    assert r["a"].written() == [1, 3]
    await hub.close()


async def test_a_burst_past_the_limit_is_caught_when_written(start_server, clients: list) -> None:
    server: Server = await start_server(max_pending_output=64 * 1024)
    small, big = await proto_client(server), await proto_client(server)
    clients += [small, big]
    await small.call("subscribe", {"channel": "small"})
    await big.call("subscribe", {"channel": "big"})
    for i in range(10):  # 10 KB in one iteration: under the limit
        await server.hub.publish("small", {"i": i, "p": "x" * 1000})
    for i in range(200):  # 200 KB in one iteration, queued as one batch of one entry
        await server.hub.publish("big", {"i": i, "p": "x" * 1000})
    assert [(await small.next_push())["pub"]["data"]["i"] for _ in range(10)] == list(range(10))
    assert (await big.closed())[0] == 3008
    assert server.slow_closed == 1
    await asyncio.wait_for(small.call("ping"), TIMEOUT)
