"""A client's publishes share the broker's pipeline: on Redis, a relay or
protocol client that sends many publishes at once does not wait one round
trip per publish, and its replies still come back in command order.

Before, each publish awaited its own round trip before the client's next
message was read, so a burst of 300 publishes took 300 round trips (and each
reached subscribers as its own write)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from hubbub.config import NamespaceOptions

from .conftest import TIMEOUT, proto_client, ws_url
from .redis_server import RedisServer, redis_server  # noqa: F401

BURST = 300


async def test_relay_burst_shares_round_trips_and_keeps_order(redis_server: RedisServer, start_server: Any) -> None:  # noqa: F811
    server = await start_server(broker=redis_server.url,
                                namespaces={"h": NamespaceOptions(history_size=1000, history_ttl=60)})
    stats = server.hub.stats
    async with websockets.connect(ws_url(server, "/ws/h:burst")) as consumer, \
            websockets.connect(ws_url(server, "/ws/h:burst") + "?echo=false") as producer:
        before = stats.broker_publish_round_trips
        await producer.send("m0")  # one alone first: both are subscribed
        assert await asyncio.wait_for(consumer.recv(), TIMEOUT) == "m0"
        for i in range(1, BURST):
            await producer.send(f"m{i}")
        got = [await asyncio.wait_for(consumer.recv(), TIMEOUT) for _ in range(1, BURST)]
    assert got == [f"m{i}" for i in range(1, BURST)]
    trips = stats.broker_publish_round_trips - before
    assert trips <= BURST // 3, f"{trips} round trips for {BURST} publishes"
    history = await server.hub.history("h:burst", limit=-1)
    assert [p["offset"] for p in history["publications"]] == list(range(1, BURST + 1))


async def test_protocol_publishes_in_flight_answer_in_command_order(redis_server: RedisServer, start_server: Any) -> None:  # noqa: F811
    server = await start_server(broker=redis_server.url, namespaces={
        "h": NamespaceOptions(history_size=1000, history_ttl=60, allow_publish_for_client=True),
        "closed": NamespaceOptions(allow_publish_for_client=False),
    })
    stats = server.hub.stats
    client = await proto_client(server)
    before = stats.broker_publish_round_trips
    commands = []
    for i in range(1, BURST + 1):
        channel = "closed:x" if i % 50 == 0 else "h:p"  # refused ones, in the middle of the burst
        commands.append({"id": i, "publish": {"channel": channel, "data": {"n": i}}})
    commands.append({"id": BURST + 1, "presence_stats": {"channel": "h:p"}})  # not a publish: after them all
    for command in commands:  # one command per message, as SDKs send them
        await client.ws.send(json.dumps(command))
    replies = [await client.recv() for _ in commands]
    assert [r["id"] for r in replies] == list(range(1, BURST + 2))
    offsets = []
    for reply in replies[:-1]:
        if reply["id"] % 50 == 0:
            assert reply["error"]["code"] == 103
        else:
            offsets.append(reply["publish"]["offset"])
    assert offsets == list(range(1, len(offsets) + 1))
    assert replies[-1]["error"]["code"] == 108  # no presence in the namespace, answered last
    trips = stats.broker_publish_round_trips - before
    assert trips <= BURST // 3, f"{trips} round trips for {BURST} publishes"


async def test_relay_publish_refused_by_the_broker_closes_1013(redis_server: RedisServer, start_server: Any) -> None:  # noqa: F811
    """A publish in flight that the broker refuses closes the relay client
    with 1013 (try again), as a publish that was awaited did."""
    server = await start_server(broker=redis_server.url)
    async with websockets.connect(ws_url(server, "/ws/gone")) as ws:
        await ws.send("first")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "first"
        redis_server.stop()
        try:
            for i in range(50):
                await ws.send(f"lost {i}")
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
        finally:
            redis_server.start()
        assert ws.close_code == 1013


async def test_publishes_in_flight_need_no_task_each(redis_server: RedisServer, start_server: Any) -> None:  # noqa: F811
    """The broker calls back when it answered: a burst of publishes (relay and
    protocol) starts no task per publish (each took a task and two more loop
    iterations before its reply could leave)."""
    server = await start_server(broker=redis_server.url, namespaces={
        "h": NamespaceOptions(history_size=1000, history_ttl=60, allow_publish_for_client=True),
    })
    loop = asyncio.get_running_loop()
    created = 0
    previous = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        nonlocal created
        code = getattr(coro, "cr_code", None)
        if code is not None and "/hubbub/" in code.co_filename.replace("\\", "/"):
            created += 1  # the server's (the test's own clients make tasks too)
        return previous(loop, coro, **kw) if previous is not None else asyncio.Task(coro, loop=loop, **kw)

    client = await proto_client(server)
    async with websockets.connect(ws_url(server, "/ws/h:relay")) as relay:
        await relay.send("warm")  # the broker's writer task exists before counting
        assert await asyncio.wait_for(relay.recv(), TIMEOUT) == "warm"
        loop.set_task_factory(counting)
        try:
            for i in range(BURST):
                await relay.send(f"m{i}")
            for i in range(1, BURST + 1):
                await client.ws.send(json.dumps({"id": i, "publish": {"channel": "h:p", "data": i}}))
            got = [await asyncio.wait_for(relay.recv(), TIMEOUT) for _ in range(BURST)]
            replies = [await client.recv() for _ in range(BURST)]
        finally:
            loop.set_task_factory(previous)
    assert got == [f"m{i}" for i in range(BURST)]
    assert [r["publish"]["offset"] for r in replies] == list(range(1, BURST + 1))
    assert created < BURST // 10, f"{created} server tasks for {2 * BURST} publishes"
