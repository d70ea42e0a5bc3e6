"""The Centrifugo client protocol at /connection/websocket, over real sockets."""

from __future__ import annotations

import asyncio
import json

import pytest

from hubbub.server import Server

from .conftest import TIMEOUT, ProtoClient, proto_client, ws_url


async def test_connect_reply_has_client_ping_and_pong(server: Server, clients: list) -> None:
    c = await proto_client(server, connect=False)
    clients.append(c)
    reply = await c.call("connect", {"name": "test"})
    connect = reply["connect"]
    assert connect["client"]
    assert connect["ping"] == 25 and connect["pong"] is True
    assert c.ws.response.headers.get("Sec-WebSocket-Protocol") is None


async def test_publish_reaches_subscribers_in_order(server: Server, clients: list) -> None:
    a, b = await proto_client(server), await proto_client(server)
    clients += [a, b]
    assert (await a.call("subscribe", {"channel": "news"}))["subscribe"] == {}
    for i in range(20):
        assert (await b.call("publish", {"channel": "news", "data": {"n": i}}))["publish"] == {}
    for i in range(20):
        push = await a.next_push()
        assert push["channel"] == "news"
        assert push["pub"]["data"] == {"n": i}
        assert push["pub"]["info"]["client"] == b.client_id


async def test_newline_batched_commands_get_batched_replies(server: Server, clients: list) -> None:
    c = await proto_client(server, connect=False)
    clients.append(c)
    await c.send(
        {"id": 1, "connect": {}},
        {"id": 2, "subscribe": {"channel": "a"}},
        {"id": 3, "subscribe": {"channel": "b"}},
    )
    frame = await asyncio.wait_for(c.ws.recv(), TIMEOUT)
    replies = [json.loads(line) for line in frame.split("\n")]
    assert [r["id"] for r in replies] == [1, 2, 3]
    assert "connect" in replies[0] and replies[1] == {"id": 2, "subscribe": {}}


async def test_ping_command_and_unsubscribe(server: Server, clients: list) -> None:
    c = await proto_client(server)
    clients.append(c)
    assert (await c.call("ping"))["ping"] == {}
    await c.call("subscribe", {"channel": "x"})
    assert (await c.call("unsubscribe", {"channel": "x"}))["unsubscribe"] == {}
    assert server.hub.channels() == {}
    # subscribing again after unsubscribe works
    assert (await c.call("subscribe", {"channel": "x"}))["subscribe"] == {}


async def test_history_and_presence_not_available_without_namespace_option(server: Server, clients: list) -> None:
    c = await proto_client(server)
    clients.append(c)
    for method in ("history", "presence", "presence_stats"):
        reply = await c.call(method, {"channel": "x"})
        assert reply["error"]["code"] == 108, reply


# -- bad input: each gets its answer, and a bystander keeps working -------------


async def _bystander(server: Server) -> tuple[ProtoClient, ProtoClient]:
    sub, pub = await proto_client(server), await proto_client(server)
    await sub.call("subscribe", {"channel": "calm"})
    return sub, pub


async def _bystander_still_served(sub: ProtoClient, pub: ProtoClient, n: int) -> None:
    assert (await pub.call("publish", {"channel": "calm", "data": n}))["publish"] == {}
    assert (await sub.next_push())["pub"]["data"] == n


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        '{"id": 1, "connect": {}}\n{"id": 2, "frobnicate": {}}',
        '{"id": 1, "connect": {}}\n[1, 2]',
        '{"id": 1, "connect": {}}\n{"id": 2}',
        '{"id": 1, "connect": {}}\n{"id": 2, "subscribe": "news"}',
    ],
    ids=["malformed-json", "unknown-method", "not-an-object", "no-method", "params-not-object"],
)
async def test_bad_command_closes_3501(server: Server, clients: list, frame: str) -> None:
    sub, pub = await _bystander(server)
    bad = await proto_client(server, connect=False)
    clients += [sub, pub, bad]
    await bad.ws.send(frame)
    code, reason = await bad.closed()
    assert code == 3501 and reason
    await _bystander_still_served(sub, pub, 1)


async def test_command_before_connect_closes_3501(server: Server, clients: list) -> None:
    sub, pub = await _bystander(server)
    bad = await proto_client(server, connect=False)
    clients += [sub, pub, bad]
    await bad.send({"id": 1, "subscribe": {"channel": "calm"}})
    assert (await bad.closed())[0] == 3501
    await _bystander_still_served(sub, pub, 2)


async def test_subscribe_twice_is_error_105(server: Server, clients: list) -> None:
    c = await proto_client(server)
    clients.append(c)
    await c.call("subscribe", {"channel": "twice"})
    reply = await c.call("subscribe", {"channel": "twice"})
    assert reply["error"] == {"code": 105, "message": "already subscribed"}
    assert (await c.call("ping"))["ping"] == {}  # still connected


@pytest.mark.parametrize("channel", ["", "a" * 256, "bad\nname", "tab\there", 5])
async def test_invalid_channel_is_error_107(server: Server, clients: list, channel: object) -> None:
    c = await proto_client(server)
    clients.append(c)
    reply = await c.call("subscribe", {"channel": channel})
    assert reply["error"]["code"] == 107, reply
    reply = await c.call("publish", {"channel": channel, "data": 1})
    assert reply["error"]["code"] == 107, reply


async def test_oversized_frame_closes_1009(server: Server, clients: list) -> None:
    sub, pub = await _bystander(server)
    big = await proto_client(server, max_size=None)
    clients += [sub, pub, big]
    data = "x" * (64 * 1024)
    await big.ws.send(json.dumps({"id": 5, "publish": {"channel": "calm", "data": data}}))
    assert (await big.closed())[0] == 1009
    await _bystander_still_served(sub, pub, 3)


async def test_message_at_the_limit_is_accepted(start_server, clients: list) -> None:
    server = await start_server(max_message_size=1000)
    c = await proto_client(server)
    clients.append(c)
    prefix = '{"id":2,"publish":{"channel":"x","data":"'
    data = "y" * (1000 - len(prefix) - 3)
    frame = prefix + data + '"}}'
    assert len(frame) == 1000
    await c.ws.send(frame)
    assert (await c.recv()) == {"id": 2, "publish": {}}


async def test_publish_without_data_is_error_107(server: Server, clients: list) -> None:
    c = await proto_client(server)
    clients.append(c)
    assert (await c.call("publish", {"channel": "x"}))["error"]["code"] == 107


async def test_unknown_namespace_is_error_102(server: Server, clients: list) -> None:
    c = await proto_client(server)
    clients.append(c)
    assert (await c.call("subscribe", {"channel": "nope:x"}))["error"]["code"] == 102


# -- pings ------------------------------------------------------------------------


async def test_server_pings_and_a_silent_client_is_closed_3012(start_server, clients: list) -> None:
    server = await start_server(ping_interval=0.3, pong_timeout=0.2)
    good, silent = await proto_client(server), await proto_client(server)
    clients += [good, silent]
    # the good client answers pings; the silent one never does
    async def answer_pings() -> int:
        pings = 0
        while pings < 3:
            msg = await good.recv()
            if msg == {}:
                pings += 1
                await good.ws.send("{}")
        return pings

    assert await answer_pings() == 3
    assert (await silent.closed()) == (3012, "no pong")
    assert (await good.call("ping"))["ping"] == {}


async def test_client_that_never_connects_is_closed_3502(start_server, clients: list) -> None:
    server = await start_server(connect_timeout=0.3)
    c = await proto_client(server, connect=False)
    clients.append(c)
    assert (await c.closed())[0] == 3502


# -- the independent client: centrifuge-python --------------------------------------


async def test_centrifuge_python_connects_subscribes_publishes_and_receives(server: Server) -> None:
    from centrifuge import Client, PublicationContext, SubscriptionEventHandler

    received: asyncio.Queue = asyncio.Queue()

    class Handler(SubscriptionEventHandler):
        async def on_publication(self, ctx: PublicationContext) -> None:
            received.put_nowait(ctx.pub.data)

    client = Client(ws_url(server))
    sub = client.new_subscription("chat", Handler())
    await client.connect()
    await sub.subscribe()
    try:
        await asyncio.wait_for(client.ready(), TIMEOUT)
        await asyncio.wait_for(sub.ready(), TIMEOUT)
        await sub.publish({"text": "hello from centrifuge-python"})
        assert await asyncio.wait_for(received.get(), TIMEOUT) == {"text": "hello from centrifuge-python"}
    finally:
        await client.disconnect()
