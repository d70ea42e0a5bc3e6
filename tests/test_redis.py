"""The Redis broker with a real ``redis-server``: several nodes, outages, and
``hubbub serve`` processes that share one Redis.

The broker contract itself is tested in ``test_broker_contract.py``; here are
what only Redis has: one pub/sub connection per node, nodes that see each
other's publications, presence and streams, and what happens when Redis (or
the pub/sub connection) goes away and comes back.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets
from redis import exceptions as redis_errors

from hubbub.brokers import create_broker
from hubbub.brokers.base import ClientInfo, HistoryResult, Publication, StreamPosition
from hubbub.brokers.redis import RedisBroker
from hubbub.config import Config, NamespaceOptions
from hubbub.errors import BrokerUnavailable, ConfigError
from hubbub.hub import Hub, Subscriber
from hubbub.server import Server

from .conftest import TIMEOUT, ProtoClient, ServeProcess, make_config, proto_client, until
from .redis_server import RedisServer, redis_server  # noqa: F401
from .test_broker_contract import Recorder
from .test_hub import CountingWire

CHAT = {"history_size": 100, "history_ttl": 300.0, "presence": True, "join_leave": True, "force_recovery": True}
CHAT_TOML = """
[namespaces.chat]
history_size = 100
history_ttl = 300
presence = true
join_leave = true
force_recovery = true
"""


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    """A plain redis-py client to look at what the brokers did."""
    client = aioredis.Redis.from_url(redis_server.url, protocol=2)
    yield client
    await client.aclose()


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[Any]:  # noqa: F811
    """Start Redis brokers (nodes) with recorders: ``broker, rec = await nodes()``."""
    started: list[RedisBroker] = []

    async def start(**kw: Any) -> tuple[RedisBroker, Recorder]:
        broker = RedisBroker(redis_server.url, **kw)
        rec = Recorder()
        await broker.start(rec)
        started.append(broker)
        return broker, rec

    yield start
    for broker in started:
        await broker.close()


# -- one node, Redis specifics -------------------------------------------------------------------------


def test_create_broker_and_bad_urls(redis_server: RedisServer) -> None:  # noqa: F811
    assert isinstance(create_broker(redis_server.url), RedisBroker)
    with pytest.raises(ConfigError):
        RedisBroker("http://example.com")
    with pytest.raises(ConfigError):
        RedisBroker(redis_server.url, prefix="")
    with pytest.raises(ConfigError):
        RedisBroker(redis_server.url, timeout=0)
    with pytest.raises(ConfigError):
        RedisBroker(redis_server.url + "?prefix=")


async def test_prefix_from_the_url(redis_server: RedisServer, redis_client: aioredis.Redis) -> None:  # noqa: F811
    broker = create_broker(redis_server.url + "?prefix=tenant7")
    await broker.start(Recorder())
    try:
        await broker.publish("c", Publication(b"1"), history_size=1, history_ttl=60)
    finally:
        await broker.close()
    assert sorted(await redis_client.keys("*")) == [b"tenant7.history.c", b"tenant7.meta.c"]


async def test_one_pubsub_connection_for_all_channels(nodes: Any, redis_client: aioredis.Redis) -> None:
    broker, _ = await nodes()
    for i in range(50):
        await broker.subscribe(f"c{i}")
    pubsub_clients = (await redis_client.execute_command("CLIENT LIST TYPE pubsub")).decode().splitlines()
    assert len(pubsub_clients) == 1, pubsub_clients
    assert "sub=50" in pubsub_clients[0]
    await broker.unsubscribe("c0")
    assert await redis_client.pubsub_numsub("hubbub.ch.c0", "hubbub.ch.c1") == [
        (b"hubbub.ch.c0", 0), (b"hubbub.ch.c1", 1)
    ]


async def test_keys_are_prefixed_and_expire(nodes: Any, redis_client: aioredis.Redis) -> None:
    broker, _ = await nodes(prefix="app1")
    await broker.publish("x", Publication(b"1"), history_size=5, history_ttl=60, idempotency_key="k")
    await broker.add_presence("x", ClientInfo("c"), ttl=30)
    keys = sorted(k.decode() for k in await redis_client.keys("*"))
    assert keys == ["app1.history.x", "app1.idem.1.x.k", "app1.meta.x", "app1.presence.data.x",
                    "app1.presence.expire.x"]
    for key in keys:
        assert 0 < await redis_client.pttl(key) <= 86400_000, key  # nothing lives forever
    assert await redis_client.hget("app1.meta.x", "s") == b"1"


async def test_one_round_trip_per_publication(nodes: Any, redis_client: aioredis.Redis) -> None:
    broker, _ = await nodes()
    await broker.publish("warm", Publication(b"0"), history_size=5, history_ttl=60)  # scripts are loaded
    await redis_client.config_resetstat()
    for i in range(10):
        await broker.publish("r", Publication(b"1"), history_size=5, history_ttl=60, idempotency_key=str(i))
    for _ in range(10):
        await broker.publish("r", Publication(b"1"))
    stats = await redis_client.info("commandstats")
    # from the broker: one EVALSHA per publication with history, one PUBLISH without
    # (the script's inner commands are counted too, so PUBLISH shows 10 + 10)
    assert stats["cmdstat_evalsha"]["calls"] == 10
    assert stats["cmdstat_publish"]["calls"] == 20
    assert "cmdstat_eval" not in stats and "cmdstat_script|load" not in stats


async def test_nodes_share_publications_streams_and_presence(nodes: Any, redis_client: aioredis.Redis) -> None:
    a, rec_a = await nodes()
    b, rec_b = await nodes()
    await a.subscribe("room")
    position = await b.publish("room", Publication(b'{"n":1}', info=ClientInfo("cb", "bob")), history_size=10,
                               history_ttl=60)
    got = await rec_a.next_pub("room")
    assert (got.data, got.offset, got.info) == (b'{"n":1}', 1, ClientInfo("cb", "bob"))
    assert (await a.history("room")).position == position  # one stream for both
    await b.publish_join("room", ClientInfo("cb", "bob"))
    assert await rec_a.next() == ("join", "room", ClientInfo("cb", "bob"))
    await a.add_presence("room", ClientInfo("ca", "alice"), ttl=30)
    await b.add_presence("room", ClientInfo("cb", "bob"), ttl=30)
    assert set(await b.presence("room")) == {"ca", "cb"}
    assert await a.presence_stats("room") == (2, 2)
    # a node that stopped wanting the channel gets nothing more
    await a.unsubscribe("room")
    await a.subscribe("other")
    await b.publish("room", Publication(b"2"))
    await b.publish("other", Publication(b"3"))
    assert (await rec_a.next_pub("other")).data == b"3"
    assert rec_b.events.empty()  # b never subscribed


async def test_handler_errors_do_not_stop_delivery(nodes: Any) -> None:
    broker, rec = await nodes()
    original = rec.on_publication

    def flaky(channel: str, pub: Publication) -> None:
        if pub.data == b"boom":
            raise RuntimeError("handler bug")
        original(channel, pub)

    rec.on_publication = flaky  # type: ignore[method-assign]
    await broker.subscribe("c")
    await broker.publish("c", Publication(b"boom"))
    await broker.publish("c", Publication(b"ok"))
    assert (await rec.next_pub("c")).data == b"ok"


async def test_start_while_redis_is_down(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger="hubbub.broker")
    redis_server.stop()
    broker = RedisBroker(redis_server.url, connect_timeout=0.5, timeout=0.5)
    rec = Recorder()
    try:
        async with asyncio.timeout(3):
            await broker.start(rec)  # does not raise: the node serves and retries
        assert not broker.healthy
        with pytest.raises(BrokerUnavailable):
            await broker.publish("c", Publication(b"1"))
        with pytest.raises(BrokerUnavailable):
            await broker.subscribe("c")
        redis_server.start()
        await asyncio.wait_for(rec.reconnects.get(), TIMEOUT)
        assert broker.healthy
        await broker.subscribe("c")
        await broker.publish("c", Publication(b"1"))
        assert (await rec.next_pub("c")).data == b"1"
    finally:
        await broker.close()
    assert not [t for t in asyncio.all_tasks() if "redis" in t.get_name()], "close() leaves no task"
    lines = [r.getMessage() for r in caplog.records if r.name == "hubbub.broker"]
    assert any("unavailable" in line for line in lines) and any("is back" in line for line in lines), lines


async def test_killed_pubsub_connection_reconnects_and_resubscribes(
    nodes: Any, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hubbub.broker")
    broker, rec = await nodes()
    await broker.subscribe("k")
    await redis_client.execute_command("CLIENT KILL TYPE pubsub")
    await asyncio.wait_for(rec.reconnects.get(), TIMEOUT)
    assert broker.healthy
    await broker.publish("k", Publication(b"again"))
    assert (await rec.next_pub("k")).data == b"again"
    lines = [r.getMessage() for r in caplog.records if r.name == "hubbub.broker"]
    assert sum("lost" in line for line in lines) == 1 and sum("is back" in line for line in lines) == 1, lines


async def test_silent_redis_is_detected_by_ping(nodes: Any, redis_client: aioredis.Redis) -> None:
    broker, rec = await nodes(ping_interval=0.1, timeout=0.5)
    await broker.subscribe("s")
    await redis_client.execute_command("CLIENT PAUSE", 1500, "ALL")  # answers nothing for 1.5 s
    await until(lambda: not broker.healthy, "the broker to notice")
    await asyncio.wait_for(rec.reconnects.get(), TIMEOUT)
    await broker.publish("s", Publication(b"1"))
    assert (await rec.next_pub("s")).data == b"1"


async def test_close_ends_a_writer_that_swallowed_its_cancellation(nodes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 28, defect 1: a publish writer whose cancellation was turned into an
    error on its way up (as a Redis driver may do) went back to waiting for work,
    and close() (a node's shutdown, a test's teardown) waited for it forever,
    swallowing its own caller's cancellation on the way."""
    broker, _ = await nodes()
    in_flight = asyncio.Event()

    async def stuck_round_trip(pool: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """A round trip Redis never answers, whose cancellation the driver reports as a lost connection."""
        in_flight.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            raise redis_errors.ConnectionError("connection closed while reading") from exc
        return []

    monkeypatch.setattr(broker._pipeline, "round_trip", stuck_round_trip)
    pending = asyncio.ensure_future(broker.publish("w", Publication(b"1")))
    await asyncio.wait_for(in_flight.wait(), TIMEOUT)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(broker.close(), TIMEOUT)  # before the fix: returned only when this gave up
    assert loop.time() - started < 3.0, "close() is bounded"
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(pending, TIMEOUT)
    assert not [t for t in asyncio.all_tasks() if "redis" in t.get_name()], "close() leaves no task"


# -- in-process servers sharing Redis: a missed publication is recovered -------------------------------------


async def test_publication_missed_by_a_node_is_recovered(
    redis_server: RedisServer, redis_client: aioredis.Redis, clients: list  # noqa: F811
) -> None:
    servers: list[Server] = []
    brokers = [RedisBroker(redis_server.url) for _ in range(2)]
    brokers[0]._backoff = lambda attempt: 0.5  # type: ignore[method-assign] # a wide window to miss things in
    try:
        for broker in brokers:
            config = make_config(broker=redis_server.url, namespaces={"chat": NamespaceOptions(**CHAT)})
            server = Server(config, hub=Hub(config, broker))
            await server.start()
            servers.append(server)
        a, b = servers
        consumer, producer = await proto_client(a), await proto_client(b)
        clients += [consumer, producer]
        sub = (await consumer.call("subscribe", {"channel": "chat:m"}))["subscribe"]
        assert (await producer.call("publish", {"channel": "chat:m", "data": 1}))["publish"]["offset"] == 1
        assert (await next_pub(consumer))["offset"] == 1
        # a loses its pub/sub connection (the one with chat:m besides the two cluster
        # control channels every node has); b keeps its own
        listing = (await redis_client.execute_command("CLIENT LIST TYPE pubsub")).decode().splitlines()
        a_id = next(line.split()[0].partition("=")[2] for line in listing if " sub=3 " in line)
        await redis_client.execute_command("CLIENT KILL ID " + a_id)
        assert (await producer.call("publish", {"channel": "chat:m", "data": 2}))["publish"]["offset"] == 2
        code, _ = await consumer.closed()  # a came back, saw the stream moved on, told its client
        assert code == 3010
        again = await proto_client(a)
        clients.append(again)
        reply = (await again.call("subscribe", {"channel": "chat:m", "recover": True, "epoch": sub["epoch"],
                                                "offset": 1}))["subscribe"]
        assert reply["recovered"] is True
        assert [(p["offset"], p["data"]) for p in reply["publications"]] == [(2, 2)]
    finally:
        for server in servers:
            await server.close()


class CountingRedisBroker(RedisBroker):
    """A Redis broker that counts its stream reads."""

    reads = 0

    async def history(self, channel: str, **kw: Any) -> HistoryResult:
        self.reads += 1
        return await super().history(channel, **kw)


async def test_clients_recovering_together_share_one_redis_read(redis_server: RedisServer) -> None:  # noqa: F811
    """Workload 8 with recovery: every client read and decoded the same publications
    again, one Redis round trip each. Recoveries that come together now make one read;
    each client still gets exactly what it missed, from its own offset."""
    history = NamespaceOptions(history_size=50, history_ttl=60)
    config = Config(channels=history)
    publisher = Hub(config, RedisBroker(redis_server.url))
    broker = CountingRedisBroker(redis_server.url)
    hub = Hub(config, broker)
    await publisher.start()
    await hub.start()
    try:
        def recover(client_id: str, since: StreamPosition) -> Any:
            return hub.subscribe("news", Subscriber(client_id, wire, lambda frame: None, lambda code: None,
                                                    recoverable=True), ns=history, recover_since=since)

        wire = CountingWire("j")
        first = await publisher.publish("news", {"n": 1})
        warm = await recover("warm", StreamPosition(0, first.epoch))
        assert warm.recovered and [p.value() for p in warm.publications] == [{"n": 1}]
        for n in range(2, 21):
            await publisher.publish("news", {"n": n})
        broker.reads = 0
        offsets = [0, 1, 5, 19, 20, 5, 10, 0]
        results = await asyncio.gather(*[recover(f"c{i}", StreamPosition(o, first.epoch))
                                         for i, o in enumerate(offsets)])
        assert broker.reads == 1
        for offset, result in zip(offsets, results[:len(offsets)], strict=True):
            assert result.recovered is True
            got = [(p.offset, p.value()) for p in result.publications + result.late]
            assert got == [(n, {"n": n}) for n in range(offset + 1, 21)]
        assert results[0].publications[7] is results[2].publications[2]  # decoded once, shared
    finally:
        await hub.close()
        await publisher.close()


# -- `hubbub serve` processes sharing Redis ----------------------------------------------------------------------


@pytest.fixture
def pair(serve_process: Any, redis_server: RedisServer, tmp_path: Path) -> tuple[ServeProcess, ServeProcess]:  # noqa: F811
    """Two ``hubbub serve`` processes on one Redis."""
    config = tmp_path / "hub.toml"
    config.write_text(CHAT_TOML)
    return serve_process("--broker", redis_server.url, "--config", str(config)), serve_process(
        "--broker", redis_server.url, "--config", str(config)
    )


async def health(proc: ServeProcess) -> int:
    def get() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/health", timeout=TIMEOUT) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    return await asyncio.to_thread(get)


async def all_health(procs: tuple[ServeProcess, ...], status: int) -> None:
    async def check() -> bool:
        return all([await health(p) == status for p in procs])

    await until(check, f"/health {status} on every process")


async def next_pub(client: ProtoClient) -> dict[str, Any]:
    """The next publication push of ``client`` (joins and leaves are skipped)."""
    while True:
        push = await client.next_push()
        if "pub" in push:
            return push["pub"]


async def pushes_until_closed(client: ProtoClient) -> tuple[list[dict[str, Any]], int]:
    """Every push a client gets until the server closes it, and the close code."""
    pushes = list(client.pushes)
    try:
        while True:
            pushes.append(await client.next_push())
    except websockets.ConnectionClosed:
        pass
    code, _ = await client.closed()
    return pushes, code


async def test_processes_deliver_each_others_publications(pair: tuple[ServeProcess, ServeProcess],
                                                          clients: list) -> None:
    a, b = pair
    consumer, producer = await proto_client(a), await proto_client(b)  # type: ignore[arg-type]
    clients += [consumer, producer]
    epoch = (await consumer.call("subscribe", {"channel": "chat:x"}))["subscribe"]["epoch"]
    for i in range(1, 4):
        assert (await producer.call("publish", {"channel": "chat:x", "data": {"n": i}}))["publish"] == {
            "offset": i, "epoch": epoch}
    pubs = [await next_pub(consumer) for _ in range(3)]
    assert [(p["offset"], p["data"]) for p in pubs] == [(i, {"n": i}) for i in range(1, 4)]

    # the relay path: a relay client on a gets what a protocol client publishes on b, binary too
    relay = await websockets.connect(f"ws://127.0.0.1:{a.port}/ws/news", ping_interval=None)
    clients.append(relay)
    await relay.send("ready")  # its own echo proves a is subscribed
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == "ready"
    relay_b = await websockets.connect(f"ws://127.0.0.1:{b.port}/ws/news?echo=false", ping_interval=None)
    clients.append(relay_b)
    await relay_b.send(b"\xff\x00binary")
    assert await asyncio.wait_for(relay.recv(), TIMEOUT) == b"\xff\x00binary"


async def test_recovery_across_processes(pair: tuple[ServeProcess, ServeProcess], clients: list) -> None:
    a, b = pair
    consumer, producer = await proto_client(a), await proto_client(b)  # type: ignore[arg-type]
    clients += [consumer, producer]
    epoch = (await consumer.call("subscribe", {"channel": "chat:r"}))["subscribe"]["epoch"]
    await producer.call("publish", {"channel": "chat:r", "data": "before"})
    assert (await next_pub(consumer))["offset"] == 1
    await consumer.ws.close()
    for i in range(3):
        await producer.call("publish", {"channel": "chat:r", "data": {"missed": i}})
    for proc in (a, b):  # the stream is in Redis: either process recovers it
        again = await proto_client(proc)  # type: ignore[arg-type]
        clients.append(again)
        reply = (await again.call("subscribe", {"channel": "chat:r", "recover": True, "epoch": epoch,
                                                "offset": 1}))["subscribe"]
        assert reply["recovered"] is True and reply["epoch"] == epoch
        assert [(p["offset"], p["data"]) for p in reply["publications"]] == [(2 + i, {"missed": i}) for i in range(3)]
    stale = await proto_client(a)  # type: ignore[arg-type]
    clients.append(stale)
    reply = (await stale.call("subscribe", {"channel": "chat:r", "recover": True, "epoch": "other",
                                            "offset": 1}))["subscribe"]
    assert reply["recovered"] is False


async def test_presence_and_join_leave_across_processes(pair: tuple[ServeProcess, ServeProcess],
                                                        clients: list) -> None:
    a, b = pair
    on_a, on_b = await proto_client(a), await proto_client(b)  # type: ignore[arg-type]
    clients += [on_a, on_b]
    await on_a.call("subscribe", {"channel": "chat:p"})
    assert (await on_a.next_push())["join"]["info"]["client"] == on_a.client_id  # type: ignore[attr-defined]
    await on_b.call("subscribe", {"channel": "chat:p"})
    assert (await on_a.next_push())["join"]["info"]["client"] == on_b.client_id  # type: ignore[attr-defined]

    async def presence(client: ProtoClient) -> set[str]:
        return set((await client.call("presence", {"channel": "chat:p"}))["presence"]["presence"])

    both = {on_a.client_id, on_b.client_id}  # type: ignore[attr-defined]
    await until(lambda: _eq(presence(on_a), both), "both clients in presence on a")
    assert await presence(on_b) == both
    stats = (await on_b.call("presence_stats", {"channel": "chat:p"}))["presence_stats"]
    assert stats == {"num_clients": 2, "num_users": 1}  # both anonymous
    await on_b.call("unsubscribe", {"channel": "chat:p"})
    assert (await on_a.next_push())["leave"]["info"]["client"] == on_b.client_id  # type: ignore[attr-defined]
    await until(lambda: _eq(presence(on_a), {on_a.client_id}), "b's client gone from presence")  # type: ignore[attr-defined]


async def _eq(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_redis_outage_with_two_processes(
    pair: tuple[ServeProcess, ServeProcess], redis_server: RedisServer, clients: list  # noqa: F811
) -> None:
    a, b = pair
    watchers = [await proto_client(p) for p in (a, b)]  # type: ignore[arg-type]  # recoverable (force_recovery)
    plain = [await proto_client(p) for p in (a, b)]  # type: ignore[arg-type]  # no history
    producers = [await proto_client(p) for p in (a, b)]  # type: ignore[arg-type]
    clients += watchers + plain + producers
    epochs = [(await w.call("subscribe", {"channel": "chat:o"}))["subscribe"]["epoch"] for w in watchers]
    assert epochs[0] == epochs[1]
    for c in plain:
        await c.call("subscribe", {"channel": "plain"})
    acked = []
    for i in range(1, 7):
        reply = await producers[i % 2].call("publish", {"channel": "chat:o", "data": i})
        acked.append(reply["publish"]["offset"])
    assert acked == list(range(1, 7))

    redis_server.stop()
    await all_health((a, b), 503)
    for producer in producers:
        for channel in ("chat:o", "plain"):
            error = (await producer.call("publish", {"channel": channel, "data": "during outage"}))["error"]
            assert error["code"] == 100 and error["temporary"] is True, error

    redis_server.start()  # same port, no data: the stream is gone
    await all_health((a, b), 200)

    # every recoverable client got everything acknowledged, then was told to recover (3010)
    for watcher in watchers:
        pushes, code = await pushes_until_closed(watcher)
        assert [p["pub"]["data"] for p in pushes if "pub" in p] == list(range(1, 7))
        assert code == 3010
    # ... and recovering says the stream is lost: recovered false, a new epoch
    again = [await proto_client(p) for p in (a, b)]  # type: ignore[arg-type]
    clients += again
    for client in again:
        reply = (await client.call("subscribe", {"channel": "chat:o", "recover": True, "epoch": epochs[0],
                                                 "offset": 6}))["subscribe"]
        assert reply["recovered"] is False and reply["epoch"] != epochs[0]

    # no process stays deaf: both deliver what either one publishes
    assert (await producers[1].call("publish", {"channel": "chat:o", "data": "after"}))["publish"]["offset"] == 1
    for client in again:
        pub = await next_pub(client)
        assert (pub["offset"], pub["data"]) == (1, "after")
    for i, producer in enumerate(producers):
        assert "publish" in await producer.call("publish", {"channel": "plain", "data": f"from {i}"})
        for c in plain:
            assert (await next_pub(c))["data"] == f"from {i}"
    for proc in (a, b):
        log = proc.output()
        assert "redis broker lost" in log and "redis broker is back" in log, log


async def test_presence_is_restored_after_redis_restarts(redis_server: RedisServer, clients: list) -> None:  # noqa: F811
    config = make_config(broker=redis_server.url, namespaces={"room": NamespaceOptions(presence=True)})
    server = Server(config)
    await server.start()
    try:
        c = await proto_client(server)
        clients.append(c)
        await c.call("subscribe", {"channel": "room:1"})
        assert list(await server.hub.broker.presence("room:1")) == [c.client_id]
        redis_server.stop()
        redis_server.start()  # an empty Redis: the presence entry is gone until the node restores it
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    if list(await server.hub.broker.presence("room:1")) == [c.client_id]:
                        break
                except BrokerUnavailable:
                    pass
                await asyncio.sleep(0.05)
    finally:
        await server.close()


async def test_workers_share_the_port_through_redis(redis_server: RedisServer, serve_process,  # noqa: F811
                                                    clients: list) -> None:
    server = serve_process("--workers", "2", "--broker", redis_server.url)
    # both workers say they listen on the one port the parent reserved
    async with asyncio.timeout(TIMEOUT):
        while sum("(pid " in line and "listening" in line for line in server.lines) < 2:
            await asyncio.sleep(0.05)
    # connections are spread over the workers by the kernel; whichever worker a client
    # lands on, a publication through any of them reaches every subscriber
    subs = []
    for _ in range(8):
        ws = await websockets.connect(f"{server.url}/ws/shared", ping_interval=None)
        clients.append(ws)
        subs.append(ws)
    producer = await websockets.connect(f"{server.url}/ws/shared?echo=false", ping_interval=None)
    clients.append(producer)
    for ws in subs:  # every subscriber is registered once its own probe comes back
        await ws.send("probe")
        while await asyncio.wait_for(ws.recv(), TIMEOUT) != "probe":
            pass
    await producer.send("to everyone")
    for ws in subs:
        while (message := await asyncio.wait_for(ws.recv(), TIMEOUT)) == "probe":
            pass
        assert message == "to everyone"
    pids = {line.split("(pid ")[1].split(")")[0] for line in server.lines if "(pid " in line}
    assert len(pids) == 2
    assert server.stop() == 0


def test_workers_need_a_shared_broker() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hubbub", "serve", "--workers", "2", "--port", "0"],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 2 and "--broker redis://" in out.stderr
