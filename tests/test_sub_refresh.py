"""Subscription tokens expire: ``expires``/``ttl`` in the subscribe reply,
``sub_refresh``, and the end of a subscription whose token ran out (unsubscribe
push 2501 for protocol clients, close 3006 for relay clients).

Before, the subscribe reply had no ``expires``/``ttl``, ``sub_refresh``
answered 108, and a private subscription outlived its token.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
import websockets

from hubbub.config import NamespaceOptions
from hubbub.server import Server

from .conftest import TIMEOUT, proto_client, ws_url

SECRET = "sub-refresh-secret-of-at-least-32-bytes"


def token(sub: str = "alice", ttl: float | None = 3600, **claims: Any) -> str:
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
async def private_server(start_server) -> Server:
    return await start_server(
        token_hmac_secret=SECRET,
        client_expired_sub_close_delay=0,
        namespaces={"private": NamespaceOptions(require_subscription_token=True, allow_publish_for_client=True)},
    )


async def connected(server: Server, user: str = "alice") -> Any:
    client = await proto_client(server, connect=False)
    reply = await client.call("connect", {"token": token(user)})
    assert "connect" in reply, reply
    return client


def session_of(server: Server, user: str = "alice") -> Any:
    (session,) = server.hub.user_sessions(user)
    return session


async def test_subscribe_reply_has_expires_and_ttl(private_server: Server) -> None:
    client = await connected(private_server)
    reply = await client.call("subscribe", {"channel": "private:a", "token": token(channel="private:a", ttl=120)})
    assert reply["subscribe"]["expires"] is True
    assert 110 <= reply["subscribe"]["ttl"] <= 120
    # a token without exp: no expires
    reply = await client.call("subscribe", {"channel": "private:b", "token": token(channel="private:b", ttl=None)})
    assert "expires" not in reply["subscribe"], reply


async def test_expired_subscription_is_ended_with_2501(private_server: Server) -> None:
    """The server's own sweep ends the subscription once the token's exp passed."""
    client = await connected(private_server)
    reply = await client.call("subscribe", {"channel": "private:a", "token": token(channel="private:a", ttl=1)})
    assert reply["subscribe"]["expires"] is True
    push = await asyncio.wait_for(client.next_push(), TIMEOUT)
    assert push == {"channel": "private:a", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}
    assert "private:a" not in session_of(private_server).channels
    # nothing published afterwards reaches the client; its connection lives on
    await private_server.hub.publish("private:a", "after")
    assert "error" not in await client.call("ping")
    assert client.pushes == []


async def test_sub_refresh_extends_the_subscription(private_server: Server) -> None:
    client = await connected(private_server)
    await client.call("subscribe", {"channel": "private:a", "token": token(channel="private:a", ttl=2)})
    reply = await client.call("sub_refresh", {"channel": "private:a", "token": token(channel="private:a", ttl=600)})
    assert reply["sub_refresh"]["expires"] is True and 590 <= reply["sub_refresh"]["ttl"] <= 600
    session = session_of(private_server)
    session.check_expiry(time.time() + 60)  # past the first token's exp, before the second's
    assert "private:a" in session.channels
    session.check_expiry(time.time() + 700)
    assert "private:a" not in session.channels
    assert (await client.next_push())["unsubscribe"]["code"] == 2501


async def test_sub_refresh_errors(private_server: Server) -> None:
    client = await connected(private_server)
    # not subscribed: 103
    reply = await client.call("sub_refresh", {"channel": "private:a", "token": token(channel="private:a")})
    assert reply["error"]["code"] == 103
    await client.call("subscribe", {"channel": "private:a", "token": token(channel="private:a", ttl=60)})
    cases = [
        ({"channel": "private:a"}, 107),                                              # no token
        ({"channel": "private:a", "token": token(channel="private:b")}, 103),          # another channel
        ({"channel": "private:a", "token": token("bob", channel="private:a")}, 103),   # another user
        ({"channel": "private:a", "token": "not-a-jwt"}, 103),                        # invalid
        ({"channel": "private:a", "token": token(channel="private:a", ttl=-10)}, 109),  # expired
        ({"channel": "private:a", "token": token(channel="private:a", ttl=None, sub="")}, 103),
        ({"channel": "bad name\x00", "token": token(channel="private:a")}, 107),       # invalid channel
    ]
    for params, code in cases:
        reply = await client.call("sub_refresh", params)
        assert reply.get("error", {}).get("code") == code, (params, reply)
    # a refused refresh changes nothing: the subscription and its first exp stand
    assert "private:a" in session_of(private_server).channels


async def test_relay_subscription_token_expiry_closes_3006(private_server: Server) -> None:
    url = ws_url(private_server, "/ws/private:r") + f"?token={token()}&sub_token={token(channel='private:r', ttl=1)}"
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 3006


async def test_centrifuge_python_refreshes_its_subscription_token(private_server: Server) -> None:
    """centrifuge-python asks for a new token when the ttl it was told runs
    out, and keeps receiving publications past the first token's exp."""
    from centrifuge import Client, PublicationContext, SubscriptionEventHandler

    refreshed = asyncio.Event()
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def get_token(ctx: Any) -> str:
        refreshed.set()
        return token(channel="private:py", ttl=600)

    class Handler(SubscriptionEventHandler):
        async def on_publication(self, ctx: PublicationContext) -> None:
            await received.put(ctx.pub.data)

    client = Client(ws_url(private_server), token=token())
    sub = client.new_subscription("private:py", token=token(channel="private:py", ttl=2), get_token=get_token,
                                  events=Handler())
    await client.connect()
    try:
        await sub.subscribe()
        await asyncio.wait_for(sub.ready(), TIMEOUT)
        await asyncio.wait_for(refreshed.wait(), TIMEOUT)
        first_exp = time.time() + 2
        session = session_of(private_server)
        # wait until the server has taken the refreshed token
        async def taken() -> None:
            while (session.subscription_expires("private:py") or 0) < first_exp + 60:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(taken(), TIMEOUT)
        session.check_expiry(first_exp + 5)
        await private_server.hub.publish("private:py", {"n": 1})
        assert await asyncio.wait_for(received.get(), TIMEOUT) == {"n": 1}
    finally:
        await client.disconnect()
