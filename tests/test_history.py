"""History, recovery, presence and exclude-sender (namespaces with streams)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
import websockets

from hubbub.brokers.base import Publication
from hubbub.config import Config, NamespaceOptions
from hubbub.errors import ConfigError
from hubbub.server import Server
from hubbub.session import ConnectRequest, ConnectResult, SessionHooks

from .conftest import ROOT, TIMEOUT, history_ns, proto_client, ws_url


async def _history_server(start_server, **ns: Any) -> Server:
    return await start_server(namespaces={"chat": history_ns(**ns)})


# -- streams and the history command ---------------------------------------------------


async def test_publish_reply_and_pushes_carry_offsets(start_server, clients: list) -> None:
    server = await _history_server(start_server)
    c = await proto_client(server)
    clients.append(c)
    sub = (await c.call("subscribe", {"channel": "chat:a"}))["subscribe"]
    assert sub["offset"] == 0 and sub["epoch"]
    r1 = (await c.call("publish", {"channel": "chat:a", "data": 1}))["publish"]
    r2 = (await c.call("publish", {"channel": "chat:a", "data": 2}))["publish"]
    assert (r1["offset"], r2["offset"]) == (1, 2) and r1["epoch"] == r2["epoch"] == sub["epoch"]
    assert [(await c.next_push())["pub"]["offset"] for _ in range(2)] == [1, 2]


async def test_history_limit_since_reverse(start_server, clients: list) -> None:
    server = await _history_server(start_server, history_size=5)
    c = await proto_client(server)
    clients.append(c)
    for i in range(1, 8):
        await c.call("publish", {"channel": "chat:h", "data": i})
    h = (await c.call("history", {"channel": "chat:h", "limit": -1}))["history"]
    assert [p["data"] for p in h["publications"]] == [3, 4, 5, 6, 7]  # trimmed to history_size
    assert h["offset"] == 7
    epoch = h["epoch"]
    h = (await c.call("history", {"channel": "chat:h", "limit": 2}))["history"]
    assert [p["offset"] for p in h["publications"]] == [3, 4]
    h = (await c.call("history", {"channel": "chat:h", "limit": 2, "reverse": True}))["history"]
    assert [p["offset"] for p in h["publications"]] == [7, 6]
    h = (await c.call("history", {"channel": "chat:h", "limit": 10, "since": {"offset": 5, "epoch": epoch}}))
    assert [p["data"] for p in h["history"]["publications"]] == [6, 7]
    h = (await c.call("history", {"channel": "chat:h", "limit": 0}))["history"]
    assert h["publications"] == [] and h["offset"] == 7
    bad = await c.call("history", {"channel": "chat:h", "limit": 1, "since": {"offset": 1, "epoch": "other"}})
    assert bad["error"]["code"] == 112


async def test_history_expires_after_ttl(start_server, clients: list) -> None:
    server = await _history_server(start_server, history_ttl=0.2)
    c = await proto_client(server)
    clients.append(c)
    await c.call("publish", {"channel": "chat:t", "data": 1})
    async with asyncio.timeout(TIMEOUT):
        while (await c.call("history", {"channel": "chat:t", "limit": -1}))["history"]["publications"]:
            await asyncio.sleep(0.05)
    h = (await c.call("history", {"channel": "chat:t", "limit": -1}))["history"]
    assert h["offset"] == 1  # the position outlives the publications


# -- recovery with centrifuge-python ---------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        from centrifuge import SubscriptionEventHandler

        recorder = self
        self.pubs: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.subscribed: asyncio.Queue[Any] = asyncio.Queue()

        class Handler(SubscriptionEventHandler):
            async def on_publication(self, ctx: Any) -> None:
                recorder.pubs.put_nowait((ctx.pub.offset, ctx.pub.data))

            async def on_subscribed(self, ctx: Any) -> None:
                recorder.subscribed.put_nowait(ctx)

        self.handler = Handler()


async def _recovery_run(server: Server, missed: int) -> tuple[Any, list[tuple[int, Any]], list[tuple[int, Any]]]:
    """Subscribe with centrifuge-python, drop it, publish ``missed``, reconnect.

    Returns the second subscribed context, what arrived before the drop and after it.
    """
    from centrifuge import Client

    rec = _Recorder()
    client = Client(ws_url(server))
    sub = client.new_subscription("chat:rec", rec.handler)
    producer = await proto_client(server)
    try:
        await client.connect()
        await sub.subscribe()
        first = await asyncio.wait_for(rec.subscribed.get(), TIMEOUT)
        assert first.recoverable
        await producer.call("publish", {"channel": "chat:rec", "data": "before"})
        before = [await asyncio.wait_for(rec.pubs.get(), TIMEOUT)]
        # drop the connection from the server side with a "reconnect" code
        conn = next(c for c in server.websockets if getattr(c.session, "client_id", "") == client.client_id)
        conn.close(3011, "force reconnect")
        async with asyncio.timeout(TIMEOUT):
            while conn in server.websockets:
                await asyncio.sleep(0.01)
        for i in range(missed):
            await producer.call("publish", {"channel": "chat:rec", "data": {"missed": i}})
        second = await asyncio.wait_for(rec.subscribed.get(), TIMEOUT)
        after = []
        if second.recovered:
            for _ in range(missed):
                after.append(await asyncio.wait_for(rec.pubs.get(), TIMEOUT))
        await producer.call("publish", {"channel": "chat:rec", "data": "live"})
        after.append(await asyncio.wait_for(rec.pubs.get(), TIMEOUT))
        assert rec.pubs.empty(), "duplicates delivered"
        return second, before, after
    finally:
        await client.disconnect()
        await producer.ws.close()


async def test_centrifuge_python_recovers_missed_publications(start_server) -> None:
    server = await _history_server(start_server, history_size=10, force_recovery=True)
    second, before, after = await _recovery_run(server, missed=5)
    assert second.was_recovering and second.recovered
    assert before == [(1, "before")]
    assert after == [(2 + i, {"missed": i}) for i in range(5)] + [(7, "live")]


async def test_recovery_past_history_size_says_recovered_false(start_server) -> None:
    server = await _history_server(start_server, history_size=3, force_recovery=True)
    second, _, after = await _recovery_run(server, missed=5)
    assert second.was_recovering and not second.recovered
    assert after == [(7, "live")]


async def test_recovery_with_unknown_epoch_is_recovered_false(start_server, clients: list) -> None:
    server = await _history_server(start_server, force_recovery=True)
    c = await proto_client(server)
    clients.append(c)
    await c.call("publish", {"channel": "chat:e", "data": 1})
    reply = (await c.call("subscribe", {"channel": "chat:e", "recover": True, "epoch": "gone", "offset": 0}))
    assert reply["subscribe"]["recovered"] is False and "publications" not in reply["subscribe"]


async def test_reject_unrecovered_flag_gives_112(start_server, clients: list) -> None:
    server = await _history_server(start_server, force_recovery=True)
    c = await proto_client(server)
    clients.append(c)
    reply = await c.call("subscribe", {"channel": "chat:e", "recover": True, "epoch": "gone", "offset": 3, "flag": 3})
    assert reply["error"]["code"] == 112
    assert (await c.call("subscribe", {"channel": "chat:e"}))["subscribe"]["epoch"]  # not left subscribed


async def test_stream_gap_disconnects_positioned_subscribers_3010(start_server, clients: list) -> None:
    server = await _history_server(start_server)
    positioned, plain = await proto_client(server), await proto_client(server)
    clients += [positioned, plain]
    await positioned.call("subscribe", {"channel": "chat:g", "positioned": True})
    await plain.call("subscribe", {"channel": "chat:g"})
    await plain.call("publish", {"channel": "chat:g", "data": 1})
    # a broker that lost offset 2 in transit delivers offset 3 next
    server.hub.on_publication("chat:g", Publication(b"3", offset=3))
    assert (await positioned.closed())[0] == 3010
    assert (await plain.call("ping"))["ping"] == {}


# -- presence and join/leave ---------------------------------------------------------------------


class UserFromData(SessionHooks):
    """Test hooks: the user is whatever the client says in connect data."""

    async def on_connect(self, request: ConnectRequest) -> ConnectResult:
        data = request.data or {}
        return ConnectResult(user=data.get("user", ""), info=data.get("info"))


async def test_presence_stats_and_join_leave(start_server, clients: list) -> None:
    server = await start_server(namespaces={"room": NamespaceOptions(presence=True, join_leave=True)})
    server.hooks = UserFromData()
    alice = await proto_client(server, connect=False)
    bob = await proto_client(server, connect=False)
    bob2 = await proto_client(server, connect=False)
    clients += [alice, bob, bob2]
    a_id = (await alice.call("connect", {"data": {"user": "alice", "info": {"name": "Alice"}}}))["connect"]["client"]
    b_id = (await bob.call("connect", {"data": {"user": "bob"}}))["connect"]["client"]
    b2_id = (await bob2.call("connect", {"data": {"user": "bob"}}))["connect"]["client"]
    assert (await alice.call("subscribe", {"channel": "room:1"}))["subscribe"]["join_leave"] is True
    # as in Centrifugo, the joining client gets its own join too
    assert (await alice.next_push())["join"]["info"]["client"] == a_id
    await bob.call("subscribe", {"channel": "room:1"})
    join = await alice.next_push()
    assert join == {"channel": "room:1", "join": {"info": {"user": "bob", "client": b_id}}}
    await bob2.call("subscribe", {"channel": "room:1"})
    assert (await alice.next_push())["join"]["info"]["client"] == b2_id

    presence = (await alice.call("presence", {"channel": "room:1"}))["presence"]["presence"]
    assert presence == {
        a_id: {"user": "alice", "client": a_id, "conn_info": {"name": "Alice"}},
        b_id: {"user": "bob", "client": b_id},
        b2_id: {"user": "bob", "client": b2_id},
    }
    stats = (await alice.call("presence_stats", {"channel": "room:1"}))["presence_stats"]
    assert stats == {"num_clients": 3, "num_users": 2}

    await bob.call("unsubscribe", {"channel": "room:1"})
    assert (await alice.next_push())["leave"]["info"]["client"] == b_id
    await bob2.ws.close()  # a disconnect is a leave too
    assert (await alice.next_push())["leave"]["info"]["client"] == b2_id
    stats = (await alice.call("presence_stats", {"channel": "room:1"}))["presence_stats"]
    assert stats == {"num_clients": 1, "num_users": 1}


async def test_permissions_per_namespace(start_server, clients: list) -> None:
    closed = NamespaceOptions(history_size=5, history_ttl=60, presence=True, allow_publish_for_client=False,
                              allow_subscribe_for_client=False, allow_history_for_client=False,
                              allow_presence_for_client=False)
    server = await start_server(namespaces={"ro": closed})
    c = await proto_client(server)
    clients.append(c)
    for method, params in [("publish", {"data": 1}), ("subscribe", {}), ("history", {}), ("presence", {}),
                           ("presence_stats", {})]:
        reply = await c.call(method, {"channel": "ro:x", **params})
        assert reply["error"]["code"] == 103, (method, reply)


# -- exclude the sender -----------------------------------------------------------------------------


async def test_exclude_publisher_namespace_option(start_server, clients: list) -> None:
    server = await start_server(namespaces={"quiet": NamespaceOptions(exclude_publisher=True)})
    a, b = await proto_client(server), await proto_client(server)
    clients += [a, b]
    await a.call("subscribe", {"channel": "quiet:x"})
    await b.call("subscribe", {"channel": "quiet:x"})
    await a.call("publish", {"channel": "quiet:x", "data": "from a"})
    await b.call("publish", {"channel": "quiet:x", "data": "from b"})
    assert (await b.next_push())["pub"]["data"] == "from a"
    assert (await a.next_push())["pub"]["data"] == "from b"  # a never saw its own
    assert not a.pushes and not b.pushes


async def test_relay_echo_false(server: Server, clients: list) -> None:
    quiet = await websockets.connect(ws_url(server, "/ws/echo?echo=false"), ping_interval=None)
    loud = await websockets.connect(ws_url(server, "/ws/echo"), ping_interval=None)
    clients += [quiet, loud]
    async with asyncio.timeout(TIMEOUT):
        while server.hub.channels().get("echo", 0) < 2:
            await asyncio.sleep(0.01)
    await quiet.send("one")
    await loud.send("two")
    assert await asyncio.wait_for(loud.recv(), TIMEOUT) == "one"
    assert await asyncio.wait_for(loud.recv(), TIMEOUT) == "two"
    assert await asyncio.wait_for(quiet.recv(), TIMEOUT) == "two"  # not "one"


# -- config ------------------------------------------------------------------------------------------


def test_config_from_toml(tmp_path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        'port = 9001\n[channels]\nhistory_size = 3\nhistory_ttl = 60\n'
        '[namespaces.chat]\npresence = true\njoin_leave = true\n'
    )
    config = Config.load(path, port=None)
    assert config.port == 9001
    assert config.namespace("x") == NamespaceOptions(history_size=3, history_ttl=60.0)
    assert config.namespace("chat:x") == NamespaceOptions(presence=True, join_leave=True)
    assert config.namespace("nope:x") is None


@pytest.mark.parametrize("text,word", [
    ("[namespaces.chat]\nhistory_size = -1\n", "history_size"),
    ("[namespaces.chat]\npresense = true\n", "presense"),
    ("[channels]\npresence = 1\n", "presence"),
    ("port = 'x'\n", "port"),
])
def test_config_errors_name_the_setting(tmp_path, text: str, word: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=word):
        Config.load(path)


# -- consume --recover ----------------------------------------------------------------------------------


async def test_consume_recover_prints_missed_then_new(start_server) -> None:
    server = await _history_server(start_server, history_size=100)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hubbub", "consume", f"ws://127.0.0.1:{server.port}", "chat:feed",
        "--recover", "--count", "10", cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    producer = await proto_client(server)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        line = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
        assert b"subscribed" in line
        for i in range(3):
            await producer.call("publish", {"channel": "chat:feed", "data": i})
        for i in range(3):
            assert (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).strip() == str(i).encode()
        conn = next(c for c in server.websockets if c.session is not None and c.session.channels)  # type: ignore
        conn.close(3011, "force reconnect")
        for i in range(3, 10):
            await producer.call("publish", {"channel": "chat:feed", "data": i})
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        assert out.split() == [str(i).encode() for i in range(3, 10)], err
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await producer.ws.close()
