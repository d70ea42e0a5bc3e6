"""The Redis broker at load: publish pipelines, batched pub/sub reads, hiredis,
round-trip counters, and the epoch carried on the wire (a real ``redis-server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets

from hubbub.brokers.base import Publication, StreamPosition
from hubbub.brokers.redis import RedisBroker
from hubbub.brokers.redis.pipeline import MAX_PIPELINE
from hubbub.brokers.redis.wire import decode_message, encode_body
from hubbub.config import NamespaceOptions
from hubbub.errors import BrokerError
from hubbub.hub import Hub
from hubbub.server import Server

from .conftest import TIMEOUT, make_config, proto_client
from .redis_server import RedisServer, redis_server  # noqa: F401
from .test_broker_contract import Recorder
from .test_redis import nodes, redis_client  # noqa: F401 (fixtures)

CHAT = {"history_size": 1000, "history_ttl": 300.0, "force_recovery": True}


class Iterations:
    """Counts event-loop iterations (a callback that reschedules itself)."""

    def __init__(self) -> None:
        self.n = 0
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.n += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


def hand_offs(rec: Recorder, iterations: Iterations) -> list[int]:
    """The loop iteration (counted by ``iterations``) of each publication
    ``rec`` gets from now on."""
    seen: list[int] = []
    original = rec.on_publication

    def on_publication(channel: str, pub: Publication) -> None:
        seen.append(iterations.n)
        original(channel, pub)

    rec.on_publication = on_publication  # type: ignore[method-assign]
    return seen


async def test_concurrent_publishes_share_one_pipeline(nodes: Any, redis_client: aioredis.Redis) -> None:  # noqa: F811
    broker, rec = await nodes()
    await broker.subscribe("s")
    await broker.publish("warm", Publication(b"0"), history_size=5, history_ttl=60)
    await redis_client.config_resetstat()
    stats = broker.stats
    trips, pubs, all_trips = stats.broker_publish_round_trips, stats.broker_publications, stats.broker_round_trips
    n = 500
    positions = await asyncio.gather(*(
        broker.publish("s", Publication(str(i).encode()), history_size=1000, history_ttl=60) for i in range(n)
    ))
    # one round trip carried them all, in call order
    assert stats.broker_publications - pubs == n
    assert stats.broker_publish_round_trips - trips == 1
    assert stats.broker_round_trips - all_trips == 1
    assert [p.offset for p in positions] == list(range(1, n + 1))
    assert len({p.epoch for p in positions}) == 1
    # each ran once, was stored, and reaches the subscriber in order with its epoch
    assert (await redis_client.info("commandstats"))["cmdstat_evalsha"]["calls"] == n
    history = await broker.history("s")
    assert [p.data for p in history.publications] == [str(i).encode() for i in range(n)]
    got = [await rec.next_pub("s") for _ in range(n)]
    assert [(p.offset, p.epoch) for p in got] == [(i, positions[0].epoch) for i in range(1, n + 1)]


async def test_a_long_queue_goes_in_bounded_pipelines(nodes: Any) -> None:  # noqa: F811
    broker, rec = await nodes()
    await broker.subscribe("q")
    trips = broker.stats.broker_publish_round_trips
    n = MAX_PIPELINE * 2 + 10
    await asyncio.gather(*(broker.publish("q", Publication(str(i).encode())) for i in range(n)))
    assert broker.stats.broker_publish_round_trips - trips == 3
    assert [(await rec.next_pub("q")).data for _ in range(n)] == [str(i).encode() for i in range(n)]


async def test_a_burst_is_dispatched_in_few_loop_iterations(nodes: Any) -> None:  # noqa: F811
    """Pub/sub messages already read are dispatched without yielding to the
    loop, so the hub's fan-out joins them into one write per subscriber."""
    producer, _ = await nodes()
    consumer, rec = await nodes()
    await consumer.subscribe("b")
    iterations = Iterations()
    seen = hand_offs(rec, iterations)
    n = 500
    await asyncio.gather(*(producer.publish("b", Publication(b'{"n":%d}' % i)) for i in range(n)))
    assert [(await rec.next_pub("b")).data for _ in range(n)] == [b'{"n":%d}' % i for i in range(n)]
    iterations.stop()
    assert len(set(seen)) <= 10, f"{n} messages took {len(set(seen))} loop iterations"


def test_replies_are_parsed_by_hiredis(redis_server: RedisServer) -> None:  # noqa: F811
    from redis._parsers import _AsyncHiredisParser

    broker = RedisBroker(redis_server.url)
    assert isinstance(broker._pool.make_connection()._parser, _AsyncHiredisParser)


async def test_flushed_scripts_are_reloaded_and_nothing_runs_twice(nodes: Any, redis_client: aioredis.Redis) -> None:  # noqa: F811
    broker, rec = await nodes()
    await broker.subscribe("f")
    first = await broker.publish("f", Publication(b"1"), history_size=10, history_ttl=60)
    await redis_client.script_flush()
    positions = await asyncio.gather(*(
        broker.publish("f", Publication(str(i).encode()), history_size=10, history_ttl=60) for i in (2, 3)
    ))
    assert [p.offset for p in positions] == [2, 3] and {p.epoch for p in positions} == {first.epoch}
    assert [(await rec.next_pub("f")).data for _ in range(3)] == [b"1", b"2", b"3"]


async def test_a_refused_script_is_an_error_not_an_acknowledgement(nodes: Any, redis_client: aioredis.Redis) -> None:  # noqa: F811
    broker, _ = await nodes()
    await redis_client.set("hubbub.meta.w", "not a hash")  # the script's HGET fails: WRONGTYPE
    results = await asyncio.gather(
        broker.publish("w", Publication(b"1"), history_size=10, history_ttl=60),
        broker.publish("ok", Publication(b"1"), history_size=10, history_ttl=60),
        return_exceptions=True,
    )
    assert isinstance(results[0], BrokerError)
    assert isinstance(results[1], StreamPosition) and results[1].offset == 1  # its pipeline neighbour is fine


def test_the_epoch_is_on_the_wire() -> None:
    kind, pub = decode_message(b'p7@abcd1234:{}\n{"x":1}')
    assert kind == b"p" and (pub.offset, pub.epoch, pub.data) == (7, "abcd1234", b'{"x":1}')  # type: ignore[union-attr]
    kind, pub = decode_message(b"p0:{}\n1")  # without history (and from older nodes): no epoch
    assert (pub.offset, pub.epoch) == (0, "")  # type: ignore[union-attr]


def test_relay_text_travels_once_and_headers_are_reused() -> None:
    """A relay text message's payload is on the wire once (its ``data`` is the
    JSON string of it; ``t`` says so), binary payloads keep ``r``; a
    publisher's repeated header decodes to the same info without a parse."""
    from hubbub.brokers.base import ClientInfo
    from hubbub.relay import relay_publication

    info = ClientInfo("c1", "u1")
    text = relay_publication("héllo \"quoted\" not json".encode(), binary=False)
    text.info, text.exclude_client = info, "c1"
    body = encode_body(text)
    assert body.count("héllo".encode()) == 1 and b'"t":1' in body and body.endswith(text.raw)  # type: ignore[arg-type]
    first = decode_message(b"p3@e:" + body)[1]
    again = decode_message(b"p4@e:" + body)[1]
    for pub, offset in ((first, 3), (again, 4)):
        assert isinstance(pub, Publication)
        assert (pub.raw, pub.data, pub.binary, pub.exclude_client, pub.offset) == (
            text.raw, text.data, False, "c1", offset)
    assert first.info == info and again.info is first.info  # type: ignore[union-attr]
    binary = relay_publication(b"\x00\xffbin", binary=True)
    pub = decode_message(b"p0:" + encode_body(binary))[1]
    assert isinstance(pub, Publication) and (pub.raw, pub.binary, pub.data) == (b"\x00\xffbin", True, binary.data)
    other = Publication(b'"not the same"', raw=b"text")  # raw is not data's text: sent as it is
    pub = decode_message(b"p0:" + encode_body(other))[1]
    assert isinstance(pub, Publication) and (pub.raw, pub.data) == (b"text", b'"not the same"')
    tagged = Publication(b'{"a":1}', tags={"k": "v"})
    pub = decode_message(b"p0:" + encode_body(tagged))[1]
    assert isinstance(pub, Publication) and pub.tags == {"k": "v"} and pub.raw is None


def test_wire_headers_are_strict_json_and_infos_of_any_bytes_travel() -> None:
    """Headers go through hubbub.strictjson (compact, UTF-8, no newline); a
    conn_info that is not UTF-8 travels in base64 (``cb``), and the
    surrogate-escaped ``ci`` that older nodes wrote still reads back."""
    from hubbub import strictjson
    from hubbub.brokers.base import ClientInfo
    from hubbub.brokers.redis.wire import encode_event, info_from_wire, info_to_wire

    odd = ClientInfo("c1", "ü", conn_info=b"\xff\xfe", chan_info=b'{"n":"\xc3\xa9\\n"}')
    wire = info_to_wire(odd)
    assert wire == {"c": "c1", "u": "ü", "cb": "//4=", "hi": '{"n":"é\\n"}'}
    assert info_from_wire(strictjson.loads(strictjson.dumps(wire))) == odd
    pub = Publication(b"1", info=odd)
    body = encode_body(pub)
    head = body[: body.index(b"\n")]
    assert strictjson.loads(head) == {"i": wire}
    assert decode_message(b"p0:" + body)[1].info == odd  # type: ignore[union-attr]
    assert decode_message(encode_event(b"j", odd)) == (b"j", odd)
    older = b'j0:{"i":{"c":"c2","ci":"\\udcff"}}\n'  # json.dumps of a surrogate-escaped b"\xff"
    assert decode_message(older) == (b"j", ClientInfo("c2", "", b"\xff"))


async def test_metrics_count_round_trips_per_publication(redis_server: RedisServer, start_server: Any) -> None:  # noqa: F811
    import urllib.request

    server = await start_server(broker=redis_server.url)
    await asyncio.gather(*(server.hub.publish("m", {"n": i}) for i in range(100)))

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=TIMEOUT) as response:
            return response.read().decode()

    text = await asyncio.to_thread(scrape)
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("hubbub_broker_")}
    # the cluster's heartbeats (one a second, hubbub.cluster) go through the broker too
    extra = values["hubbub_broker_publications_total"] - 100
    assert 0 <= extra <= 3
    assert 1 <= values["hubbub_broker_publish_round_trips_total"] <= 2 + extra
    assert values["hubbub_broker_round_trips_total"] >= values["hubbub_broker_publish_round_trips_total"]


# -- epoch on the wire: a Redis restart never delivers across an epoch change ----------------------------------


async def test_redis_restart_never_delivers_across_an_epoch_change(
    redis_server: RedisServer, clients: list  # noqa: F811
) -> None:
    """A recoverable subscriber is at offset 100005 of the old stream. Redis
    restarts empty while producers keep publishing: the new stream counts from
    1 again. The node must not deliver any of it (its offsets are lower: no gap
    is visible) before it told the subscriber (3010), even while its position
    check is slow; resubscribing says recovered: false."""
    consumer_broker = RedisBroker(redis_server.url)
    # a window after the restart: the new stream grows before the node is back
    consumer_broker._pubsub.backoff = lambda attempt: 0.2  # type: ignore[method-assign]
    producer = RedisBroker(redis_server.url, timeout=0.5)
    producer._pubsub.backoff = lambda attempt: 0.01  # type: ignore[method-assign]
    config = make_config(broker=redis_server.url, namespaces={"chat": NamespaceOptions(**CHAT)})
    server = Server(config, hub=Hub(config, consumer_broker))
    await server.start()
    await producer.start(Recorder())
    # After a restart the node checks every channel's position with a history
    # read; with many channels those queue behind each other (max_connections):
    # this one answers late, while publications of the new stream arrive.
    restarted = asyncio.Event()
    read_history = consumer_broker.history

    async def slow_history(channel: str, **kw: Any) -> Any:
        if restarted.is_set():
            await asyncio.sleep(0.3)
        return await read_history(channel, **kw)

    consumer_broker.history = slow_history  # type: ignore[method-assign]
    floods: list[asyncio.Task[None]] = []
    redis = aioredis.Redis.from_url(redis_server.url, protocol=2)
    try:
        await producer.publish("chat:e", Publication(b"0"), **_HISTORY)
        await redis.hset("hubbub.meta.chat:e", "s", 100_000)  # a long-lived stream
        consumer = await proto_client(server)
        clients.append(consumer)
        sub = (await consumer.call("subscribe", {"channel": "chat:e"}))["subscribe"]
        assert sub["offset"] == 100_000
        old = await asyncio.gather(*(producer.publish("chat:e", Publication(b"%d" % i), **_HISTORY)
                                     for i in range(1, 6)))
        assert old[-1] == StreamPosition(100_005, sub["epoch"])
        got: list[dict[str, Any]] = []
        while len(got) < 5:
            push = await consumer.next_push()
            if "pub" in push:
                got.append(push["pub"])
        assert [p.get("offset") for p in got] == list(range(100_001, 100_006))

        new_epoch: list[str] = []

        async def publish_forever() -> None:
            i = 0
            while True:
                i += 1
                try:
                    position = await producer.publish("chat:e", Publication(b'"new %d"' % i), **_HISTORY)
                except BrokerError:
                    await asyncio.sleep(0.01)
                    continue
                if position.epoch != sub["epoch"] and not new_epoch:
                    new_epoch.append(position.epoch)
                await asyncio.sleep(0.001)

        floods += [asyncio.get_running_loop().create_task(publish_forever()) for _ in range(4)]
        redis_server.stop()
        redis_server.start()  # same port, no data: a new epoch
        restarted.set()
        after: list[dict[str, Any]] = []
        with contextlib.suppress(websockets.ConnectionClosed):  # until the server closes
            async with asyncio.timeout(TIMEOUT):
                while True:
                    push = await consumer.next_push()
                    if "pub" in push:
                        after.append(push["pub"])
        code, _ = await consumer.closed()
        assert after == [], f"delivered across the epoch change: {after[:5]}"
        assert code == 3010
        assert new_epoch and new_epoch[0] != sub["epoch"]
        again = await proto_client(server)
        clients.append(again)
        reply = (await again.call("subscribe", {"channel": "chat:e", "recover": True, "epoch": sub["epoch"],
                                                "offset": 100_005}))["subscribe"]
        assert reply.get("recovered", False) is False and reply["epoch"] != sub["epoch"]
    finally:
        for flood in floods:
            flood.cancel()
        await redis.aclose()
        await server.close()
        await producer.close()


_HISTORY = {"history_size": 1000, "history_ttl": 300.0}


async def test_bench_script_runs(redis_server: RedisServer) -> None:  # noqa: F811
    """bench/redis_publish_rate.py, in a tiny run."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "bench" / "redis_publish_rate.py"
    started = time.monotonic()
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script), "--url", redis_server.url, "--producers", "20", "--count", "2000",
         "--seconds", "10"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "round trips per publication" in out.stdout
    assert time.monotonic() - started < 30


def test_cpu_shares_script_runs(redis_server: RedisServer) -> None:  # noqa: F811
    """bench/cpu_shares.py, in a tiny run: both setups deliver everything, and
    each reports the cores of its hubbub processes, Redis and the load generator."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "bench" / "cpu_shares.py"
    out = subprocess.run(
        [sys.executable, str(script), "--pairs", "1", "--messages", "300", "--clients", "200", "--groups", "5"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    runs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["run"] for r in runs] == ["memory, 1 process", "redis, --workers 2"]
    for r in runs:
        assert r["complete"] and r["deliveries_per_s"] > 0
        # a tiny run lasts a few clock ticks: the figures are there, not necessarily above 0
        assert set(r["cores"]) == {"hubbub", "redis", "generator"}
        assert all(value >= 0 for value in r["cores"].values())
    assert "--workers 2 / memory =" in out.stdout


async def test_a_nodes_own_pipeline_comes_back_as_one_batch(nodes: Any) -> None:  # noqa: F811
    """Pub/sub messages that arrive while this node's publish pipeline is in
    flight are handed to the hub with its replies: one batch for the whole
    pipeline (one write per subscriber), although Redis writes it in pieces
    (it reads a pipeline 16 KiB at a time). Before, each piece was its own
    hand-off, and each subscriber got a write per piece."""
    broker, rec = await nodes()
    await broker.subscribe("own")
    await broker.publish("own", Publication(b'"warm"'))
    await rec.next_pub("own")
    iterations = Iterations()
    seen = hand_offs(rec, iterations)
    n = 1000
    filler = b"x" * 500  # 500 KB: about 30 pieces of 16 KiB
    datas = [b'"%d %s"' % (i, filler) for i in range(n)]
    await asyncio.gather(*(broker.publish("own", Publication(d)) for d in datas))
    assert [(await rec.next_pub("own")).data for _ in range(n)] == datas
    iterations.stop()
    # the pieces that land after the replies join within PUBSUB_HOLD: one hand-off, or a few
    assert len(set(seen)) <= 3, f"{n} messages of one pipeline took {len(set(seen))} hand-offs"


async def test_pubsub_messages_wait_only_under_load(nodes: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A light stream is handed to the hub in the next loop iteration; after a
    large hand-off (load) messages from other nodes wait up to ``PUBSUB_HOLD``
    to travel together. The hold is made 1 s here so that each case shows."""
    from hubbub.brokers.redis import pubsub as redis_broker

    monkeypatch.setattr(redis_broker, "PUBSUB_HOLD", 1.0)
    monkeypatch.setattr(redis_broker, "BUSY_WINDOW", 30.0)
    producer, _ = await nodes()
    consumer, rec = await nodes()
    await consumer.subscribe("load")

    async def one(data: bytes) -> float:
        started = time.monotonic()
        await producer.publish("load", Publication(data))
        assert (await rec.next_pub("load")).data == data
        return time.monotonic() - started

    assert await one(b'"light"') < 0.5  # idle: not held
    n = 500  # small messages: the first piece Redis writes holds far more than BUSY_BATCH
    await asyncio.gather(*(producer.publish("load", Publication(b"%d" % i)) for i in range(n)))
    assert [(await rec.next_pub("load")).data for _ in range(n)] == [b"%d" % i for i in range(n)]
    assert await one(b'"held"') >= 0.5  # under load: waits for company


async def test_a_burst_from_redis_is_queued_to_a_subscriber_as_one_batch(redis_server: RedisServer) -> None:  # noqa: F811
    """Publications that arrive from Redis together reach the hub in one loop
    iteration, so a subscriber gets them as one shared batch (one queue
    operation, one write), as with the memory broker."""
    from hubbub.codec import JSON as JSON_CODEC
    from hubbub.codec import ProtocolWire
    from hubbub.connection import WebSocketFrames
    from hubbub.hub import Subscriber
    from hubbub.outbox import FrameBatch

    config = make_config(broker=redis_server.url)
    hub = Hub(config, RedisBroker(redis_server.url))
    producer = RedisBroker(redis_server.url)
    await hub.start()
    await producer.start(Recorder())
    delivered: list[bytes | FrameBatch] = []
    sizes: list[int] = []

    def deliver(item: bytes | FrameBatch) -> None:
        # as a connection does: queue now, write (join) once at the end of the iteration
        delivered.append(item)
        if isinstance(item, FrameBatch):
            asyncio.get_running_loop().call_soon(lambda: sizes.append(len(item.frames)) or item.join())
        else:
            sizes.append(1)

    try:
        sub = Subscriber("c1", ProtocolWire(JSON_CODEC, WebSocketFrames()), deliver, lambda code: None)
        await hub.subscribe("burst", sub, ns=config.namespace("burst"))
        n = 300
        await asyncio.gather(*(producer.publish("burst", Publication(b'{"n":%d}' % i)) for i in range(n)))

        async with asyncio.timeout(TIMEOUT):
            while sum(sizes) < n:
                await asyncio.sleep(0.01)
        assert len(delivered) <= 10, f"{n} publications took {len(delivered)} writes: {sizes}"
    finally:
        await producer.close()
        await hub.close()


async def test_a_failing_pipeline_fails_its_publishes_and_the_next_ones_go_on(nodes: Any) -> None:  # noqa: F811
    broker, rec = await nodes()
    await broker.subscribe("k")
    with pytest.raises(BrokerError):
        await broker._pipeline.send("PUBLISH", b"k", object())  # a bug: an argument that cannot be sent
    assert (await broker.publish("k", Publication(b"2"), history_size=10, history_ttl=60)).offset == 1
    assert (await rec.next_pub("k")).data == b"2"


async def test_a_subscriber_who_finds_a_new_epoch_gets_the_others_told() -> None:
    """The stream was lost and started afresh without a publication yet (memory
    broker: its position expired). A new subscriber reads the new epoch: the
    subscribers of the old one are told (3010) before anything of the new
    stream reaches them."""
    from hubbub.brokers.memory import MemoryBroker
    from hubbub.codec import JSON as JSON_CODEC
    from hubbub.codec import ProtocolWire
    from hubbub.connection import WebSocketFrames
    from hubbub.hub import Subscriber

    from .test_broker_contract import FakeClock

    clock = FakeClock()
    config = make_config(namespaces={"chat": NamespaceOptions(**CHAT)})
    hub = Hub(config, MemoryBroker(meta_ttl=60, sweep_interval=0, clock=clock))
    await hub.start()
    wire = ProtocolWire(JSON_CODEC, WebSocketFrames())
    events: dict[str, list[Any]] = {"old": [], "new": []}

    def subscriber(name: str) -> Subscriber:
        return Subscriber(name, wire, lambda frame: events[name].append("pub"), events[name].append, recoverable=True)

    try:
        ns = config.namespace("chat:x")
        first = await hub.subscribe("chat:x", subscriber("old"), ns=ns)
        await hub.publish("chat:x", {"n": 1})
        clock.now += 61  # the stream's position expires: a new epoch comes with the next read
        second = await hub.subscribe("chat:x", subscriber("new"), ns=ns)
        assert second.position.epoch != first.position.epoch
        assert events["old"] == ["pub", 3010]
        await hub.publish("chat:x", {"n": 2})
        assert events["new"] == ["pub"]
    finally:
        await hub.close()
