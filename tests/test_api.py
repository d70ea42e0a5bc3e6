"""The server HTTP API, driven by the `cent` SDK and by raw HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from hubbub.config import NamespaceOptions
from hubbub.server import Server

from .conftest import TIMEOUT, history_ns, proto_client

KEY = "test-api-key"


@pytest.fixture
async def api_server(start_server) -> Server:
    return await start_server(
        api_key=KEY,
        namespaces={"chat": history_ns(presence=True), "plain": NamespaceOptions()},
    )


def cent_client(server: Server, key: str = KEY) -> Any:
    from cent import Client

    return Client(f"http://127.0.0.1:{server.port}/api", key, timeout=TIMEOUT)


def post(server: Server, method: str, body: bytes | str, key: str | None = KEY) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/{method}",
                                 data=body.encode() if isinstance(body, str) else body, method="POST")
    if key is not None:
        req.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_cent_publishes_and_reads_presence_and_history(api_server: Server, clients: list) -> None:
    from cent import HistoryRequest, PresenceRequest, PresenceStatsRequest, PublishRequest

    sub = await proto_client(api_server)
    clients.append(sub)
    await sub.call("subscribe", {"channel": "chat:1"})
    cent = cent_client(api_server)
    result = await asyncio.to_thread(cent.publish, PublishRequest(channel="chat:1", data={"from": "cent"}))
    assert result.offset == 1 and result.epoch
    push = await sub.next_push()
    assert push["pub"]["data"] == {"from": "cent"} and push["pub"]["offset"] == 1
    presence = await asyncio.to_thread(cent.presence, PresenceRequest(channel="chat:1"))
    assert list(presence.presence) == [sub.client_id]
    stats = await asyncio.to_thread(cent.presence_stats, PresenceStatsRequest(channel="chat:1"))
    assert (stats.num_clients, stats.num_users) == (1, 1)
    history = await asyncio.to_thread(cent.history, HistoryRequest(channel="chat:1", limit=10))
    assert [p.data for p in history.publications] == [{"from": "cent"}]
    assert history.offset == 1 and history.epoch == result.epoch


async def test_wrong_or_missing_key_gets_401(api_server: Server) -> None:
    from cent import CentUnauthorizedError, PublishRequest

    with pytest.raises(CentUnauthorizedError):
        await asyncio.to_thread(cent_client(api_server, "wrong").publish, PublishRequest(channel="x", data=1))
    status, _ = await asyncio.to_thread(post, api_server, "publish", '{"channel":"x","data":1}', None)
    assert status == 401


async def test_api_without_configured_key_is_closed(server: Server) -> None:
    status, body = await asyncio.to_thread(post, server, "publish", '{"channel":"x","data":1}', "anything")
    assert status == 401 and "api_key" in body["error"]


async def test_malformed_body_gets_400_with_reason(api_server: Server) -> None:
    status, body = await asyncio.to_thread(post, api_server, "publish", "{nope")
    assert status == 400 and "malformed JSON" in body["error"]
    status, body = await asyncio.to_thread(post, api_server, "publish", '{"data": 1}')
    assert status == 400 and body["error"] == "channel is required"
    status, body = await asyncio.to_thread(post, api_server, "nosuchmethod", "{}")
    assert status == 404


async def test_command_errors_follow_centrifugo(api_server: Server) -> None:
    from cent import CentApiResponseError, PresenceRequest, PublishRequest

    cent = cent_client(api_server)
    with pytest.raises(CentApiResponseError) as info:
        await asyncio.to_thread(cent.publish, PublishRequest(channel="nope:x", data=1))
    assert info.value.code == 102
    with pytest.raises(CentApiResponseError) as info:
        await asyncio.to_thread(cent.presence, PresenceRequest(channel="plain:x"))
    assert info.value.code == 108


async def test_idempotent_publish_retried_three_times_is_stored_once(api_server: Server, clients: list) -> None:
    from cent import HistoryRequest, PublishRequest

    sub = await proto_client(api_server)
    clients.append(sub)
    await sub.call("subscribe", {"channel": "chat:idem"})
    cent = cent_client(api_server)
    offsets = []
    for _ in range(3):
        r = await asyncio.to_thread(cent.publish, PublishRequest(channel="chat:idem", data="once",
                                                                 idempotency_key="k-1"))
        offsets.append(r.offset)
    assert offsets == [1, 1, 1]
    history = await asyncio.to_thread(cent.history, HistoryRequest(channel="chat:idem", limit=10))
    assert [p.data for p in history.publications] == ["once"]
    assert (await sub.next_push())["pub"]["data"] == "once"
    await sub.call("ping")
    assert not sub.pushes  # delivered once


async def test_broadcast_channels_info_and_history_remove(api_server: Server, clients: list) -> None:
    from cent import BroadcastRequest, ChannelsRequest, HistoryRemoveRequest, HistoryRequest, InfoRequest

    a = await proto_client(api_server)
    clients.append(a)
    await a.call("subscribe", {"channel": "chat:a"})
    await a.call("subscribe", {"channel": "plain:b"})
    cent = cent_client(api_server)
    result = await asyncio.to_thread(cent.broadcast, BroadcastRequest(channels=["chat:a", "plain:b", "bad:c"],
                                                                      data={"all": True}))
    assert result.responses[0].result.offset == 1
    assert result.responses[2].error.code == 102
    got = {(await a.next_push())["channel"] for _ in range(2)}
    assert got == {"chat:a", "plain:b"}
    channels = await asyncio.to_thread(cent.channels, ChannelsRequest(pattern="chat:*"))
    assert {k: v.num_clients for k, v in channels.channels.items()} == {"chat:a": 1}
    info = await asyncio.to_thread(cent.info, InfoRequest())
    assert info.nodes[0].num_clients == 1 and info.nodes[0].num_channels == 2
    await asyncio.to_thread(cent.history_remove, HistoryRemoveRequest(channel="chat:a"))
    history = await asyncio.to_thread(cent.history, HistoryRequest(channel="chat:a", limit=10))
    assert history.publications == [] and history.offset == 1


async def test_server_side_subscribe_unsubscribe_disconnect(start_server, clients: list) -> None:
    from cent import DisconnectRequest, SubscribeRequest, UnsubscribeRequest

    from .test_history import UserFromData

    server = await start_server(api_key=KEY)
    server.hooks = UserFromData()
    c = await proto_client(server, connect=False)
    other = await proto_client(server, connect=False)
    clients += [c, other]
    await c.call("connect", {"data": {"user": "u1"}})
    await other.call("connect", {"data": {"user": "u2"}})
    cent = cent_client(server)
    await asyncio.to_thread(cent.subscribe, SubscribeRequest(user="u1", channel="news"))
    push = await c.next_push()
    assert push == {"channel": "news", "subscribe": {}}
    assert server.hub.channels() == {"news": 1}
    await asyncio.to_thread(cent.unsubscribe, UnsubscribeRequest(user="u1", channel="news"))
    assert (await c.next_push()) == {"channel": "news", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
    await asyncio.to_thread(cent.disconnect, DisconnectRequest(user="u1"))
    assert (await c.closed())[0] == 3503
    assert (await other.call("ping"))["ping"] == {}


async def test_exclude_client_in_api_publish(api_server: Server, clients: list) -> None:
    a, b = await proto_client(api_server), await proto_client(api_server)
    clients += [a, b]
    for c in (a, b):
        await c.call("subscribe", {"channel": "plain:x"})
    status, _ = await asyncio.to_thread(post, api_server, "publish",
                                        json.dumps({"channel": "plain:x", "data": 1, "exclude_client": a.client_id}))
    assert status == 200
    assert (await b.next_push())["pub"]["data"] == 1
    await a.call("ping")
    assert not a.pushes


def post_url(server: Server, target: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{target}", data=body, method="POST",
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_the_key_may_come_in_the_query_as_centrifugo_documents(api_server: Server, clients: list) -> None:
    """``?api_key=KEY`` was refused with 401 (issue 28); Centrifugo documents it. Headers still work."""
    sub = await proto_client(api_server)
    clients.append(sub)
    await sub.call("subscribe", {"channel": "news"})
    body = b'{"channel": "news", "data": {"via": "query"}}'
    status, reply = await asyncio.to_thread(post_url, api_server, f"/api/publish?api_key={KEY}", body)
    assert (status, json.loads(reply)) == (200, {"result": {}})
    assert (await sub.next_push())["pub"]["data"] == {"via": "query"}
    status, _ = await asyncio.to_thread(post_url, api_server, "/api/publish?api_key=wrong", body)
    assert status == 401
    status, _ = await asyncio.to_thread(post_url, api_server, "/api/publish?api_key=", body)
    assert status == 401
    status, _ = await asyncio.to_thread(post_url, api_server, "/api/publish", b'{"channel": "news", "data": 1}',
                                        {"Authorization": f"apikey {KEY}"})
    assert status == 200
    assert (await sub.next_push())["pub"]["data"] == 1
    command = b'{"method": "publish", "params": {"channel": "news", "data": 2}}'
    status, reply = await asyncio.to_thread(post_url, api_server, f"/api?api_key={KEY}", command)
    assert (status, json.loads(reply)) == (200, {"result": {}})  # the legacy form too
    assert (await sub.next_push())["pub"]["data"] == 2


async def test_401_says_how_to_set_and_send_the_key(api_server: Server, server: Server) -> None:
    """``401 the HTTP API needs api_key to be set`` did not say how (issue 28)."""
    status, body = await asyncio.to_thread(post, server, "publish", '{"channel":"x","data":1}', "anything")
    assert status == 401
    for how in ("HUBBUB_API_KEY", "--api-key", "api_key =", "X-API-Key"):
        assert how in body["error"], (how, body)
    status, body = await asyncio.to_thread(post, api_server, "publish", '{"channel":"x","data":1}', "wrong")
    assert status == 401
    for how in ("X-API-Key", "?api_key="):
        assert how in body["error"], (how, body)
