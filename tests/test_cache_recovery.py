"""Cache recovery mode (a namespace's ``force_recovery_mode = "cache"``, Centrifugo's option):
a subscribe with ``recover: true`` gets the channel's latest publication, or none, on subscribe
and on every resubscribe; through the memory and the Redis broker; with a raw JSON client and
with centrifuge-js under Node (tests/js/cache_recovery.cjs)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest
import websockets

import hubbub
from hubbub.config import Config, NamespaceOptions
from hubbub.errors import ConfigError
from hubbub.server import Server

from .conftest import TIMEOUT, history_ns, proto_client
from .jsdeps import node_modules
from .redis_server import redis_server  # noqa: F401

CACHE = {"force_recovery": True, "force_recovery_mode": "cache"}
#: the memory broker, and a real redis-server (a process started: slow, as conftest.SLOW_MODULES)
BROKERS = ["memory", pytest.param("redis", marks=pytest.mark.slow)]


def broker_url(request: pytest.FixtureRequest, broker: str) -> str:
    return "memory" if broker == "memory" else request.getfixturevalue("redis_server").url


@pytest.mark.parametrize("broker", BROKERS)
async def test_subscribe_with_recover_gets_the_latest_publication(
    start_server: Any, clients: list, request: pytest.FixtureRequest, broker: str
) -> None:
    server: Server = await start_server(broker=broker_url(request, broker), namespaces={
        "doc": history_ns(**CACHE), "log": history_ns(force_recovery=True)})
    c = await proto_client(server)
    clients.append(c)
    empty = (await c.call("subscribe", {"channel": "doc:a", "recover": True}))["subscribe"]
    # nothing published yet: no publication, and nothing the client held to call recovered
    assert empty["was_recovering"] is True and empty["recovered"] is False and "publications" not in empty
    for n in (1, 2, 3):
        for channel in ("doc:a", "log:a"):
            assert "publish" in await c.call("publish", {"channel": channel, "data": {"n": n}})

    d = await proto_client(server)
    clients.append(d)
    first = (await d.call("subscribe", {"channel": "doc:a", "recover": True}))["subscribe"]
    assert first["recovered"] is True and first["was_recovering"] is True and first["recoverable"] is True
    assert [(p["data"], p["offset"]) for p in first["publications"]] == [({"n": 3}, 3)]
    assert first["offset"] == 0 and first["epoch"]  # the client's position: the publication moves it
    await d.call("unsubscribe", {"channel": "doc:a"})
    again = (await d.call("subscribe", {"channel": "doc:a", "recover": True, "offset": 3,
                                        "epoch": first["epoch"]}))["subscribe"]
    # on resubscribe at the top, the latest again (stream mode would send nothing)
    assert again["recovered"] is True and [p["data"] for p in again["publications"]] == [{"n": 3}]
    assert again["offset"] == 3 and again["epoch"] == first["epoch"]
    # without recover: only the position, as in stream mode
    await d.call("unsubscribe", {"channel": "doc:a"})
    plain = (await d.call("subscribe", {"channel": "doc:a"}))["subscribe"]
    assert "publications" not in plain and plain["offset"] == 3 and "was_recovering" not in plain

    stream = (await d.call("subscribe", {"channel": "log:a", "recover": True}))["subscribe"]
    assert [p["data"] for p in stream["publications"]] == [{"n": 1}, {"n": 2}, {"n": 3}]

    # live publications follow as usual, once
    await c.call("publish", {"channel": "doc:a", "data": {"n": 4}})
    push = await d.next_push()
    assert push["channel"] == "doc:a" and push["pub"]["data"] == {"n": 4} and push["pub"]["offset"] == 4


@pytest.mark.parametrize("broker", BROKERS)
async def test_cache_mode_after_history_is_removed_gives_no_publication(
    start_server: Any, clients: list, request: pytest.FixtureRequest, broker: str
) -> None:
    server: Server = await start_server(broker=broker_url(request, broker), namespaces={"doc": history_ns(**CACHE)})
    c = await proto_client(server)
    clients.append(c)
    for n in (1, 2):
        await c.call("publish", {"channel": "doc:b", "data": {"n": n}})
    top = (await c.call("subscribe", {"channel": "doc:b", "recover": True}))["subscribe"]
    assert [p["data"] for p in top["publications"]] == [{"n": 2}]
    await c.call("unsubscribe", {"channel": "doc:b"})
    await server.hub.broker.remove_history("doc:b")
    # the client's position is the top: recovered, with nothing to send
    same = (await c.call("subscribe", {"channel": "doc:b", "recover": True, "offset": 2,
                                       "epoch": top["epoch"]}))["subscribe"]
    assert same["recovered"] is True and "publications" not in same
    await c.call("unsubscribe", {"channel": "doc:b"})
    fresh = (await c.call("subscribe", {"channel": "doc:b", "recover": True}))["subscribe"]
    assert fresh["recovered"] is False and "publications" not in fresh


def test_force_recovery_mode_is_validated() -> None:
    assert NamespaceOptions(history_size=1, history_ttl=60, force_recovery_mode="cache").force_recovery_mode == "cache"
    assert NamespaceOptions(force_recovery_mode="stream").force_recovery_mode == "stream"
    with pytest.raises(ConfigError, match="force_recovery_mode must be one of"):
        NamespaceOptions(history_size=1, history_ttl=60, force_recovery_mode="latest")
    with pytest.raises(ConfigError, match="needs history"):
        NamespaceOptions(force_recovery_mode="cache")
    with pytest.raises(ConfigError, match="needs history"):
        Config.from_dict({"namespaces": {"doc": {"force_recovery_mode": "cache", "history_size": 1}}})
    with pytest.raises(ConfigError, match="must be a string"):
        Config.from_dict({"channels": {"force_recovery_mode": 1}})


@pytest.mark.slow  # starts node (and redis-server)
@pytest.mark.parametrize(("codec", "broker"), [("json", "memory"), ("json", "redis"), ("protobuf", "memory")])
async def test_centrifuge_js_gets_the_latest_on_subscribe_and_resubscribe(
    request: pytest.FixtureRequest, codec: str, broker: str
) -> None:
    modules = node_modules()
    app = hubbub.App(port=0, broker=broker_url(request, broker), namespaces={
        "doc": {"history_size": 1, "history_ttl": 600, **CACHE}})

    @app.rpc("kick")
    async def kick(client: hubbub.ClientSession, data: Any) -> Any:
        client.disconnect(3011, "kicked by test")
        return {}

    await app.start()
    try:
        for n in (1, 2):  # only the latest reaches a subscriber
            await app.server.hub.publish("doc:now", {"n": n})
        url = f"ws://127.0.0.1:{app.server.port}/connection/websocket"  # the Protobuf build asks itself
        proc = await asyncio.create_subprocess_exec(
            "node", str(modules.parent / "cache_recovery.cjs"), url, "doc:now", codec,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 6 * TIMEOUT)
    finally:
        await app.stop()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["got"] == [{"data": {"n": 2}, "offset": 2}, {"data": {"n": 2}, "offset": 2}]
    assert result["subscribed"] == [{"recovered": True, "wasRecovering": True}] * 2
    assert 3011 in result["codes"]


async def test_uni_websocket_subs_with_recover_get_the_latest(start_server: Any) -> None:
    """The one-way transports join through the same hub: a ``subs`` entry with ``recover``
    gets the latest publication in its connect push."""
    server: Server = await start_server(uni_websocket_path="/connection/uni_websocket",
                                        namespaces={"doc": history_ns(**CACHE)})
    for n in (1, 2, 3):
        await server.hub.publish("doc:u", {"n": n})
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/connection/uni_websocket") as ws:
        await ws.send(json.dumps({"subs": {"doc:u": {"recover": True}}}))
        push = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    sub = push["connect"]["subs"]["doc:u"]
    assert sub["recovered"] is True and [p["data"] for p in sub["publications"]] == [{"n": 3}]
