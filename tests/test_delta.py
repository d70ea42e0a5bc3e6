"""Fossil delta compression (Centrifugo's ``delta: "fossil"``): the hub makes one delta per
publication and channel and shares its frames (fakes, no sockets), the session negotiates it
(a raw JSON client over a socket), through the memory and the Redis broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import hubbub
from hubbub import fossil
from hubbub.brokers.base import ClientInfo, Publication
from hubbub.brokers.memory import MemoryBroker
from hubbub.codec import JSON, ProtocolWire
from hubbub.config import Config, NamespaceOptions
from hubbub.errors import ConfigError
from hubbub.hub import Hub, Subscriber
from hubbub.outbox import FrameBatch
from hubbub.proto import client_pb2 as pb
from hubbub.protobuf_codec import PROTOBUF
from hubbub.server import Server

from .conftest import TIMEOUT, history_ns, proto_client, until
from .jsdeps import node_modules
from .redis_server import redis_server  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import feed  # noqa: E402

DELTA_NS = NamespaceOptions(history_size=10, history_ttl=300.0, allowed_delta_types=("fossil",))
BROKERS = ["memory", pytest.param("redis", marks=pytest.mark.slow)]


class Frames:
    """Identity framing: a wire's frame is the message itself (hashable by identity)."""

    joinable = True

    def text(self, payload: bytes) -> bytes:
        return payload

    def binary(self, payload: bytes) -> bytes:
        return payload


class Inbox:
    """What one subscriber was handed, as messages."""

    def __init__(self) -> None:
        self.parts: list[bytes | FrameBatch] = []
        self.closed: list[int] = []

    def deliver(self, frame: bytes | FrameBatch) -> None:
        self.parts.append(frame)

    def messages(self) -> list[bytes]:
        out: list[bytes] = []
        for part in self.parts:
            out += part.frames if isinstance(part, FrameBatch) else [part]  # type: ignore[attr-defined]
        return out


def docs(n: int, size: int = 3000) -> list[bytes]:
    """``n`` versions of a JSON document of about ``size`` bytes, a field changing each time."""
    base = {f"k{i}": "v" * 20 + str(i) for i in range(size // 30)}
    out = []
    for i in range(n):
        base["k7"] = f"changed {i} ✓"
        out.append(json.dumps(base, ensure_ascii=False).encode())
    return out


class JSONReader:
    """A JSON delta subscriber as centrifuge-js reads it: data is a JSON string, applied to the last."""

    def __init__(self) -> None:
        self.prev = b""
        self.kinds: list[str] = []

    def read(self, message: bytes) -> bytes:
        pub = json.loads(message)["push"]["pub"]
        data = pub["data"].encode()
        if pub.get("delta"):
            self.kinds.append("delta")
            data = fossil.apply(self.prev, data)
        else:
            self.kinds.append("full")
        self.prev = data
        return data


class ProtobufReader(JSONReader):
    def read(self, message: bytes) -> bytes:
        reply = pb.Reply()
        reply.ParseFromString(message[1:] if message[0] < 0x80 else message[2:])  # one varint length byte or two
        pub = reply.push.pub
        data = pub.data
        if pub.delta:
            self.kinds.append("delta")
            data = fossil.apply(self.prev, data)
        else:
            self.kinds.append("full")
        self.prev = data
        return data


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    h = Hub(Config(namespaces={"d": DELTA_NS, "plain": NamespaceOptions(allowed_delta_types=("fossil",))}),
            MemoryBroker())
    await h.start()
    yield h
    await h.close()


def wires() -> tuple[ProtocolWire, ProtocolWire]:
    frames = Frames()
    return ProtocolWire(JSON, frames), ProtocolWire(PROTOBUF, frames)


async def join(hub: Hub, channel: str, client: str, wire: Any, delta: bool) -> Inbox:
    inbox = Inbox()
    sub = Subscriber(client, wire.delta if delta else wire, inbox.deliver, inbox.closed.append, True,
                     wire.delta if delta else None)
    await hub.subscribe(channel, sub, ns=hub.namespace(channel))
    return inbox


async def test_one_delta_per_publication_shared_by_every_delta_subscriber(
        hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    create = fossil.create
    monkeypatch.setattr(fossil, "create", lambda a, b: made.append(1) or create(a, b))
    encoded: list[bool] = []
    for codec in (JSON, PROTOBUF):
        original = type(codec).encode_publication_delta
        monkeypatch.setattr(type(codec), "encode_publication_delta",
                            lambda self, c, p, d, delta, original=original: encoded.append(delta) or original(
                                self, c, p, d, delta))
    json_wire, pb_wire = wires()
    json_subs = [await join(hub, "d:x", f"j{i}", json_wire, True) for i in range(20)]
    pb_subs = [await join(hub, "d:x", f"p{i}", pb_wire, True) for i in range(20)]
    plain = [await join(hub, "d:x", f"n{i}", json_wire, False) for i in range(5)]
    versions = docs(6)
    for data in versions:
        await hub.publish("d:x", Publication(data, delta=True))
    # one delta per publication after the first, whatever the number of wires and subscribers
    assert len(made) == len(versions) - 1
    # one encode per publication and wire: the first in full, then deltas
    assert encoded == [False, False] + [True, True] * (len(versions) - 1)
    for inbox in json_subs:
        reader = JSONReader()
        assert [reader.read(m) for m in inbox.messages()] == versions
        assert reader.kinds == ["full"] + ["delta"] * 5
    for inbox in pb_subs:
        reader = ProtobufReader()
        assert [reader.read(m) for m in inbox.messages()] == versions
        assert reader.kinds == ["full"] + ["delta"] * 5
    for inbox in plain:  # plain subscribers of the same channel: the documents themselves
        assert [json.dumps(json.loads(m)["push"]["pub"]["data"], ensure_ascii=False).encode()
                for m in inbox.messages()] == versions
    # the delta is small beside the document
    assert len(json_subs[0].messages()[-1]) < len(versions[-1]) // 10


async def test_a_late_subscriber_starts_with_a_full_publication(hub: Hub) -> None:
    json_wire, _ = wires()
    early = await join(hub, "d:y", "early", json_wire, True)
    versions = docs(5)
    for data in versions[:3]:
        await hub.publish("d:y", Publication(data, delta=True))
    late = await join(hub, "d:y", "late", json_wire, True)
    for data in versions[3:]:
        await hub.publish("d:y", Publication(data, delta=True))
    r_early, r_late = JSONReader(), JSONReader()
    assert [r_early.read(m) for m in early.messages()] == versions
    assert [r_late.read(m) for m in late.messages()] == versions[3:]
    assert r_late.kinds == ["full", "delta"] and r_early.kinds == ["full"] + ["delta"] * 4


async def test_publications_not_marked_and_channels_without_history_go_in_full(hub: Hub) -> None:
    json_wire, _ = wires()
    marked = await join(hub, "d:z", "a", json_wire, True)
    nohistory = await join(hub, "plain:z", "b", json_wire, True)
    versions = docs(4)
    for n, data in enumerate(versions):
        await hub.publish("d:z", Publication(data, delta=n != 2))
        await hub.publish("plain:z", Publication(data, delta=True))
    r1, r2 = JSONReader(), JSONReader()
    assert [r1.read(m) for m in marked.messages()] == versions
    assert r1.kinds == ["full", "delta", "full", "delta"]
    assert [r2.read(m) for m in nohistory.messages()] == versions
    assert r2.kinds == ["full"] * 4  # no offsets: nothing says the previous one is the one before


async def test_a_subscriber_that_misses_a_publication_gets_the_next_in_full(hub: Hub) -> None:
    json_wire, _ = wires()
    a = await join(hub, "d:e", "a", json_wire, True)
    b = await join(hub, "d:e", "b", json_wire, True)
    versions = docs(4)
    await hub.publish("d:e", Publication(versions[0], delta=True))
    await hub.publish("d:e", Publication(versions[1], delta=True, exclude_client="b"))
    await hub.publish("d:e", Publication(versions[2], delta=True))
    await hub.publish("d:e", Publication(versions[3], delta=True))
    ra, rb = JSONReader(), JSONReader()
    assert [ra.read(m) for m in a.messages()] == versions
    assert [rb.read(m) for m in b.messages()] == [versions[0], versions[2], versions[3]]
    assert rb.kinds == ["full", "full", "delta"]


async def test_a_gap_in_offsets_sends_the_next_in_full(hub: Hub) -> None:
    json_wire, _ = wires()
    a = await join(hub, "d:g", "a", json_wire, True)
    versions = docs(3)
    await hub.publish("d:g", Publication(versions[0], delta=True))
    # as if this node missed offset 2: publication 3 arrives from the broker
    hub.on_publication("d:g", Publication(versions[2], offset=3, epoch="e", delta=True))
    reader = JSONReader()
    messages = a.messages()
    assert reader.read(messages[0]) == versions[0]
    assert a.closed == [3010]  # recoverable: told to recover
    assert reader.read(messages[1]) == versions[2] and reader.kinds == ["full", "full"]


async def test_unsubscribe_forgets_the_previous_publication(hub: Hub) -> None:
    json_wire, _ = wires()
    await join(hub, "d:u", "a", json_wire, True)
    await join(hub, "d:u", "b", json_wire, False)
    await hub.publish("d:u", Publication(b'{"a":1}', delta=True))
    state = hub._channels["d:u"]
    assert state.prev is not None
    hub.unsubscribe("d:u", "a")
    assert state.prev is None and hub.subscribers("d:u")[0].client_id == "b"


def test_settings_are_validated() -> None:
    assert NamespaceOptions(allowed_delta_types=["fossil"]).allowed_delta_types == ("fossil",)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown delta type"):
        NamespaceOptions(allowed_delta_types=("xdelta",))
    with pytest.raises(ConfigError, match="list of strings"):
        NamespaceOptions(allowed_delta_types="fossil")  # type: ignore[arg-type]
    config = Config.from_dict({"namespaces": {"doc": {"allowed_delta_types": ["fossil"], "delta_publish": True}}})
    assert config.namespaces["doc"].allowed_delta_types == ("fossil",) and config.namespaces["doc"].delta_publish


def broker_url(request: pytest.FixtureRequest, broker: str) -> str:
    return "memory" if broker == "memory" else request.getfixturevalue("redis_server").url


@pytest.mark.parametrize("broker", BROKERS)
async def test_session_negotiates_fossil_and_applies_across_resubscribe(
        start_server: Any, clients: list, request: pytest.FixtureRequest, broker: str) -> None:
    server: Server = await start_server(broker=broker_url(request, broker), namespaces={
        "doc": history_ns(allowed_delta_types=("fossil",), delta_publish=True, force_recovery=True),
        "nodelta": history_ns()})
    pub = await proto_client(server)
    sub = await proto_client(server)
    other = await proto_client(server)
    clients += [pub, sub, other]
    reply = (await sub.call("subscribe", {"channel": "doc:1", "delta": "fossil"}))["subscribe"]
    assert reply["delta"] is True
    plain = (await other.call("subscribe", {"channel": "doc:1"}))["subscribe"]
    assert "delta" not in plain
    # a known type the namespace does not allow: not negotiated (Centrifugo: client.go)
    refused = (await sub.call("subscribe", {"channel": "nodelta:1", "delta": "fossil"}))["subscribe"]
    assert "delta" not in refused
    versions = [json.loads(v) for v in docs(4)]
    for doc in versions:
        assert "publish" in await pub.call("publish", {"channel": "doc:1", "data": doc})
    prev = b""
    kinds = []
    for doc in versions:
        push = (await sub.next_push())["pub"]
        data = push["data"].encode()
        if push.get("delta"):
            data = fossil.apply(prev, data)
        kinds.append(bool(push.get("delta")))
        prev = data
        assert json.loads(data) == doc
        assert (await other.next_push())["pub"]["data"] == doc
    assert kinds == [False, True, True, True]
    # resubscribe with recovery: recovered publications in full (a JSON string), then deltas again
    await sub.call("unsubscribe", {"channel": "doc:1"})
    await pub.call("publish", {"channel": "doc:1", "data": {"missed": 1}})
    again = (await sub.call("subscribe", {"channel": "doc:1", "delta": "fossil", "recover": True,
                                          "offset": 4, "epoch": reply["epoch"]}))["subscribe"]
    assert again["recovered"] is True and again["delta"] is True
    assert [json.loads(p["data"]) for p in again["publications"]] == [{"missed": 1}]
    assert not any(p.get("delta") for p in again["publications"])
    for n in range(3):
        await pub.call("publish", {"channel": "doc:1", "data": {**versions[0], "n": n}})
    kinds = []
    prev = again["publications"][-1]["data"].encode()
    for n in range(3):
        push = (await sub.next_push())["pub"]
        data = fossil.apply(prev, push["data"].encode()) if push.get("delta") else push["data"].encode()
        kinds.append(bool(push.get("delta")))
        prev = data
        assert json.loads(data) == {**versions[0], "n": n}
    assert kinds == [False, True, True]  # the first after a subscribe is full


async def test_unknown_delta_type_closes_with_bad_request(start_server: Any, clients: list) -> None:
    server: Server = await start_server(namespaces={"doc": history_ns(allowed_delta_types=("fossil",))})
    c = await proto_client(server)
    clients.append(c)
    await c.send({"id": 5, "subscribe": {"channel": "doc:1", "delta": "xdelta"}})
    with pytest.raises(Exception):  # noqa: B017 - the connection closes: websockets' ConnectionClosed
        await asyncio.wait_for(c.recv(), TIMEOUT)
    await until(lambda: c.ws.close_code is not None, "the close")
    assert c.ws.close_code == 3501


async def test_api_publish_delta_flag(start_server: Any, clients: list) -> None:
    server: Server = await start_server(api_key="k", namespaces={"doc": history_ns(allowed_delta_types=("fossil",))})
    sub = await proto_client(server)
    clients.append(sub)
    await sub.call("subscribe", {"channel": "doc:2", "delta": "fossil"})
    versions = [json.loads(v) for v in docs(3)]

    def post(body: dict[str, Any]) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/publish", data=json.dumps(body).encode(),
                                     method="POST", headers={"X-API-Key": "k"})
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read())

    for n, doc in enumerate(versions):
        reply = await asyncio.to_thread(post, {"channel": "doc:2", "data": doc, "delta": n > 0})
        assert "error" not in reply, reply
    kinds = [bool((await sub.next_push())["pub"].get("delta")) for _ in versions]
    assert kinds == [False, True, True]


@pytest.mark.slow  # starts node (and redis-server)
@pytest.mark.parametrize(("codec", "broker"), [("json", "memory"), ("protobuf", "memory"), ("json", "redis"),
                                               ("protobuf", "redis")])
async def test_centrifuge_js_applies_deltas_across_a_reconnect_with_recovery(
        request: pytest.FixtureRequest, codec: str, broker: str) -> None:
    """centrifuge-js with ``delta: "fossil"`` (tests/js/delta.cjs): the documents it hands the
    application are the ones published (30 states of the match feed), across a reconnect that
    recovers the publications made meanwhile; most arrived as deltas."""
    modules = node_modules()
    states = [json.loads(s) for s in feed.match_feed(seed=5, updates=30)]
    app = hubbub.App(port=0, broker=broker_url(request, broker), namespaces={
        "doc": {"history_size": 100, "history_ttl": 600, "force_recovery": True,
                "allowed_delta_types": ["fossil"], "delta_publish": True}})

    async def publish(data: Any) -> None:
        for n in range(data["from"], data["to"]):
            await app.server.hub.publish("doc:match", states[n])

    @app.rpc("publish")
    async def publish_rpc(client: hubbub.ClientSession, data: Any) -> Any:
        await publish(data)
        return {}

    away: list[asyncio.Task[None]] = []

    @app.rpc("kick")
    async def kick(client: hubbub.ClientSession, data: Any) -> Any:
        client.disconnect(3011, "kicked by test")
        # while the client is away (it recovers them); in a task of the test's: the closed
        # connection's command does not outlive it
        away.append(asyncio.create_task(publish(data)))
        return {}

    await app.start()
    try:
        url = f"ws://127.0.0.1:{app.server.port}/connection/websocket"
        proc = await asyncio.create_subprocess_exec(
            "node", str(modules.parent / "delta.cjs"), url, "doc:match", codec, str(len(states)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 8 * TIMEOUT)
        await asyncio.gather(*away)
    finally:
        await app.stop()
    assert proc.returncode == 0, err.decode() + out.decode()[-5000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert [g["offset"] for g in result["got"]] == list(range(1, len(states) + 1))
    assert [g["data"] for g in result["got"]] == states
    assert result["subscribed"][1] == {"recovered": True, "wasRecovering": True}
    assert 3011 in result["codes"]
    stats = result["stats"]
    # full: the first after each subscribe (live), and the recovered ones (never deltas)
    assert stats["numFullPayloads"] == 1 + 10 + 1 and stats["numDeltaPayloads"] == len(states) - 12
    assert stats["bytesReceived"] * 2 < stats["bytesDecoded"]  # 12 of 30 in full, the rest tiny


async def test_join_and_leave_reach_delta_subscribers_encoded_once_per_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = Hub(Config(namespaces={"d": history_ns(allowed_delta_types=("fossil",), join_leave=True)}), MemoryBroker())
    await hub.start()
    try:
        json_wire, _ = wires()
        ready = await join(hub, "d:j", "ready", json_wire, True)
        await hub.publish("d:j", Publication(b'{"a":1}', delta=True))  # "ready" now holds it
        pending = await join(hub, "d:j", "pending", json_wire, True)
        calls: list[str] = []
        original = type(JSON).encode_join
        monkeypatch.setattr(type(JSON), "encode_join",
                            lambda self, channel, info: calls.append(channel) or original(self, channel, info))
        hub.on_join("d:j", ClientInfo("x", "u"))
        assert calls == ["d:j"]  # one encode for the wire's two groups
        assert json.loads(ready.messages()[-1])["push"]["join"]["info"]["client"] == "x"
        assert json.loads(pending.messages()[-1])["push"]["join"]["info"]["client"] == "x"
    finally:
        await hub.close()


@pytest.mark.slow  # starts redis-server
async def test_two_nodes_on_redis_each_know_the_previous_publication(start_server: Any, clients: list,
                                                                     redis_server: Any) -> None:  # noqa: F811
    """A delta subscriber on one node, the publisher on another: the subscriber's node knows each
    publication's predecessor from Redis pub/sub (contiguous offsets), so deltas flow; a second delta
    subscriber joining late on the publisher's node starts in full."""
    namespaces = {"doc": history_ns(allowed_delta_types=("fossil",), delta_publish=True)}
    a: Server = await start_server(broker=redis_server.url, namespaces=namespaces)
    b: Server = await start_server(broker=redis_server.url, namespaces=namespaces)
    sub_b = await proto_client(b)
    pub_a = await proto_client(a)
    clients += [sub_b, pub_a]
    assert (await sub_b.call("subscribe", {"channel": "doc:n", "delta": "fossil"}))["subscribe"]["delta"] is True
    versions = [json.loads(v) for v in docs(5)]
    late = None
    for n, doc in enumerate(versions):
        if n == 2:
            late = await proto_client(a)
            clients.append(late)
            await late.call("subscribe", {"channel": "doc:n", "delta": "fossil"})
        assert "publish" in await pub_a.call("publish", {"channel": "doc:n", "data": doc})
    for client, expected, kinds in ((sub_b, versions, [False, True, True, True, True]),
                                    (late, versions[2:], [False, True, True])):
        assert client is not None
        prev, got = b"", []
        for doc in expected:
            push = (await client.next_push())["pub"]
            data = fossil.apply(prev, push["data"].encode()) if push.get("delta") else push["data"].encode()
            got.append(bool(push.get("delta")))
            prev = data
            assert json.loads(data) == doc
        assert got == kinds
