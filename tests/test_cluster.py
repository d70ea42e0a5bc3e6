"""The cluster (``hubbub.cluster``): nodes that share a broker act as one.

First the module alone, without sockets: hubs joined by an in-process bus
broker, a fake clock for liveness. Then two ``hubbub serve`` processes on a
real ``redis-server``, driven by real clients (centrifuge-python, websockets)
and the ``cent`` SDK through the server API of either node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from hubbub.brokers.base import Publication, StreamPosition
from hubbub.brokers.memory import MemoryBroker
from hubbub.cluster import CONTROL_CHANNEL, NODE_CHANNEL_PREFIX, Cluster, node_info
from hubbub.config import Config, NamespaceOptions
from hubbub.errors import BadRequest, BrokerUnavailable, NodeUnavailable, ProtocolError, RemoteError
from hubbub.hub import Hub
from hubbub.validation import channel_name

from .conftest import TIMEOUT, ProtoClient, ServeProcess, proto_client, until
from .redis_server import RedisServer, redis_server  # noqa: F401

# -- the module without sockets --------------------------------------------------------------------


class Bus:
    """An in-process stand-in for a shared broker's pub/sub (the control channels only)."""

    def __init__(self) -> None:
        self.brokers: list[BusBroker] = []


class BusBroker(MemoryBroker):
    """A memory broker whose internal channels reach every broker of the bus subscribed to them."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(sweep_interval=0)
        self.bus = bus
        bus.brokers.append(self)
        self.topics: set[str] = set()
        self.down = False
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def subscribe(self, channel: str) -> None:
        if self.down:
            raise BrokerUnavailable("down")
        self.topics.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.topics.discard(channel)

    async def publish(self, channel: str, pub: Publication, **kw: Any) -> StreamPosition:
        if self.down:
            raise BrokerUnavailable("down")
        if not channel.startswith("\x1f"):
            return await super().publish(channel, pub, **kw)
        self.sent.append((channel, json.loads(pub.data)))
        for broker in list(self.bus.brokers):
            if channel in broker.topics and broker._handler is not None:
                broker._handler.on_publication(channel, Publication(pub.data))
        return StreamPosition()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSession:
    """What the user commands touch of a client session."""

    def __init__(self, user: str, client_id: str) -> None:
        self.user = user
        self.client_id = client_id
        self.channels: list[str] = []
        self.closed: tuple[int, str | None] | None = None
        self.expire_at: float | None = None
        self.slow: asyncio.Event | None = None

    async def server_subscribe(self, channel: str) -> None:
        if self.slow is not None:
            await self.slow.wait()
        if channel in self.channels:
            raise ProtocolError(105)
        self.channels.append(channel)

    def server_unsubscribe(self, channel: str) -> bool:
        if channel in self.channels:
            self.channels.remove(channel)
            return True
        return False

    def disconnect(self, code: int, reason: str | None = None) -> None:
        self.closed = (code, reason)


@pytest.fixture
async def trio() -> AsyncIterator[Callable[..., Any]]:
    """``hub, cluster, broker = await make(name)``: nodes on one bus, each with its own clock."""
    bus = Bus()
    made: list[tuple[Hub, Cluster]] = []

    async def make(name: str, **kw: Any) -> tuple[Hub, Cluster, BusBroker]:
        broker = BusBroker(bus)
        hub = Hub(Config(namespaces={"chat": NamespaceOptions()}), broker)
        await hub.start()
        kw.setdefault("interval", 3600.0)  # heartbeats only when the test calls tick()
        kw.setdefault("timeout", 3.0)
        cluster = Cluster(hub, started_at=0.0, name=name, clock=kw.pop("clock", Clock()), wall=lambda: 42.0, **kw)
        await cluster.start()
        made.append((hub, cluster))
        return hub, cluster, broker

    yield make
    for hub, cluster in made:
        await cluster.close()
        await hub.close()


async def test_nodes_find_each_other_and_a_silent_one_drops_out(trio: Any) -> None:
    clock = Clock()
    hub_a, a, _ = await trio("a", clock=clock)
    hub_b, b, broker_b = await trio("b")
    await until(lambda: len(a.nodes()) == 2 and len(b.nodes()) == 2, "both nodes know both")
    assert [n["name"] for n in a.nodes()] == ["a", "b"]
    assert a.peers() == [b.uid] and b.peers() == [a.uid]
    # b stops sending (killed: no bye); a forgets it once node_timeout passed without a heartbeat
    broker_b.topics.clear()
    b._closed = True
    clock.now += 2.9
    a.tick()
    assert len(a.nodes()) == 2
    clock.now += 0.2
    assert [n["name"] for n in a.nodes()] == ["a"]
    a.tick()
    assert a.peers() == []


async def test_a_clean_shutdown_says_bye(trio: Any) -> None:
    _, a, _ = await trio("a")
    _, b, _ = await trio("b")
    await until(lambda: len(a.nodes()) == 2, "a knows b")
    await b.close()
    assert [n["name"] for n in a.nodes()] == ["a"]


async def test_snapshot_shape_and_counters(trio: Any) -> None:
    hub, a, _ = await trio("a")
    hub.stats.messages_out += 7
    hub.stats.publications["api"] += 2
    hub.stats.disconnects[3008] += 1
    hub.add_session(FakeSession("u1", "c1"))
    info = a.info()
    assert set(info) == {"uid", "name", "version", "num_clients", "num_users", "num_subs", "num_channels",
                         "uptime", "broker", "metrics"}
    assert info["broker"] == {"name": hub.broker.name, "up": True}
    assert info["uptime"] == 42 and info["num_clients"] == 1 and info["num_users"] == 1
    items = info["metrics"]["items"]
    assert info["metrics"]["interval"] == a.interval
    assert items["messages_out"] == 7 and items["publications"] == 2 and items["publications.api"] == 2
    assert items["disconnects.3008"] == 1 and items["broker_errors"] == 0
    assert info == node_info(hub, uid=a.uid, name="a", started_at=0.0, interval=a.interval, now=42.0)


async def test_heartbeat_carries_the_snapshot_and_survives_an_outage(trio: Any) -> None:
    hub_a, a, broker_a = await trio("a")
    _, b, _ = await trio("b")
    await until(lambda: len(b.nodes()) == 2, "b knows a")
    hub_a.stats.bytes_out = 1234
    a.tick()
    await until(lambda: next(n for n in b.nodes() if n["name"] == "a")["metrics"]["items"]["bytes_out"] == 1234,
                "b sees a's new figures")
    broker_a.down = True
    a.tick()  # fails quietly
    await until(lambda: not a._tasks, "the failed heartbeat ran")
    broker_a.down = False
    hub_a.stats.bytes_out = 99
    a.tick()
    await until(lambda: next(n for n in b.nodes() if n["name"] == "a")["metrics"]["items"]["bytes_out"] == 99,
                "heartbeats again")


async def test_control_channels_are_out_of_reach_of_clients(trio: Any) -> None:
    hub, a, broker = await trio("a")
    for name in (CONTROL_CHANNEL, NODE_CHANNEL_PREFIX + a.uid):
        with pytest.raises(BadRequest):
            channel_name(name)
        with pytest.raises(BadRequest):
            await hub.publish(name, {"x": 1})
    assert hub.channels() == {}
    assert broker.topics == {CONTROL_CHANNEL, NODE_CHANNEL_PREFIX + a.uid}
    # malformed control messages are ignored
    for data in (b"[1]", b"{}", b'{"from": "x", "type": "nope"}', b'{"from": "x", "type": "node"}'):
        hub.on_publication(CONTROL_CHANNEL, Publication(data))
    assert a.peers() == []


async def test_user_commands_reach_every_node_in_order(trio: Any) -> None:
    hub_a, a, _ = await trio("a")
    hub_b, b, _ = await trio("b")
    here, there, other = FakeSession("u1", "c1"), FakeSession("u1", "c2"), FakeSession("u2", "c3")
    hub_a.add_session(here)
    hub_b.add_session(there)
    hub_b.add_session(other)
    there.slow = asyncio.Event()  # b's subscribe waits: the unsubscribe must still come after it
    await a.user_command({"method": "subscribe", "user": "u1", "channel": "chat:1"})
    await a.user_command({"method": "unsubscribe", "user": "u1", "channel": "chat:1"})
    await a.user_command({"method": "subscribe", "user": "u1", "channel": "chat:2"})
    assert here.channels == ["chat:2"]
    there.slow.set()
    await until(lambda: there.channels == ["chat:2"], "b applied the commands in order")
    await a.user_command({"method": "refresh", "user": "u1", "expire_at": 5000.0})
    await until(lambda: there.expire_at == 5000.0, "refresh on b")
    await a.user_command({"method": "disconnect", "user": "u1", "code": 3503, "reason": "bye",
                          "whitelist": ["c1"]})
    await until(lambda: there.closed == (3503, "bye"), "disconnect on b")
    assert here.closed is None and other.closed is None and other.channels == []


async def test_user_command_when_the_broker_is_down_still_acts_here(trio: Any) -> None:
    hub_a, a, broker = await trio("a")
    session = FakeSession("u1", "c1")
    hub_a.add_session(session)
    broker.down = True
    with pytest.raises(BrokerUnavailable):
        await a.user_command({"method": "disconnect", "user": "u1", "code": 3503, "reason": "x"})
    assert session.closed == (3503, "x")


async def test_channels_survey_merges_and_does_not_wait_past_the_timeout(trio: Any) -> None:
    hub_a, a, _ = await trio("a", request_timeout=0.2)
    hub_b, b, _ = await trio("b")
    await until(lambda: len(a.peers()) == 1 and len(b.peers()) == 1, "peers known")
    hub_a._channels["chat:both"] = type("S", (), {"count": 2})()  # type: ignore[assignment]
    hub_b._channels["chat:both"] = type("S", (), {"count": 3})()  # type: ignore[assignment]
    hub_b._channels["chat:only-b"] = type("S", (), {"count": 1})()  # type: ignore[assignment]
    hub_b._channels["other"] = type("S", (), {"count": 1})()  # type: ignore[assignment]
    assert await a.channels() == {"chat:both": 5, "chat:only-b": 1, "other": 1}
    assert await a.channels("chat:*") == {"chat:both": 5, "chat:only-b": 1}
    # a node that is known but never answers: the survey ends after the timeout with the rest
    ghost = {"type": "node", "from": "ghost", "info": {"uid": "ghost", "name": "ghost"}}
    hub_a.on_publication(CONTROL_CHANNEL, Publication(json.dumps(ghost).encode()))
    assert "ghost" in a.peers()
    started = asyncio.get_running_loop().time()
    assert await a.channels() == {"chat:both": 5, "chat:only-b": 1, "other": 1}
    assert asyncio.get_running_loop().time() - started >= 0.2
    for hub in (hub_a, hub_b):
        hub._channels.clear()


async def test_send_and_register(trio: Any) -> None:
    hub_a, a, _ = await trio("a", request_timeout=0.2)
    hub_b, b, _ = await trio("b")
    calls = []

    async def echo(payload: Any, sender: str) -> Any:
        calls.append(sender)
        return {"echo": payload, "node": b.uid}

    async def broken(payload: Any, sender: str) -> Any:
        raise KeyError("session")

    b.register("echo", echo)
    b.register("broken", broken)
    with pytest.raises(ValueError):
        b.register("echo", echo)
    assert await a.send(b.uid, "echo", {"n": 1}) == {"echo": {"n": 1}, "node": b.uid}
    assert calls == [a.uid]
    with pytest.raises(RemoteError, match="KeyError"):
        await a.send(b.uid, "broken")
    with pytest.raises(RemoteError, match="no handler"):
        await a.send(b.uid, "nothing")
    with pytest.raises(NodeUnavailable):
        await a.send("no-such-node", "echo", 1)
    assert await b.send(b.uid, "echo", 2) == {"echo": 2, "node": b.uid}  # to itself: no broker
    assert not a._calls


async def test_one_node_alone_acts_locally(trio: Any) -> None:
    hub, a, broker = await trio("a")
    session = FakeSession("u1", "c1")
    hub.add_session(session)
    await a.user_command({"method": "subscribe", "user": "u1", "channel": "chat:x"})
    assert session.channels == ["chat:x"]
    broker.sent.clear()
    assert await a.channels() == {}
    assert broker.sent == []  # no other node known: the survey publishes nothing
    assert [n["uid"] for n in a.nodes()] == [a.uid]


# -- two `hubbub serve` processes on one Redis ---------------------------------------------------------

KEY = "cluster-api-key"
SECRET = "cluster-token-secret-of-32-bytes-at-least"
CLUSTER_TOML = f"""
api_key = "{KEY}"
token_hmac_secret = "{SECRET}"
allow_anonymous = true
node_info_interval = 0.2
node_timeout = 1.0
node_request_timeout = 2.0

[namespaces.chat]
history_size = 10
history_ttl = 300
"""


def token(user: str) -> str:
    return jwt.encode({"sub": user}, SECRET, algorithm="HS256")


@pytest.fixture
def cluster_pair(serve_process: Any, redis_server: RedisServer,  # noqa: F811
                 tmp_path: Path) -> tuple[ServeProcess, ServeProcess]:
    """Two ``hubbub serve`` nodes on one Redis, with an API key and tokens."""
    config = tmp_path / "cluster.toml"
    config.write_text(CLUSTER_TOML)
    return tuple(serve_process("--broker", redis_server.url, "--config", str(config)) for _ in range(2))  # type: ignore[return-value]


def cent(proc: ServeProcess) -> Any:
    from cent import Client

    return Client(f"http://127.0.0.1:{proc.port}/api", KEY, timeout=TIMEOUT)


async def api(proc: ServeProcess, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A raw API call (for fields the SDK's models leave out)."""
    def call() -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{proc.port}/api/{method}", data=json.dumps(params).encode(),
                                     headers={"X-API-Key": KEY}, method="POST")
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read())

    return await asyncio.to_thread(call)


async def user_client(proc: ServeProcess, user: str) -> ProtoClient:
    client = await proto_client(proc, connect=False)  # type: ignore[arg-type]
    reply = await client.call("connect", {"token": token(user)})
    assert reply["connect"]["client"], reply
    client.client_id = reply["connect"]["client"]  # type: ignore[attr-defined]
    return client


async def node_names(proc: ServeProcess) -> list[str]:
    return [n["name"] for n in (await api(proc, "info", {}))["result"]["nodes"]]


async def test_disconnect_through_the_other_node(cluster_pair: tuple[ServeProcess, ServeProcess]) -> None:
    from cent import DisconnectRequest
    from centrifuge import Client, ClientEventHandler, DisconnectedContext

    a, b = cluster_pair
    disconnected: asyncio.Queue[DisconnectedContext] = asyncio.Queue()
    connected = asyncio.Event()

    class Events(ClientEventHandler):
        async def on_connected(self, ctx: Any) -> None:
            connected.set()

        async def on_disconnected(self, ctx: DisconnectedContext) -> None:
            disconnected.put_nowait(ctx)

    client = Client(f"{a.url}/connection/websocket", events=Events(), token=token("alice"))
    await client.connect()
    try:
        await asyncio.wait_for(connected.wait(), TIMEOUT)
        await asyncio.to_thread(cent(b).disconnect, DisconnectRequest(user="alice"))
        ctx = await asyncio.wait_for(disconnected.get(), TIMEOUT)
        assert ctx.code == 3503
    finally:
        await client.disconnect()


async def test_info_lists_both_nodes_and_a_killed_one_drops_out(
        cluster_pair: tuple[ServeProcess, ServeProcess], clients: list) -> None:
    from cent import InfoRequest

    a, b = cluster_pair
    clients.append(await user_client(a, "u1"))
    async def a_has_its_client() -> bool:
        nodes = (await api(b, "info", {}))["result"]["nodes"]
        return len(nodes) == 2 and sorted(n["num_clients"] for n in nodes) == [0, 1]

    await until(a_has_its_client, "b's info lists both nodes, a with its client")
    info = await asyncio.to_thread(cent(b).info, InfoRequest())
    assert len({n.uid for n in info.nodes}) == 2
    raw = (await api(b, "info", {}))["result"]["nodes"]
    on_a = next(n for n in raw if n["num_clients"] == 1)
    assert on_a["num_users"] == 1 and on_a["uptime"] >= 0 and on_a["version"]
    assert on_a["metrics"]["interval"] == 0.2 and "messages_out" in on_a["metrics"]["items"]
    assert (await api(a, "info", {}))["result"]["nodes"][0]["uid"] in {n["uid"] for n in raw}
    a.proc.kill()  # no bye: b notices the silence
    a.proc.wait()
    await until(lambda: _len_is(node_names(b), 1), "a dropped out of b's info")


async def _len_is(names: Any, n: int) -> bool:
    return len(await names) == n


async def test_publication_through_the_cluster_reaches_every_node(
        cluster_pair: tuple[ServeProcess, ServeProcess], clients: list) -> None:
    from cent import PublishRequest

    a, b = cluster_pair
    subs = [await proto_client(p) for p in (a, a, b)]  # type: ignore[arg-type]
    clients += subs
    for sub in subs:
        await sub.call("subscribe", {"channel": "chat:all"})
    result = await asyncio.to_thread(cent(b).publish, PublishRequest(channel="chat:all", data={"to": "all"}))
    for sub in subs:
        push = await sub.next_push()
        assert push["pub"]["data"] == {"to": "all"} and push["pub"]["offset"] == result.offset


async def test_channels_through_b_include_a_channel_only_on_a(
        cluster_pair: tuple[ServeProcess, ServeProcess], clients: list) -> None:
    from cent import ChannelsRequest

    a, b = cluster_pair
    on_a = [await proto_client(a) for _ in range(2)]  # type: ignore[arg-type]
    on_b = await proto_client(b)  # type: ignore[arg-type]
    clients += [*on_a, on_b]
    for c in on_a:
        await c.call("subscribe", {"channel": "chat:only-a"})
        await c.call("subscribe", {"channel": "chat:both"})
    await on_b.call("subscribe", {"channel": "chat:both"})
    await until(lambda: _len_is(node_names(b), 2), "b knows a")
    channels = await asyncio.to_thread(cent(b).channels, ChannelsRequest(pattern="chat:*"))
    assert {k: v.num_clients for k, v in channels.channels.items()} == {"chat:only-a": 2, "chat:both": 3}


async def test_subscribe_unsubscribe_and_refresh_through_b_act_on_a(
        cluster_pair: tuple[ServeProcess, ServeProcess], clients: list) -> None:
    from cent import PublishRequest, RefreshRequest, SubscribeRequest, UnsubscribeRequest

    a, b = cluster_pair
    user = await user_client(a, "bob")
    clients.append(user)
    await asyncio.to_thread(cent(b).subscribe, SubscribeRequest(user="bob", channel="news"))
    push = await user.next_push()
    assert push["channel"] == "news" and "subscribe" in push
    await asyncio.to_thread(cent(b).publish, PublishRequest(channel="news", data="hello"))
    assert (await user.next_push())["pub"]["data"] == "hello"
    await asyncio.to_thread(cent(b).unsubscribe, UnsubscribeRequest(user="bob", channel="news"))
    assert await user.next_push() == {"channel": "news",
                                      "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
    await asyncio.to_thread(cent(b).refresh, RefreshRequest(user="bob", expired=True))
    assert (await user.closed())[0] == 3005


async def test_control_channels_are_subscribed_once_the_broker_is_back(caplog: pytest.LogCaptureFixture) -> None:
    bus = Bus()
    broker = BusBroker(bus)
    hub = Hub(Config(), broker)
    await hub.start()
    cluster = Cluster(hub, started_at=0.0, interval=3600.0)
    broker.down = True
    try:
        await cluster.start()  # does not raise: the node serves alone and retries
        assert broker.topics == set()
        cluster.tick()
        await until(lambda: not cluster._tasks, "the retry ran")
        assert broker.topics == set()
        broker.down = False
        cluster.tick()
        await until(lambda: broker.topics == {CONTROL_CHANNEL, cluster.own_channel}, "subscribed")
    finally:
        await cluster.close()
        await hub.close()
    warnings = [r.msg for r in caplog.records if r.name == "hubbub.cluster" and r.levelname == "WARNING"]
    assert sorted(m.split(",")[0] for m in warnings) == ["cluster control channels not subscribed",
                                                        "cluster heartbeat failed: %s"], warnings  # once each


async def test_workers_are_nodes_of_one_cluster(serve_process: Any, redis_server: RedisServer,  # noqa: F811
                                                tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(CLUSTER_TOML)
    server = serve_process("--workers", "2", "--broker", redis_server.url, "--config", str(config))
    await until(lambda: sum("(pid " in line and "listening" in line for line in server.lines) == 2,
                "both workers listen")
    # whichever worker answers the API, its info lists both
    await until(lambda: _len_is(node_names(server), 2), "info lists both workers")
    names = await node_names(server)
    pids = {line.split("(pid ")[1].split(")")[0] for line in server.lines if "(pid " in line}
    assert {name.rsplit("_", 1)[1] for name in names} == pids
    assert server.stop() == 0


FORWARD_APP = f'''
import os

import hubbub
from hubbub.http import HTTPResponse

app = hubbub.App(broker=os.environ["CLUSTER_BROKER"], api_key="{KEY}", node_info_interval=0.2,
                 node_timeout=1.0)
cluster = app.server.cluster


async def whoami(payload, sender):
    return {{"node": cluster.uid, "asked_by": sender, "payload": payload}}


@app.on_startup
async def setup():
    cluster.register("whoami", whoami)


@app.route("/forward/{{node}}")
async def forward(request):
    """What an HTTP-emulation request does: run a request on the node that holds the session."""
    try:
        reply = await cluster.send(request.params["node"], "whoami", {{"via": cluster.uid}})
    except hubbub.errors.ClusterError as exc:
        return HTTPResponse.json({{"error": str(exc)}}, 504)
    return HTTPResponse.json(reply)
'''


async def test_a_request_is_forwarded_to_the_node_that_holds_it(serve_process: Any, redis_server: RedisServer,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    import os

    (tmp_path / "forward_app.py").write_text(FORWARD_APP)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "CLUSTER_BROKER": redis_server.url}
    a, b = (serve_process("forward_app:app", command="run", env=env) for _ in range(2))
    await until(lambda: _len_is(node_names(b), 2), "b knows a")
    nodes = {n["name"].rsplit("_", 1)[1]: n["uid"] for n in (await api(b, "info", {}))["result"]["nodes"]}
    uid_a, uid_b = nodes[str(a.proc.pid)], nodes[str(b.proc.pid)]

    def get(proc: ServeProcess, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}{path}", timeout=TIMEOUT) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, reply = await asyncio.to_thread(get, b, f"/forward/{uid_a}")
    assert status == 200 and reply == {"node": uid_a, "asked_by": uid_b, "payload": {"via": uid_b}}
    status, reply = await asyncio.to_thread(get, b, f"/forward/{uid_b}")  # to itself
    assert status == 200 and reply["node"] == uid_b
    status, reply = await asyncio.to_thread(get, b, "/forward/no-such-node")
    assert status == 504 and "did not answer" in reply["error"]


async def test_each_node_logs_its_own_joining_once(trio: Any, caplog: pytest.LogCaptureFixture) -> None:
    """With ``--workers 4`` every worker logged every node's "joined the cluster": 4 x 3 lines at
    INFO (issue 28, defect 7). Now each node logs its own joining at INFO, once; the others' at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="hubbub.cluster")
    nodes = [(await trio(name))[1] for name in ("a", "b", "c", "d")]
    for node in nodes:
        node.tick()  # a heartbeat from everyone: each node hears of every other
    await until(lambda: all(len(node.nodes()) == 4 for node in nodes), "every node knows every node")
    joined = [r for r in caplog.records if r.name == "hubbub.cluster" and "joined the cluster" in r.getMessage()]
    info = sorted(r.getMessage().split()[1] for r in joined if r.levelno == logging.INFO)
    assert info == ["a", "b", "c", "d"]  # one line per node, naming itself
    assert sum(r.levelno == logging.DEBUG for r in joined) == 4 * 3
    caplog.clear()
    await nodes[3].close()
    left = [r for r in caplog.records if "left the cluster" in r.getMessage()]
    assert [(r.levelno, r.getMessage().split()[1]) for r in left if r.levelno == logging.INFO] == [(logging.INFO, "d")]
