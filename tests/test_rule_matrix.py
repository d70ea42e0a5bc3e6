"""Every way in, held to the same rules (issue 23, "A rule-by-way-in test matrix").

One parametrized test: for each server (hubbub's own, and uvicorn serving a
``hubbub.App``), each way in (the rows: ``tests/matrix_clients.py`` has one
client adapter per way) and each rule (the columns, written once below over
the adapters' primitives), :data:`EXPECTED` holds the one correct outcome, or
``NotApplicable(why)`` (reported as a skip, so the count shows).

Settings are small so every cell is fast: ``connect_timeout`` 0.3 s,
``max_message_size`` 1 KiB, ``max_pending_output`` 64 KiB, a command rate of
1/s with a burst of 3. Tokens are HS256 (PyJWT); an expired one has ``exp``
10 s in the past, and a token that expires while connected is aged by moving
the hub's injected wall clock (``ClientContext.wall``) two hours ahead. No cell
sleeps a fixed time: each waits on what it expects, with a timeout
(``matrix_clients.WAIT``). A client that stops reading has a 4 KiB receive
buffer and reading paused; it is sent one 8 KiB publication per loop iteration
until the hub counts a 3008 close (``stats.slow``), at most 32 MiB. Then
``output_bound`` reads: the last words say 3008 and nothing published after
the 3008 arrives; ``slow_release`` keeps not reading: within ``close_timeout``
(0.2 s) the server lets the client go (the hub no longer holds it), while
publications go on.

The ``proxy_*`` columns point the App's connect or subscribe proxy at a fake backend
(``tests.test_proxy.Backend``, aiohttp on port 0) that refuses as the ``hook_*`` columns'
hooks do, and expect the same outcome on every way in.

Cells that fail on main today carry ``xfail(strict=True)`` with the defect of
issue 23 that explains them (:data:`XFAIL`): remove an entry once its defect is
fixed (strict: a cell that starts passing fails the run until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import hubbub.server
from hubbub.app import App
from hubbub.endpoint import WebSocket
from hubbub.errors import Disconnect, ProtocolError
from tests.matrix_clients import (
    ADAPTERS,
    API_KEY,
    CHANNEL,
    ENDPOINT,
    PRIVATE,
    SECRET,
    USER,
    WAIT,
    Adapter,
    Broken,
    Closed,
    Env,
    Error,
    NotApplicable,
    NotSubscribed,
    Ok,
    Outcome,
    Pub,
    Refused,
    Released,
    Timeout,
    Unsubscribed,
)
from tests.test_asgi import app_serving
from tests.test_proxy import Backend

WAYS = list(ADAPTERS)
RULES = [
    "anonymous", "expired", "expires_live", "user_limit", "namespace", "hook_connect", "hook_subscribe", "hook_publish",
    "command_rate", "output_bound", "slow_release", "connect_timeout", "max_message_size", "api_disconnect", "api_unsubscribe",
    "proxy_connect", "proxy_subscribe",
]

# -- the table ---------------------------------------------------------------------------------------

NO_COMMANDS = NotApplicable("one-way: the connect object is all the client sends; later messages are ignored")
RECEIVE_ONLY = NotApplicable("receive-only: the request is the whole of what the client sends")
SERVER_SIDE = NotApplicable("an endpoint's subscribe and publish are the application's own, server-side calls: "
                            "client permissions and the on_subscribe/on_publish hooks are not theirs (design.md)")
AT_HANDSHAKE = NotApplicable("authenticated at the handshake, before anything is served: "
                             "there is no open, unauthenticated state to time out")
CONNECT_IN_REQUEST = NotApplicable("the request is the connect: authenticated before anything streams, "
                                   "there is no open, unauthenticated state to time out")

#: way -> rule -> expected outcome
ROWS: dict[str, dict[str, Outcome | NotApplicable]] = {
    "ws_json": {
        "anonymous": Closed(3500), "expired": Error(109), "expires_live": Closed(3005), "user_limit": Closed(3504), "namespace": Error(103),
        "hook_connect": Closed(4403), "hook_subscribe": Error(103), "hook_publish": Error(103),
        "command_rate": Closed(3013), "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": Closed(3502),
        "max_message_size": Closed(1009), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(2000),
    },
    "ws_protobuf": {
        "anonymous": Closed(3500), "expired": Error(109), "expires_live": Closed(3005), "user_limit": Closed(3504), "namespace": Error(103),
        "hook_connect": Closed(4403), "hook_subscribe": Error(103), "hook_publish": Error(103),
        "command_rate": Closed(3013), "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": Closed(3502),
        "max_message_size": Closed(1009), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(2000),
    },
    # emulation: the stream opens (200) before connect runs, so refusals are the protocol's, in the
    # stream (a disconnect push ends it); /emulation carries the later commands
    "http_stream": {
        "anonymous": Closed(3500), "expired": Error(109), "expires_live": Closed(3005), "user_limit": Closed(3504), "namespace": Error(103),
        "hook_connect": Closed(4403), "hook_subscribe": Error(103), "hook_publish": Error(103),
        "command_rate": Closed(3013), "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": Closed(3502),
        "max_message_size": Refused(413), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(2000),
    },
    "sse": {  # max_message_size: a later command through POST /emulation
        "anonymous": Closed(3500), "expired": Error(109), "expires_live": Closed(3005), "user_limit": Closed(3504), "namespace": Error(103),
        "hook_connect": Closed(4403), "hook_subscribe": Error(103), "hook_publish": Error(103),
        "command_rate": Closed(3013), "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": Closed(3502),
        "max_message_size": Refused(413), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(2000),
    },
    # one-way: a subs channel the client may not subscribe to is skipped (uni.py, as Centrifugo)
    "uni_websocket": {
        "anonymous": Closed(3500), "expired": Closed(3005), "expires_live": Closed(3005), "user_limit": Closed(3504), "namespace": NotSubscribed(),
        "hook_connect": Closed(4403), "hook_subscribe": NotSubscribed(), "hook_publish": NO_COMMANDS,
        "command_rate": NO_COMMANDS, "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": Closed(3502),
        "max_message_size": Closed(1009), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(2000),
    },
    "uni_sse": {
        "anonymous": Refused(401), "expired": Refused(401), "expires_live": Closed(3005), "user_limit": Refused(429), "namespace": NotSubscribed(),
        "hook_connect": Refused(403), "hook_subscribe": NotSubscribed(), "hook_publish": NO_COMMANDS,
        "command_rate": NO_COMMANDS, "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": CONNECT_IN_REQUEST,
        "max_message_size": Refused(413), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(2000),
    },
    "uni_http_stream": {
        "anonymous": Refused(401), "expired": Refused(401), "expires_live": Closed(3005), "user_limit": Refused(429), "namespace": NotSubscribed(),
        "hook_connect": Refused(403), "hook_subscribe": NotSubscribed(), "hook_publish": NO_COMMANDS,
        "command_rate": NO_COMMANDS, "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": CONNECT_IN_REQUEST,
        "max_message_size": Refused(413), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(2000),
    },
    # /sse/{channel}: authenticated and authorized as the relay, before streaming; it has no
    # message for a server-side unsubscribe (the hub stops delivering)
    "channel_sse": {
        "anonymous": Refused(401), "expired": Refused(401), "expires_live": Closed(3005), "user_limit": Refused(429), "namespace": Refused(403),
        "hook_connect": Refused(403), "hook_subscribe": Refused(403), "hook_publish": RECEIVE_ONLY,
        "command_rate": RECEIVE_ONLY, "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": AT_HANDSHAKE,
        "max_message_size": NotApplicable("receive-only: a GET without a body; its head is bounded by "
                                          "max_handshake_size (431), not max_message_size"),
        "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(None),
    },
    # the relay: refusals are HTTP statuses before 101; a refused publish closes (3507); the
    # command rate closes at once (3013); it has no message for a server-side unsubscribe
    "relay": {
        "anonymous": Refused(401), "expired": Refused(401), "expires_live": Closed(3005), "user_limit": Refused(429), "namespace": Refused(403),
        "hook_connect": Refused(403), "hook_subscribe": Refused(403), "hook_publish": Closed(3507),
        "command_rate": Closed(3013), "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": AT_HANDSHAKE,
        "max_message_size": Closed(1009), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(None),
    },
    # framework endpoints: the same handshake as the relay (issue 23, defect 2); the endpoint
    # subscribes to the channel itself, server-side
    "endpoint": {
        "anonymous": Refused(401), "expired": Refused(401), "expires_live": Closed(3005), "user_limit": Refused(429), "namespace": SERVER_SIDE,
        "hook_connect": Refused(403), "hook_subscribe": SERVER_SIDE, "hook_publish": SERVER_SIDE,
        "command_rate": Closed(3013), "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": AT_HANDSHAKE,
        "max_message_size": Closed(1009), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(None),
    },
    # Socket.IO (WebSocket transport) without a Python application: the client uses hub channels
    # itself (subscribe/publish events); a refused CONNECT is CONNECT_ERROR with the code (the
    # Engine.IO connection stays open); refusals of subscribe/publish are acknowledgement errors
    "socketio": {
        "anonymous": Error(3500), "expired": Error(109), "expires_live": Closed(3005), "user_limit": Error(3504), "namespace": Error(103),
        "hook_connect": Error(4403), "hook_subscribe": Error(103), "hook_publish": Error(103),
        "command_rate": Closed(3013), "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": Closed(3502),
        "max_message_size": Closed(1009), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(2000),
    },
    # Socket.IO over Engine.IO's HTTP long-polling: the same rules as its WebSocket transport;
    # Engine.IO's close packet has no code (the adapter reads the one the hub counted); a POST
    # over maxPayload (max_message_size) is answered 413 and ends the session (1009)
    "socketio_polling": {
        "anonymous": Error(3500), "expired": Error(109), "expires_live": Closed(3005), "user_limit": Error(3504), "namespace": Error(103),
        "hook_connect": Error(4403), "hook_subscribe": Error(103), "hook_publish": Error(103),
        "command_rate": Closed(3013), "output_bound": Closed(3008), "slow_release": Released(), "connect_timeout": Closed(3502),
        "max_message_size": Refused(413), "api_disconnect": Closed(3503), "api_unsubscribe": Unsubscribed(2000),
    },
}

# the backend's proxy refuses as the Python hooks do (a disconnect 4403 at connect, error 103 at
# subscribe): every way in gives the same outcome for both (hubbub.proxy runs inside ClientCore)
for _row in ROWS.values():
    _row["proxy_connect"] = _row["hook_connect"]
    _row["proxy_subscribe"] = _row["hook_subscribe"]

#: (way, rule) -> the one expected outcome of every cell, on either server
EXPECTED: dict[tuple[str, str], Outcome | NotApplicable] = {
    (way, rule): row[rule] for way, row in ROWS.items() for rule in RULES
}
assert all(set(row) == set(RULES) for row in ROWS.values()), "every row has every rule"
assert set(ROWS) == set(WAYS), "every way in has a row"

#: (server, way, rule) -> why the cell fails on main today (xfail, strict)
XFAIL: dict[tuple[str, str, str], str] = {}

# -- the served App --------------------------------------------------------------------------------

BASE_SETTINGS: dict[str, Any] = {
    "port": 0,  # a free port: parallel runs (and other processes) may hold 8000
    "token_hmac_secret": SECRET,
    "api_key": API_KEY,
    "ping_interval": 0,
    "admin": False,
    "page": False,
    "namespaces": {"secret": {"require_subscription_token": True}},
}
RULE_SETTINGS: dict[str, dict[str, Any]] = {
    "user_limit": {"client_user_connection_limit": 1},
    "command_rate": {"client_command_rate": 1.0, "client_command_burst": 3},
    "output_bound": {"max_pending_output": 65536},
    "slow_release": {"max_pending_output": 65536, "close_timeout": 0.2},
    "connect_timeout": {"connect_timeout": 0.3},
    "max_message_size": {"max_message_size": 1024},
}


class Chat:
    """The matrix's framework endpoint: subscribes to CHANNEL, echoes every message."""

    async def connect(self, ws: WebSocket) -> None:
        await ws.subscribe(CHANNEL)

    async def handle_message(self, ws: WebSocket, message: str | bytes) -> None:
        await ws.send(message)


def proxy_settings(rule: str, backend: Backend | None) -> dict[str, Any]:
    """The settings of a ``proxy_*`` cell: its proxy pointed at the fake backend, which
    refuses as the hook of the same event does."""
    if backend is None:
        return {}
    if rule == "proxy_connect":
        backend.answers["connect"] = {"disconnect": {"code": 4403, "reason": "refused by the connect proxy"}}
        return {"proxy_connect_endpoint": backend.url("connect")}

    async def subscribe(body: dict[str, Any]) -> dict[str, Any]:
        if body["channel"] == CHANNEL:
            return {"error": {"code": 103, "message": "refused by the subscribe proxy"}}
        return {"result": {}}

    backend.answers["subscribe"] = subscribe
    return {"proxy_subscribe_endpoint": backend.url("subscribe"), "channels": {"subscribe_proxy": "default"}}


def make_app(rule: str, calls: list[str], backend: Backend | None = None) -> App:
    """The App of one cell: the base settings, the rule's own, and its hook (each
    awaits before it refuses, and notes the client's transport in ``calls``); a
    ``proxy_*`` rule's proxy points at ``backend``."""
    app = App(**BASE_SETTINGS, **RULE_SETTINGS.get(rule, {}), **proxy_settings(rule, backend))
    app.add_websocket(ENDPOINT, Chat)
    if rule == "hook_connect":
        @app.on_connect
        async def on_connect(request: Any) -> Any:
            calls.append(request.transport)
            await asyncio.sleep(0)
            raise Disconnect(4403, "refused by on_connect")
    elif rule == "hook_subscribe":
        @app.on_subscribe
        async def on_subscribe(client: Any, channel: str, data: Any) -> Any:
            calls.append(client.transport)
            await asyncio.sleep(0)
            if channel == CHANNEL:
                raise ProtocolError(103, "refused by on_subscribe")
            return None
    elif rule == "hook_publish":
        @app.on_publish
        async def on_publish(client: Any, channel: str, data: Any) -> Any:
            calls.append(client.transport)
            await asyncio.sleep(0)
            raise ProtocolError(103, "refused by on_publish")
    return app


# -- the rules (columns), once for every way in ---------------------------------------------------------


async def started(adapter: Adapter, env: Env, **kw: Any) -> Outcome | None:
    """Start with a valid token and wait until the hub has the subscription;
    ``None``, or what went wrong (the cell then fails with it)."""
    outcome = await adapter.start(env.token(), **kw)
    if not isinstance(outcome, Ok):
        return Broken(f"a valid client was not served: {outcome}")
    if not await env.wait_for(lambda: env.subscribed() >= 1):
        return Timeout("the client never appeared among the channel's subscribers")
    return None


async def rule_anonymous(env: Env, make: Callable[[], Adapter]) -> Outcome:
    return await make().start(None)  # type: ignore[return-value]


async def rule_expired(env: Env, make: Callable[[], Adapter]) -> Outcome:
    return await make().start(env.token(expires_in=-10))  # type: ignore[return-value]


async def rule_expires_live(env: Env, make: Callable[[], Adapter]) -> Outcome:
    adapter = make()
    failed = await started(adapter, env)  # the token expires in an hour
    if failed is not None:
        return failed
    # an hour and more passes on the hub's injected wall clock (ClientContext.wall): the
    # server's sweep (every second) finds the connection expired
    env.app.server.context.wall = lambda: time.time() + 7200
    return await adapter.until_closed()  # type: ignore[return-value]


async def rule_user_limit(env: Env, make: Callable[[], Adapter]) -> Outcome:
    failed = await started(make(), env)
    if failed is not None:
        return failed
    return await make().start(env.token())  # type: ignore[return-value]


async def rule_namespace(env: Env, make: Callable[[], Adapter]) -> Outcome:
    return await make().start(env.token(), PRIVATE)  # type: ignore[return-value]


async def rule_hook_connect(env: Env, make: Callable[[], Adapter]) -> Outcome:
    return await make().start(env.token())  # type: ignore[return-value]


async def rule_hook_subscribe(env: Env, make: Callable[[], Adapter]) -> Outcome:
    return await make().start(env.token())  # type: ignore[return-value]


async def rule_proxy_connect(env: Env, make: Callable[[], Adapter]) -> Outcome:
    return await make().start(None)  # type: ignore[return-value]  # without a token: the connect proxy decides


async def rule_proxy_subscribe(env: Env, make: Callable[[], Adapter]) -> Outcome:
    return await make().start(env.token())  # type: ignore[return-value]


async def rule_hook_publish(env: Env, make: Callable[[], Adapter]) -> Outcome:
    adapter = make()
    outcome = await adapter.start(env.token())
    if not isinstance(outcome, Ok):
        return Broken(f"a valid client was not served: {outcome}")
    sent = await adapter.publish({"text": "hello"})
    return sent if sent is not None else await adapter.first_decisive()  # type: ignore[return-value]


async def rule_command_rate(env: Env, make: Callable[[], Adapter]) -> Outcome:
    adapter = make()
    failed = await started(adapter, env)
    if failed is not None:
        return failed
    sent = await adapter.flood(12)
    return sent if sent is not None else await adapter.until_closed()  # type: ignore[return-value]


#: the publications that fill a client that stops reading: 8 KiB each, at most 32 MiB
PUMP_BLOB = "x" * 8192
PUMP_MAX = 4096
#: publications sent after the 3008: none of them may reach the client
PUMP_AFTER = 64


def sequence(data: Any) -> int:
    """The ``n`` of a pumped publication, as any way in delivers it (a JSON
    value, or its text / bytes); -1 for anything else."""
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except ValueError:
            return -1
    return data.get("n", -1) if isinstance(data, dict) else -1


async def pump(env: Env) -> int | Timeout:
    """Publish to a client that stopped reading until the hub counts a 3008
    close; the number of publications it took (``n`` = 0, 1, ...)."""
    stats = env.hub.stats
    slow = stats.slow  # 3008 closes so far
    sent = 0
    async with asyncio.timeout(20):
        while stats.slow == slow and sent < PUMP_MAX:
            await env.hub.publish(CHANNEL, {"n": sent, "blob": PUMP_BLOB})
            sent += 1
            # one publication per iteration: the writer flushes each into the socket, so the
            # bound is reached only once the client's socket buffers are full (it stopped reading)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
    if stats.slow == slow:
        return Timeout(f"no 3008 after {sent} publications of 8 KiB")
    return sent


async def rule_output_bound(env: Env, make: Callable[[], Adapter]) -> Outcome:
    adapter = make()
    failed = await started(adapter, env, small_rcvbuf=True)
    if failed is not None:
        return failed
    sent = await pump(env)
    if isinstance(sent, Timeout):
        return sent
    last = sent - 1
    async with asyncio.timeout(20):
        for n in range(sent, sent + PUMP_AFTER):  # the hub still has the subscriber until the connection is gone
            await env.hub.publish(CHANNEL, {"n": n, "blob": PUMP_BLOB})
            await asyncio.sleep(0)
    # now read: what was pending is dropped, the last words say 3008, and nothing
    # published after the 3008 arrives
    try:
        async with asyncio.timeout(WAIT * 2):
            while True:
                event = await adapter.next_event()
                if isinstance(event, Pub):
                    if sequence(event.data) > last:
                        return Broken(f"publication {sequence(event.data)} arrived, sent after the 3008 "
                                      f"(at {last}): output after the bound is still queued")
                    continue
                return event
    except TimeoutError:
        return Timeout("still open after the 3008")


async def rule_slow_release(env: Env, make: Callable[[], Adapter]) -> Outcome:
    adapter = make()
    failed = await started(adapter, env, small_rcvbuf=True)
    if failed is not None:
        return failed
    sent = await pump(env)
    if isinstance(sent, Timeout):
        return sent
    # the client still reads nothing: within close_timeout (0.2 s) the server lets it go,
    # so nothing more is held for it however much is published meanwhile (polled while
    # publishing one 8 KiB publication every 10 ms, for at most 2 s)
    for extra in range(200):
        if not env.subscribed():
            return Released()
        await env.hub.publish(CHANNEL, {"n": sent + extra, "blob": PUMP_BLOB})
        await asyncio.sleep(0.01)
    if not env.subscribed():
        return Released()
    return Timeout("still held 2 s after its 3008 (close_timeout 0.2 s)")


async def rule_connect_timeout(env: Env, make: Callable[[], Adapter]) -> Outcome:
    adapter = make()
    opened = await adapter.open_idle()
    return opened if opened is not None else await adapter.until_closed()  # type: ignore[return-value]


async def rule_max_message_size(env: Env, make: Callable[[], Adapter]) -> Outcome:
    adapter = make()
    sent = await adapter.send_oversized()
    return sent if sent is not None else await adapter.until_closed()  # type: ignore[return-value]


async def rule_api_disconnect(env: Env, make: Callable[[], Adapter]) -> Outcome:
    adapter = make()
    failed = await started(adapter, env)
    if failed is not None:
        return failed
    status = await env.api("disconnect", {"user": USER})
    if status != 200:
        return Broken(f"POST /api/disconnect answered {status}")
    return await adapter.until_closed()  # type: ignore[return-value]


async def rule_api_unsubscribe(env: Env, make: Callable[[], Adapter]) -> Outcome:
    adapter = make()
    failed = await started(adapter, env)
    if failed is not None:
        return failed
    status = await env.api("unsubscribe", {"user": USER, "channel": CHANNEL})
    if status != 200:
        return Broken(f"POST /api/unsubscribe answered {status}")
    if not await env.wait_for(lambda: env.subscribed() == 0):
        return Timeout("the hub still delivers the channel to the client")
    if not adapter.tells_unsubscribe:
        return Unsubscribed(None)
    return await adapter.first_decisive()  # type: ignore[return-value]


RULE_RUNS: dict[str, Callable[[Env, Callable[[], Adapter]], Awaitable[Outcome]]] = {
    "anonymous": rule_anonymous,
    "expired": rule_expired,
    "expires_live": rule_expires_live,
    "user_limit": rule_user_limit,
    "namespace": rule_namespace,
    "hook_connect": rule_hook_connect,
    "hook_subscribe": rule_hook_subscribe,
    "hook_publish": rule_hook_publish,
    "command_rate": rule_command_rate,
    "output_bound": rule_output_bound,
    "slow_release": rule_slow_release,
    "connect_timeout": rule_connect_timeout,
    "max_message_size": rule_max_message_size,
    "api_disconnect": rule_api_disconnect,
    "api_unsubscribe": rule_api_unsubscribe,
    "proxy_connect": rule_proxy_connect,
    "proxy_subscribe": rule_proxy_subscribe,
}
assert set(RULE_RUNS) == set(RULES)

# -- the test ---------------------------------------------------------------------------------------------


def cells() -> list[Any]:
    params = []
    for server in ("own", "asgi"):
        for way in WAYS:
            for rule in RULES:
                marks: list[Any] = []
                if server == "asgi":
                    marks.append(pytest.mark.slow)
                reason = XFAIL.get((server, way, rule))
                if reason is not None:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
                params.append(pytest.param(server, way, rule, marks=marks, id=f"{server}-{way}-{rule}"))
    return params


@pytest.mark.parametrize(("server", "way", "rule"), cells())
async def test_rule_matrix(server: str, way: str, rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = EXPECTED[way, rule]
    if isinstance(expected, NotApplicable):
        pytest.skip(f"not applicable: {expected.why}")
    # the housekeeping sweep (connect deadlines, token expiry) every 50 ms instead of every second
    monkeypatch.setattr(hubbub.server, "SWEEP_INTERVAL", 0.05)
    calls: list[str] = []
    backend = Backend() if rule.startswith("proxy_") else None
    if backend is not None:
        await backend.start()
    app = make_app(rule, calls, backend)
    adapters: list[Adapter] = []
    async with contextlib.AsyncExitStack() as stack:
        if backend is not None:
            stack.push_async_callback(backend.stop)
        port = await stack.enter_async_context(app_serving(app, under_uvicorn=server != "own"))
        env = Env(app, port)

        def make() -> Adapter:
            adapter = ADAPTERS[way](env)
            adapters.append(adapter)
            return adapter

        try:
            async with asyncio.timeout(30):
                outcome = await RULE_RUNS[rule](env, make)
        finally:
            for adapter in adapters:
                await adapter.close()
    assert outcome == expected, f"{server} {way} {rule}: got {outcome}, expected {expected}"
    if rule.startswith("hook_"):
        assert calls, f"the {rule} hook was not called"
    if backend is not None:
        assert backend.calls, f"the {rule} backend was not asked"
