"""Beyond one Redis: independent shards, Redis Cluster, Redis Sentinel (real
servers started by ``tests/redis_server.py``), with real protocol clients.

The broker contract runs against each topology in ``test_broker_contract.py``;
here are faults: a shard or a cluster master killed while publishing, and a
Sentinel failover. The rule in every case: an acknowledged publication is
delivered, or its subscriber is told (3010, then ``recovered: false``); a
publication to a server that is down is refused with a temporary error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hubbub.brokers import create_broker
from hubbub.brokers.base import Publication
from hubbub.brokers.redis import RedisBroker
from hubbub.brokers.sharded import RedisClusterBroker, ShardedRedisBroker
from hubbub.config import Config, NamespaceOptions
from hubbub.errors import BrokerUnavailable, ConfigError
from hubbub.hub import Hub
from hubbub.server import Server

from .conftest import TIMEOUT, ProtoClient, make_config, proto_client, until
from .redis_server import (  # noqa: F401
    RedisCluster,
    RedisGroup,
    RedisSentinel,
    redis_cluster,
    redis_cluster_replicated,
    redis_sentinel_replicated,
    redis_shards,
)
from .test_broker_contract import Recorder

CHAT = {"history_size": 1000, "history_ttl": 300.0, "force_recovery": True}


@pytest.fixture
async def servers() -> AsyncIterator[Any]:
    """``server = await servers(broker_url)``: in-process servers, each with its own broker."""
    started: list[Server] = []

    async def start(url: str) -> Server:
        config = make_config(broker=url, namespaces={"chat": NamespaceOptions(**CHAT)})
        server = Server(config, hub=Hub(config, create_broker(url)))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


async def pubs(client: ProtoClient, n: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < n:
        push = await client.next_push()
        if "pub" in push:
            got.append(push["pub"])
    return got


# -- the broker setting -----------------------------------------------------------------------------------------


def test_broker_urls() -> None:
    assert isinstance(create_broker("redis://127.0.0.1:1/0"), RedisBroker)
    shards = create_broker("redis://127.0.0.1:1/0, redis://127.0.0.1:2/0 redis://127.0.0.1:3/1")
    assert isinstance(shards, ShardedRedisBroker)
    assert isinstance(create_broker("redis+cluster://127.0.0.1:7000,127.0.0.1:7001?prefix=x"), RedisClusterBroker)
    sentinel = create_broker("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/2?prefix=x")
    assert isinstance(sentinel, RedisBroker) and sentinel.prefix == "x"
    for bad in ("redis://127.0.0.1:1/0,redis://127.0.0.1:1/0",  # the same server twice
                "redis://127.0.0.1:1/0,redis+cluster://127.0.0.1:2",
                "redis://127.0.0.1:1/0?prefix=a,redis://127.0.0.1:2/0?prefix=b",
                "redis+cluster://127.0.0.1:x",
                "redis+sentinel://127.0.0.1:26379",  # no master name
                "redis+sentinel://127.0.0.1:26379/m/0/extra"):
        with pytest.raises(ConfigError):
            create_broker(bad)
    for good in ("redis://a:1/0,redis://b:1/0", "redis+cluster://a:1,b:2", "redis+sentinel://a:1/m"):
        Config(broker=good).validate()
    with pytest.raises(ConfigError):
        Config(broker="redis://a:1/0,http://b").validate()


def test_shards_are_chosen_by_consistent_hashing() -> None:
    urls = [f"redis://127.0.0.1:{port}/0" for port in (1001, 1002, 1003)]
    three = ShardedRedisBroker(urls)
    reordered = ShardedRedisBroker(list(reversed(urls)))
    four = ShardedRedisBroker([*urls, "redis://127.0.0.1:1004/0"])
    channels = [f"c{i}" for i in range(3000)]
    placed = [three.shard_of(c) for c in channels]
    assert placed == [reordered.shard_of(c) for c in channels]  # the list's order does not matter
    counts = {a: placed.count(a) for a in set(placed)}
    assert len(counts) == 3 and min(counts.values()) > 800  # spread evenly
    moved = [c for c, a in zip(channels, placed, strict=True) if four.shard_of(c) != a]
    assert all(four.shard_of(c) == "127.0.0.1:1004/0" for c in moved)  # only to the new server
    assert 500 < len(moved) < 1000  # about a quarter


# -- independent shards --------------------------------------------------------------------------------------------


async def test_killing_one_shard_loses_nothing_acknowledged(redis_shards: RedisGroup, servers: Any,  # noqa: F811
                                                            clients: list) -> None:
    server = await servers(redis_shards.url)
    broker = server.hub.broker
    assert isinstance(broker, ShardedRedisBroker)
    victim = redis_shards.nodes[0]
    address = f"127.0.0.1:{victim.port}/0"
    doomed = next(f"chat:{i}" for i in range(1000) if broker.shard_of(f"chat:{i}") == address)
    safe = next(f"chat:{i}" for i in range(1000) if broker.shard_of(f"chat:{i}") != address)
    sub_doomed = await proto_client(server)
    sub_safe = await proto_client(server)
    producer = await proto_client(server)
    clients += [sub_doomed, sub_safe, producer]
    epoch = (await sub_doomed.call("subscribe", {"channel": doomed}))["subscribe"]["epoch"]
    await sub_safe.call("subscribe", {"channel": safe})
    for i in range(1, 4):
        for channel in (doomed, safe):
            assert (await producer.call("publish", {"channel": channel, "data": i}))["publish"]["offset"] == i
    assert [p["data"] for p in await pubs(sub_doomed, 3)] == [1, 2, 3]

    victim.stop()
    await until(lambda: not broker.healthy, "the broker sees the shard down", timeout=2 * TIMEOUT)
    refused = await producer.call("publish", {"channel": doomed, "data": 4})
    assert refused["error"]["code"] == 100 and refused["error"]["temporary"] is True
    acked = [3]
    for i in range(4, 10):  # the other shard carries on
        reply = await producer.call("publish", {"channel": safe, "data": i})
        assert reply["publish"]["offset"] == i
        acked.append(i)

    victim.start()  # empty: the doomed channel's stream starts again, in a new epoch
    code, _ = await sub_doomed.closed()
    assert code == 3010  # told, never given the new stream's offsets as if they followed 3
    again = await proto_client(server)
    clients.append(again)
    reply = (await again.call("subscribe", {"channel": doomed, "recover": True, "epoch": epoch,
                                            "offset": 3}))["subscribe"]
    assert reply.get("recovered", False) is False and reply["epoch"] != epoch
    # the safe channel's subscriber got every acknowledged publication, in order, never closed
    assert [(p["offset"], p["data"]) for p in await pubs(sub_safe, 9)] == [(i, i) for i in range(1, 10)]
    assert (await producer.call("publish", {"channel": doomed, "data": 5}))["publish"]["offset"] == 1


# -- Redis Cluster -----------------------------------------------------------------------------------------------


async def test_cluster_publications_reach_every_node_through_sharded_pubsub(
    redis_cluster: RedisCluster, servers: Any, clients: list  # noqa: F811
) -> None:
    a = await servers(redis_cluster.url)
    b = await servers(redis_cluster.url)
    broker = a.hub.broker
    assert isinstance(broker, RedisClusterBroker)
    channels = [f"chat:{i}" for i in range(12)]
    owners = {broker.slot_owner(c) for c in channels}
    assert len(owners) == 3  # spread over the three masters
    subs = [await proto_client(a) for _ in channels]
    producer = await proto_client(b)
    clients += [*subs, producer]
    for sub, channel in zip(subs, channels, strict=True):
        await sub.call("subscribe", {"channel": channel})
    for channel in channels:
        assert (await producer.call("publish", {"channel": channel, "data": channel}))["publish"]["offset"] == 1
    for sub, channel in zip(subs, channels, strict=True):
        assert [p["data"] for p in await pubs(sub, 1)] == [channel]
    # keys of one channel share a slot; the topic is sharded (no classic PUBLISH anywhere)
    for node in redis_cluster.nodes:
        stats = node.command("INFO", "commandstats")
        assert b"cmdstat_publish:" not in stats
    assert any(b"cmdstat_spublish:" in node.command("INFO", "commandstats") for node in redis_cluster.nodes)


async def test_killing_one_cluster_master_loses_nothing_acknowledged(
    redis_cluster: RedisCluster, servers: Any, clients: list  # noqa: F811
) -> None:
    server = await servers(redis_cluster.url)
    broker = server.hub.broker
    assert isinstance(broker, RedisClusterBroker)
    victim = redis_cluster.nodes[1]
    address = f"127.0.0.1:{victim.port}/0"
    doomed = next(f"chat:k{i}" for i in range(1000) if broker.slot_owner(f"chat:k{i}") == address)
    safe = next(f"chat:k{i}" for i in range(1000) if broker.slot_owner(f"chat:k{i}") != address)
    sub_doomed, sub_safe, producer = await proto_client(server), await proto_client(server), await proto_client(server)
    clients += [sub_doomed, sub_safe, producer]
    epoch = (await sub_doomed.call("subscribe", {"channel": doomed}))["subscribe"]["epoch"]
    await sub_safe.call("subscribe", {"channel": safe})
    for channel in (doomed, safe):
        assert (await producer.call("publish", {"channel": channel, "data": 1}))["publish"]["offset"] == 1
    assert [p["data"] for p in await pubs(sub_doomed, 1)] == [1]

    victim.stop()
    await until(lambda: not broker.healthy, "the broker sees the master down", timeout=2 * TIMEOUT)
    refused = await producer.call("publish", {"channel": doomed, "data": 2})
    assert refused["error"]["temporary"] is True
    acked = [1]
    for i in range(2, 6):  # the other masters answer (or refuse once the cluster says it is down)
        reply = await producer.call("publish", {"channel": safe, "data": i})
        if "publish" in reply:
            acked.append(i)
        else:
            assert reply["error"]["temporary"] is True

    victim.start()
    redis_cluster.wait_ok()
    code, _ = await sub_doomed.closed()
    assert code == 3010
    again = await proto_client(server)
    clients.append(again)
    reply = (await again.call("subscribe", {"channel": doomed, "recover": True, "epoch": epoch,
                                            "offset": 1}))["subscribe"]
    assert reply.get("recovered", False) is False and reply["epoch"] != epoch
    got = [p["data"] for p in await pubs(sub_safe, len(acked))]
    assert got == acked


# -- Redis Sentinel -------------------------------------------------------------------------------------------------


async def test_sentinel_failover_keeps_acknowledged_publications(
    redis_sentinel_replicated: RedisSentinel,  # noqa: F811
) -> None:
    """The master dies; the sentinel promotes the replica; the broker follows.
    Publications acknowledged and replicated before are still in the stream,
    in the same epoch; publishing goes on from the next offset."""
    setup = redis_sentinel_replicated
    rec = Recorder()
    broker = create_broker(setup.url)
    assert isinstance(broker, RedisBroker)
    await broker.start(rec)
    try:
        await broker.subscribe("f")
        positions = [await broker.publish("f", Publication(b"%d" % i), history_size=100, history_ttl=60)
                     for i in range(1, 6)]
        assert setup.replica is not None
        assert setup.master.command("WAIT", "1", "500") == b":1\r\n"  # replicated
        setup.fail_over()
        await asyncio.wait_for(rec.reconnects.get(), TIMEOUT * 2)
        assert broker.healthy
        history = await broker.history("f")
        assert history.position == positions[-1]
        assert [p.data for p in history.publications] == [b"1", b"2", b"3", b"4", b"5"]
        position = await broker.publish("f", Publication(b"6"), history_size=100, history_ttl=60)
        assert (position.offset, position.epoch) == (6, positions[0].epoch)
        seen = []
        while not seen or seen[-1] != 6:
            seen.append((await rec.next_pub("f")).offset)
        assert seen[-1] == 6
    finally:
        await broker.close()
    with pytest.raises(BrokerUnavailable):
        await broker.publish("f", Publication(b"7"))


async def test_cluster_failover_to_a_replica(redis_cluster_replicated: RedisCluster, servers: Any,  # noqa: F811
                                             clients: list) -> None:
    """A master with a replica dies; the cluster promotes the replica; the
    broker reads the new slot map, moves its subscription there, and the
    replicated stream goes on: the subscriber is never closed and gets the
    next offsets."""
    cluster = redis_cluster_replicated
    server = await servers(cluster.url)
    broker = server.hub.broker
    assert isinstance(broker, RedisClusterBroker)
    channel = "chat:failover"
    address = broker.slot_owner(channel)
    master = next(n for n in cluster.nodes if f"127.0.0.1:{n.port}/0" == address)
    sub, producer = await proto_client(server), await proto_client(server)
    clients += [sub, producer]
    await sub.call("subscribe", {"channel": channel})
    for i in (1, 2):
        assert (await producer.call("publish", {"channel": channel, "data": i}))["publish"]["offset"] == i
    assert master.command("WAIT", "1", "500") == b":1\r\n"  # the replica has both
    master.stop()
    await until(lambda: broker.slot_owner(channel) != address and broker.healthy, "the broker follows the failover", timeout=2 * TIMEOUT)
    reply: dict[str, Any] = {}
    async with asyncio.timeout(TIMEOUT * 2):
        while "publish" not in reply:  # refused (temporary) until the cluster is whole again
            reply = await producer.call("publish", {"channel": channel, "data": 3})
            if "error" in reply:
                assert reply["error"]["temporary"] is True
                await asyncio.sleep(0.05)
    assert reply["publish"]["offset"] == 3
    assert [(p["offset"], p["data"]) for p in await pubs(sub, 3)] == [(1, 1), (2, 2), (3, 3)]
